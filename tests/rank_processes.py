"""Real torch.distributed ranks for the distributed tests: each rank a
process of its own (the "spawn" start method), joined by a gloo process group
on 127.0.0.1, reporting back through a JSON file per rank.

A test module imports this after its own ``pytest.importorskip("torch")``
and gloo check. Its worker, a module-level function, runs
``with process_group(rank, world, port, timeout): ...``, writes what it saw
with ``write_report``; the test starts the ranks with ``spawn_ranks`` (on a
port from ``free_port``) and reads them back with ``read_reports``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
from typing import Any, Callable, Iterator, List, Optional

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(rank: int, world: int, port: int, timeout: float) -> Iterator[None]:
    """This process as rank ``rank`` of ``world`` (gloo, over loopback);
    collectives wait at most ``timeout`` seconds; the group is destroyed on
    the way out."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def spawn_ranks(target: Callable[..., None], args: tuple, world: int,
                deadline: Optional[float] = None) -> None:
    """Runs ``target(rank, *args)`` in ``world`` new processes and waits for
    them all (at most ``deadline`` seconds in all, when given). Fails unless
    every rank exited by itself with code 0: none still running at the
    deadline (those are killed), none dead by a signal."""
    context = mp.get_context("spawn")
    procs = [context.Process(target=target, args=(rank, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    end = None if deadline is None else time.monotonic() + deadline
    for p in procs:
        p.join(None if end is None else max(0.0, end - time.monotonic()))
    stuck = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    assert not stuck, f"ranks {stuck} still running after {deadline} s"
    codes = [p.exitcode for p in procs]
    assert all(code is not None and code >= 0 for code in codes), f"died by a signal: {codes}"
    assert codes == [0] * world, codes


def _report_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, f"rank{rank}.json")


def write_report(out_dir: str, rank: int, report: Any) -> None:
    with open(_report_path(out_dir, rank), "w") as fh:
        json.dump(report, fh)


def read_reports(out_dir: str, world: int) -> List[Any]:
    """Every rank's report, rank 0 first."""
    reports = []
    for rank in range(world):
        with open(_report_path(out_dir, rank)) as fh:
            reports.append(json.load(fh))
    return reports
