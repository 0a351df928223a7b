"""Reading tensors straight into memory the caller already owns.

:func:`load_into` takes a
reader (see :mod:`safetensors_c._reader`) and a mapping of tensor name ->
destination, checks every destination against the file first (name,
dtype, shape, size, writability: any mismatch raises before a single byte
is written), then fills them all in one call of the C core
(``read_batch``), which runs every copy on its own threads without the GIL:
many small tensors are taken together, large ones are cut into chunks so
that one big tensor still keeps every thread busy. Each copy is a memcpy
from the mapping (mmap backend) or a pread into the destination (pread
backend), optionally with O_DIRECT for the aligned middle of each chunk,
and with ``drop_cache`` the copied pages leave the page cache. Byte sources
(URLs, file objects without a descriptor) are read tensor by tensor on a
bounded pool of Python threads instead.

A destination is a writable, C-contiguous NumPy array whose dtype and shape
are the tensor's, or a :class:`Destination` naming the expected dtype code
and logical shape explicitly next to any writable buffer (framework
adapters pass the raw bytes of their own tensors this way).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _dtypes, error_codes
from ._checks import error

__all__ = [
    "Destination",
    "check_destinations",
    "check_workers",
    "copy_batch",
    "default_workers",
    "fill",
    "load_into",
    "open_direct",
    "run_parallel",
]

# A chunk is the unit of work of one thread. Large enough that the per-call
# overhead (a Python call, a GIL round trip) vanishes next to the copy;
# small enough that a few big tensors split evenly over the workers.
MIN_CHUNK = 1 << 20
MAX_CHUNK = 64 << 20
# Chunk boundaries fall on multiples of this in the file (pages, and the
# usual O_DIRECT block size).
_BLOCK = 4096


class Destination(NamedTuple):
    """Where one tensor goes: ``buffer`` (any writable, C-contiguous buffer
    of exactly the tensor's byte size) and what the caller expects the file
    to hold there: a dtype ``code`` such as ``"F32"`` and a logical
    ``shape`` (``None`` for either skips that check)."""

    buffer: Any
    code: Optional[str] = None
    shape: Optional[Tuple[int, ...]] = None


def default_workers() -> int:
    """The default size of the thread pool: the number of CPUs."""
    return os.cpu_count() or 1


class _Target(NamedTuple):
    name: str
    view: np.ndarray  # the destination's bytes, uint8, 1-d
    begin: int  # offset of the tensor in the data section
    nbytes: int
    address: int  # of the view's first byte


def _byte_view(name: str, buffer: Any) -> np.ndarray:
    """The destination's bytes as a writable 1-d uint8 array (no copy)."""
    if isinstance(buffer, np.ndarray):
        array = buffer
    else:
        try:
            array = np.frombuffer(memoryview(buffer).cast("B"), dtype=np.uint8)
        except TypeError as exc:
            if "C-contiguous" in str(exc) or "contiguous" in str(exc):
                raise ValueError(f"the destination for {name!r} is not C-contiguous") from None
            raise TypeError(
                f"the destination for {name!r} must be a NumPy array or a writable buffer, "
                f"not {type(buffer).__name__}"
            ) from None
    if not array.flags.c_contiguous:
        raise ValueError(f"the destination for {name!r} is not C-contiguous")
    if not array.flags.writeable:
        raise ValueError(f"the destination for {name!r} is read-only")
    return array.reshape(-1).view(np.uint8)


def _expected(name: str, value: Any) -> Tuple[Any, Optional[str], Optional[Tuple[int, ...]]]:
    if isinstance(value, Destination):
        shape = None if value.shape is None else tuple(int(d) for d in value.shape)
        return value.buffer, value.code, shape
    if isinstance(value, _dtypes.PackedArray):
        return value, value.format_dtype, tuple(value.logical_shape)
    if isinstance(value, np.ndarray):
        code = _dtypes.code_for_dtype(value.dtype)
        if code is None:
            raise TypeError(
                f"the destination for {name!r} has dtype {value.dtype}, which no safetensors "
                "dtype matches"
            )
        return value, code, tuple(value.shape)
    raise TypeError(
        f"the destination for {name!r} must be a NumPy array or a Destination, "
        f"not {type(value).__name__}"
    )


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _where(filename: Any) -> str:
    """"path: " for messages: the path as it is when printable, else its
    repr (the C core's rule: a file name may hold control characters)."""
    if not filename:
        return ""
    text = os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else filename
    if isinstance(text, str) and text.isprintable():
        return f"{text}: "
    return f"{text!r}: "


def check_destinations(reader: Any, destinations: Mapping[str, Any]) -> List[_Target]:
    """Checks every destination against the file and returns the work, in
    file order. Raises (SafetensorError for a name the file lacks or a dtype
    or shape that differs; ValueError/TypeError for an unusable buffer)
    before anything is written."""
    prefix = _where(getattr(reader, "filename", None))
    targets: List[_Target] = []
    for name, value in destinations.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names are str, not {type(name).__name__}")
        if name not in reader:
            raise error(f"{prefix}no tensor named {name!r} in this file",
                        error_codes.NO_SUCH_TENSOR)
        code, shape, _, begin, end = reader.info(name)
        buffer, want_code, want_shape = _expected(name, value)
        if want_code is not None and want_code != code:
            raise error(
                f"{prefix}tensor {name!r}: the file holds {code}, the destination expects "
                f"{want_code}",
                error_codes.DTYPE_MISMATCH,
            )
        if want_shape is not None and tuple(want_shape) != tuple(shape):
            raise error(
                f"{prefix}tensor {name!r}: the file's shape is {_fmt_shape(shape)}, the "
                f"destination's is {_fmt_shape(want_shape)}",
                error_codes.SHAPE_MISMATCH,
            )
        view = _byte_view(name, buffer)
        if view.nbytes != end - begin:
            raise error(
                f"{prefix}tensor {name!r} holds {end - begin} bytes; its destination has "
                f"{view.nbytes}",
                error_codes.SIZE_MISMATCH,
            )
        targets.append(_Target(name, view, begin, end - begin, view.ctypes.data))
    _check_disjoint(targets)
    targets.sort(key=lambda t: t.begin)
    return targets


def _check_disjoint(targets: Sequence[_Target]) -> None:
    """Two destinations sharing memory would race (and one would lose)."""
    spans = sorted((t.address, t.address + t.nbytes, t.name) for t in targets if t.nbytes)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(
                f"the destinations for {first!r} and {second!r} share memory; give each "
                "tensor its own"
            )


def _chunks(targets: Sequence[_Target], data_start: int, workers: int,
            chunk_size: Optional[int]) -> List[Tuple[_Target, int, int]]:
    """(target, byte offset in the tensor, length) pieces, in file order."""
    total = sum(t.nbytes for t in targets)
    if chunk_size is None:
        # About four pieces per worker, so that uneven tensors balance out.
        chunk_size = min(MAX_CHUNK, max(MIN_CHUNK, total // max(1, 4 * workers)))
    chunk_size = max(_BLOCK, (int(chunk_size) // _BLOCK) * _BLOCK)
    pieces: List[Tuple[_Target, int, int]] = []
    for t in targets:
        if t.nbytes <= chunk_size:
            pieces.append((t, 0, t.nbytes))
            continue
        # Cut where the file offset is a multiple of the block size.
        start = 0
        first = chunk_size - (data_start + t.begin) % _BLOCK
        cut = first
        while cut < t.nbytes:
            pieces.append((t, start, cut - start))
            start = cut
            cut += chunk_size
        pieces.append((t, start, t.nbytes - start))
    return pieces


def open_direct(path: Any, reader: Any) -> Optional[int]:
    """A descriptor of ``path`` opened with O_DIRECT for ``reader`` (a pread
    reader of that path), or None where the system or file system has no
    O_DIRECT. The caller closes it. The file must be the one the reader
    opened: the C core compares device and inode on every read and refuses
    a descriptor of any other file (STC_ERR_FILE_CHANGED, before a byte is
    written), e.g. when the path was replaced after the reader opened it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or getattr(reader, "mapped", True):
        return None
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | flag | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    if os.fstat(fd).st_size != reader.file_size:
        os.close(fd)
        return None
    return fd


def _copy_from_source(reader: Any, target: _Target, offset: int, length: int) -> None:
    """Readers without read_into (byte sources): read the whole tensor
    through the reader and copy the asked-for range."""
    array = reader.tensor(target.name)
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    target.view[offset:offset + length] = raw[offset:offset + length]


def check_workers(max_workers: Optional[int]) -> int:
    """``max_workers`` checked (a positive int), or the default for None."""
    if max_workers is None:
        return default_workers()
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
    return max_workers


def load_into(
    reader: Any,
    destinations: Mapping[str, Any],
    *,
    max_workers: Optional[int] = None,
    chunk_size: Optional[int] = None,
    direct_fd: Optional[int] = None,
    drop_cache: bool = False,
) -> None:
    """Fills each destination with its tensor's bytes from ``reader``.

    Everything is checked before anything is written (see
    :func:`check_destinations`). ``max_workers`` bounds the thread pool
    (default: the number of CPUs; 1 copies in the calling thread);
    ``chunk_size`` is the largest piece one thread copies at a time (default:
    about a quarter of each worker's share, between 1 MiB and 64 MiB);
    ``direct_fd`` (from :func:`open_direct`) reads through O_DIRECT where
    the destination's address and the file offset allow it; ``drop_cache``
    drops each tensor's pages from the page cache once copied (see
    :func:`copy_batch`). If a read fails, the first error is raised once the
    running pieces have stopped; destinations may then hold part of the data.
    """
    targets = check_destinations(reader, destinations)
    fill(reader, targets, max_workers=check_workers(max_workers), chunk_size=chunk_size,
         direct_fd=direct_fd, drop_cache=drop_cache)


def fill(
    reader: Any,
    targets: Sequence[_Target],
    *,
    max_workers: int,
    chunk_size: Optional[int] = None,
    direct_fd: Optional[int] = None,
    drop_cache: bool = False,
) -> None:
    """The writing half of :func:`load_into`: copies the work that
    :func:`check_destinations` returned (callers that must know whether
    anything was written check first, then fill)."""
    if not targets:
        return
    if hasattr(reader, "read_batch"):
        copy_batch(reader, [t.name for t in targets], [t.address for t in targets],
                   [t.nbytes for t in targets], max_workers=max_workers,
                   chunk_size=chunk_size, direct_fd=direct_fd, drop_cache=drop_cache)
        return
    # A byte source: one read per tensor, copied into its destination.
    pieces = [(t, 0, t.nbytes) for t in targets]

    def run(piece: Tuple[_Target, int, int]) -> None:
        _copy_from_source(reader, *piece)

    workers = min(max_workers, len(pieces))
    if workers == 1:
        for piece in pieces:
            run(piece)
        return
    _run_parallel(run, pieces, workers)


def copy_batch(
    reader: Any,
    names: List[str],
    addresses: List[int],
    lengths: List[int],
    *,
    max_workers: int,
    chunk_size: Optional[int] = None,
    direct_fd: Optional[int] = None,
    drop_cache: bool = False,
) -> None:
    """Copies each whole tensor ``names[i]`` of ``reader`` (an opened file)
    to ``lengths[i]`` bytes at ``addresses[i]``, in one call of the core on
    up to ``max_workers`` threads without the GIL. The binding checks every
    destination before a byte moves (its size is the tensor's; it is
    writable memory of this process, apart from the others); the caller
    keeps the memory alive until this returns. ``drop_cache`` drops the
    copied pages from the page cache (for a mapped file the bytes are then
    read with pread, which leaves no page mapped)."""
    reader.read_batch(names, addresses, lengths, threads=max_workers,
                      chunk_size=0 if chunk_size is None else max(1, int(chunk_size)),
                      drop_cache=drop_cache, direct_fd=-1 if direct_fd is None else direct_fd)


def _run_parallel(run, pieces: Sequence[Any], workers: int) -> None:
    """Runs run(piece) for every piece on `workers` threads, in order of
    submission; stops handing out pieces after the first failure and raises
    it."""
    failed = threading.Event()

    def guarded(piece: Any) -> None:
        if not failed.is_set():
            try:
                run(piece)
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="safetensors_c") as pool:
        futures = [pool.submit(guarded, piece) for piece in pieces]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()


def run_parallel(run, items: Sequence[Any], max_workers: Optional[int] = None) -> List[Any]:
    """run(item) for every item on a bounded pool; results in item order.
    The first failure is raised (after the running items stop)."""
    max_workers = check_workers(max_workers)
    results: List[Any] = [None] * len(items)

    def one(index: int) -> None:
        results[index] = run(items[index])

    workers = min(max_workers, len(items))
    if workers <= 1:
        for index in range(len(items)):
            one(index)
    else:
        _run_parallel(one, list(range(len(items))), workers)
    return results
