"""Digests of each tensor and of the metadata, recorded in the file's ``__metadata__``.

Floor 2: works on readers and NumPy arrays only, so that ``safe_open(...,
verify_digests=True)`` and every framework's writer can use it. The public
helpers are in :mod:`safetensors_c.integrity`.

Two schemes, each under its own metadata key:

- ``safetensors_c.digests.v2`` (:data:`DIGEST_KEY_V2`, written since v2):
  compact JSON ``{"metadata": HEX, "scheme": "sha256-record-v2", "tensors":
  {name: HEX}}``. Each tensor's digest is the SHA-256 of one canonical
  record that binds its name, dtype code, shape and the SHA-256 of its bytes
  (see :func:`tensor_record_digest`); ``"metadata"`` is the SHA-256 of every
  other metadata entry (see :func:`metadata_digest`). A rewritten dtype or
  shape, a renamed tensor or an edited metadata value fails verification.
- ``safetensors_c.sha256`` (:data:`DIGEST_KEY`, v1): ``{name: HEX}`` of the
  tensor's bytes only. Still written next to v2 (readers that know only v1
  keep working) and still verified in files that have only it; such files
  report the scheme ``"sha256-bytes-v1"``, which does not cover dtypes,
  shapes or metadata.

HEX is exactly 64 lowercase hex digits; a digest entry that repeats a key,
has other fields or other hex is refused (``STC_ERR_INVALID_DIGESTS``).
The bytes are hashed as stored (C order, little-endian; F4/F6 packed),
from the mapped file in place, without a copy. These digests are unkeyed:
they detect corruption and accidental edits, not a forger who can rewrite
the file (and its digests); get the digest from a trusted channel, or sign
the file, for that.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from . import _dtypes
from ._core import SafetensorError

__all__ = [
    "DIGEST_KEY",
    "DIGEST_KEY_V2",
    "METADATA_NAME",
    "SCHEME_V1",
    "SCHEME_V2",
    "add_digests",
    "check_digests",
    "digest_scheme",
    "metadata_digest",
    "mismatches",
    "tensor_digest",
    "tensor_record_digest",
]

DIGEST_KEY = "safetensors_c.sha256"
DIGEST_KEY_V2 = "safetensors_c.digests.v2"
SCHEME_V1 = "sha256-bytes-v1"
SCHEME_V2 = "sha256-record-v2"
#: the name :func:`mismatches` reports when the metadata does not match its digest
METADATA_NAME = "__metadata__"
_HEX = frozenset("0123456789abcdef")


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


def _u64(value: int) -> bytes:
    return int(value).to_bytes(8, "little")


def _field(data: bytes) -> bytes:
    return _u64(len(data)) + data


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def tensor_record_digest(name: str, code: str, shape, byte_digest: str) -> str:
    """The v2 digest of one tensor: the hex SHA-256 of the record
    ``b"safetensors_c tensor v2\\0"``, name (UTF-8), dtype code (ASCII), the
    number of dimensions, each dimension, and the 32-byte SHA-256 of the
    tensor's stored bytes; strings are preceded by their byte length, every
    number is 8 bytes little-endian."""
    shape = tuple(int(d) for d in shape)
    record = b"".join((
        b"safetensors_c tensor v2\0",
        _field(_utf8(name)),
        _field(code.encode("ascii")),
        _u64(len(shape)),
        b"".join(_u64(d) for d in shape),
        _field(bytes.fromhex(byte_digest)),
    ))
    return hashlib.sha256(record).hexdigest()


def metadata_digest(metadata: Optional[Mapping[str, str]]) -> str:
    """The v2 digest of the metadata: the hex SHA-256 of
    ``b"safetensors_c metadata v2\\0"``, the number of entries, then each entry
    (key, value; UTF-8, length-prefixed) sorted by key, the v2 digest entry
    itself excluded."""
    items = sorted((k, v) for k, v in (metadata or {}).items() if k != DIGEST_KEY_V2)
    record = [b"safetensors_c metadata v2\0", _u64(len(items))]
    for key, value in items:
        record.append(_field(_utf8(key)))
        record.append(_field(_utf8(value)))
    return hashlib.sha256(b"".join(record)).hexdigest()


def _parts(name: str, value) -> tuple:
    """(dtype code, shape, ndarray of the stored bytes) of a writer Tensor or an array."""
    if hasattr(value, "code") and hasattr(value, "shape") and hasattr(value, "data"):
        return value.code, tuple(value.shape), value.data
    array = np.asarray(value)
    if isinstance(value, _dtypes.PackedArray):
        return value.format_dtype, value.logical_shape, array
    code = _dtypes.code_for_dtype(array.dtype)
    if code is None:
        raise _error(f"tensor {name!r}: dtype {array.dtype} has no safetensors code",
                     "STC_ERR_INVALID_DTYPE")
    return code, array.shape, array


def add_digests(tensors: Mapping[str, object],
                metadata: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``metadata`` plus both digest entries (v2 and v1) for ``tensors`` (name ->
    the writer's Tensor, or an ndarray holding the bytes to be stored), as a new
    dict. Add no metadata after this: the v2 entry covers it."""
    out = {k: v for k, v in (metadata or {}).items() if k not in (DIGEST_KEY, DIGEST_KEY_V2)}
    byte_digests: Dict[str, str] = {}
    records: Dict[str, str] = {}
    for name, value in tensors.items():
        code, shape, data = _parts(name, value)
        byte_digests[name] = tensor_digest(data)
        records[name] = tensor_record_digest(name, code, shape, byte_digests[name])
    out[DIGEST_KEY] = json.dumps(byte_digests, sort_keys=True, separators=(",", ":"))
    out[DIGEST_KEY_V2] = json.dumps(
        {"metadata": metadata_digest(out), "scheme": SCHEME_V2, "tensors": records},
        sort_keys=True, separators=(",", ":"))
    return out


def _invalid(filename, key: str, why: str) -> SafetensorError:
    return _error(f"{filename}: the {key!r} metadata entry {why}", "STC_ERR_INVALID_DIGESTS")


def _strict_json(text: str, filename, key: str):
    def no_duplicates(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise _invalid(filename, key, f"repeats the key {k!r}")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, SafetensorError):
            raise
        raise _invalid(filename, key, "is not JSON") from None


def _is_hex(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _name_map(value, filename, key: str) -> Dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _is_hex(v) for k, v in value.items()
    ):
        raise _invalid(filename, key, "is not a map of tensor names to 64 lowercase hex digits")
    return value


def _read_digests(metadata: Optional[Dict[str, str]], filename):
    """(v1 map or None, v2 record or None), each checked strictly."""
    metadata = metadata or {}
    v1 = v2 = None
    if DIGEST_KEY in metadata:
        v1 = _name_map(_strict_json(metadata[DIGEST_KEY], filename, DIGEST_KEY), filename,
                       DIGEST_KEY)
    if DIGEST_KEY_V2 in metadata:
        v2 = _strict_json(metadata[DIGEST_KEY_V2], filename, DIGEST_KEY_V2)
        if not isinstance(v2, dict) or set(v2) != {"metadata", "scheme", "tensors"}:
            raise _invalid(filename, DIGEST_KEY_V2,
                           'must have exactly the fields "metadata", "scheme" and "tensors"')
        if v2["scheme"] != SCHEME_V2:
            raise _invalid(filename, DIGEST_KEY_V2, f"names an unknown scheme {v2['scheme']!r}")
        if not _is_hex(v2["metadata"]):
            raise _invalid(filename, DIGEST_KEY_V2, "has a metadata digest that is not 64 "
                                                    "lowercase hex digits")
        _name_map(v2["tensors"], filename, DIGEST_KEY_V2)
    return v1, v2


def digest_scheme(metadata: Optional[Dict[str, str]]) -> Optional[str]:
    """``"sha256-record-v2"``, ``"sha256-bytes-v1"`` or None (no digests)."""
    metadata = metadata or {}
    if DIGEST_KEY_V2 in metadata:
        return SCHEME_V2
    return SCHEME_V1 if DIGEST_KEY in metadata else None


def mismatches(
    reader, progress: Optional[Callable[[int, int], None]] = None
) -> Optional[List[str]]:
    """Names of tensors of a reader whose digests do not match, sorted, with
    :data:`METADATA_NAME` when the metadata does not match its v2 digest; None
    if the file records no digests. A tensor without a digest, and a digest
    for a tensor the file lacks, count as mismatches. Every scheme the file
    records is checked. ``progress(done, total)`` gets the bytes hashed so far
    after each tensor."""
    metadata = reader.metadata()
    v1, v2 = _read_digests(metadata, reader.filename)
    if v1 is None and v2 is None:
        return None
    names = reader.keys()
    infos = [reader.info(name) for name in names]
    total = sum(info[4] - info[3] for info in infos)
    done = 0
    bad = set()
    for name, info in zip(names, infos):
        byte_digest = tensor_digest(reader.tensor(name))
        if v1 is not None and v1.get(name) != byte_digest:
            bad.add(name)
        if v2 is not None and v2["tensors"].get(name) != tensor_record_digest(
                name, info[0], info[1], byte_digest):
            bad.add(name)
        done += info[4] - info[3]
        if progress is not None:
            progress(done, total)
    for recorded in (v1, v2["tensors"] if v2 is not None else None):
        if recorded is not None:
            bad.update(name for name in recorded if name not in reader)
    if v2 is not None and metadata_digest(metadata) != v2["metadata"]:
        bad.add(METADATA_NAME)
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
            f"{reader.filename}: tensor data does not match its recorded SHA-256 digest "
            f"({digest_scheme(reader.metadata())}): "
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
