"""Loading one checkpoint on N torch.distributed ranks (gloo, CPU): every rank
reading the whole file against safetensors_c.distributed (each rank reads
~1/N, the ranks exchange the rest). Cold cache: the file is evicted before
every run. Per rank: wall time and bytes read from storage (/proc/self/io).

    python benchmarks/distributed.py                # 256 MiB, 2 ranks, 3 runs
    python benchmarks/distributed.py --size 1GiB --world 4 --repeat 5

On one machine the ranks share one disk, one page cache and the exchange
runs over loopback, so wall times say little about a cluster. The bytes
each rank reads from storage are the point (target: at most 1/N plus the
headers). Note that uncoordinated ranks on ONE machine also split the
reads between them, by chance, through the shared page cache (whichever
rank faults a page first reads it); on separate machines each would read
the whole file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import distributed  # noqa: E402


def read_bytes() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def everyone_reads_all(path: str):
    # What each rank does without coordination: read every byte itself.
    out = ct.load_file(path, backend="pread")
    return out


def worker(rank, world, port, path, repeat, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    rows = {"every rank reads all": lambda: everyone_reads_all(path),
            "distributed.load_file": lambda: distributed.load_file(path)}
    result = {k: {"s": [], "bytes": []} for k in rows}
    for _ in range(repeat):
        for name, fn in rows.items():
            evict(path)
            dist.barrier()
            b0, t0 = read_bytes(), time.perf_counter()
            out = fn()
            dist.barrier()
            result[name]["s"].append(time.perf_counter() - t0)
            result[name]["bytes"].append(read_bytes() - b0)
            del out
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args()
    low = args.size.lower()
    size = int(float(low[:-3]) * (2**30 if low.endswith("gib") else 2**20))
    tmp = tempfile.mkdtemp(prefix="stc_dist_", dir=args.tmpdir)
    path = os.path.join(tmp, "model.safetensors")
    g = torch.Generator().manual_seed(0)
    count = max(1, size // (16 << 20))
    ct.save_file({f"layer.{i}.weight": torch.randn(2048, 2048, generator=g)
                  for i in range(count)}, path)
    nbytes = os.path.getsize(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(args.world, port, path, args.repeat, tmp), nprocs=args.world)
    print(f"checkpoint {nbytes / 2**20:.0f} MiB, {args.world} ranks (gloo), "
          f"{args.repeat} cold runs, medians")
    print(f"{'row':24} {'rank':>4} {'ms':>9} {'MiB read':>9} {'share of file':>14}")
    for r in range(args.world):
        with open(os.path.join(tmp, f"rank{r}.json")) as fh:
            result = json.load(fh)
        for name, v in result.items():
            s, b = statistics.median(v["s"]), statistics.median(v["bytes"])
            print(f"{name:24} {r:4} {s * 1e3:9.1f} {b / 2**20:9.1f} {b / nbytes:14.3f}")
        os.unlink(os.path.join(tmp, f"rank{r}.json"))
    os.unlink(path)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
