"""Many small tensors: load_model, save_file and save_model of a model with
10,000 and 100,000 parameters of 64 float32 each, safetensors_c against the
reference package (``safetensors``), in one run.

    python benchmarks/many_small.py                      # 10,000 and 100,000, 5 runs
    python benchmarks/many_small.py --counts 10000 --repeat 9

The file is written once per count by the reference and is warm (in the page
cache) for every load. Rows are interleaved run by run, so noise from other
work on the machine spreads over all of them. Each row gives min / median /
max in milliseconds; the ratio is the reference's median over ours (above 1:
we are faster). The load average (``os.getloadavg``) is printed before and
after: on a shared machine compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List

import torch

import _paths  # noqa: F401  (the in-tree package when it is built in place)
import safetensors_c.torch as ours
from machine import load_average

try:
    import safetensors.torch as reference
except ImportError:  # pragma: no cover
    reference = None


class Many(torch.nn.Module):
    """One module holding `count` parameters of `size` float32 each."""

    def __init__(self, count: int, size: int) -> None:
        super().__init__()
        for i in range(count):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.randn(size)))


def measure(rows: Dict[str, Callable[[], None]], repeat: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {name: [] for name in rows}
    for _ in range(repeat):
        for name, run in rows.items():
            gc.collect()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def show(times: Dict[str, List[float]]) -> None:
    for name, values in times.items():
        print(f"  {name:<28} min {min(values) * 1e3:8.1f}  median "
              f"{statistics.median(values) * 1e3:8.1f}  max {max(values) * 1e3:8.1f} ms")


def ratio(times: Dict[str, List[float]], theirs: str, mine: str) -> str:
    return f"{statistics.median(times[theirs]) / statistics.median(times[mine]):.2f}x"


def run_count(count: int, size: int, repeat: int, directory: str) -> None:
    model = Many(count, size)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    path = os.path.join(directory, f"many_{count}.safetensors")
    out_ours = os.path.join(directory, "ours.safetensors")
    out_ref = os.path.join(directory, "reference.safetensors")
    (reference or ours).save_file(state, path)
    target = Many(count, size)

    rows: Dict[str, Callable[[], None]] = {
        "load_model ours": lambda: ours.load_model(target, path),
        "save_file ours": lambda: ours.save_file(state, out_ours),
        "save_model ours": lambda: ours.save_model(model, out_ours),
    }
    if reference is not None:
        rows["load_model reference"] = lambda: reference.load_model(target, path)
        rows["save_file reference"] = lambda: reference.save_file(state, out_ref)
        rows["save_model reference"] = lambda: reference.save_model(model, out_ref)
    print(f"{count} tensors of {size} float32 ({count * size * 4 / 2**20:.1f} MiB), "
          f"{repeat} runs; load average {load_average()}")
    times = measure(rows, repeat)
    show(times)
    if reference is not None:
        for what in ("load_model", "save_file", "save_model"):
            print(f"  ratio {what:<22} reference / ours = "
                  f"{ratio(times, f'{what} reference', f'{what} ours')}")
    print(f"  after: load average {load_average()}")


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--size", type=int, default=64, help="float32 values per tensor")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    with tempfile.TemporaryDirectory(dir=os.environ.get("STC_BENCH_DIR")) as directory:
        for count in args.counts:
            run_count(count, args.size, args.repeat, directory)


if __name__ == "__main__":
    main()
