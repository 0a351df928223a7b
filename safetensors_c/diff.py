"""Two checkpoints compared tensor by tensor: ``diff(a, b) -> DiffReport``.

Each side is a .safetensors file, a URL, or a sharded checkpoint (its
directory or index ``.json``; a URL ending in ``/`` is a directory), opened
with :class:`~safetensors_c.safe_open` or
:class:`~safetensors_c.safe_open_sharded` and so fully validated first.
Tensors are matched by name; the order of tensors in a file and the way
they are split into shards do not count. The report holds:

- the names only in A and only in B (each list sorted by name, as all are);
- the common tensors whose dtype or shape changed (their values are not
  compared);
- for every other common tensor: whether its bytes are identical, how many
  elements differ in value, and the largest absolute and relative
  difference;
- the metadata entries only in A, only in B, or with other values.

Values are compared as follows. Floats (F16, BF16, F32, F64, the F8 types,
F4) are compared in float64, complex numbers (C64) in complex128, integers
and BOOL exactly (``max_abs`` is then an exact int). The absolute difference
is ``|a - b|``; the relative difference is ``|a - b| / max(|a|, |b|)``, 0 where
the values are equal (so 0/0 is 0), 1 for an infinity against a finite
number, 2 for infinities of opposite sign (the largest it can be). NaN
against NaN is equal; NaN against a number differs and is counted in
``nan_mismatched``, outside ``max_abs`` and ``max_rel``. Equal values
whose bits differ (0.0 and -0.0, NaNs of other payloads) are not
``mismatched`` but make the tensor not ``bit_identical``. F6 tensors have
no agreed bit order to decode: their bytes alone are compared
(``max_abs`` and ``max_rel`` are None).

The metadata of a sharded checkpoint is its first shard's (``save_sharded``
gives every shard the same). Bookkeeping entries are ignored unless
``all_metadata=True``: the save id of a sharded save (each save draws its
own) and the recorded digests (they describe the tensors, which are
compared themselves, and differ between one file and its shards).

The comparison streams: one tensor from each side at a time, and a large
tensor in chunks of :data:`CHUNK_ELEMENTS` elements (8 MiB of float32), so
memory stays about one chunk from each side whatever the size of the
checkpoints (for a mapped file the chunks are views of the page cache; a
URL or ``backend="pread"`` reads each chunk into memory of its own, one
range request each). Chunks whose bytes are equal are not decoded.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from . import _dtypes, _remote
from ._digests import DIGEST_KEY, DIGEST_KEY_V2
from ._open import safe_open
from ._terminal import escape_name, escape_prose
from .sharded import SAVE_ID_KEY, safe_open_sharded

__all__ = [
    "BOOKKEEPING_METADATA",
    "CHUNK_ELEMENTS",
    "DiffReport",
    "MetadataChange",
    "TensorChange",
    "TensorEntry",
    "TensorValues",
    "diff",
]

#: elements of one tensor read from each side at a time
CHUNK_ELEMENTS = 1 << 21
# Elements whose values are compared at once: the float64 temporaries of a
# block stay in the CPU's cache (several times faster than whole chunks).
_BLOCK = 1 << 15
#: metadata keys ignored unless all_metadata=True (see the module docstring)
BOOKKEEPING_METADATA = (SAVE_ID_KEY, DIGEST_KEY, DIGEST_KEY_V2)

Number = Union[int, float]
_SHOWN_VALUE = 80  # characters of a metadata value shown in the table


# MARK: the report ---------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """A tensor present on one side only."""

    name: str
    dtype: str
    shape: Tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class TensorChange:
    """A common tensor whose dtype or shape differs (values not compared)."""

    name: str
    a: TensorEntry
    b: TensorEntry

    def to_dict(self) -> dict:
        return {"name": self.name,
                "a": {"dtype": self.a.dtype, "shape": list(self.a.shape)},
                "b": {"dtype": self.b.dtype, "shape": list(self.b.shape)}}


@dataclass(frozen=True)
class TensorValues:
    """A common tensor of one dtype and shape on both sides, compared.

    ``max_abs`` and ``max_rel`` are over the elements that differ and are
    not NaN on one side only (0 when there are none); None when the values
    could not be decoded (F6).
    """

    name: str
    dtype: str
    shape: Tuple[int, ...]
    bit_identical: bool
    mismatched: int  # elements whose values differ (NaN against a number included)
    nan_mismatched: int  # elements that are NaN on one side only
    max_abs: Optional[Number]
    max_rel: Optional[float]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "bit_identical": self.bit_identical, "mismatched": self.mismatched,
                "nan_mismatched": self.nan_mismatched,
                "max_abs": _json_number(self.max_abs), "max_rel": _json_number(self.max_rel)}


@dataclass(frozen=True)
class MetadataChange:
    """A metadata entry: its value in A and in B (None where absent)."""

    key: str
    a: Optional[str]
    b: Optional[str]

    def to_dict(self) -> dict:
        return {"key": self.key, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class DiffReport:
    """What :func:`diff` found; ``identical`` is True when nothing differs."""

    a: str
    b: str
    only_in_a: List[TensorEntry] = field(default_factory=list)
    only_in_b: List[TensorEntry] = field(default_factory=list)
    changed: List[TensorChange] = field(default_factory=list)
    tensors: List[TensorValues] = field(default_factory=list)
    metadata: List[MetadataChange] = field(default_factory=list)

    @property
    def differing(self) -> List[TensorValues]:
        """The compared tensors whose bytes are not identical."""
        return [t for t in self.tensors if not t.bit_identical]

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.changed or self.metadata
                    or self.differing)

    def to_dict(self) -> dict:
        """The report as JSON-ready data (infinities as the string ``"inf"``)."""
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "only_in_a": [t.to_dict() for t in self.only_in_a],
            "only_in_b": [t.to_dict() for t in self.only_in_b],
            "changed": [t.to_dict() for t in self.changed],
            "tensors": [t.to_dict() for t in self.tensors],
            "metadata": [m.to_dict() for m in self.metadata],
        }

    def summary(self) -> str:
        """One line: identical, or what differs, counted."""
        if self.identical:
            return (f"identical: {_plural(len(self.tensors), 'tensor')}, "
                    f"metadata equal")
        parts = []
        if self.only_in_a:
            parts.append(f"{len(self.only_in_a)} only in A")
        if self.only_in_b:
            parts.append(f"{len(self.only_in_b)} only in B")
        if self.changed:
            parts.append(f"{_plural(len(self.changed), 'tensor')} of another dtype or shape")
        differing = len(self.differing)
        if differing:
            parts.append(f"{differing} of {_plural(len(self.tensors), 'compared tensor')} "
                         f"not bit-identical")
        elif self.tensors:
            parts.append(f"{_plural(len(self.tensors), 'compared tensor')} bit-identical")
        if self.metadata:
            parts.append(_plural(len(self.metadata), "metadata entry"))
        return "differ: " + ", ".join(parts)

    def lines(self) -> List[str]:
        """The differences, one per line, then the summary. Every name, key
        and value from the files is escaped."""
        rows: List[Tuple[str, str, str]] = []
        for t in self.only_in_a:
            rows.append(("only in A", escape_name(t.name), _dtype_shape(t.dtype, t.shape)))
        for t in self.only_in_b:
            rows.append(("only in B", escape_name(t.name), _dtype_shape(t.dtype, t.shape)))
        for c in self.changed:
            rows.append(("changed", escape_name(c.name),
                         f"{_dtype_shape(c.a.dtype, c.a.shape)} -> "
                         f"{_dtype_shape(c.b.dtype, c.b.shape)}"))
        for t in self.differing:
            rows.append(("values", escape_name(t.name), _values_text(t)))
        for m in self.metadata:
            shown_a, shown_b = _metadata_text(m.a), _metadata_text(m.b)
            detail = f"{shown_a} -> {shown_b}"
            if shown_a == shown_b:  # two long values alike in what is shown
                at = len(os.path.commonprefix([m.a or "", m.b or ""]))
                detail += f" (they differ from character {at})"
            rows.append(("metadata", escape_name(m.key), detail))
        out = []
        if rows:
            kind_width = max(len(r[0]) for r in rows)
            name_width = min(max(len(r[1]) for r in rows), 60)
            for kind, name, detail in rows:
                out.append(f"{kind.ljust(kind_width)}  {name.ljust(name_width)}  {detail}")
        out.append(self.summary())
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _json_number(value: Optional[Number]) -> Any:
    if isinstance(value, float) and value == float("inf"):
        return "inf"  # strict JSON has no infinity
    return value


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word[:-1]}ies" if word.endswith("entry") else f"{count} {word}s"


def _dtype_shape(dtype: str, shape: Tuple[int, ...]) -> str:
    return f"{escape_name(dtype)} [{', '.join(map(str, shape))}]"


def _number_text(value: Number) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _values_text(t: TensorValues) -> str:
    total = 1
    for d in t.shape:
        total *= d
    head = _dtype_shape(t.dtype, t.shape)
    if t.max_abs is None:
        return f"{head}: bytes differ (values not decoded for {t.dtype})"
    if t.mismatched == 0:
        return f"{head}: values equal, bits differ (signed zeros or NaN payloads)"
    text = (f"{head}: {t.mismatched} of {total} differ, max abs {_number_text(t.max_abs)}, "
            f"max rel {_number_text(t.max_rel)}")
    if t.nan_mismatched:
        text += f", {t.nan_mismatched} NaN against a number"
    return text


def _metadata_text(value: Optional[str]) -> str:
    if value is None:
        return "(absent)"
    if len(value) > _SHOWN_VALUE:
        value = value[:_SHOWN_VALUE] + "…"
    return "'" + escape_prose(value) + "'"


# MARK: opening ------------------------------------------------------------------


def _label(source: str) -> str:
    """The source as the report names it (a URL without credentials or query)."""
    return _remote.display_url(source) if _remote.is_url(source) else source


def _is_sharded(source: str) -> bool:
    if _remote.is_url(source):
        head = source.split("?", 1)[0]
        return head.endswith((".json", "/"))
    return os.path.isdir(source) or source.endswith(".json")


def _as_source(source: Any) -> str:
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"diff compares paths, URLs or sharded checkpoints, not "
                        f"{type(source).__name__}")
    return source


class _Side:
    """One opened source: each tensor's reader, and the metadata compared."""

    def __init__(self, source: str, *, prefix: str, backend: str,
                 storage_options: Optional[Dict[str, Any]], all_metadata: bool) -> None:
        self.label = _label(source)
        options = dict(backend=backend, storage_options=storage_options)
        if _is_sharded(source):
            handle = safe_open_sharded(source, prefix=prefix, **options)
            shards = handle.shards
            weight_map = handle.weight_map
            # Shard by shard, each in file order: the order reads are cheapest.
            self.readers = {name: shards[weight_map[name]].reader
                            for name in handle.offset_keys()}
        else:
            handle = safe_open(source, **options)
            reader = handle.reader
            self.readers = {name: reader for name in reader.offset_keys()}
        self._opened = handle
        metadata = handle.metadata() or {}
        if not all_metadata:
            metadata = {k: v for k, v in metadata.items() if k not in BOOKKEEPING_METADATA}
        self.metadata = metadata

    def entry(self, name: str) -> TensorEntry:
        code, shape = self.readers[name].info(name)[:2]
        return TensorEntry(name, code, tuple(shape))

    def close(self) -> None:
        self._opened.close()


def _chunks(reader, name: str, size: int, step: int) -> Iterator[np.ndarray]:
    """The tensor's elements (1-D, its NumPy dtype; bytes for F4/F6), ``step``
    at a time: views of a mapping, or reads of their own."""
    info = reader.info(name)
    dtype = _dtypes.numpy_dtype(info[0])
    if getattr(reader, "mapped", False):
        # A read-only view of the file's pages (a fresh read only if the
        # tensor was handed out before, which never happens here).
        flat = np.asarray(reader.peek(name)).reshape(-1)
        for first in range(0, size, step):
            yield flat[first:first + step]
        return
    for first in range(0, size, step):
        count = min(step, size - first)
        yield np.asarray(reader.read_view(name, first * dtype.itemsize, (count,),
                                          (dtype.itemsize,)))


# MARK: comparing values ---------------------------------------------------------


def _same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    x = x.view(np.uint8)
    y = y.view(np.uint8)
    if x.size % 8 == 0:  # compared a word at a time
        x, y = x.view(np.uint64), y.view(np.uint64)
    return bool(np.array_equal(x, y))


class _Tally:
    """The running comparison of one tensor, chunk after chunk."""

    def __init__(self, exact: bool) -> None:
        self.bit_identical = True
        self.mismatched = 0
        self.nan_mismatched = 0
        self.max_abs: Number = 0 if exact else 0.0
        self.max_rel = 0.0

    def note(self, abs_diff: Number, rel_diff: float) -> None:
        self.max_abs = max(self.max_abs, abs_diff)
        self.max_rel = max(self.max_rel, rel_diff)


def _compare_inexact(x: np.ndarray, y: np.ndarray, tally: _Tally) -> None:
    """Float64 or complex128 values, arrays of their own (see the module
    docstring)."""
    with np.errstate(invalid="ignore", over="ignore"):
        differ = x != y  # True for NaN against NaN, put right below
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        has_nan = bool(nan_x.any() or nan_y.any())
        if has_nan:
            differ &= ~(nan_x & nan_y)
        count = int(np.count_nonzero(differ))
        if not count:
            return
        tally.mismatched += count
        if has_nan:
            one_nan = nan_x ^ nan_y
            tally.nan_mismatched += int(np.count_nonzero(one_nan))
            differ &= ~one_nan
            count = int(np.count_nonzero(differ))
            if not count:
                return
        del nan_x, nan_y
        if count < x.size:  # from here on only the elements that differ
            x, y = x[differ], y[differ]
        del differ
        abs_diff = np.subtract(x, y)
        abs_diff = np.abs(abs_diff, out=abs_diff) if abs_diff.dtype.kind == "f" else np.abs(
            abs_diff)
        largest = np.abs(x)
        np.maximum(largest, np.abs(y), out=largest)  # > 0: the values differ
        rel_diff = np.divide(abs_diff, largest, out=largest)
        infinite = np.isinf(x) | np.isinf(y)
        if infinite.any():
            both = np.isinf(x[infinite]) & np.isinf(y[infinite])
            abs_diff[infinite] = np.inf
            rel_diff[infinite] = np.where(both, 2.0, 1.0)
        overflow = np.isinf(abs_diff) & ~infinite
        if overflow.any():  # |a - b| beyond float64 for finite a, b: scale first
            xs, ys = x[overflow], y[overflow]
            scale = np.maximum(np.abs(xs), np.abs(ys))
            rel_diff[overflow] = np.abs(xs / scale - ys / scale)
    tally.note(float(abs_diff.max()), float(rel_diff.max()))


def _compare_integers(x: np.ndarray, y: np.ndarray, tally: _Tally) -> None:
    """Integers of any width, exactly: two's-complement differences in uint64
    are exact for every pair of 64-bit integers."""
    differ = x != y
    count = int(np.count_nonzero(differ))
    if not count:
        return
    tally.mismatched += count
    if count < x.size:
        x, y = x[differ], y[differ]
    del differ
    xu, yu = x.astype(np.uint64), y.astype(np.uint64)  # negative values wrap
    abs_diff = np.subtract(xu, yu)  # wraps where x < y: negated back below
    np.negative(abs_diff, out=abs_diff, where=x < y)
    np.negative(xu, out=xu, where=x < 0)  # magnitudes, exact in uint64
    np.negative(yu, out=yu, where=y < 0)
    largest = np.maximum(xu, yu, out=xu).astype(np.float64)
    del xu, yu
    max_abs = int(abs_diff.max())
    rel_diff = np.divide(abs_diff.astype(np.float64), largest, out=largest)
    tally.note(max_abs, float(rel_diff.max()))


@functools.lru_cache(maxsize=None)
def _f4_values() -> np.ndarray:
    """The float64 value of each of the 16 F4 (E2M1) codes."""
    codes = np.arange(16, dtype=np.uint8)
    return codes.view(np.dtype(_dtypes._ml_dtypes().float4_e2m1fn)).astype(np.float64)


def _compare_chunk(code: str, x: np.ndarray, y: np.ndarray, tally: _Tally) -> None:
    if code == "F4":
        # Each value of A is compared with the same value of B.
        table = _f4_values()
        _compare_inexact(table[_dtypes.unpack_f4(x)], table[_dtypes.unpack_f4(y)], tally)
    elif code == "BOOL":
        _compare_integers(x.view(np.uint8), y.view(np.uint8), tally)
    elif x.dtype.kind in "iu":
        _compare_integers(x, y, tally)
    elif x.dtype.kind == "c":
        _compare_inexact(x.astype(np.complex128), y.astype(np.complex128), tally)
    else:  # NumPy floats and the ml_dtypes ones
        _compare_inexact(x.astype(np.float64), y.astype(np.float64), tally)


def _compare_tensor(name: str, entry: TensorEntry, reader_a, reader_b,
                    step: int) -> TensorValues:
    code = entry.dtype
    size = 1
    for d in reader_a.info(name)[2]:  # the NumPy shape: bytes for F4/F6
        size *= d
    decodable = code not in ("F6_E2M3", "F6_E3M2")
    exact = code not in _dtypes.PACKED_BITS and (
        code == "BOOL" or _dtypes.numpy_dtype(code).kind in "iu")
    tally = _Tally(exact)
    chunks_b = _chunks(reader_b, name, size, step)
    for x in _chunks(reader_a, name, size, step):
        y = next(chunks_b)  # (zip would hold the previous pair while reading the next)
        if not _same_bytes(x, y):
            tally.bit_identical = False
            if decodable:
                for first in range(0, x.size, _BLOCK):
                    _compare_chunk(code, x[first:first + _BLOCK], y[first:first + _BLOCK], tally)
        del x, y  # before the next chunks are read: one chunk from each side at a time
    if not decodable and not tally.bit_identical:
        return TensorValues(name, code, entry.shape, False, 0, 0, None, None)
    return TensorValues(name, code, entry.shape, tally.bit_identical, tally.mismatched,
                        tally.nan_mismatched, tally.max_abs, tally.max_rel)


# MARK: diff ---------------------------------------------------------------------


def _metadata_changes(a: Dict[str, str], b: Dict[str, str]) -> List[MetadataChange]:
    return [MetadataChange(key, a.get(key), b.get(key))
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def diff(a, b, *, prefix: str = "model", backend: str = "auto",
         storage_options: Optional[Dict[str, Any]] = None, all_metadata: bool = False,
         chunk_elements: int = CHUNK_ELEMENTS) -> DiffReport:
    """Compares checkpoint ``a`` with checkpoint ``b`` (see the module docstring).

    ``a`` and ``b`` are paths, URLs, or sharded checkpoints (a directory
    or an index file; ``prefix`` names the index in a directory).
    ``backend`` and ``storage_options`` are passed to ``safe_open``.
    Bookkeeping metadata (:data:`BOOKKEEPING_METADATA`) is ignored unless
    ``all_metadata``. Raises what opening or reading a side raises.
    """
    if not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements must be a positive int, not {chunk_elements!r}")
    a, b = _as_source(a), _as_source(b)  # both checked before either is opened
    options = dict(prefix=prefix, backend=backend, storage_options=storage_options,
                   all_metadata=all_metadata)
    side_a = _Side(a, **options)
    try:
        side_b = _Side(b, **options)
        try:
            return _compare(side_a, side_b, chunk_elements)
        finally:
            side_b.close()
    finally:
        side_a.close()


def _compare(side_a: _Side, side_b: _Side, step: int) -> DiffReport:
    readers_a, readers_b = side_a.readers, side_b.readers
    changed, tensors = [], []
    for name, reader_a in readers_a.items():  # A's order: A is read sequentially
        if name not in readers_b:
            continue
        entry_a, entry_b = side_a.entry(name), side_b.entry(name)
        if entry_a != entry_b:
            changed.append(TensorChange(name, entry_a, entry_b))
        else:
            tensors.append(_compare_tensor(name, entry_a, reader_a, readers_b[name], step))
    return DiffReport(
        side_a.label, side_b.label,
        only_in_a=[side_a.entry(n) for n in sorted(readers_a) if n not in readers_b],
        only_in_b=[side_b.entry(n) for n in sorted(readers_b) if n not in readers_a],
        changed=sorted(changed, key=lambda c: c.name),
        tensors=sorted(tensors, key=lambda t: t.name),
        metadata=_metadata_changes(side_a.metadata, side_b.metadata))
