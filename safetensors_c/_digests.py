"""SHA-256 digests of each tensor, recorded in the file's ``__metadata__``.

Floor 2: works on readers and NumPy arrays only, so that ``safe_open(...,
verify_digests=True)`` and every framework's writer can use it. The public
helpers are in :mod:`safetensors_c.integrity`.

The digests live under one metadata key, :data:`DIGEST_KEY`, whose value is
compact JSON mapping each tensor name to the lowercase hex SHA-256 of the
tensor's bytes exactly as stored (C order, little-endian; F4/F6 packed).
Verification hashes the mapped file in place, without a copy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from ._core import SafetensorError

__all__ = ["DIGEST_KEY", "add_digests", "check_digests", "mismatches", "tensor_digest"]

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
    arrays: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """``metadata`` plus the digest entry for ``arrays`` (name -> the bytes to
    be stored, as an ndarray), as a new dict."""
    out = dict(metadata or {})
    digests = {name: tensor_digest(array) for name, array in arrays.items()}
    out[DIGEST_KEY] = json.dumps(digests, sort_keys=True, separators=(",", ":"))
    return out


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


def mismatches(
    reader, progress: Optional[Callable[[int, int], None]] = None
) -> Optional[List[str]]:
    """Names of tensors of a reader whose digests do not match, sorted; None
    if the file records no digests. A tensor without a digest, and a digest
    for a tensor the file lacks, count as mismatches. ``progress(done,
    total)`` gets the bytes hashed so far after each tensor."""
    digests = _read_digests(reader.metadata(), reader.filename)
    if digests is None:
        return None
    names = reader.keys()
    spans = [reader.info(name)[3:5] for name in names]
    total = sum(end - begin for begin, end in spans)
    done = 0
    bad = []
    for name, (begin, end) in zip(names, spans):
        expected = digests.get(name)
        if expected is None or tensor_digest(reader.tensor(name)) != expected.lower():
            bad.append(name)
        done += end - begin
        if progress is not None:
            progress(done, total)
    bad.extend(name for name in digests if name not in reader)
    return sorted(bad)


def _error(message: str, code: str) -> SafetensorError:
    error = SafetensorError(message)
    error.code = code
    return error


def check_digests(reader) -> None:
    """Raises SafetensorError (code ``"STC_ERR_DIGEST_MISMATCH"``) naming the
    tensors whose bytes differ from their recorded digests, or
    ``"STC_ERR_NO_DIGESTS"`` if the file records none."""
    bad = mismatches(reader)
    if bad:
        raise _error(
            f"{reader.filename}: tensor data does not match its recorded SHA-256 digest: "
            + ", ".join(repr(name) for name in bad[:10])
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""),
            "STC_ERR_DIGEST_MISMATCH",
        )
    if bad is None:
        raise _error(
            f"{reader.filename}: verify_digests=True, but the file records no tensor digests "
            f"(save it with save_file(..., digests=True))",
            "STC_ERR_NO_DIGESTS",
        )
