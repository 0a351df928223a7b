"""Loading a checkpoint into a model's own, preallocated tensors: safetensors_c
against the floors and the other loaders, measured side by side in one run.

    python benchmarks/load_into.py                  # 512 MiB model, 5 runs per row
    python benchmarks/load_into.py --size 1GiB --repeat 7 --workers 2

Rows (median of --repeat runs, rows interleaved run by run so that noise
from other processes on the machine spreads over all of them):

  memcpy            one single-threaded memcpy of every byte, warm buffers (warm floor);
                    and the same split over the workers' threads (what parallel
                    copying can give on this machine at this moment)
  sequential read   one thread reading the evicted file front to back in 16 MiB
                    reads into a preallocated buffer (cold floor)
  load_model        safetensors_c.torch.load_model(model, path) (both backends;
                    also with max_workers=1, and assign=True, which copies nothing)
  reference         safetensors.torch.load_model(model, path)
  torch.load        torch.load(path.pt, mmap=True) + model.load_state_dict

"warm": the file is in the page cache (it was just read). "cold": before each
run the file is dropped from the page cache (fsync + posix_fadvise DONTNEED).
Ratios are computed from the medians of one run; on a machine shared with
other work, compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

import _paths  # noqa: F401  (the in-tree package when it is built in place)
import safetensors_c
import safetensors_c.torch as ct
from safetensors_c import _into

try:
    import safetensors.torch as reference
except ImportError:  # pragma: no cover
    reference = None


def parse_size(text: str) -> int:
    units = {"gib": 2**30, "mib": 2**20, "kib": 2**10, "gb": 10**9, "mb": 10**6}
    low = text.lower()
    for unit, factor in units.items():
        if low.endswith(unit):
            return int(float(low[: -len(unit)]) * factor)
    return int(low)


class Model(torch.nn.Module):
    """A transformer-like stack: per layer four square projections, an MLP
    pair and two norms; an embedding; F32."""

    def __init__(self, width: int, layers: int, vocab: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.layers = torch.nn.ModuleList()
        for _ in range(layers):
            layer = torch.nn.Module()
            for name in ("q", "k", "v", "o"):
                setattr(layer, name, torch.nn.Linear(width, width, bias=False))
            layer.up = torch.nn.Linear(width, 2 * width)
            layer.down = torch.nn.Linear(2 * width, width)
            layer.norm1 = torch.nn.LayerNorm(width)
            layer.norm2 = torch.nn.LayerNorm(width)
            self.layers.append(layer)
        self.norm = torch.nn.LayerNorm(width)


def build_model(size: int) -> Model:
    width = 1024
    per_layer = (4 + 4) * width * width * 4
    layers = max(1, (size - 8 * 2**20) // per_layer)
    with torch.device("meta"):
        model = Model(width, layers, vocab=2048)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: str) -> None:
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


def scrub(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="512MiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="max_workers (default: CPUs)")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--json", default=None, help="also write the medians here")
    ap.add_argument("--save", action="store_true",
                    help="measure saving instead: save_file against write + fsync of the same "
                         "bytes, and a training loop's slowdown while save_file runs in a "
                         "background thread")
    args = ap.parse_args()
    if args.save:
        return save_main(args)

    size = parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="stc_load_into_", dir=args.tmpdir)
    path = os.path.join(tmp, "model.safetensors")
    pt_path = os.path.join(tmp, "model.pt")
    model = build_model(size)
    ct.save_model(model, path)
    torch.save(model.state_dict(), pt_path)
    nbytes = os.path.getsize(path)
    dest = build_model(size)  # the model loaded into: preallocated, touched
    scrub(dest)
    expect = {k: v.clone() for k, v in model.state_dict().items()}
    del model
    gc.collect()

    # Every buffer is written once first, so that no row pays for page faults
    # on fresh memory (the model's tensors are touched too).
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.ones(nbytes, dtype=np.uint8)
    buf = np.ones(nbytes + (16 << 20), dtype=np.uint8)

    def memcpy() -> None:
        np.copyto(dst, src)

    def memcpy_parallel() -> None:
        # The same bytes in as many halves as workers, one thread each: what
        # the machine gives a parallel copy right now (NumPy copies without
        # the GIL).
        workers = args.workers or os.cpu_count() or 1
        step = -(-nbytes // workers)
        _into.run_parallel(lambda i: np.copyto(dst[i:i + step], src[i:i + step]),
                           list(range(0, nbytes, step)), workers)

    def sequential_read() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            view = memoryview(buf)
            offset = 0
            while True:
                got = os.preadv(fd, [view[offset:offset + (16 << 20)]], offset)
                if not got:
                    break
                offset += got
        finally:
            os.close(fd)

    kw = {} if args.workers is None else {"max_workers": args.workers}

    def ours(backend: str, **extra) -> Callable[[], None]:
        def run() -> None:
            ct.load_model(dest, path, backend=backend, **{**kw, **extra})
        return run

    def ours_assign() -> None:
        m = build_model_like(dest)
        ct.load_model(m, path, assign=True)

    meta_cache: Dict[str, torch.nn.Module] = {}

    def build_model_like(m: torch.nn.Module) -> torch.nn.Module:
        # A model on the meta device: assign=True needs no memory of its own.
        if "meta" not in meta_cache:
            width = m.embed.weight.shape[1]
            with torch.device("meta"):
                meta_cache["meta"] = Model(width, len(m.layers), m.embed.weight.shape[0])
        return meta_cache["meta"]

    def ref() -> None:
        reference.load_model(dest, path)

    def torch_load() -> None:
        sd = torch.load(pt_path, mmap=True, weights_only=True)
        dest.load_state_dict(sd)

    warm_rows: Dict[str, Callable[[], None]] = {
        "memcpy (1 thread)": memcpy,
        "memcpy (all workers)": memcpy_parallel,
        "load_model mmap": ours("mmap"),
        "load_model pread": ours("pread"),
        "load_model mmap, 1 worker": ours("mmap", max_workers=1),
        "load_model assign=True": ours_assign,
        "torch.load(mmap=True)": torch_load,
    }
    if reference is not None:
        warm_rows["reference load_model"] = ref
    cold_rows: Dict[str, Callable[[], None]] = {}
    if not args.no_cold:
        cold_rows = {
            "sequential read [cold]": sequential_read,
            "load_model mmap [cold]": ours("mmap"),
            "load_model pread [cold]": ours("pread"),
            "torch.load(mmap=True) [cold]": torch_load,
        }
        if reference is not None:
            cold_rows["reference load_model [cold]"] = ref

    # Correctness once, before timing.
    ct.load_model(dest, path)
    for k, v in dest.state_dict().items():
        assert torch.equal(v, expect[k]), k

    times: Dict[str, List[float]] = {k: [] for k in [*warm_rows, *cold_rows]}
    for _ in range(args.repeat):
        for name, fn in warm_rows.items():
            warm(path)
            warm(pt_path)
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        for name, fn in cold_rows.items():
            gc.collect()
            evict(path)
            evict(pt_path)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    gib = nbytes / 2**30
    version = getattr(safetensors_c, "__version__", "")
    print(f"safetensors_c {version} torch {torch.__version__}; checkpoint {nbytes / 2**20:.0f} MiB, "
          f"{len(expect)} tensors; {args.repeat} runs per row; CPUs {os.cpu_count()}; "
          f"workers {args.workers or 'default'}")
    print(f"{'row':34} {'median ms':>10} {'GiB/s':>7}")
    for k, v in med.items():
        print(f"{k:34} {v * 1e3:10.1f} {gib / v:7.2f}")
    print()
    ratios = {}
    mc = med["memcpy (1 thread)"]
    for b in ("mmap", "pread"):
        ratios[f"warm {b}: load_model / memcpy (target <= 0.6)"] = med[f"load_model {b}"] / mc
    if reference is not None:
        ratios["warm: reference / load_model pread, the default (target >= 1.8)"] = (
            med["reference load_model"] / med["load_model pread"])
        ratios["warm: reference / load_model mmap"] = (
            med["reference load_model"] / med["load_model mmap"])
    ratios["warm: memcpy on all workers / memcpy (the machine's parallel floor)"] = (
        med["memcpy (all workers)"] / mc)
    ratios["warm: torch.load(mmap) / load_model mmap"] = (
        med["torch.load(mmap=True)"] / med["load_model mmap"])
    if cold_rows:
        seq = med["sequential read [cold]"]
        for b in ("mmap", "pread"):
            ratios[f"cold {b}: throughput vs sequential read (target >= 0.97)"] = (
                seq / med[f"load_model {b} [cold]"])
        if reference is not None:
            for b in ("pread", "mmap"):
                ratios[f"cold: reference / load_model {b}"] = (
                    med["reference load_model [cold]"] / med[f"load_model {b} [cold]"])
    for k, v in ratios.items():
        print(f"{k:62} {v:6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"bytes": nbytes, "median_s": med, "ratios": ratios, "runs": times}, fh,
                      indent=1)
    for f in (path, pt_path):
        os.unlink(f)
    os.rmdir(tmp)


def save_main(args) -> None:
    import threading

    size = parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="stc_save_", dir=args.tmpdir)
    model = build_model(size)
    state = model.state_dict()
    image = ct.save(state)  # the very bytes save_file writes
    ours_path = os.path.join(tmp, "ours.safetensors")
    raw_path = os.path.join(tmp, "raw.bin")

    def raw_durable() -> None:
        fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(image)
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:done + (64 << 20)])
            os.fsync(fd)
        finally:
            os.close(fd)

    def raw_atomic() -> None:
        # The same protocol as save_file: a temporary file, fsync, rename
        # over the target, fsync of the directory.
        raw_durable()
        os.rename(raw_path, raw_path + ".final")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ours() -> None:
        ct.save_file(state, ours_path)

    rows = (("write + fsync", raw_durable), ("write + fsync + rename", raw_atomic),
            ("save_file", ours))
    times: Dict[str, List[float]] = {name: [] for name, _ in rows}
    for _ in range(args.repeat):
        for name, fn in rows:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    # A training loop in the main thread, alone and with a save running.
    net = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 512))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(256, 512)

    def steps(seconds: float, stop=None) -> float:
        n = 0
        t0 = time.perf_counter()
        while True:
            loss = net(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
            elapsed = time.perf_counter() - t0
            if (stop is not None and stop.is_set()) or (stop is None and elapsed >= seconds):
                return n / elapsed

    def python_loop(seconds: float, stop=None) -> float:
        # Pure Python: it runs only while it holds the GIL.
        n = 0
        t0 = time.perf_counter()
        while True:
            for _ in range(1000):
                n += 1
            elapsed = time.perf_counter() - t0
            if (stop is not None and stop.is_set()) or (stop is None and elapsed >= seconds):
                return n / elapsed

    def slowdown(loop) -> Tuple[float, float]:
        alone, during = [], []
        for _ in range(args.repeat):
            alone.append(loop(med["save_file"]))
            done = threading.Event()

            def save_in_background() -> None:
                ct.save_file(state, ours_path)
                done.set()

            worker = threading.Thread(target=save_in_background)
            worker.start()
            during.append(loop(0, done))
            worker.join()
        return statistics.median(alone), statistics.median(during)

    threads = torch.get_num_threads()
    loops = {f"training ({threads} torch threads)": steps}
    loops["pure-Python loop"] = python_loop
    results = {name: slowdown(loop) for name, loop in loops.items()}
    torch.set_num_threads(1)
    results["training (1 torch thread)"] = slowdown(steps)
    torch.set_num_threads(threads)
    print(f"state dict {len(image) / 2**20:.0f} MiB; {args.repeat} runs; medians")
    for k, v in med.items():
        print(f"{k:28} {v * 1e3:9.1f} ms  {len(image) / 2**30 / v:6.2f} GiB/s")
    print(f"save_file / (write + fsync)   {med['save_file'] / med['write + fsync']:.3f}  "
          "(target <= 1.05)")
    print(f"save_file / (write + fsync + rename)   "
          f"{med['save_file'] / med['write + fsync + rename']:.3f}")
    for name, (a, d) in results.items():
        print(f"{name:30} iterations/s alone {a:12.1f}, during a background save_file "
              f"{d:12.1f}: slowdown {a / d:.2f}x")
    for f in (ours_path, raw_path, raw_path + ".final"):
        if os.path.exists(f):
            os.unlink(f)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
