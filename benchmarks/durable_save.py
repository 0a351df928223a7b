"""How long a *durable* save of the llm checkpoint takes: save_file of
safetensors_c (which fsyncs) against the reference's save_file followed by an
fsync of the file it wrote, and a plain write + fsync. One run, alternating,
medians. Shows the cost of the fsync that target 8 compares against.

    python benchmarks/durable_save.py [--size-mib 1024] [--repeat 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import _paths  # noqa: F401  (the in-tree package when it is built in place)
import safetensors_c


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import safetensors.numpy as reference

    rng = np.random.default_rng(0)
    count = max(1, args.size_mib // 8)
    tensors = {f"layer.{i}": rng.random((2048, 1024), dtype=np.float32) for i in range(count)}
    directory = tempfile.mkdtemp(dir=os.environ.get("TMPDIR", "/tmp"))

    def ours():
        safetensors_c.save_file(tensors, os.path.join(directory, "ours.safetensors"))

    def theirs_durable():
        path = os.path.join(directory, "ref.safetensors")
        reference.save_file(tensors, path)
        fsync_path(path)

    def theirs():
        reference.save_file(tensors, os.path.join(directory, "ref2.safetensors"))

    def plain_durable():
        with open(os.path.join(directory, "plain.bin"), "wb") as f:
            for array in tensors.values():
                f.write(memoryview(array).cast("B"))
            f.flush()
            os.fsync(f.fileno())

    runs = {"safetensors_c save_file (fsync)": ours,
            "reference save_file + fsync": theirs_durable,
            "reference save_file (no fsync)": theirs,
            "plain write + fsync": plain_durable}
    times = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["safetensors_c save_file (fsync)"])
    print(f"{count * 8} MiB in {count} tensors, {args.repeat} runs each, medians:")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:34s} {median * 1000:8.0f} ms  ({median / base:.2f}x ours)"
              f"  [{min(samples) * 1000:.0f}-{max(samples) * 1000:.0f}]")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


if __name__ == "__main__":
    main()
