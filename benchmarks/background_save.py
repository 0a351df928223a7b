"""Checkpointing while training: a small CPU training loop (torch) saves its
~256 MiB model once, in the foreground (save_model) or in the background
(save_model(..., background=True)), and we time every step.

Per mode, over --repeat alternating runs (min / median / max of each figure):
  call     how long the save call held the loop (foreground: the whole save;
           background: the snapshot)
  step     median step time while the save was running (background), or of
           the steps after it (foreground, for comparison)
  total    wall time of the whole loop, the final wait() included
A run without any save gives the plain step time. The load average is
printed before and after: other work on the machine moves every figure.

    python benchmarks/background_save.py [--steps 12] [--save-at 2] [--repeat 3] [--dir /tmp]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import _paths  # noqa: F401  (the in-tree package when it is built in place)
from machine import load_average


def make_model(torch):
    torch.manual_seed(0)
    layers = []
    for i in range(8):  # 8 x 2048 x 4096 float32 weights: 256 MiB with the biases
        layers += [torch.nn.Linear(2048, 4096) if i % 2 == 0 else torch.nn.Linear(4096, 2048),
                   torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def run(torch, st_torch, model, mode: str, steps: int, save_at: int, path: str) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    batch = torch.randn(2, 2048)
    step_times, during = [], []
    handle, call = None, 0.0
    start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        if step == save_at and mode != "none":
            c0 = time.perf_counter()
            handle = st_torch.save_model(model, path, background=(mode == "background"))
            call = time.perf_counter() - c0
        running = handle is not None and not handle.done()
        optimizer.zero_grad()
        model(batch).square().mean().backward()
        optimizer.step()
        elapsed = time.perf_counter() - t0
        step_times.append(elapsed)
        if running:
            during.append(elapsed - (call if step == save_at else 0.0))
    if handle is not None:
        handle.wait()
    total = time.perf_counter() - start
    after = step_times[save_at + 1:] if mode == "foreground" else during
    return {"call": call, "step": statistics.median(after or step_times), "total": total,
            "steps during save": len(during)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-at", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args()
    import torch
    import safetensors_c.torch as st_torch

    model = make_model(torch)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    directory = tempfile.mkdtemp(dir=args.dir)
    path = os.path.join(directory, "checkpoint.safetensors")
    print(f"load average before: {load_average()}  ({os.cpu_count()} cpus, "
          f"torch threads {torch.get_num_threads()})")
    print(f"model {size / 2**20:.0f} MiB, {args.steps} steps, save at step {args.save_at}, "
          f"repeat {args.repeat}, file in {directory}")
    results = {mode: [] for mode in ("none", "foreground", "background")}
    try:
        run(torch, st_torch, model, "background", 3, 1, path)  # warm up
        for _ in range(args.repeat):
            for mode in results:
                results[mode].append(run(torch, st_torch, model, mode, args.steps,
                                         args.save_at, path))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for mode, runs in results.items():
        print(mode)
        for key in ("call", "step", "total"):
            values = [r[key] for r in runs]
            print(f"  {key:<6} min {min(values):7.3f}  median {statistics.median(values):7.3f}"
                  f"  max {max(values):7.3f} s")
        if mode == "background":
            print(f"  steps run while the save was writing: "
                  f"{[r['steps during save'] for r in runs]}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
