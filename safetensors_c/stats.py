"""Per-tensor statistics of a checkpoint: ``safetensors_c.stats(source)``.

For each tensor: min, max, mean, std and the counts of NaNs, infinities and
zeros, computed by the C core without the GIL, large tensors split over a few
threads. Every dtype of the format is measured as the values it encodes
(BF16, every F8, the packed F4/F6; integers and BOOL, where ``nan`` and
``inf`` are 0; C64 by the modulus of each element).

The rules, which are those of NumPy's nan-aware functions on the decoded
values (``np.nanmin``, ``np.nanmax``; mean and population std over the
finite values):

- ``min`` and ``max`` leave out NaNs but take infinities into account;
- ``mean`` and ``std`` (ddof=0) are over the finite values: infinities are
  counted in ``inf`` and left out, as NaNs are;
- ``zeros`` counts values equal to zero, -0.0 included (False for BOOL);
- a value that is undefined is ``None``: min and max of an empty or all-NaN
  tensor, mean and std of a tensor with no finite value;
- sums are in double precision, blocks combined with Chan's parallel
  formula; the result does not depend on the number of threads.

Sources: whatever ``safe_open`` accepts (a path, a URL, an open binary file)
or an open ``safe_open`` or ``safe_open_sharded`` handle, and a sharded checkpoint (its
directory or its index file). A mapped file is measured in place; any other
source is read tensor by tensor in pieces of at most 64 MiB, so memory stays
bounded whatever the tensor's size.

In a notebook the returned :class:`StatsReport` shows as a table; with
``histogram=16`` (bins) each row carries a small histogram of the finite
values. The view of a ``safe_open`` handle never reads tensor data itself:
call ``safetensors_c.stats(f, histogram=16)`` to see it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from . import _core, _display
from ._dtypes import PACKED_BITS
from ._open import safe_open
from ._reader import SourceReader, as_source, open_source
from .sharded import INDEX_SUFFIX, safe_open_sharded, wants_progress

__all__ = ["TensorStats", "StatsReport", "stats"]

# Bytes read at once from a source that is not mapped (a multiple of 3, for F6).
PIECE_BYTES = 64 * 3 << 18  # 48 MiB

_INTEGER_CODES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})
_MAX_BINS = 4096


@dataclass(frozen=True)
class TensorStats:
    """The statistics of one tensor. ``None`` where a value is undefined."""

    dtype: str
    shape: Tuple[int, ...]
    min: Optional[float]
    max: Optional[float]
    mean: Optional[float]
    std: Optional[float]
    nan: int
    inf: int
    zeros: int
    #: counts of the finite values in equal bins over ``histogram_range``, or None
    histogram: Optional[Tuple[int, ...]] = None
    histogram_range: Optional[Tuple[float, float]] = None

    def to_json(self) -> Dict[str, Any]:
        """The JSON form: keys min, max, mean, std, nan, inf, zeros. Strict JSON
        has no infinity: an infinite min or max is the string "inf" or "-inf"."""
        return {
            "min": _json_number(self.min),
            "max": _json_number(self.max),
            "mean": self.mean,
            "std": self.std,
            "nan": self.nan,
            "inf": self.inf,
            "zeros": self.zeros,
        }


def _json_number(value: Optional[float]) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


class StatsReport(dict):
    """A dict of tensor name -> :class:`TensorStats`, in file order, that shows
    as a table in a notebook (with a histogram per tensor when computed)."""

    def __init__(self, source_name: str, items) -> None:
        super().__init__(items)
        self.source_name = source_name

    def to_json(self) -> Dict[str, Dict[str, Any]]:
        return {name: s.to_json() for name, s in self.items()}

    def _repr_html_(self) -> str:
        return _display.stats_html(self)


# MARK: measuring bytes ---------------------------------------------------------


def _merge(total: Optional[tuple], part: tuple) -> tuple:
    return part if total is None else _core.stats_merge(total, part)


def _pieces(file, name: str) -> Iterator[Any]:
    """The tensor's bytes, as one view of a mapping or as pieces of at most
    PIECE_BYTES (whole values each: PIECE_BYTES is a multiple of every group)."""
    if isinstance(file, SourceReader):
        begin, end = file.info(name)[3:5]
        for at in range(begin, end, PIECE_BYTES):
            yield file._ranges([(at, min(PIECE_BYTES, end - at))])[0]
        return
    if isinstance(file, _core._File) and not file.mapped and file.filename is not None:
        begin, end = file.info(name)[3:5]
        buffer = bytearray(min(PIECE_BYTES, end - begin))
        for at in range(0, end - begin, PIECE_BYTES):
            piece = memoryview(buffer)[: min(PIECE_BYTES, end - begin - at)]
            file.read_into(name, piece, at)
            yield piece
        return
    # mapped files and images: one view, never handed out; other readers
    # (a digest-verifying one) hand out the whole, checked tensor
    array = file.peek(name) if isinstance(file, _core._File) else file.tensor(name)
    yield np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _histogram_range(raw: tuple) -> Optional[Tuple[float, float]]:
    """[min, max] of the finite values; mean +- 4 std when an infinity makes
    min or max infinite (finite values beyond are then not drawn)."""
    count, nan, inf, zeros, finite, lo, hi, mean, m2 = raw
    if finite == 0:
        return None
    if math.isinf(lo) or math.isinf(hi):
        spread = 4 * math.sqrt(m2 / finite)
        lo = mean - spread if math.isinf(lo) else lo
        hi = mean + spread if math.isinf(hi) else hi
    return (lo, hi) if lo <= hi else (hi, hi)


def _measure(file, name: str, threads: int, bins: int, done) -> TensorStats:
    code, shape, _np_shape, begin, end = file.info(name)
    raw = None
    for piece in _pieces(file, name):
        raw = _merge(raw, _core.stats(code, piece, threads))
        done(len(piece))
    if raw is None:  # an empty tensor
        raw = _core.stats(code, b"", threads)
    histogram = span = None
    if bins and (span := _histogram_range(raw)) is not None:
        counts = [0] * bins
        for piece in _pieces(file, name):
            part = _core.histogram(code, piece, span[0], span[1], bins, threads)
            counts = [a + b for a, b in zip(counts, part)]
        histogram = tuple(counts)
    return _to_stats(code, tuple(shape), raw, histogram, span)


def _to_stats(code: str, shape: tuple, raw: tuple, histogram, span) -> TensorStats:
    count, nan, inf, zeros, finite, lo, hi, mean, m2 = raw
    defined = count > nan
    if code in _INTEGER_CODES and defined:
        lo, hi = int(lo), int(hi)
    return TensorStats(
        dtype=code,
        shape=shape,
        min=lo if defined else None,
        max=hi if defined else None,
        mean=mean if finite else None,
        std=math.sqrt(m2 / finite) if finite else None,
        nan=nan,
        inf=inf,
        zeros=zeros,
        histogram=histogram,
        histogram_range=span,
    )


# MARK: sources -----------------------------------------------------------------


def _readers(source: Any, max_header_size, storage_options) -> Iterator[Tuple[Any, list]]:
    """(reader, tensor names) pairs: one for a file, one per shard of a checkpoint."""
    if isinstance(source, safe_open):
        file = source.reader
        yield file, file.offset_keys()
        return
    if isinstance(source, safe_open_sharded):
        yield from _shard_readers(source)
        return
    if isinstance(source, (str, os.PathLike)) and not isinstance(source, bytes):
        path = os.fspath(source)
        if os.path.isdir(path) or path.endswith(INDEX_SUFFIX):
            with safe_open_sharded(path, storage_options=storage_options) as handle:
                yield from _shard_readers(handle)
            return
    file = open_source(as_source(source), max_header_size=max_header_size,
                       storage_options=storage_options)
    yield file, file.offset_keys()


def _shard_readers(handle: safe_open_sharded) -> Iterator[Tuple[Any, list]]:
    names_by_file: Dict[str, list] = {}
    for name, file in handle.weight_map.items():
        names_by_file.setdefault(file, []).append(name)
    for file, opened in handle.shards.items():
        shard = opened.reader
        order = {n: i for i, n in enumerate(shard.offset_keys())}
        yield shard, sorted(names_by_file[file], key=order.__getitem__)


def _source_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else f"<{type(source).__name__}>"


def _progress(total: int, progress: Optional[bool]):
    """A tqdm bar over bytes when wanted (see sharded.wants_progress), or None."""
    if not wants_progress(progress, total):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="stats",
                file=sys.stderr, leave=False)


def stats(
    source: Any,
    *,
    threads: int = 0,
    histogram: int = 0,
    progress: Optional[bool] = None,
    max_header_size: Optional[int] = None,
    storage_options: Optional[Dict[str, Any]] = None,
) -> StatsReport:
    """The statistics of every tensor of ``source``, by name, in file order
    (shard by shard for a sharded checkpoint). See the module docstring for
    the rules.

    ``threads``: the most threads per tensor (0: one per processor, at most
    16). ``histogram``: a number of bins (0, the default, computes none; each
    costs a second pass over the data). ``progress``: a bar on stderr; None
    shows one only when stderr is a terminal and there are 64 MiB or more.
    """
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads must be an int >= 0, not {threads!r}")
    if not isinstance(histogram, int) or isinstance(histogram, bool) or not (
        0 <= histogram <= _MAX_BINS
    ):
        raise ValueError(f"histogram must be a number of bins from 0 to {_MAX_BINS}, "
                         f"not {histogram!r}")
    # Every shard's header is read before any data, so the bar knows its total.
    readers = list(_readers(source, max_header_size, storage_options))
    total = sum(file.info(n)[4] - file.info(n)[3] for file, names in readers for n in names)
    bar = _progress(total, progress)
    update = bar.update if bar is not None else _ignore
    items = []
    try:
        for file, names in readers:
            for name in names:
                items.append((name, _measure(file, name, threads, histogram, update)))
    finally:
        if bar is not None:
            bar.close()
    return StatsReport(_source_name(source), items)


def _ignore(n: int) -> None:
    pass
