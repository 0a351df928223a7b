"""Loading while other processes keep the CPUs busy: a scenario of its own, its spread shown.

    python benchmarks/contention.py                       # 256 MiB, 0 and 2 busy processes, 15 runs
    python benchmarks/contention.py --busy 2 --repeat 25 --size 512MiB
    python benchmarks/contention.py --quick               # 16 MiB, 3 runs (a check that it runs)

The benchmark starts the competing processes itself: ``--busy N`` pure-Python spin loops
(``while True: pass``), started before the rows and stopped after them, so the contention is
the same fixed thing in every run rather than whatever else the machine happens to do. Every
run is a fresh process (peer_runner.py) loading the same warm file into a preallocated model;
rows are interleaved round by round. Per run it records the 1-minute load average, the CPU
time the busy processes got during the load, and the CPU time of every other process.

Under contention a loader's times are often two-speed (a preempted worker thread that the
others wait for, or not), so the table gives min, median and max and every run, never one
median. Rows: safetensors_c ``load_model`` (default workers, and ``max_workers=1``); the
reference ``load_model`` as is, with ``torch.set_num_threads(1)``, and with
``backend="pread"``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peer_loaders  # noqa: E402
import peer_runner  # noqa: E402
from peer_loaders import LOADERS, MiB  # noqa: E402
from peers import machine_lines, parse_size  # noqa: E402

ROWS = ("ours", "ours.1worker", "reference", "reference.1thread", "reference.pread")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 MiB, 3 runs per row")
    p.add_argument("--size", help="model size (default 256MiB; --quick 16MiB)")
    p.add_argument("--busy", default="0,2",
                   help="comma-separated numbers of competing busy processes (default 0,2)")
    p.add_argument("--repeat", type=int, help="runs per row (default 15; --quick 3)")
    p.add_argument("--dtype", default="float32", choices=peer_loaders.DTYPES)
    p.add_argument("--layout", default="single", choices=peer_loaders.LAYOUTS)
    p.add_argument("--loaders", default=",".join(ROWS))
    p.add_argument("--out", help="output directory (default benchmarks/results/contention)")
    p.add_argument("--tmpdir")
    args = p.parse_args(argv)
    args.size = parse_size(args.size or ("16MiB" if args.quick else "256MiB"))
    args.busy = [int(n) for n in args.busy.split(",")]
    args.repeat = args.repeat or (3 if args.quick else 15)
    args.loaders = args.loaders.split(",")
    bad = [k for k in args.loaders if k not in LOADERS]
    if bad:
        p.error(f"--loaders: unknown {bad}")
    args.out = args.out or os.path.join(
        HERE, "results", "contention-quick" if args.quick else "contention")
    return args


def start_busy(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_busy(procs: list) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def markdown(runs, args, files, loaders, notes, wall_s) -> str:
    out = ["# Loading under contention", "",
           f"Command: `python benchmarks/contention.py {' '.join(args.argv)}` "
           f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {wall_s:.0f} s wall); "
           f"{args.dtype}, {files.nbytes / MiB:.0f} MiB of tensors, {args.layout} file(s), "
           "warm page cache, one fresh process per run.", ""]
    out += [f"- {line}" for line in machine_lines()]
    out += [f"- note: {n}" for n in notes]
    out += ["", "Seconds per load: min, median, max over the runs, then every run in order of "
            "time. *busy CPU s* = CPU seconds the competing processes got during a run "
            "(median); *others CPU s* = every other process on the machine, those included "
            "(median); *load* = 1-minute load average before the runs (min-max).", ""]
    for busy in args.busy:
        out += [f"## {busy} competing busy process(es)", "",
                "| loader | min | median | max | x ours (median) | every run, ms | "
                "busy CPU s | others CPU s | load | runs |",
                "|---|--:|--:|--:|--:|---|--:|--:|--:|--:|"]
        ours = None
        for loader in loaders:
            good = [r for r in runs if r["busy"] == busy and r["loader"] == loader.key
                    and "seconds" in r and not r.get("error")]
            if not good:
                out.append(f"| {loader.label} | failed or not measured | | | | | | | | |")
                continue
            seconds = sorted(r["seconds"] for r in good)
            median = statistics.median(seconds)
            if loader.key == "ours":
                ours = median
            every = ", ".join(f"{s * 1e3:.0f}" for s in seconds)
            loads = [r["load_avg_1min"] for r in good]
            label = f"**{loader.label}**" if loader.key == "ours" else loader.label
            vs_ours = f"{median / ours:.2f}" if ours else "-"
            out.append(
                f"| {label} | {seconds[0]:.3f} | {median:.3f} | {seconds[-1]:.3f} | {vs_ours} | "
                f"{every} | {statistics.median(r['watched_cpu_s'] for r in good):.2f} | "
                f"{statistics.median(r['others_cpu_s'] for r in good):.2f} | "
                f"{min(loads):.2f}-{max(loads):.2f} | {len(good)} |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    started = time.perf_counter()
    notes, loaders = [], []
    for key in args.loaders:
        loader = LOADERS[key]
        if loader.available():
            loaders.append(loader)
        else:
            notes.append(f"{loader.label} skipped: `{loader.needs}` is not installed")
            print(notes[-1], flush=True)
    if LOADERS["reference.pread"].available():
        import inspect

        import safetensors.torch

        takes = "backend" in inspect.signature(safetensors.torch.load_model).parameters
        notes.append(f"the installed reference's load_model "
                     f"{'takes' if takes else 'does not take'} backend= "
                     f"(safetensors {getattr(safetensors, '__version__', '?')})")
    tmp = tempfile.mkdtemp(prefix="stc-contention-", dir=args.tmpdir)
    runs, zygote, busy_procs = [], None, []
    try:
        files = peer_loaders.write_checkpoints(tmp, args.size, args.dtype)
        os.makedirs(os.path.join(tmp, "warmup"))
        warmup = peer_loaders.write_checkpoints(os.path.join(tmp, "warmup"),
                                                peer_loaders.WARMUP_SIZE, args.dtype)
        zygote = peer_runner.Zygote()
        for busy in args.busy:
            busy_procs = start_busy(busy)
            time.sleep(1.0)  # let the spinners reach the run queue before the first row
            for round_ in range(args.repeat):
                shift = round_ % len(loaders)
                for loader in loaders[shift:] + loaders[:shift]:
                    job = dict(loader=loader.key, files=files.to_json(), size=args.size,
                               dtype=args.dtype, layout=args.layout, cache="warm",
                               warmup=warmup.to_json(), watch_pids=[p.pid for p in busy_procs])
                    result = zygote.run(job)
                    result.update(loader=loader.key, busy=busy)
                    runs.append(result)
                    if result.get("error"):
                        print(f"  {loader.key} busy={busy}: ERROR {result['error'][-400:]}",
                              file=sys.stderr, flush=True)
                    else:
                        print(f"  busy={busy} {loader.key:18} {result['seconds'] * 1e3:8.1f} ms"
                              f"  busy CPU {result['watched_cpu_s']:.2f} s  load "
                              f"{result['load_avg_1min']:.2f}", file=sys.stderr, flush=True)
            stop_busy(busy_procs)
            busy_procs = []
    finally:
        stop_busy(busy_procs)
        if zygote is not None:
            zygote.close()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    text = markdown(runs, args, files, loaders, notes, time.perf_counter() - started)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"argv": args.argv, "machine": machine_lines(), "notes": notes,
                   "bytes": files.nbytes, "runs": runs}, f, indent=1)
    print(text)
    return 1 if any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
