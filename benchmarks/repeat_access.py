"""What independent arrays cost: the first access of a tensor against a
repeated one on the same mapped handle, and a 100,000-tensor file.

    python benchmarks/repeat_access.py            # the default sizes
    python benchmarks/repeat_access.py --quick    # smaller, one run per row

With backend="mmap" the first access of a tensor is a view into the file's
mapping; a later access of the same tensor comes fresh from the file, so
that it never shows what was written into the first array: a private
mapping of the tensor's own pages for tensors of 1 MiB and more, a pread
into memory of its own below that. Rows (median of --repeat runs, warm page
cache, times per call):

  small first / repeated     get_tensor of 4 KiB tensors (each name once, then again)
  large first / repeated     get_tensor of a 64 MiB tensor, alone and with every byte read
  boundary                   tensors just below (pread) and at (mapping) 1 MiB, repeated
  100k tensors               open; load_file; get_tensors twice on one handle; get_tensor of
                             every name after get_tensors; mappings the process holds after

Numbers depend on the machine and on what else runs on it: compare rows of
one run, not runs of different machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import _paths  # noqa: F401  (puts the in-tree package first)
import safetensors_c
from safetensors_c import safe_open

MIB = 1 << 20


def mapping_count() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def small_rows(tmp: str, repeat: int, count: int):
    path = os.path.join(tmp, "small.safetensors")
    safetensors_c.save_file({f"t{i:05d}": np.full(1024, i, np.float32) for i in range(count)},
                            path)
    first, again = [], []
    for _ in range(repeat):
        with safe_open(path, "np") as f:
            names = f.keys()
            start = time.perf_counter()
            for name in names:
                f.get_tensor(name)
            first.append((time.perf_counter() - start) / count)
            start = time.perf_counter()
            for name in names:
                f.get_tensor(name)
            again.append((time.perf_counter() - start) / count)
    return [("small (4 KiB) first access", statistics.median(first)),
            ("small (4 KiB) repeated access", statistics.median(again))]


def large_rows(tmp: str, repeat: int, size: int):
    path = os.path.join(tmp, "large.safetensors")
    safetensors_c.save_file({"w": np.ones(size // 4, np.float32)}, path)
    with open(path, "rb") as fh:  # warm the page cache
        while fh.read(16 * MIB):
            pass
    rows = []
    label = f"large ({size // MIB} MiB)"
    for touch in (False, True):
        first, again = [], []
        for _ in range(repeat):
            with safe_open(path, "np") as f:
                start = time.perf_counter()
                a = f.get_tensor("w")
                if touch:
                    a.sum()
                first.append(time.perf_counter() - start)
                start = time.perf_counter()
                b = f.get_tensor("w")
                if touch:
                    b.sum()
                again.append(time.perf_counter() - start)
                del a, b
        what = " + read every byte" if touch else ""
        rows.append((f"{label} first access{what}", statistics.median(first)))
        rows.append((f"{label} repeated access{what}", statistics.median(again)))
    return rows


def boundary_rows(tmp: str, repeat: int):
    path = os.path.join(tmp, "boundary.safetensors")
    below = MIB - 4096
    safetensors_c.save_file({"below": np.ones(below, np.uint8), "at": np.ones(MIB, np.uint8)},
                            path)
    rows = []
    with safe_open(path, "np") as f:
        for name, label in (("below", "1 MiB - 4 KiB (pread)"), ("at", "1 MiB (own mapping)")):
            f.get_tensor(name)
            rows.append((f"{label} repeated access + read every byte",
                         median_time(lambda n=name: f.get_tensor(n).sum(), repeat)))
    return rows


def many_rows(tmp: str, repeat: int, count: int):
    path = os.path.join(tmp, "many.safetensors")
    safetensors_c.save_file({f"t{i:06d}": np.full(4, i, np.int32) for i in range(count)}, path)
    rows = [
        (f"{count} tensors: open", median_time(lambda: safe_open(path, "np"), repeat)),
        (f"{count} tensors: load_file", median_time(lambda: safetensors_c.load_file(path),
                                                    repeat)),
    ]
    first, second, each = [], [], []
    maps_before = mapping_count()
    held = []
    for _ in range(repeat):
        with safe_open(path, "np") as f:
            start = time.perf_counter()
            held.append(f.get_tensors())
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            held.append(f.get_tensors())
            second.append(time.perf_counter() - start)
            names = f.keys()
            start = time.perf_counter()
            held.append([f.get_tensor(name) for name in names])
            each.append(time.perf_counter() - start)
    maps_after = mapping_count()
    rows += [
        (f"{count} tensors: get_tensors (first accesses)", statistics.median(first)),
        (f"{count} tensors: get_tensors again (one fresh mapping)", statistics.median(second)),
        (f"{count} tensors: get_tensor of every name again (pread)", statistics.median(each)),
    ]
    extra = maps_after - maps_before
    del held
    return rows, extra


def show(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:,.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds:,.2f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one run per row")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="stc-bench-", dir=args.tmpdir) as tmp:
        rows = small_rows(tmp, repeat, 2000 if args.quick else 10000)
        rows += large_rows(tmp, repeat, 8 * MIB if args.quick else 64 * MIB)
        rows += boundary_rows(tmp, max(repeat, 5) * 4)
        many, extra = many_rows(tmp, repeat, 100_000)
        rows += many
    print(f"safetensors_c {safetensors_c.__version__} from "
          f"{os.path.dirname(safetensors_c.__file__)}; Python {sys.version.split()[0]}")
    print()
    print("| row | time |")
    print("| --- | ---: |")
    for label, seconds in rows:
        print(f"| {label} | {show(seconds)} |")
    print()
    print(f"mappings held after {repeat} x (get_tensors twice + get_tensor of every name) "
          f"on the 100,000-tensor file: {extra:+d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
