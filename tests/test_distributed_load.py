"""Coordinated loading across torch.distributed ranks (gloo, CPU), world sizes 2 and 4.

Each rank reads a disjoint ~1/N of the checkpoint from storage and the
ranks exchange the rest. Checked in real processes (torch.multiprocessing):
every rank's result equals the tensors that were saved (or, with a
tensor-parallel plan, the slice of its rows/columns), and each rank's
bytes read from storage (/proc/self/io read_bytes, after evicting the files
from the page cache with posix_fadvise) stay within its share plus the
headers, while all ranks together read every data byte at least once (so an
eviction that does nothing, leaving the ranks to read from the page cache,
fails). The file rank 0 saves again holds exactly what it loaded.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import distributed  # noqa: E402
from safetensors_c._core import SafetensorError  # noqa: E402
from safetensors_c._reader import open_source  # noqa: E402

from rank_processes import (free_port, process_group, read_reports, spawn_ranks,  # noqa: E402
                            write_report)

TIMEOUT = 60  # seconds, for the collectives of one spawn
HAS_IO = os.path.exists("/proc/self/io") and hasattr(os, "posix_fadvise")
# Bytes a rank may read beyond its share: each file's header (the core
# reads it whole) rounded to pages, plus the pages cut between ranks.
PAGE = 4096


def read_bytes() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no read_bytes in /proc/self/io")


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def model_tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for layer in range(3):
        p = f"layers.{layer}."
        t[p + "q_proj.weight"] = torch.randn(256, 512, generator=g)  # 512 KiB
        t[p + "o_proj.weight"] = torch.randn(512, 250, generator=g)
        t[p + "mlp.weight"] = torch.randn(64, 3, 100, generator=g).to(torch.bfloat16)
        t[p + "norm.weight"] = torch.randn(512, generator=g)
        t[p + "odd"] = torch.randint(0, 255, (7, 3), generator=g, dtype=torch.uint8)
    t["embed.weight"] = torch.randn(1000, 300, generator=g).to(torch.float16)
    t["step"] = torch.tensor(12345, dtype=torch.int64)
    t["empty"] = torch.zeros(0, 5)
    t["mask"] = torch.rand(33, generator=g) > 0.5
    return t


PLAN = {
    **{f"layers.{i}.q_proj.weight": 0 for i in range(3)},  # rows: read directly
    **{f"layers.{i}.o_proj.weight": 1 for i in range(3)},  # columns: all-to-all
    **{f"layers.{i}.mlp.weight": -2 for i in range(3)},  # the middle dimension
    "embed.weight": 0,
    "empty": 1,
}


def expected_part(full: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    dim %= full.ndim
    lo, hi = distributed.rank_slice(full.shape[dim], rank, world)
    index = [slice(None)] * full.ndim
    index[dim] = slice(lo, hi)
    return full[tuple(index)]


def load_case(rank, world, case):
    files = case["files"]
    want = model_tensors()  # what was saved, not a reading of the files by the code under test
    if HAS_IO:
        for f in files:
            evict(f)
    dist.barrier()
    before = read_bytes() if HAS_IO else 0
    group = dist.group.WORLD
    if case.get("entry") == "load_file":
        got = ct.load_file(files[0], process_group=group, max_workers=2)
    elif case.get("entry") == "load_sharded":
        got = ct.load_sharded(os.path.dirname(files[0]), process_group=group, progress=False)
    else:
        got = distributed.load_files(files, plan=case.get("plan"), max_workers=2)
    report = {"read_bytes": (read_bytes() - before) if HAS_IO else None}
    dist.barrier()
    plan = case.get("plan") or {}
    bad = []
    if list(got) != [n for f in files for n in _offset_keys(f)]:
        bad.append("order")
    for name, full in want.items():
        expect = full if plan.get(name) is None else expected_part(full, plan[name], rank, world)
        tensor = got.get(name)
        if tensor is None or tensor.dtype != expect.dtype or tensor.shape != expect.shape \
                or not torch.equal(tensor.contiguous().view(-1).view(torch.uint8),
                                   expect.contiguous().view(-1).view(torch.uint8)):
            bad.append(name)
    report["bad"] = bad
    report["missing"] = sorted(set(want) - set(got))
    # The results are ordinary tensors: writable, and savable again.
    for tensor in got.values():
        if tensor.numel():
            tensor.view(-1)[0:1].zero_()
    if rank == 0 and not plan:
        ct.save_file(got, case["resave"])
    return report


def worker(rank, world, port, cases, out_dir):
    with process_group(rank, world, port, TIMEOUT):
        reports = {}
        try:
            # A first load of a small file, unmeasured: whatever it imports or
            # reads from disk for the first time is not charged to the cases.
            # It holds every dtype of the cases: some are read through modules
            # imported on first use (bfloat16 through ml_dtypes), which a fresh
            # machine reads from storage.
            warmup = os.path.join(out_dir, "warmup.safetensors")
            if rank == 0:
                firsts = {}
                for t in model_tensors().values():
                    if t.numel():
                        firsts.setdefault(str(t.dtype), t.reshape(-1)[:2].clone())
                ct.save_file({**firsts, "x": torch.ones(3, 3)}, warmup)
            dist.barrier()
            distributed.load_files([warmup], plan={"x": 1})
            ct.load_file(warmup, process_group=dist.group.WORLD)
            for key, case in cases.items():
                reports[key] = load_case(rank, world, case)
        except BaseException as exc:
            reports["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            write_report(out_dir, rank, reports)


def _offset_keys(path):
    return open_source(path).offset_keys()


_RUNS = {}


def run(world, checkpoint, tmp_path_factory):
    """One spawn per world size runs every case; later tests reuse it:
    (every rank's reports, the cases)."""
    if world in _RUNS:
        return _RUNS[world]
    out_dir = str(tmp_path_factory.mktemp(f"world{world}"))
    cases = {
        "single": {"files": [checkpoint["single"]], "entry": "load_file",
                   "resave": os.path.join(out_dir, "resaved.safetensors")},
        "sharded": {"files": checkpoint["shards"], "entry": "load_sharded",
                    "resave": os.path.join(out_dir, "resaved_sharded.safetensors")},
        "plan": {"files": checkpoint["shards"], "plan": PLAN},
    }
    spawn_ranks(worker, (world, free_port(), cases, out_dir), world)
    _RUNS[world] = (read_reports(out_dir, world), cases)
    return _RUNS[world]


class CaseResult(NamedTuple):
    reports: list  # each rank's report of the case, rank 0 first
    files: list  # the files the case loaded
    data: int  # their data bytes
    header: int  # their headers' bytes, each rounded up to pages
    resaved: Optional[str]  # where rank 0 saved what it loaded (cases without a plan)


def case_result(world, key, checkpoint, tmp_path_factory) -> CaseResult:
    """The case's reports, after checking that every rank loaded the right values."""
    reports, cases = run(world, checkpoint, tmp_path_factory)
    for rep in reports:
        assert "error" not in rep, rep
    for rep in reports:
        assert rep[key]["bad"] == [], rep[key]
        assert rep[key]["missing"] == [], rep[key]
    files = cases[key]["files"]
    data, header = data_and_header_sizes(files)
    return CaseResult([rep[key] for rep in reports], files, data, header,
                      cases[key].get("resave"))


def assert_storage_reads(reports, data, world, slack, total_slack=None):
    """Each rank read at most its ~1/N share plus ``slack``, and at least a quarter of that
    share; between them the ranks read every data byte from storage at least once (after an
    eviction that did nothing, or with a rank served from the page cache, they read less)
    and, given ``total_slack``, the data about once (at most data + total_slack), not N
    times."""
    total = sum(r["read_bytes"] for r in reports)
    for rep in reports:
        assert rep["read_bytes"] <= -(-data // world) + PAGE + slack, (rep, reports)
        # A rank's neighbours' read-ahead may bring in part of its share, never most of it.
        assert rep["read_bytes"] >= data // world // 4, (rep, reports)
    assert total >= data, (total, data, reports)
    if total_slack is not None:
        assert total <= data + total_slack, (total, reports)


def assert_resaved(path):
    """Rank 0 zeroed each tensor's first element, then saved what it loaded."""
    want = model_tensors()
    for tensor in want.values():
        if tensor.numel():
            tensor.view(-1)[0:1].zero_()
    got = ct.load_file(path)
    assert sorted(got) == sorted(want)
    for name, expect in want.items():
        assert got[name].dtype == expect.dtype and got[name].shape == expect.shape, name
        assert torch.equal(got[name].view(-1).view(torch.uint8),
                           expect.contiguous().view(-1).view(torch.uint8)), name


def data_and_header_sizes(files):
    data = header = 0
    for f in files:
        r = open_source(f)
        data += r.file_size - r.data_start
        header += -(-r.data_start // PAGE) * PAGE
    return data, header


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tensors = model_tensors()
    single = str(root / "model.safetensors")
    ct.save_file(tensors, single)
    shard_dir = root / "sharded"
    ct.save_sharded(tensors, str(shard_dir), max_shard_size="1MB", progress=False)
    shards = sorted(str(p) for p in shard_dir.glob("*.safetensors"))
    assert len(shards) >= 3
    return {"single": single, "shards": shards, "tensors": tensors}


@pytest.mark.parametrize("world", [2, 4])
def test_full_load_equals_single_process(checkpoint, tmp_path_factory, world):
    case = case_result(world, "single", checkpoint, tmp_path_factory)
    if HAS_IO:
        # Its ~1/N share (cuts fall on pages), the header, a page each side.
        assert_storage_reads(case.reports, case.data, world, case.header + 2 * PAGE,
                             total_slack=world * (case.header + 3 * PAGE))
    assert_resaved(case.resaved)


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_load_equals_single_process(checkpoint, tmp_path_factory, world):
    case = case_result(world, "sharded", checkpoint, tmp_path_factory)
    if HAS_IO:
        # Pages at each shard's edges may be read by two ranks.
        assert_storage_reads(case.reports, case.data, world,
                             case.header + 2 * PAGE * (len(case.files) + 1))
    assert_resaved(case.resaved)


@pytest.mark.parametrize("world", [2, 4])
def test_tensor_parallel_plan(checkpoint, tmp_path_factory, world):
    case = case_result(world, "plan", checkpoint, tmp_path_factory)
    if HAS_IO:
        # Every tensor split its own way: each piece may add a page each side.
        slack = case.header + 2 * PAGE * (len(checkpoint["tensors"]) + len(case.files) + world)
        for rep in case.reports:
            assert rep["read_bytes"] <= case.data // world + slack, rep
        # Between them the ranks read every data byte from storage at least once.
        total = sum(r["read_bytes"] for r in case.reports)
        assert total >= case.data, (total, case.data, case.reports)


def test_without_an_initialized_group(checkpoint):
    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        distributed.load_file(checkpoint["single"])


def test_rank_slice_covers_every_index():
    for size in (0, 1, 5, 7, 100):
        for world in (1, 2, 3, 4, 8):
            parts = [distributed.rank_slice(size, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == size
            assert all(parts[i][1] == parts[i + 1][0] for i in range(world - 1))


BAD_PLANS = [
    ({"step": 0}, "SafetensorError: tensor 'step' of shape [] has no dimension 0 to split"),
    ({"embed.weight": 2}, "SafetensorError: tensor 'embed.weight' of shape [1000, 300] has no "
                          "dimension 2 to split"),
    ({"embed.weight": "0"}, "TypeError: the plan's dimension for 'embed.weight' must be an int"),
]


def bad_plan_worker(rank, world, port, path, out_dir):
    with process_group(rank, world, port, TIMEOUT):
        messages = []
        try:
            for plan, _ in BAD_PLANS:
                try:
                    distributed.load_file(path, plan=plan)
                    messages.append("no error")
                except (SafetensorError, TypeError) as exc:
                    messages.append(f"{type(exc).__name__}: {exc}")
            # The group is still usable: a good load after the bad ones.
            got = distributed.load_file(path)
            messages.append(f"loaded {len(got)}")
        finally:
            write_report(out_dir, rank, messages)


def test_bad_plans_fail_on_every_rank(checkpoint, tmp_path):
    out_dir = str(tmp_path)
    spawn_ranks(bad_plan_worker, (2, free_port(), checkpoint["single"], out_dir), 2)
    for messages in read_reports(out_dir, 2):
        for (_, want), got in zip(BAD_PLANS, messages):
            assert got.startswith(want), (got, want)
        assert messages[-1] == f"loaded {len(checkpoint['tensors'])}"
