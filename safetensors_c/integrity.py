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
copy of the data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Mapping, Optional

import numpy as np

from ._core import SafetensorError
from ._open import safe_open
from .numpy import save_file

__all__ = [
    "DIGEST_KEY",
    "add_digests",
    "check_digests",
    "has_digests",
    "save_file_with_digests",
    "tensor_digest",
    "verify_digests",
]

DIGEST_KEY = "safetensors_c.sha256"


def _stored_bytes(array: np.ndarray) -> memoryview:
    """The tensor's bytes as the writer stores them, without a copy when possible."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)  # a no-op for mapped, contiguous tensors
    return memoryview(array.reshape(-1).view(np.uint8))


def tensor_digest(array: np.ndarray) -> str:
    """The hex SHA-256 of one tensor's stored bytes."""
    return hashlib.sha256(_stored_bytes(array)).hexdigest()


def add_digests(
    tensors: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]] = None
) -> Dict[str, str]:
    """``metadata`` plus the digest entry for ``tensors`` (a new dict)."""
    out = dict(metadata or {})
    digests = {name: tensor_digest(array) for name, array in tensors.items()}
    out[DIGEST_KEY] = json.dumps(digests, sort_keys=True, separators=(",", ":"))
    return out


def save_file_with_digests(
    tensors: Dict[str, np.ndarray], filename, metadata: Optional[Dict[str, str]] = None
) -> None:
    """:func:`safetensors_c.save_file` with each tensor's SHA-256 in the metadata."""
    save_file(tensors, filename, metadata=add_digests(tensors, metadata))


def _read_digests(metadata: Optional[Dict[str, str]], filename) -> Optional[Dict[str, str]]:
    if not metadata or DIGEST_KEY not in metadata:
        return None
    try:
        digests = json.loads(metadata[DIGEST_KEY])
    except ValueError:
        raise ValueError(f"{filename}: the {DIGEST_KEY!r} metadata entry is not JSON") from None
    if not isinstance(digests, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
    ):
        raise ValueError(f"{filename}: the {DIGEST_KEY!r} entry is not a map of names to hex")
    return digests


def has_digests(filename) -> bool:
    """True if the file records tensor digests."""
    with safe_open(filename, framework="np") as f:
        return DIGEST_KEY in (f.metadata() or {})


def _mismatches(file) -> Optional[list[str]]:
    """Names of tensors of an open core file whose digests do not match,
    sorted; None if the file records no digests."""
    digests = _read_digests(file.metadata(), file.filename)
    if digests is None:
        return None
    bad = [
        name
        for name in file.keys()
        if digests.get(name) is None or tensor_digest(file.tensor(name)) != digests[name].lower()
    ]
    bad.extend(name for name in digests if name not in file)
    return sorted(bad)


def verify_digests(filename) -> list[str]:
    """Names of tensors whose bytes do not match their recorded SHA-256, sorted.

    A tensor without a recorded digest, and a digest for a tensor the file
    lacks, count as mismatches too. Raises ``ValueError`` if the file
    records no digests at all.
    """
    with safe_open(filename, framework="np") as f:
        bad = _mismatches(f._handle())
    if bad is None:
        raise ValueError(f"{filename}: the file records no tensor digests ({DIGEST_KEY})")
    return bad


def check_digests(file) -> None:
    """Raises SafetensorError (code ``"DIGEST_MISMATCH"``) naming the tensors of
    an open core file whose bytes differ from their recorded digests, or
    ``"NO_DIGESTS"`` if the file records none."""
    bad = _mismatches(file)
    if bad:
        error = SafetensorError(
            f"{file.filename}: tensor data does not match its recorded SHA-256 digest: "
            + ", ".join(repr(name) for name in bad[:10])
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        )
        error.code = "DIGEST_MISMATCH"
        raise error
    if bad is None:
        error = SafetensorError(
            f"{file.filename}: verify_digests=True, but the file records no tensor digests "
            f"(save it with save_file(..., digests=True))"
        )
        error.code = "NO_DIGESTS"
        raise error
