"""Saving many small tensors: safetensors_c's save_file (NumPy and torch) and
torch save_model against the reference's, 10,000 and 100,000 tensors of 64
float32 by default. Runs alternate between the two packages; each line gives
min / median / max of --repeat runs and the ratio of the medians (reference
over ours: above 1 is faster). The reference does not fsync; ours does, so
a "reference + fsync" line shows what a durable reference save costs. The
load average is printed before and after, since other work on the machine
moves every figure.

    python benchmarks/many_small_save.py [--counts 10000 100000] [--repeat 7] [--dir /dev/shm]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

import _paths  # noqa: F401  (the in-tree package when it is built in place)
from durable_save import fsync_path  # the reference's save made durable, as there
from machine import load_average
import safetensors_c


def measure(runs: dict, repeat: int) -> dict:
    """Seconds of each run, ``repeat`` times, the runs alternating."""
    times = {name: [] for name in runs}
    for name, run in runs.items():  # one unmeasured run each: imports, page cache
        run()
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict, ours: str, theirs: str) -> None:
    print(title)
    for name, values in times.items():
        print(f"  {name:<34} min {min(values):8.4f}  median {statistics.median(values):8.4f}"
              f"  max {max(values):8.4f} s")
    ratio = statistics.median(times[theirs]) / statistics.median(times[ours])
    print(f"  reference / ours (medians): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--values", type=int, default=64, help="float32 values per tensor")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"),
                        help="where the files go (/dev/shm: no disk under the fsync)")
    args = parser.parse_args()
    import safetensors.numpy as ref_numpy

    directory = tempfile.mkdtemp(dir=args.dir)
    path = os.path.join(directory, "many.safetensors")
    print(f"load average before: {load_average()}  ({os.cpu_count()} cpus)")
    print(f"repeat {args.repeat}, {args.values} float32 values per tensor, files in {directory}")
    try:
        for count in args.counts:
            rng = np.random.default_rng(count)
            arrays = {f"model.layers.{i}.weight": rng.random(args.values, dtype=np.float32)
                      for i in range(count)}

            def reference_durable(save, tensors):
                save(tensors, path)
                fsync_path(path)

            times = measure({
                "safetensors_c.save_file": lambda: safetensors_c.save_file(arrays, path),
                "safetensors.numpy.save_file": lambda: ref_numpy.save_file(arrays, path),
                "reference + fsync": lambda: reference_durable(ref_numpy.save_file, arrays),
            }, args.repeat)
            report(f"numpy, {count} tensors", times, "safetensors_c.save_file",
                   "safetensors.numpy.save_file")
            if args.no_torch:
                continue
            import torch
            import safetensors.torch as ref_torch
            import safetensors_c.torch as our_torch

            tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
            times = measure({
                "safetensors_c.torch.save_file": lambda: our_torch.save_file(tensors, path),
                "safetensors.torch.save_file": lambda: ref_torch.save_file(tensors, path),
                "reference + fsync": lambda: reference_durable(ref_torch.save_file, tensors),
            }, args.repeat)
            report(f"torch, {count} tensors", times, "safetensors_c.torch.save_file",
                   "safetensors.torch.save_file")

            model = torch.nn.Module()
            for i in range(count):  # one parameter per tensor, as a model with many norms
                weight = tensors[f"model.layers.{i}.weight"]
                model.register_parameter(f"p{i}", torch.nn.Parameter(weight))
            times = measure({
                "safetensors_c.torch.save_model": lambda: our_torch.save_model(model, path),
                "safetensors.torch.save_model": lambda: ref_torch.save_model(model, path),
            }, args.repeat)
            report(f"torch save_model, {count} parameters", times,
                   "safetensors_c.torch.save_model", "safetensors.torch.save_model")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
