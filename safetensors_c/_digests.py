"""Digests of each tensor and of the metadata, recorded in the file's ``__metadata__``.

Works on readers and NumPy arrays only, so that ``safe_open(...,
verify_digests=True)`` and every framework's writer can use it. The public
helpers are in :mod:`safetensors_c.integrity`.

Two schemes, each under its own metadata key:

- ``safetensors_c.digests.v2`` (:data:`DIGEST_KEY_V2`, the one written):
  compact JSON ``{"metadata": HEX, "scheme": "sha256-record-v2", "tensors":
  {name: HEX}}``. Each tensor's digest is the SHA-256 of one canonical
  record that binds its name, dtype code, shape and the SHA-256 of its bytes
  (see :func:`tensor_record_digest`); ``"metadata"`` is the SHA-256 of every
  other metadata entry (see :func:`metadata_digest`). A rewritten dtype or
  shape, a renamed tensor or an edited metadata value fails verification.
- ``safetensors_c.sha256`` (:data:`DIGEST_KEY`, v1, scheme
  ``"sha256-bytes-v1"``): ``{name: HEX}`` of the tensor's bytes only. No
  longer written: beside v2 it added nothing but a way to downgrade (delete
  the v2 entry, and a dtype or shape edit would pass). A file with only v1
  is refused by every verifier (``STC_ERR_WEAK_DIGESTS``) unless the caller
  passes ``allow_bytes_only=True``; where both are recorded, both are checked.

HEX is exactly 64 lowercase hex digits; a digest entry that repeats a key,
has other fields or other hex is refused (``STC_ERR_INVALID_DIGESTS``).
The bytes are hashed as stored (C order, little-endian; F4/F6 packed),
from the mapped file in place, without a copy. These digests are unkeyed:
they detect corruption and accidental edits, not a forger who can rewrite
the file (and its digests); get the digest from a trusted channel, or sign
the file, for that.

:func:`verifying` puts a :class:`VerifyingReader` in front of a reader: each
tensor's bytes are checked as they are handed out, so what is handed out is
what was verified, even when the source changes after it was opened.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from . import _dtypes, error_codes
from ._core import SafetensorError

__all__ = [
    "DIGEST_KEY",
    "DIGEST_KEY_V2",
    "METADATA_NAME",
    "SCHEME_V1",
    "SCHEME_V2",
    "Recorded",
    "VerifyingReader",
    "add_digests",
    "check_digests",
    "digest_scheme",
    "metadata_digest",
    "mismatches",
    "recorded",
    "tensor_digest",
    "tensor_record_digest",
    "verifying",
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
                     error_codes.INVALID_DTYPE)
    return code, array.shape, array


def add_digests(tensors: Mapping[str, object],
                metadata: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``metadata`` plus the v2 digest entry for ``tensors`` (name -> the
    writer's Tensor, or an ndarray holding the bytes to be stored), as a new
    dict. Add no metadata after this: the v2 entry covers it. A v1 entry in
    ``metadata`` is dropped (it is no longer written; see the module docstring)."""
    out = {k: v for k, v in (metadata or {}).items() if k not in (DIGEST_KEY, DIGEST_KEY_V2)}
    records: Dict[str, str] = {}
    for name, value in tensors.items():
        code, shape, data = _parts(name, value)
        records[name] = tensor_record_digest(name, code, shape, tensor_digest(data))
    out[DIGEST_KEY_V2] = json.dumps(
        {"metadata": metadata_digest(out), "scheme": SCHEME_V2, "tensors": records},
        sort_keys=True, separators=(",", ":"))
    return out


def _invalid(filename, key: str, why: str) -> SafetensorError:
    return _error(f"{filename}: the {key!r} metadata entry {why}", error_codes.INVALID_DIGESTS)


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


def _error(message: str, code: str) -> SafetensorError:
    error = SafetensorError(message)
    error.code = code
    return error


# MARK: the digests a file records --------------------------------------------


class Recorded:
    """The digests one file records, parsed and checked strictly.

    ``scheme`` is the strongest scheme present (what a caller is told was
    checked); every scheme present is checked."""

    __slots__ = ("filename", "scheme", "_v1", "_v2", "_metadata")

    def __init__(self, filename, metadata: Dict[str, str], v1, v2) -> None:
        self.filename = filename
        self.scheme = SCHEME_V2 if v2 is not None else SCHEME_V1
        self._v1 = v1
        self._v2 = v2
        self._metadata = metadata

    def matches(self, name: str, code: str, shape, byte_digest: str) -> bool:
        """True if the tensor ``name`` of this dtype code and shape, whose
        stored bytes hash to ``byte_digest``, is the one recorded."""
        if self._v1 is not None and self._v1.get(name) != byte_digest:
            return False
        if self._v2 is not None and self._v2["tensors"].get(name) != tensor_record_digest(
                name, code, shape, byte_digest):
            return False
        return True

    def header_mismatches(self, reader) -> set:
        """What fails whatever bytes are read: the tensors of ``reader``
        without a recorded digest, recorded digests of tensors it lacks, and
        :data:`METADATA_NAME` when the metadata does not match its v2 digest."""
        bad = set()
        for recorded_names in (self._v1, None if self._v2 is None else self._v2["tensors"]):
            if recorded_names is not None:
                bad.update(name for name in recorded_names if name not in reader)
                bad.update(name for name in reader.keys() if name not in recorded_names)
        if self._v2 is not None and metadata_digest(self._metadata) != self._v2["metadata"]:
            bad.add(METADATA_NAME)
        return bad


def recorded(metadata: Optional[Dict[str, str]], filename, *,
             allow_bytes_only: bool = False) -> Optional[Recorded]:
    """The digests ``metadata`` records, or None when it records none.

    A file with only the v1 (bytes-only) entry raises SafetensorError
    ``STC_ERR_WEAK_DIGESTS`` unless ``allow_bytes_only``: its digests do not
    cover dtypes, shapes, names or metadata, and deleting the v2 entry of a
    newer file leaves exactly that."""
    metadata = metadata or {}
    v1, v2 = _read_digests(metadata, filename)
    if v1 is None and v2 is None:
        return None
    if v2 is None and not allow_bytes_only:
        raise _error(
            f"{filename}: the file records only bytes-only digests ({DIGEST_KEY!r}, scheme "
            f"{SCHEME_V1}), which do not cover dtypes, shapes, names or the metadata; save it "
            f"again with digests=True to record {SCHEME_V2}, or pass allow_bytes_only=True "
            f"to accept the weaker scheme",
            error_codes.WEAK_DIGESTS,
        )
    return Recorded(filename, metadata, v1, v2)


def _names(bad) -> str:
    bad = sorted(bad)
    return (", ".join(repr(name) for name in bad[:10])
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))


def _no_digests(filename) -> SafetensorError:
    return _error(
        f"{filename}: verify_digests=True, but the file records no tensor digests "
        f"(save it with save_file(..., digests=True))",
        error_codes.NO_DIGESTS,
    )


# MARK: checking a whole file -------------------------------------------------


def _mismatches(reader, digests: Recorded,
                progress: Optional[Callable[[int, int], None]] = None) -> List[str]:
    names = reader.keys()
    infos = [reader.info(name) for name in names]
    total = sum(info[4] - info[3] for info in infos)
    done = 0
    bad = digests.header_mismatches(reader)
    # A check only reads: on a mapped handle it must not count as the
    # tensor's first access (which the caller's get_tensor is, a view).
    read = getattr(reader, "peek", reader.tensor)
    for name, info in zip(names, infos):
        if not digests.matches(name, info[0], info[1], tensor_digest(read(name))):
            bad.add(name)
        done += info[4] - info[3]
        if progress is not None:
            progress(done, total)
    return sorted(bad)


def mismatches(
    reader, progress: Optional[Callable[[int, int], None]] = None, *,
    allow_bytes_only: bool = False,
) -> Optional[List[str]]:
    """Names of tensors of a reader whose digests do not match, sorted, with
    :data:`METADATA_NAME` when the metadata does not match its v2 digest; None
    if the file records no digests. A tensor without a digest, and a digest
    for a tensor the file lacks, count as mismatches. Every scheme the file
    records is checked; a file with only v1 digests raises
    ``STC_ERR_WEAK_DIGESTS`` unless ``allow_bytes_only``. ``progress(done,
    total)`` gets the bytes hashed so far after each tensor."""
    digests = recorded(reader.metadata(), reader.filename, allow_bytes_only=allow_bytes_only)
    return None if digests is None else _mismatches(reader, digests, progress)


def _mismatch_error(filename, scheme: str, bad, what: str) -> SafetensorError:
    return _error(f"{filename}: {what} does not match its recorded SHA-256 digest "
                  f"({scheme}): {_names(bad)}", error_codes.DIGEST_MISMATCH)


def check_digests(reader, *, allow_bytes_only: bool = False) -> str:
    """Hashes every tensor of ``reader`` now; returns the scheme checked.
    Raises SafetensorError (code ``"STC_ERR_DIGEST_MISMATCH"``) naming the
    tensors whose bytes differ from their recorded digests,
    ``"STC_ERR_NO_DIGESTS"`` if the file records none, or
    ``"STC_ERR_WEAK_DIGESTS"`` (see :func:`recorded`)."""
    digests = recorded(reader.metadata(), reader.filename, allow_bytes_only=allow_bytes_only)
    if digests is None:
        raise _no_digests(reader.filename)
    bad = _mismatches(reader, digests)
    if bad:
        raise _mismatch_error(reader.filename, digests.scheme, bad, "tensor data")
    return digests.scheme


# MARK: checking what is read -------------------------------------------------


def verifying(reader, *, allow_bytes_only: bool = False) -> "VerifyingReader":
    """``reader`` behind a :class:`VerifyingReader`: every tensor it hands out
    is hashed as it is handed out and matches the file's recorded digests.

    Checked here as well: a mapped file in full (one pass over the mapping,
    so that a file that does not match fails at open); any other reader
    (which reads its source again on every call: a URL, a file object,
    ``backend="pread"``) only in what no read can mend, the metadata against
    its v2 digest and that every tensor, and only those, has a digest: its
    tensors are checked when read. Raises as :func:`check_digests` does."""
    digests = recorded(reader.metadata(), reader.filename, allow_bytes_only=allow_bytes_only)
    if digests is None:
        raise _no_digests(reader.filename)
    if getattr(reader, "mapped", False):
        bad = _mismatches(reader, digests)
        what = "tensor data"
    else:
        bad = digests.header_mismatches(reader)
        what = "the header"
    if bad:
        raise _mismatch_error(reader.filename, digests.scheme, bad, what)
    return VerifyingReader(reader, digests)


class VerifyingReader:
    """A reader in front of another: each tensor's bytes are hashed when they
    are handed out and compared with the digest recorded for that tensor (its
    name, dtype and shape as the header said when the file was opened); a
    tensor that does not match raises SafetensorError
    ``STC_ERR_DIGEST_MISMATCH`` instead of being returned.

    Every access is checked, mapped or not: a reader that reads its source
    again (and a mapped handle's later accesses, which the core reads afresh
    from the file) could otherwise return bytes that were never hashed. A
    slice reads and checks the whole tensor, then takes the slice of it: a
    digest covers a whole tensor, so reading less could not be checked.
    Direct reads into caller buffers (``read_into``) and prefetching are not
    offered."""

    def __init__(self, reader, digests: Recorded) -> None:
        self._reader = reader
        self._digests = digests
        self.mapped = getattr(reader, "mapped", False)
        self.filename = reader.filename
        self.writable = reader.writable
        self.data_start = reader.data_start
        self.file_size = reader.file_size
        self.digest_scheme = digests.scheme

    # the header, as parsed when the file was opened
    def keys(self) -> List[str]:
        return self._reader.keys()

    def offset_keys(self) -> List[str]:
        return self._reader.offset_keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        return self._reader.metadata()

    def info(self, name: str) -> tuple:
        return self._reader.info(name)

    def __contains__(self, name: object) -> bool:
        return name in self._reader

    def __len__(self) -> int:
        return len(self._reader)

    # the data, checked as read
    def _checked(self, name: str, array: np.ndarray) -> np.ndarray:
        code, shape = self._reader.info(name)[:2]
        if not self._digests.matches(name, code, shape, tensor_digest(array)):
            raise _error(
                f"{self.filename}: tensor {name!r}: the bytes read do not match its recorded "
                f"SHA-256 digest ({self._digests.scheme}); the file changed after it was "
                f"opened, or was altered",
                error_codes.DIGEST_MISMATCH,
            )
        return array

    def tensor(self, name: str) -> np.ndarray:
        return self._checked(name, self._reader.tensor(name))

    def tensors(self) -> Dict[str, np.ndarray]:
        arrays = self._reader.tensors()
        for name, array in arrays.items():
            self._checked(name, array)
        return arrays

    def read_view(self, name: str, offset: int, shape: tuple, strides: tuple) -> np.ndarray:
        """A copy of a strided view (byte offset and strides relative to the
        tensor) of the whole tensor, read and checked."""
        whole = np.asarray(self.tensor(name))
        raw = whole.reshape(-1).view(np.uint8)
        view = np.ndarray(shape, dtype=_dtypes.numpy_dtype(self._reader.info(name)[0]),
                          buffer=raw, offset=offset, strides=strides)
        return view.copy()
