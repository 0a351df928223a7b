"""Digests of each tensor and of the metadata, kept in the file's ``__metadata__``.

    from safetensors_c.integrity import save_file_with_digests, verify_digests

    save_file_with_digests({"w": w}, "model.safetensors")
    assert verify_digests("model.safetensors") == []    # names of bad tensors

Files are written with one entry (see :mod:`safetensors_c._digests` for the
exact records): :data:`DIGEST_KEY_V2` (``"safetensors_c.digests.v2"``, scheme
``"sha256-record-v2"``) binds each tensor's name, dtype, shape and bytes in
one record and the rest of the metadata in another, so a dtype or shape
rewritten in the header, a renamed tensor or an edited metadata value fails
verification. Earlier releases also wrote :data:`DIGEST_KEY`
(``"safetensors_c.sha256"``, scheme ``"sha256-bytes-v1"``: each tensor's
bytes only). That entry is no longer written, and a file that has only it
is refused by default (SafetensorError ``STC_ERR_WEAK_DIGESTS``): deleting
the v2 entry of a newer file leaves exactly that, and a dtype or shape edit
would then pass. Pass ``allow_bytes_only=True`` to accept such a file
knowingly; :func:`digest_scheme` says which scheme a file uses. Digest
entries that repeat a key, carry other fields or other than 64 lowercase hex
digits are refused. Verification hashes the mapped file in place, without a
copy.

These digests are not keyed: they detect corruption, truncation and edits by
tools that do not know them, not a forger who can rewrite the file and its
digests together. There is no keyed (HMAC) mode: a key would have to reach
every reader as securely as a digest can, so compare the recorded v2 entry
(or the whole file's SHA-256) with one obtained from a channel you trust, or
sign the file with a signing tool.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from . import _frameworks
from ._digests import (
    DIGEST_KEY,
    DIGEST_KEY_V2,
    METADATA_NAME,
    SCHEME_V1,
    SCHEME_V2,
    add_digests,
    check_digests,
    mismatches,
    metadata_digest,
    tensor_digest,
    tensor_record_digest,
)
from ._digests import digest_scheme as _scheme_of
from ._open import safe_open

__all__ = [
    "DIGEST_KEY",
    "DIGEST_KEY_V2",
    "METADATA_NAME",
    "SCHEME_V1",
    "SCHEME_V2",
    "add_digests",
    "check_digests",
    "digest_scheme",
    "has_digests",
    "metadata_digest",
    "tensor_record_digest",
    "save_file_with_digests",
    "tensor_digest",
    "verify_digests",
]


def save_file_with_digests(
    tensors: Dict[str, Any],
    filename,
    metadata: Optional[Dict[str, str]] = None,
    *,
    framework: str = "np",
) -> None:
    """``save_file`` with each tensor's SHA-256 in the metadata; ``framework``
    names the arrays' framework ("np", "pt", "flax", ...)."""
    _frameworks.save_file(framework, tensors, filename, metadata, digests=True)


def has_digests(filename) -> bool:
    """True if the file records tensor digests (either scheme)."""
    return digest_scheme(filename) is not None


def digest_scheme(filename) -> Optional[str]:
    """``"sha256-record-v2"``, ``"sha256-bytes-v1"`` (tensor bytes only, as older
    files have), or None when the file records no digests."""
    with safe_open(filename, framework="np") as f:
        return _scheme_of(f.metadata())


def verify_digests(filename, *, progress: Optional[Callable[[int, int], None]] = None,
                   allow_bytes_only: bool = False) -> List[str]:
    """Names of tensors whose name, dtype, shape or bytes do not match their
    recorded ``"sha256-record-v2"`` digests, sorted; ``"__metadata__"``
    (:data:`METADATA_NAME`) among them when the metadata does not match.

    A tensor without a recorded digest, and a digest for a tensor the file
    lacks, count as mismatches too. Malformed digest entries raise
    ``SafetensorError`` (code ``STC_ERR_INVALID_DIGESTS``). A file with only
    bytes-only ``"sha256-bytes-v1"`` digests raises ``SafetensorError``
    (code ``STC_ERR_WEAK_DIGESTS``) unless ``allow_bytes_only=True``, when
    its tensors' bytes are checked (and nothing else). Raises ``ValueError``
    if the file records no digests at all. ``progress(done, total)`` is
    called with the bytes hashed so far after each tensor.
    """
    with safe_open(filename, framework="np") as f:
        bad = mismatches(f.reader, progress=progress, allow_bytes_only=allow_bytes_only)
    if bad is None:
        raise ValueError(f"{filename}: the file records no tensor digests ({DIGEST_KEY_V2})")
    return bad
