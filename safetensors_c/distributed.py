"""Loading one checkpoint on many torch.distributed ranks, each reading ~1/N of it.

Floor 4 of the package. With N ranks, loading the usual way makes every rank
read every byte of the model from storage. Here the ranks share the work:

* Every rank opens each file and validates its header (the only bytes every
  rank reads).
* The bytes every rank needs in full (all of them, without a plan) are cut
  into N disjoint, contiguous ranges; each rank reads its own range from
  storage and the ranks exchange the ranges with broadcasts, so every rank
  ends with every byte.
* With a tensor-parallel ``plan`` (tensor name -> dimension), each rank
  keeps only its part of the planned tensors, ``get_slice`` style: along
  dimension ``d`` of size ``n``, rank ``r`` of ``N`` keeps indices
  ``[n * r // N, n * (r + 1) // N)``. When that part is contiguous in the
  file (``d`` is 0, or every dimension before ``d`` has size 1) the rank
  reads exactly those bytes and nothing is exchanged; otherwise each rank
  reads 1/N of the tensor's rows and an all-to-all hands every rank its
  columns.

Reads go through a descriptor with ``POSIX_FADV_RANDOM`` advice, so that the
kernel's read-ahead does not pull in the neighbouring ranks' bytes; each
rank reads its share with a bounded pool of threads (``os.preadv`` releases
the GIL). Any process group works whose backend has ``broadcast`` and
``all_to_all_single`` (gloo on CPU, nccl on GPUs with ``device="cuda"``).

The result is a dict of torch tensors (or of another framework's arrays with
``framework=``) in file order, equal to a single-process ``load_file``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, _dtypes
from ._checks import error
from ._frameworks import adapter_for
from ._into import run_parallel

__all__ = ["load_file", "load_files", "rank_slice"]

Plan = Union[Mapping[str, Optional[int]], Callable[[str, Tuple[int, ...]], Optional[int]]]

# The largest piece one thread reads at a time.
_PIECE = 8 << 20
# Range cuts between ranks fall on multiples of this (whole pages).
_BLOCK = 4096
# Replicated runs start on this alignment in the exchange buffer, so that
# every tensor view is aligned for its dtype.
_ALIGN = 64


def _torch():
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - torch is a test dependency
        raise ImportError(
            "safetensors_c.distributed needs PyTorch: pip install safetensors_c[torch]"
        ) from exc
    return torch, dist


def rank_slice(size: int, rank: int, world: int) -> Tuple[int, int]:
    """The [start, stop) indices rank ``rank`` of ``world`` keeps of a
    dimension of ``size``: an even split, larger parts last."""
    return size * rank // world, size * (rank + 1) // world


class _Source(NamedTuple):
    path: str
    fd: int  # ours, with POSIX_FADV_RANDOM; the reader holds a duplicate
    reader: Any


class _Tensor(NamedTuple):
    source: int  # index into the sources
    name: str
    code: str
    shape: Tuple[int, ...]  # logical
    np_shape: Tuple[int, ...]
    itemsize: int
    begin: int  # absolute file offset
    nbytes: int
    dim: Optional[int]


def _open(path: Any) -> _Source:
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if hasattr(os, "posix_fadvise"):
            # Read-ahead would fetch the next rank's bytes on this rank's
            # account; the advice belongs to the open file, which the core's
            # duplicate of fd shares.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        reader = _core.open_fd(fd, "pread", 0, path)
    except BaseException:
        os.close(fd)
        raise
    return _Source(path, fd, reader)


def _dim_of(plan: Optional[Plan], name: str, code: str, shape: Tuple[int, ...]) -> Optional[int]:
    if plan is None:
        return None
    dim = plan(name, shape) if callable(plan) else plan.get(name)
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"the plan's dimension for {name!r} must be an int or None, not {dim!r}")
    dim = int(dim)
    ndim = len(shape)
    if not -ndim <= dim < ndim:
        raise error(f"tensor {name!r} of shape {list(shape)} has no dimension {dim} to split")
    dim %= ndim
    if code in _dtypes.PACKED_BITS and dim == ndim - 1:
        raise error(
            f"tensor {name!r}: {code} packs several values per byte along its last dimension, "
            "which cannot be split between ranks; split another dimension"
        )
    return dim


def _tensors(sources: Sequence[_Source], plan: Optional[Plan], adapter: Any) -> List[_Tensor]:
    out: List[_Tensor] = []
    seen: Dict[str, str] = {}
    for index, source in enumerate(sources):
        reader = source.reader
        start = reader.data_start
        for name in reader.offset_keys():
            if name in seen:
                raise error(
                    f"tensor {name!r} is in both {seen[name]} and {source.path}",
                    "STC_ERR_INVALID_INDEX",
                )
            seen[name] = source.path
            code, shape, np_shape, begin, end = reader.info(name)
            shape, np_shape = tuple(shape), tuple(np_shape)
            adapter.check_code(name, code, shape)
            itemsize = _dtypes.numpy_dtype(code).itemsize
            out.append(_Tensor(index, name, code, shape, np_shape, itemsize, start + begin,
                               end - begin, _dim_of(plan, name, code, shape)))
    return out


def _fingerprint(sources: Sequence[_Source]) -> int:
    """Identical on every rank that opened the same files."""
    h = hashlib.sha256()
    for s in sources:
        r = s.reader
        h.update(f"{r.file_size}:{r.data_start}:".encode())
        for name in r.offset_keys():
            h.update(repr((name, r.info(name))).encode())
    return int.from_bytes(h.digest()[:7], "little")


# MARK: reading -------------------------------------------------------------


def _pread_into(source: _Source, dst: np.ndarray, offset: int) -> None:
    """Fills dst (1-d uint8, contiguous) with the file's bytes from offset."""
    view = memoryview(dst).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(source.fd, [view[done:]], offset + done)
        if got == 0:
            raise error(
                f"{source.path}: the file ended at byte {offset + done}; it is shorter "
                "than when it was opened",
                "STC_ERR_FILE_CHANGED",
            )
        done += got


class _Read(NamedTuple):
    source: _Source
    dst: np.ndarray
    offset: int


def _pieces(source: _Source, dst: np.ndarray, offset: int) -> List[_Read]:
    n = dst.nbytes
    return [_Read(source, dst[i:i + _PIECE], offset + i) for i in range(0, n, _PIECE)] if n else []


def _read_all(reads: List[_Read], max_workers: Optional[int]) -> None:
    run_parallel(lambda r: _pread_into(r.source, r.dst, r.offset), reads, max_workers)


# MARK: loading -------------------------------------------------------------


def _group(process_group: Any):
    torch, dist = _torch()
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group "
            "first, or load without process_group"
        )
    group = process_group if process_group is not None else dist.group.WORLD
    return torch, dist, group, dist.get_rank(group), dist.get_world_size(group)


def _global_rank(dist: Any, group: Any, rank: int) -> int:
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


def _comm_device(torch: Any, dist: Any, group: Any):
    """Where the exchange buffers live: the GPU for nccl, else the CPU."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_files(
    filenames: Sequence[Any],
    process_group: Any = None,
    *,
    framework: str = "pt",
    device: Any = "cpu",
    plan: Optional[Plan] = None,
    max_workers: Optional[int] = None,
) -> Dict[str, Any]:
    """Every tensor of ``filenames`` (the shards of one checkpoint) on every
    rank of ``process_group`` (default: the world), each rank reading ~1/N of
    the bytes; with ``plan``, each rank's part of the planned tensors (see
    the module docstring). Collective: every rank must call it with the same
    files and plan."""
    torch, dist, group, rank, world = _group(process_group)
    adapter = adapter_for(framework)
    placement = adapter.placement(device)
    sources: List[_Source] = []
    try:
        for name in filenames:
            sources.append(_open(name))
        tensors = _tensors(sources, plan, adapter)
        _check_same_everywhere(torch, dist, group, world, _fingerprint(sources))
        arrays = _load(torch, dist, group, rank, world, sources, tensors, max_workers)
    finally:
        for s in sources:
            os.close(s.fd)
    return {name: adapter.to_array(name, code, array, placement)
            for name, (code, array) in arrays.items()}


def load_file(
    filename: Any,
    process_group: Any = None,
    *,
    framework: str = "pt",
    device: Any = "cpu",
    plan: Optional[Plan] = None,
    max_workers: Optional[int] = None,
) -> Dict[str, Any]:
    """:func:`load_files` for a single file."""
    return load_files([filename], process_group, framework=framework, device=device, plan=plan,
                      max_workers=max_workers)


def _check_same_everywhere(torch: Any, dist: Any, group: Any, world: int, mark: int) -> None:
    device = _comm_device(torch, dist, group)
    mine = torch.tensor([mark], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    if any(int(t.item()) != mark for t in every):
        raise error(
            "the ranks opened different files (or different versions of them); every rank "
            "must load the same checkpoint",
            "STC_ERR_FILE_CHANGED",
        )


def _typed(raw: np.ndarray, t: _Tensor, np_shape: Tuple[int, ...],
           shape: Tuple[int, ...]) -> np.ndarray:
    """The NumPy currency over raw bytes (a PackedArray for F4/F6)."""
    array = raw.view(_dtypes.numpy_dtype(t.code)).reshape(np_shape)
    if t.code in _dtypes.PACKED_BITS:
        array = _dtypes._wrap_packed(array, t.code, shape)
    return array


def _load(torch, dist, group, rank, world, sources, tensors, max_workers):
    arrays: Dict[str, Tuple[str, np.ndarray]] = {}
    device = _comm_device(torch, dist, group)
    on_cpu = device.type == "cpu"
    reads: List[_Read] = []

    # Replicated tensors: one exchange buffer; runs of neighbours in a file
    # are one read.
    runs: List[List[int]] = []  # [source, file offset, buffer offset, length]
    layout: Dict[str, int] = {}
    size = 0
    for t in tensors:
        if t.dim is not None:
            continue
        last = runs[-1] if runs else None
        if last and last[0] == t.source and last[1] + last[3] == t.begin:
            layout[t.name] = last[2] + last[3]
            last[3] += t.nbytes
        else:
            size = -(-size // _ALIGN) * _ALIGN
            runs.append([t.source, t.begin, size, t.nbytes])
            layout[t.name] = size
        size = layout[t.name] + t.nbytes
    shared = torch.empty(size, dtype=torch.uint8)
    shared_np = shared.numpy()
    inner_cuts = [min(size, (size * r // world) // _BLOCK * _BLOCK) for r in range(1, world)]
    cuts = [0] + inner_cuts + [size]
    lo, hi = cuts[rank], cuts[rank + 1]
    for source, offset, start, length in runs:
        a, b = max(lo, start), min(hi, start + length)
        if a < b:
            reads += _pieces(sources[source], shared_np[a:b], offset + (a - start))

    # Planned tensors.
    exchanges = []
    for t in tensors:
        if t.dim is None:
            continue
        d = t.dim
        rows = int(np.prod(t.np_shape[:d], dtype=np.int64))
        cols = t.np_shape[d]
        inner = int(np.prod(t.np_shape[d + 1:], dtype=np.int64)) * t.itemsize
        c_lo, c_hi = rank_slice(cols, rank, world)
        np_shape = t.np_shape[:d] + (c_hi - c_lo,) + t.np_shape[d + 1:]
        shape = t.shape[:d] + (c_hi - c_lo,) + t.shape[d + 1:]
        out = torch.empty(rows * (c_hi - c_lo) * inner, dtype=torch.uint8)
        out_np = out.numpy()
        arrays[t.name] = (t.code, _typed(out_np, t, np_shape, shape))
        if rows == 1 or cols == 0 or inner == 0:
            # This rank's part is one contiguous run of the file.
            reads += _pieces(sources[t.source], out_np, t.begin + c_lo * inner)
            continue
        r_lo, r_hi = rank_slice(rows, rank, world)
        staging = torch.empty((r_hi - r_lo) * cols * inner, dtype=torch.uint8)
        reads += _pieces(sources[t.source], staging.numpy(), t.begin + r_lo * cols * inner)
        exchanges.append((t, rows, cols, inner, out, staging, r_hi - r_lo))

    _read_all(reads, max_workers)

    # Every rank sends its range of the replicated bytes to all.
    for r in range(world):
        a, b = cuts[r], cuts[r + 1]
        if a < b:
            part = shared[a:b] if on_cpu else shared[a:b].to(device)
            dist.broadcast(part, src=_global_rank(dist, group, r), group=group)
            if not on_cpu:
                shared[a:b].copy_(part.cpu())

    for t, rows, cols, inner, out, staging, my_rows in exchanges:
        block = staging.view(my_rows, cols, inner)
        sends = [block[:, slice(*rank_slice(cols, q, world)), :].reshape(-1) for q in range(world)]
        send = torch.cat(sends)
        c_lo, c_hi = rank_slice(cols, rank, world)
        in_splits = [s.numel() for s in sends]
        out_splits = [(rank_slice(rows, p, world)[1] - rank_slice(rows, p, world)[0])
                      * (c_hi - c_lo) * inner for p in range(world)]
        if on_cpu:
            dist.all_to_all_single(out, send, out_splits, in_splits, group=group)
        else:
            received = torch.empty(out.numel(), dtype=torch.uint8, device=device)
            dist.all_to_all_single(received, send.to(device), out_splits, in_splits, group=group)
            out.copy_(received.cpu())

    result: Dict[str, Tuple[str, np.ndarray]] = {}
    for t in tensors:
        if t.dim is None:
            start = layout[t.name]
            raw = shared_np[start:start + t.nbytes]
            if raw.ctypes.data % max(1, t.itemsize):
                raw = raw.copy()
            result[t.name] = (t.code, _typed(raw, t, t.np_shape, t.shape))
        else:
            result[t.name] = arrays[t.name]
    return result
