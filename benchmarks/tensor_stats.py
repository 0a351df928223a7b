"""Tensor statistics, warm: safetensors_c.stats on a 1 GiB F32 file (already in
the page cache) against NumPy computing the same on the array already in memory.

    python benchmarks/tensor_stats.py [--gib 1] [--runs 5] [--dir /tmp]

NumPy's side: np.isnan(x).sum(), np.isinf(x).sum(), (x == 0).sum(),
np.nanmin(x), np.nanmax(x), x.mean(), x.std(). Prints min / median / max of
the runs of each, the ratio of the medians and the machine's load average.
(Named tensor_stats.py: benchmarks/stats.py holds the suite's statistics helpers.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import safetensors_c as st


def numpy_stats(x: np.ndarray) -> tuple:
    return (np.isnan(x).sum(), np.isinf(x).sum(), (x == 0).sum(), np.nanmin(x), np.nanmax(x),
            x.mean(), x.std())


def timed(fn, runs: int) -> list:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(label: str, samples: list) -> str:
    return (f"{label:<28} min {min(samples):7.3f} s  median {statistics.median(samples):7.3f} s"
            f"  max {max(samples):7.3f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dir", default="/tmp")
    args = p.parse_args()
    n = int(args.gib * (1 << 30)) // 4
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    x[::1000] = 0.0
    path = os.path.join(args.dir, "stc_bench_stats.safetensors")
    st.save_file({"x": x}, path)
    try:
        st.stats(path)  # warm: the file is in the page cache
        numpy_stats(x)
        print(f"{n} F32 values ({n * 4 / (1 << 30):.2f} GiB), {os.cpu_count()} CPUs, "
              f"load average before {os.getloadavg()}")
        ours = timed(lambda: st.stats(path), args.runs)
        theirs = timed(lambda: numpy_stats(x), args.runs)
        print(summary("safetensors_c.stats (file)", ours))
        print(summary("NumPy (array in memory)", theirs))
        print(f"NumPy median / ours median: {statistics.median(theirs) / statistics.median(ours):.2f}x")
        print(f"load average after {os.getloadavg()}")
        got = st.stats(path)["x"]
        assert abs(got.mean - float(x.astype(np.float64).mean())) < 1e-9
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
