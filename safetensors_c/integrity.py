"""SHA-256 digests of each tensor, kept in the file's ``__metadata__``.

    from safetensors_c.integrity import save_file_with_digests, verify_digests

    save_file_with_digests({"w": w}, "model.safetensors")
    assert verify_digests("model.safetensors") == []    # names of bad tensors

The digests live under one metadata key, :data:`DIGEST_KEY`
(``"safetensors_c.sha256"``), whose value is compact JSON mapping each
tensor name to the lowercase hex SHA-256 of the tensor's bytes exactly as
stored in the file (C order, little-endian; for F4/F6 the packed bytes).
Any reader can check them with a JSON parser and hashlib. Verification
hashes the mapped file in place: a memoryview of each zero-copy array, no
copy of the data. Every framework's arrays can be saved with digests.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from . import _frameworks
from ._digests import DIGEST_KEY, add_digests, check_digests, mismatches, tensor_digest
from ._open import safe_open

__all__ = [
    "DIGEST_KEY",
    "add_digests",
    "check_digests",
    "has_digests",
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
    """True if the file records tensor digests."""
    with safe_open(filename, framework="np") as f:
        return DIGEST_KEY in (f.metadata() or {})


def verify_digests(filename, *, progress: Optional[Callable[[int, int], None]] = None) -> List[str]:
    """Names of tensors whose bytes do not match their recorded SHA-256, sorted.

    A tensor without a recorded digest, and a digest for a tensor the file
    lacks, count as mismatches too. Raises ``ValueError`` if the file
    records no digests at all. ``progress(done, total)`` is called with the
    bytes hashed so far after each tensor.
    """
    with safe_open(filename, framework="np") as f:
        bad = mismatches(f._handle(), progress=progress)
    if bad is None:
        raise ValueError(f"{filename}: the file records no tensor digests ({DIGEST_KEY})")
    return bad
