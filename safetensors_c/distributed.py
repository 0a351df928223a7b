"""Loading one checkpoint on many torch.distributed ranks, each reading ~1/N of it.

With N ranks, loading the usual way makes every rank read every byte of
the model from storage. Here the ranks share the work:

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

The ranks agree before they exchange. Every rank does its own fallible work
first (open and validate the files, resolve the plan into byte ranges) and
then all join one all-gather of a fixed-size status: success with a
fingerprint of what it loads (each file's identity: the SHA-256 of its
header bytes and its size; the resolved plan: every tensor's split
dimension and every rank's byte ranges), or failure with a one-line
message. If any rank failed, that rank raises its own error and every other
rank a ``SafetensorError`` (``STC_ERR_RANK_FAILED``) naming it; if the
fingerprints differ, every rank raises the same ``SafetensorError``
(``STC_ERR_RANK_MISMATCH``) naming the ranks and what differs. The reads
from storage are agreed on the same way. Only then do the exchanges run,
and their buffer sizes match on every rank by construction, so no input
aborts a process or leaves a rank waiting for the group's timeout.

Reads go through a descriptor with ``POSIX_FADV_RANDOM`` advice, so that the
kernel's read-ahead does not pull in the neighbouring ranks' bytes; each
rank reads its share with a bounded pool of threads (``os.preadv`` releases
the GIL). Any process group works whose backend has ``all_gather``,
``broadcast`` and ``all_to_all_single`` (gloo on CPU, nccl on GPUs with
``device="cuda"``).

The result is a dict of torch tensors (or of another framework's arrays with
``framework=``) in file order, equal to a single-process ``load_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, _dtypes, error_codes
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
    identity: bytes  # SHA-256 of the file's size and header bytes


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
        identity = _identity(path, fd, reader)
    except BaseException:
        os.close(fd)
        raise
    return _Source(path, fd, reader, identity)


def _identity(path: str, fd: int, reader: Any) -> bytes:
    """What tells two versions of a file apart without reading their data:
    the SHA-256 of its size and its header bytes (tensor names, dtypes,
    shapes, offsets, the metadata and any digests recorded in it). The core
    has just read these bytes: they come from the page cache."""
    h = hashlib.sha256(struct.pack("<QQ", reader.file_size, reader.data_start))
    header = np.empty(min(reader.data_start, _PIECE), dtype=np.uint8)
    for offset in range(0, reader.data_start, _PIECE):
        part = header[:min(_PIECE, reader.data_start - offset)]
        _pread_into(path, fd, part, offset)
        h.update(part)
    return h.digest()


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
                    error_codes.INVALID_INDEX,
                )
            seen[name] = source.path
            code, shape, np_shape, begin, end = reader.info(name)
            shape, np_shape = tuple(shape), tuple(np_shape)
            adapter.check_code(name, code, shape)
            itemsize = _dtypes.numpy_dtype(code).itemsize
            out.append(_Tensor(index, name, code, shape, np_shape, itemsize, start + begin,
                               end - begin, _dim_of(plan, name, code, shape)))
    return out


# MARK: the layout ------------------------------------------------------------
# Computed from the tensors and the world size alone, for every rank, before
# any byte moves: this is what the ranks compare.


class _Split(NamedTuple):
    """A planned tensor seen as rows x cols x inner bytes, split along cols."""

    tensor: _Tensor
    rows: int  # the product of the dimensions before the split one
    cols: int  # the split dimension
    inner: int  # bytes of one (row, column): the dimensions after it

    @property
    def direct(self) -> bool:
        """Each rank's part is one contiguous run of the file."""
        return self.rows == 1 or self.cols == 0 or self.inner == 0


class _Layout(NamedTuple):
    size: int  # bytes of the buffer of replicated tensors
    runs: List[Tuple[int, int, int, int]]  # (source, file offset, buffer offset, length)
    offsets: Dict[str, int]  # replicated tensor -> its offset in the buffer
    cuts: List[int]  # rank r reads [cuts[r], cuts[r + 1]) of the buffer
    splits: List[_Split]


class _Range(NamedTuple):
    """Bytes one rank reads from storage."""

    source: int
    offset: int  # in the file
    length: int
    into: int  # -1: the replicated buffer; i: the buffer of splits[i]
    at: int  # offset in that buffer


def _layout(tensors: Sequence[_Tensor], world: int) -> _Layout:
    # Replicated tensors share one buffer; runs of neighbours in a file are
    # one read.
    runs: List[List[int]] = []
    offsets: Dict[str, int] = {}
    splits: List[_Split] = []
    size = 0
    for t in tensors:
        if t.dim is not None:
            d = t.dim
            rows = int(np.prod(t.np_shape[:d], dtype=np.int64))
            inner = int(np.prod(t.np_shape[d + 1:], dtype=np.int64)) * t.itemsize
            splits.append(_Split(t, rows, t.np_shape[d], inner))
            continue
        last = runs[-1] if runs else None
        if last and last[0] == t.source and last[1] + last[3] == t.begin:
            offsets[t.name] = last[2] + last[3]
            last[3] += t.nbytes
        else:
            size = -(-size // _ALIGN) * _ALIGN
            runs.append([t.source, t.begin, size, t.nbytes])
            offsets[t.name] = size
        size = offsets[t.name] + t.nbytes
    inner_cuts = [min(size, (size * r // world) // _BLOCK * _BLOCK) for r in range(1, world)]
    return _Layout(size, [tuple(r) for r in runs], offsets, [0] + inner_cuts + [size], splits)


def _ranges(layout: _Layout, rank: int, world: int) -> List[_Range]:
    """What ``rank`` reads from storage, and where each range goes."""
    lo, hi = layout.cuts[rank], layout.cuts[rank + 1]
    out = []
    for source, offset, start, length in layout.runs:
        a, b = max(lo, start), min(hi, start + length)
        if a < b:
            out.append(_Range(source, offset + (a - start), b - a, -1, a))
    for i, s in enumerate(layout.splits):
        t = s.tensor
        if s.direct:
            c_lo, c_hi = rank_slice(s.cols, rank, world)
            out.append(_Range(t.source, t.begin + c_lo * s.inner, (c_hi - c_lo) * s.inner, i, 0))
        else:
            r_lo, r_hi = rank_slice(s.rows, rank, world)
            row = s.cols * s.inner
            out.append(_Range(t.source, t.begin + r_lo * row, (r_hi - r_lo) * row, i, 0))
    return out


def _files_digest(sources: Sequence[_Source]) -> bytes:
    return hashlib.sha256(b"".join(s.identity for s in sources)).digest()


def _plan_digest(tensors: Sequence[_Tensor], layout: _Layout, world: int) -> bytes:
    """The SHA-256 of every tensor's split dimension and every rank's byte
    ranges, in one canonical encoding."""
    record = {
        "world": world,
        "tensors": [[t.source, t.name, t.code, list(t.shape), t.begin, t.nbytes, t.dim]
                    for t in tensors],
        "buffer": [layout.size, layout.cuts, layout.runs],
        "splits": [[s.rows, s.cols, s.inner] for s in layout.splits],
        "ranges": [_ranges(layout, r, world) for r in range(world)],
    }
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).digest()


# MARK: agreeing ------------------------------------------------------------
# One all-gather of a fixed-size status per step, so that its size matches
# on every rank whatever each rank found:
#   magic (4) | step (1) | failed (1) | file count (4) | files digest (32)
#   | plan digest (32) | message length (2) | message (UTF-8, the rest)

_MAGIC = b"STC\x01"
_STATUS = struct.Struct("<4sBBI32s32sH")
_STATUS_SIZE = 512
_MESSAGE_ROOM = _STATUS_SIZE - _STATUS.size
_OPENED, _READ = 1, 2  # the steps agreed on
_NO_DIGEST = bytes(32)


class _Comm(NamedTuple):
    torch: Any
    dist: Any
    group: Any
    rank: int
    world: int
    device: Any  # where collective buffers live


class _Status(NamedTuple):
    rank: int
    failed: bool
    files: int
    files_digest: bytes
    plan_digest: bytes
    message: str


def _one_line(exc: BaseException, room: int = _MESSAGE_ROOM) -> bytes:
    """The error's type and first line, cut on a character boundary to fit
    ``room`` bytes of UTF-8."""
    lines = str(exc).splitlines()
    code = getattr(exc, "code", None)
    kind = f"{type(exc).__name__} {code}" if isinstance(code, str) else type(exc).__name__
    text = f"{kind}: {lines[0]}" if lines else kind
    data = text.encode("utf-8", "replace")
    if len(lines) > 1 or len(data) > room:
        data = data[:room - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return data


def _pack(step: int, failure: Optional[BaseException] = None, files: int = 0,
          files_digest: bytes = _NO_DIGEST, plan_digest: bytes = _NO_DIGEST) -> bytes:
    message = _one_line(failure) if failure is not None else b""
    head = _STATUS.pack(_MAGIC, step, failure is not None, files, files_digest, plan_digest,
                        len(message))
    return (head + message).ljust(_STATUS_SIZE, b"\0")


def _unpack(rank: int, step: int, raw: bytes) -> _Status:
    magic, got_step, failed, files, files_digest, plan_digest, length = \
        _STATUS.unpack_from(raw)
    if magic != _MAGIC or got_step != step:
        raise error(
            f"rank {rank} answered the ranks' agreement out of step (another version of "
            "safetensors_c, or another collective on the group at the same time?)",
            error_codes.RANK_MISMATCH,
        )
    text = raw[_STATUS.size:_STATUS.size + min(length, _MESSAGE_ROOM)]
    return _Status(rank, bool(failed), files, files_digest, plan_digest,
                   text.decode("utf-8", "replace"))


def _gather(comm: _Comm, payload: bytes, size: int) -> List[bytes]:
    torch = comm.torch
    mine = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(comm.device)
    every = [torch.empty(size, dtype=torch.uint8, device=comm.device) for _ in range(comm.world)]
    comm.dist.all_gather(every, mine, group=comm.group)
    return [t.cpu().numpy().tobytes() for t in every]


def _share(comm: _Comm, step: int, payload: bytes) -> List[_Status]:
    statuses = [_unpack(r, step, raw) for r, raw in enumerate(_gather(comm, payload, _STATUS_SIZE))]
    failed = [s for s in statuses if s.failed]
    if failed:
        others = "" if len(failed) == 1 else \
            f" ({_ranks([s.rank for s in failed])} failed; the first is quoted)"
        raise error(
            f"rank {failed[0].rank} failed before the ranks exchanged any data{others}: "
            f"{failed[0].message}",
            error_codes.RANK_FAILED,
        )
    return statuses


class _Mark(NamedTuple):
    """What a rank loads, as the others compare it."""

    files: int = 0
    files_digest: bytes = _NO_DIGEST
    plan_digest: bytes = _NO_DIGEST


def _together(comm: _Comm, step: int,
              work: Callable[[], Tuple[Any, _Mark]]) -> Tuple[Any, List[_Status]]:
    """Runs this rank's share of a step (``work`` returns its result and its
    mark), then every rank learns whether every rank succeeded: a rank that
    failed raises its own error, the others a SafetensorError naming it.
    Every rank joins the all-gather exactly once, failed or not."""
    try:
        result, mark = work()
    except BaseException as exc:
        try:
            _share(comm, step, _pack(step, exc))
        except Exception:
            # _share raises here by design (this rank is among the failed),
            # or the group itself broke: this rank's own error is the one
            # its caller needs.
            pass
        raise
    return result, _share(comm, step, _pack(step, None, *mark))


def _ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _groups(keys: Sequence[Any]) -> List[List[int]]:
    """Ranks grouped by equal key, groups in order of their first rank."""
    groups: Dict[Any, List[int]] = {}
    for rank, key in enumerate(keys):
        groups.setdefault(key, []).append(rank)
    return list(groups.values())


def _check_same(comm: _Comm, statuses: List[_Status], sources: Sequence[_Source]) -> None:
    """Raises the same SafetensorError on every rank unless every rank loads
    the same files (by identity) with the same resolved plan."""
    by_files = _groups([(s.files, s.files_digest) for s in statuses])
    if len(by_files) > 1:
        raise error(_files_differ(comm, statuses, sources), error_codes.RANK_MISMATCH)
    by_plan = _groups([s.plan_digest for s in statuses])
    if len(by_plan) > 1:
        raise error(
            "the ranks resolved different plans (" + " vs ".join(map(_ranks, by_plan)) + "): "
            "each tensor's split dimension and every rank's byte ranges must be the same on "
            "every rank; pass every rank the same plan",
            error_codes.RANK_MISMATCH,
        )


def _files_differ(comm: _Comm, statuses: List[_Status], sources: Sequence[_Source]) -> str:
    """Names the first file that differs. Every rank knows every rank's file
    count, so a second all-gather of each file's identity has one size."""
    counts = [s.files for s in statuses]
    if len(set(counts)) > 1:
        told = ", ".join(f"{_ranks(g)}: {counts[g[0]]}" for g in _groups(counts))
        return f"the ranks load different files: different numbers of files ({told})"
    size = 32 * counts[0]
    identities = _gather(comm, b"".join(s.identity for s in sources), size)
    for i in range(counts[0]):
        groups = _groups([raw[32 * i:32 * (i + 1)] for raw in identities])
        if len(groups) > 1:
            return (
                f"the ranks load different files: file {i + 1} of {counts[0]} differs "
                f"({' vs '.join(map(_ranks, groups))}): its header (tensor names, dtypes, "
                "shapes, offsets, metadata or recorded digests) or its size is not the same; "
                "every rank must load the same version of the checkpoint"
            )
    return "the ranks load different files"  # pragma: no cover - the digests differ


# MARK: reading -------------------------------------------------------------


def _pread_into(path: str, fd: int, dst: np.ndarray, offset: int) -> None:
    """Fills dst (1-d uint8, contiguous) with the file's bytes from offset."""
    view = memoryview(dst).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise error(
                f"{path}: the file ended at byte {offset + done}; it is shorter "
                "than when it was opened",
                error_codes.FILE_CHANGED,
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
    run_parallel(lambda r: _pread_into(r.source.path, r.source.fd, r.dst, r.offset), reads,
                 max_workers)


# MARK: loading -------------------------------------------------------------


def _group(process_group: Any) -> _Comm:
    torch, dist = _torch()
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group "
            "first, or load without process_group"
        )
    group = process_group if process_group is not None else dist.group.WORLD
    return _Comm(torch, dist, group, dist.get_rank(group), dist.get_world_size(group),
                 _comm_device(torch, dist, group))


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


class _Opened(NamedTuple):
    adapter: Any
    placement: Any
    tensors: List[_Tensor]
    layout: _Layout


def load_files(
    filenames: Union[Sequence[Any], Callable[[], Sequence[Any]]],
    process_group: Any = None,
    *,
    framework: str = "pt",
    device: Any = "cpu",
    plan: Optional[Plan] = None,
    max_workers: Optional[int] = None,
    check: Optional[Callable[[Sequence[Optional[Dict[str, str]]]], None]] = None,
) -> Dict[str, Any]:
    """Every tensor of ``filenames`` (the shards of one checkpoint) on every
    rank of ``process_group`` (default: the world), each rank reading ~1/N of
    the bytes; with ``plan``, each rank's part of the planned tensors (see
    the module docstring). Collective: every rank must call it with the same
    files and plan; if they differ, or any rank fails before the exchange,
    every rank raises (see the module docstring). ``filenames`` may be a
    function returning the files: it is called inside the ranks' agreement,
    so that a failure to find them (an index missing on one rank) reaches
    every rank too. ``check``, if given, is called there as well, with each
    file's metadata (in the order of the files) once they are opened: what
    it raises refuses the load on every rank."""
    comm = _group(process_group)
    sources: List[_Source] = []

    def open_all() -> Tuple[_Opened, _Mark]:
        adapter = adapter_for(framework)
        placement = adapter.placement(device)
        for name in filenames() if callable(filenames) else filenames:
            sources.append(_open(name))
        if check is not None:
            check([source.reader.metadata() for source in sources])
        tensors = _tensors(sources, plan, adapter)
        layout = _layout(tensors, comm.world)
        mark = _Mark(len(sources), _files_digest(sources),
                     _plan_digest(tensors, layout, comm.world))
        return _Opened(adapter, placement, tensors, layout), mark

    def read_mine() -> Tuple[_Buffers, _Mark]:
        return _read_mine(comm, sources, opened.layout, max_workers), _Mark()

    try:
        opened, statuses = _together(comm, _OPENED, open_all)
        _check_same(comm, statuses, sources)
        buffers, _ = _together(comm, _READ, read_mine)
        arrays = _exchange(comm, opened.tensors, opened.layout, buffers)
    finally:
        for s in sources:
            os.close(s.fd)
    adapter, placement = opened.adapter, opened.placement
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


class _Buffers(NamedTuple):
    shared: Any  # torch uint8: the replicated tensors
    splits: List[Any]  # torch uint8 per split: this rank's part, or its staged rows
    parts: List[Any]  # torch uint8 per split: this rank's part (the staged ones' result)


def _read_mine(comm: _Comm, sources: Sequence[_Source], layout: _Layout,
               max_workers: Optional[int]) -> _Buffers:
    """Allocates this rank's buffers and reads its ranges from storage."""
    torch = comm.torch
    shared = torch.empty(layout.size, dtype=torch.uint8)
    splits, parts = [], []
    for s in layout.splits:
        c_lo, c_hi = rank_slice(s.cols, comm.rank, comm.world)
        part = torch.empty(s.rows * (c_hi - c_lo) * s.inner, dtype=torch.uint8)
        parts.append(part)
        if s.direct:
            splits.append(part)
        else:
            r_lo, r_hi = rank_slice(s.rows, comm.rank, comm.world)
            splits.append(torch.empty((r_hi - r_lo) * s.cols * s.inner, dtype=torch.uint8))
    reads: List[_Read] = []
    for r in _ranges(layout, comm.rank, comm.world):
        into = shared if r.into < 0 else splits[r.into]
        reads += _pieces(sources[r.source], into.numpy()[r.at:r.at + r.length], r.offset)
    _read_all(reads, max_workers)
    return _Buffers(shared, splits, parts)


def _exchange(comm: _Comm, tensors: Sequence[_Tensor], layout: _Layout,
              buffers: _Buffers) -> Dict[str, Tuple[str, np.ndarray]]:
    """The collectives: sizes follow from the layout, which every rank agreed on."""
    torch, dist, group, rank, world = comm.torch, comm.dist, comm.group, comm.rank, comm.world
    on_cpu = comm.device.type == "cpu"
    shared = buffers.shared

    # Every rank sends its range of the replicated bytes to all.
    for r in range(world):
        a, b = layout.cuts[r], layout.cuts[r + 1]
        if a < b:
            part = shared[a:b] if on_cpu else shared[a:b].to(comm.device)
            dist.broadcast(part, src=_global_rank(dist, group, r), group=group)
            if not on_cpu:
                shared[a:b].copy_(part.cpu())

    # Every rank hands every other its columns of the staged rows.
    for s, staging, out in zip(layout.splits, buffers.splits, buffers.parts):
        if s.direct:
            continue
        r_lo, r_hi = rank_slice(s.rows, rank, world)
        block = staging.view(r_hi - r_lo, s.cols, s.inner)
        sends = [block[:, slice(*rank_slice(s.cols, q, world)), :].reshape(-1)
                 for q in range(world)]
        send = torch.cat(sends)
        c_lo, c_hi = rank_slice(s.cols, rank, world)
        in_splits = [x.numel() for x in sends]
        out_splits = [(rank_slice(s.rows, p, world)[1] - rank_slice(s.rows, p, world)[0])
                      * (c_hi - c_lo) * s.inner for p in range(world)]
        if on_cpu:
            dist.all_to_all_single(out, send, out_splits, in_splits, group=group)
        else:
            received = torch.empty(out.numel(), dtype=torch.uint8, device=comm.device)
            dist.all_to_all_single(received, send.to(comm.device), out_splits, in_splits,
                                   group=group)
            out.copy_(received.cpu())

    shared_np = shared.numpy()
    parts = {s.tensor.name: (s, out) for s, out in zip(layout.splits, buffers.parts)}
    result: Dict[str, Tuple[str, np.ndarray]] = {}
    for t in tensors:
        if t.dim is None:
            start = layout.offsets[t.name]
            raw = shared_np[start:start + t.nbytes]
            if raw.ctypes.data % max(1, t.itemsize):
                raw = raw.copy()
            result[t.name] = (t.code, _dtypes.array_from_bytes(t.code, t.shape, raw))
        else:
            s, out = parts[t.name]
            c_lo, c_hi = rank_slice(s.cols, rank, world)
            d = t.dim
            shape = t.shape[:d] + (c_hi - c_lo,) + t.shape[d + 1:]
            result[t.name] = (t.code, _dtypes.array_from_bytes(t.code, shape, out.numpy()))
    return result
