"""The framework-neutral reader: open a source, hand out NumPy arrays.

:func:`open_source` turns any source into a *reader* that hands out
NumPy arrays. A source is a path (mapped or read with pread by the C core),
a file image in memory, an open binary file object, or a *byte source* (any
object with ``name``, ``size`` and ``read_at(offset, length)``; optionally
``read_ranges([(offset, length), ...])``, which remote storage uses to
coalesce and parallelise). Every source is validated by the C core, fully,
before a single tensor byte is read.

Readers speak one currency: NumPy arrays whose dtype is
``_dtypes.numpy_dtype(code)`` (a :class:`~safetensors_c.PackedArray` for F4
and F6). Framework adapters turn those into their own arrays; nothing here
knows a framework.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core, _display, _dtypes, _remote, error_codes
from ._checks import check_backend, error
from ._core import SafetensorError

__all__ = ["SliceIndexError", "TensorSlice", "as_source", "open_source"]


class SliceIndexError(SafetensorError, IndexError):
    """An index out of a tensor's bounds in ``get_slice``: both a
    SafetensorError and an IndexError, so code catching either works. Its
    ``code`` is ``"STC_ERR_INDEX_OUT_OF_BOUNDS"``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.code = error_codes.INDEX_OUT_OF_BOUNDS


def open_source(
    source: Any,
    *,
    backend: str = "auto",
    max_header_size: Optional[int] = None,
    storage_options: Optional[Dict[str, Any]] = None,
):
    """A validated reader for ``source`` (see the module docstring)."""
    backend = check_backend(backend)
    max_header = max_header_size or 0
    if isinstance(source, str) and _remote.is_url(source):
        return SourceReader(_remote.open_url(source, storage_options), max_header)
    if storage_options is not None:
        raise TypeError("storage_options applies only to URLs (e.g. 'https://...', 's3://...')")
    if isinstance(source, (str, os.PathLike)):
        return _core.open(os.fspath(source), backend, max_header)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _core.open_buffer(source, max_header)
    if _is_byte_source(source):
        return SourceReader(source, max_header)
    if hasattr(source, "read") and hasattr(source, "seek"):
        return open_file_object(source, backend=backend, max_header_size=max_header_size)
    raise TypeError(
        "expected a path (str or os.PathLike), a URL, bytes, or an open binary file, "
        f"not {type(source).__name__}"
    )


def as_source(filename: Any) -> Any:
    """A ``filename`` argument as a source: a bytes path is decoded (use
    ``load()`` for a file's bytes); anything but a path, a URL or a binary
    file object is a TypeError."""
    if isinstance(filename, bytes):
        return os.fsdecode(filename)
    if isinstance(filename, (str, os.PathLike)) or _is_byte_source(filename) or (
        hasattr(filename, "read") and hasattr(filename, "seek")
    ):
        return filename
    raise TypeError(
        f"filename must be a str, os.PathLike or binary file object, not {type(filename).__name__}"
    )


def open_file_object(file: Any, *, backend: str = "auto", max_header_size: Optional[int] = None):
    """A reader for an open binary file object.

    One backed by a real file descriptor is opened through it (mapped or read
    with pread, never moving its position); any other (``io.BytesIO``, an
    fsspec file, ...) is read through ``seek``/``read``: the header, then
    only the bytes of the tensors asked for.
    """
    backend = check_backend(backend)
    if _remote.is_fsspec_file(file):
        # Read by ranges through its file system, not through its read-ahead buffer.
        return SourceReader(_remote.open_fsspec_file(file), max_header_size or 0)
    name = _name_of(file)
    fd = _fileno(file)
    if fd is not None:
        return _core.open_fd(fd, backend, max_header_size or 0, name or f"<file descriptor {fd}>")
    return SourceReader(FileObjectSource(file, name), max_header_size or 0)


def _name_of(file: Any) -> Optional[str]:
    name = getattr(file, "name", None)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if isinstance(name, str):
        return name
    path = getattr(file, "path", None)  # fsspec files
    return path if isinstance(path, str) else None


def _fileno(file: Any) -> Optional[int]:
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _is_byte_source(source: Any) -> bool:
    return hasattr(source, "read_at") and hasattr(source, "size")


# MARK: sources read through Python ----------------------------------------


class FileObjectSource:
    """A byte source over a seekable binary file object (``seek``/``read``)."""

    def __init__(self, file: Any, name: Optional[str] = None) -> None:
        if not getattr(file, "seekable", lambda: True)():
            raise error("the file object must be seekable to read a safetensors file")
        self._file = file
        self._lock = threading.Lock()
        self.name = name or f"<{type(file).__name__}>"
        with self._lock:
            self.size = int(file.seek(0, io.SEEK_END))

    def read_at(self, offset: int, length: int) -> bytes:
        with self._lock:
            self._file.seek(offset)
            chunks = []
            left = length
            while left > 0:
                chunk = self._file.read(left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        data = b"".join(chunks)
        if len(data) != length:
            raise error(
                f"{self.name}: the file ended after {len(data)} of the {length} bytes at "
                f"offset {offset} (it is shorter than when it was opened)",
                error_codes.FILE_CHANGED,
            )
        return data


class SourceReader:
    """A reader over a byte source: the header is validated by the C core;
    tensor bytes are read from the source when asked for, into memory of
    their own (writable arrays)."""

    mapped = False
    writable = True

    def __init__(self, source: Any, max_header_size: int = 0) -> None:
        self.source = source
        name = getattr(source, "name", None)
        self.filename = name if isinstance(name, str) else f"<{type(source).__name__}>"
        size = int(source.size)
        head = bytes(source.read_at(0, min(size, _remote.DEFAULT_PREFETCH)))
        header_len = _core.header_length(head[:64], size, max_header_size, self.filename)
        need = 8 + header_len
        if need > len(head):
            head += bytes(source.read_at(len(head), need - len(head)))
        self._file = _core.open_header(head[:need], size, max_header_size, self.filename)
        self.data_start = self._file.data_start
        self.file_size = self._file.file_size

    # the header
    def keys(self) -> List[str]:
        return self._file.keys()

    def offset_keys(self) -> List[str]:
        return self._file.offset_keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        return self._file.metadata()

    def info(self, name: str) -> tuple:
        return self._file.info(name)

    def __contains__(self, name: object) -> bool:
        return name in self._file

    def __len__(self) -> int:
        return len(self._file)

    # the data
    def _ranges(self, ranges: Sequence[Tuple[int, int]]) -> List[Any]:
        """The bytes of each (offset in the data section, length) range."""
        absolute = [(self.data_start + begin, length) for begin, length in ranges]
        read_ranges = getattr(self.source, "read_ranges", None)
        if read_ranges is not None:
            chunks = list(read_ranges(absolute))
        else:
            chunks = [self.source.read_at(offset, length) for offset, length in absolute]
        for (offset, length), chunk in zip(absolute, chunks):
            if len(chunk) != length:
                raise error(
                    f"{self.filename}: got {len(chunk)} bytes instead of {length} at offset "
                    f"{offset}",
                    error_codes.FILE_CHANGED,
                )
        return chunks

    @staticmethod
    def _array(info: tuple, raw: Any) -> np.ndarray:
        """The array of a tensor (its ``info`` tuple) over its bytes, in
        writable memory of its own."""
        data = raw if isinstance(raw, bytearray) else bytearray(raw)
        return _dtypes.array_from_bytes(info[0], info[1], data)

    def tensor(self, name: str) -> np.ndarray:
        info = self._file.info(name)
        begin, end = info[3:5]
        return self._array(info, self._ranges([(begin, end - begin)])[0])

    def tensors(self) -> Dict[str, np.ndarray]:
        names = self._file.offset_keys()
        infos = [self._file.info(name) for name in names]
        chunks = self._ranges([(info[3], info[4] - info[3]) for info in infos])
        return {name: self._array(info, chunk) for name, info, chunk in zip(names, infos, chunks)}

    def read_view(self, name: str, offset: int, shape: tuple, strides: tuple) -> np.ndarray:
        """A strided view of one tensor (byte offset and strides relative to
        it), read range by range: nearby runs share a read, and the bytes in
        memory at once stay a small multiple of the result (see _gather)."""
        code, _, _, begin, end = self._file.info(name)
        dtype = _dtypes.numpy_dtype(code)
        view = _strided_view(offset, shape, strides, dtype.itemsize, end - begin)
        if view is None:  # nothing selected
            return np.empty(shape, dtype=dtype)
        if not view.dims:  # one contiguous run: its bytes are the result
            chunk = self._ranges([(begin + view.src_offset, view.run)])[0]
            data = chunk if isinstance(chunk, bytearray) else bytearray(chunk)
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        out = np.empty(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, dtype=np.uint8)
        budget = max(_BATCH_MIN, out.nbytes // 4)
        _gather(view, out, budget, lambda ranges: self._ranges([(begin + o, n) for o, n in ranges]))
        return out.view(dtype).reshape(shape)


# MARK: strided reads --------------------------------------------------------
#
# A strided view is gathered without a list of its runs: the view is cut into
# *units*, equal sub-views each read as one byte range, whose starts are
# computed a window at a time as int64 arrays. Units close together share a
# read; the reads of one step cover at most about `budget` bytes of the
# tensor, so the source bytes held at once stay bounded whatever the number
# of runs; units are copied into the result with one strided NumPy copy a step.

_GAP = 4096  # runs at most this far apart are read as one range
_BATCH_MIN = 8 << 20  # the least span of tensor bytes fetched in one step
_WINDOW = 1 << 16  # unit starts computed at once


class _View:
    """A strided view in bytes: ``dims`` are (count, source stride, result
    stride) with positive source strides, outermost first, and the
    innermost ``run`` bytes are contiguous in both."""

    __slots__ = ("src_offset", "dst_offset", "dims", "run")

    def __init__(self, src_offset: int, dst_offset: int, dims: list, run: int) -> None:
        self.src_offset = src_offset
        self.dst_offset = dst_offset
        self.dims = dims
        self.run = run

    def extent(self, level: int) -> int:
        """Bytes from the first to the last byte of a sub-view over dims[level:]."""
        return sum(s * (n - 1) for n, s, _ in self.dims[level:]) + self.run


def _strided_view(offset: int, shape: tuple, strides: tuple, itemsize: int, limit: int):
    """The byte layout of a view of a C-contiguous result (None when the
    view selects nothing); raises if the view leaves [0, limit)."""
    if any(int(n) == 0 for n in shape):
        return None
    result_strides = []
    step = itemsize
    for n in reversed(shape):
        result_strides.append(step)
        step *= int(n)
    result_strides.reverse()
    dims = [
        [int(n), int(s), d] for n, s, d in zip(shape, strides, result_strides) if int(n) != 1
    ]
    run = itemsize
    while dims and dims[-1][1] == run:
        run *= dims[-1][0]
        dims.pop()
    src, dst = int(offset), 0
    for dim in dims:  # read every dimension forwards; write it backwards
        n, s, d = dim
        if s < 0:
            src += s * (n - 1)
            dst += d * (n - 1)
            dim[1], dim[2] = -s, -d
    view = _View(src, dst, [tuple(dim) for dim in dims], run)
    if src < 0 or src + view.extent(0) > limit:
        raise error("strided view is outside the tensor")
    return view


def _gather(view: _View, out: np.ndarray, budget: int, fetch) -> None:
    """Fills ``out`` (uint8, the result's bytes) with the view's bytes, read
    through ``fetch([(offset, length), ...]) -> [bytes-like, ...]``."""
    dims = view.dims
    nested = all(s >= view.extent(i + 1) for i, (_, s, _) in enumerate(dims))
    if not nested:
        # Overlapping or interleaved dimensions (no view of a slice is):
        # read the whole span once.
        _gather_units(view, 0, out, budget, fetch)
        return
    # The unit: the largest sub-view dims[level:] whose runs are all close.
    level = 0
    for i, (_, s, _) in enumerate(dims):
        if s - view.extent(i + 1) > _GAP:
            level = i + 1
    if view.extent(level) > budget:
        # Too long to read at once: cut one dimension into blocks that fit.
        level += 1
        while level <= len(dims) and view.extent(level) > budget:
            level += 1
        if level > len(dims):  # every run alone is longer than the budget
            _gather_units(view, len(dims), out, budget, fetch)
            return
        n, s, d = dims[level - 1]
        block = (budget - view.extent(level)) // s + 1
        head, tail = dims[: level - 1], dims[level:]
        whole = n // block
        _gather_units(
            _View(view.src_offset, view.dst_offset,
                  head + [(whole, s * block, d * block), (block, s, d)] + tail, view.run),
            level, out, budget, fetch,
        )
        if n % block:
            _gather_units(
                _View(view.src_offset + whole * block * s, view.dst_offset + whole * block * d,
                      head + [(n % block, s, d)] + tail, view.run),
                level - 1, out, budget, fetch,
            )
        return
    _gather_units(view, level, out, budget, fetch)


def _gather_units(view: _View, level: int, out: np.ndarray, budget: int, fetch) -> None:
    """Gathers ``view`` unit by unit, a unit being the sub-view over
    ``dims[level:]`` (read as one range); units are taken in C order, whose
    starts must increase (or there is a single unit)."""
    outer = [(1, 0, 0)] + view.dims[:level]  # a leading axis: there is always one unit
    inner = view.dims[level:]
    unit = view.extent(level)
    # Copy in the widest words every offset and stride allows.
    sizes = [view.src_offset, view.dst_offset, view.run]
    sizes += [x for _, s, d in view.dims for x in (s, d)]
    width = next(w for w in (8, 4, 2, 1) if all(x % w == 0 for x in sizes))
    word = np.dtype(f"u{width}")
    count = int(np.prod([n for n, _, _ in outer], dtype=np.int64))
    outer_shape = tuple(n for n, _, _ in outer)
    inner_shape = tuple(n for n, _, _ in inner) + (view.run // width,)
    inner_strides = tuple(s for _, s, _ in inner) + (width,)
    destination = np.lib.stride_tricks.as_strided(
        out[view.dst_offset:].view(word),
        shape=outer_shape + inner_shape,
        strides=tuple(d for _, _, d in outer) + tuple(d for _, _, d in inner) + (width,),
    )
    for first in range(0, count, _WINDOW):
        index = np.arange(first, min(count, first + _WINDOW), dtype=np.int64)
        starts = np.full(len(index), view.src_offset, dtype=np.int64)
        rest = index.copy()
        for n, s, _ in reversed(outer):
            starts += (rest % n) * s
            rest //= n
        # Steps: the units starting within one budget of the step's first.
        step_of = (starts - starts[0]) // budget
        cuts = np.flatnonzero(np.diff(step_of)) + 1
        bounds = np.concatenate(([0], cuts, [len(starts)])).tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            places = np.unravel_index(index[a:b], outer_shape)
            _gather_step(starts[a:b], unit, word, inner_shape, inner_strides, destination, places,
                         fetch)


def _gather_step(starts, unit, word, inner_shape, inner_strides, destination, places, fetch):
    """Reads the units starting at ``starts`` (increasing) with one fetch of
    coalesced ranges and copies them to ``destination[places]``."""
    owner, lows, highs = _remote.coalesce(starts, starts + unit, _GAP)
    ranges = [(lo, hi - lo) for lo, hi in zip(lows.tolist(), highs.tolist())]
    chunks = [np.frombuffer(chunk, dtype=word) for chunk in fetch(ranges)]
    if len(starts) == 1:
        packed = chunks[0][np.newaxis]
    else:
        width = word.itemsize
        packed = np.empty((len(starts), unit // width), dtype=word)
        for j, (start, k) in enumerate(zip(starts.tolist(), owner.tolist())):
            at = (start - ranges[k][0]) // width
            packed[j] = chunks[k][at:at + unit // width]
    source = np.lib.stride_tricks.as_strided(
        packed, shape=(len(starts),) + inner_shape,
        strides=(packed.strides[0],) + inner_strides, writeable=False,
    )
    destination[places] = source


# MARK: slices ---------------------------------------------------------------


def _is_basic_index(item: Any) -> bool:
    """True for the index items NumPy resolves to a view without reading data.

    Only plain integers qualify as integers: NumPy treats arrays (even 0-d
    ones) and booleans as advanced indices, which copy."""
    if item is None or item is Ellipsis or isinstance(item, slice):
        return True
    return isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))


class TensorSlice:
    """One tensor of an open file, read lazily through indexing.

    ``f.get_slice(name)[index]`` gives the same values, shape and errors as
    ``f.get_tensor(name)[index]`` for any NumPy index (an index out of
    bounds raises :class:`SliceIndexError`, an IndexError). With a mapped
    file the result is a zero-copy view; otherwise only the bytes the index
    selects are read (one read per contiguous run).
    """

    __slots__ = ("_file", "_name", "_code", "_shape", "_numpy_shape", "_begin", "_end")

    def __init__(self, file, name: str, info: tuple) -> None:
        self._file = file
        self._name = name
        self._code, self._shape, self._numpy_shape, self._begin, self._end = info

    def get_shape(self) -> List[int]:
        """The logical shape (for F4/F6, in values, not bytes)."""
        return list(self._shape)

    def get_dtype(self) -> str:
        """The format's dtype code, e.g. ``"F32"``."""
        return self._code

    @property
    def name(self) -> str:
        """The tensor's name in the file."""
        return self._name

    @property
    def nbytes(self) -> int:
        """The tensor's size in the file, in bytes."""
        return self._end - self._begin

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return self._index(index)
        except IndexError as exc:
            if isinstance(exc, SliceIndexError):
                raise
            raise SliceIndexError(
                f"tensor {self._name!r} of shape {list(self._numpy_shape)}: {exc}"
            ) from None

    def _index(self, index: Any) -> np.ndarray:
        file = self._file
        if file.mapped or file.filename is None:  # mapped, or an image in memory
            return file.tensor(self._name)[index]
        items = index if isinstance(index, tuple) else (index,)
        if not all(_is_basic_index(item) for item in items):
            # Advanced indexing selects arbitrary elements: read the tensor.
            return file.tensor(self._name)[index]
        return self._read_basic(file, items)

    def _read_basic(self, file, items: tuple) -> np.ndarray:
        dtype = _dtypes.numpy_dtype(self._code)
        shape = self._numpy_shape
        strides = []
        step = dtype.itemsize
        for d in reversed(shape):
            strides.append(step)
            step *= d
        strides.reverse()
        # A stand-in with the tensor's real shape and strides over a single
        # element: NumPy computes the view (and raises the same errors as on
        # the real array) without touching memory; the view's offset and
        # strides then say which bytes to read.
        # (An unsigned stand-in of the same width: as_strided cannot rebuild
        # some ml_dtypes types from their array interface, e.g. float8_e5m2.)
        anchor = np.zeros(1, dtype=np.dtype(f"u{dtype.itemsize}"))
        stand_in = np.lib.stride_tricks.as_strided(
            anchor, shape=shape, strides=tuple(strides), writeable=False
        )
        has_ellipsis = any(item is Ellipsis for item in items)
        view = stand_in[items if has_ellipsis else items + (Ellipsis,)]
        if view.size == 0:
            result = np.empty(view.shape, dtype=dtype)
        else:
            offset = view.__array_interface__["data"][0] - anchor.__array_interface__["data"][0]
            result = file.read_view(self._name, offset, view.shape, view.strides)
        if not has_ellipsis and view.ndim == 0:
            return result[()]
        if self._code in _dtypes.PACKED_BITS:
            # Match what indexing the mapped PackedArray gives.
            return _dtypes._view_packed(result, self._code)
        return result

    def __repr__(self) -> str:
        return f"<safetensors_c.TensorSlice {self._name!r}: {self._code} {list(self._shape)}>"

    def _repr_html_(self) -> str:
        return _display.slice_html(self)
