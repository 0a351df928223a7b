"""safetensors_c beside the loaders a user would pick instead, on the same work: a checkpoint's
file(s) -> the values in a preallocated torch model.

    python benchmarks/peers.py                      # 1 GiB, float32 and bfloat16, 5 runs/row
    python benchmarks/peers.py --quick              # 16 MiB, float32, 1 run/row (the smoke test)
    python benchmarks/peers.py --size 256MiB --dtypes float32 --repeat 3

Loaders (peer_loaders.py): safetensors_c ``load_model``; the reference ``safetensors``
``load_model``; Run:ai Model Streamer; fastsafetensors (CPU, without GDS);
``torch.load(mmap=True)`` of a torch.save'd file + ``load_state_dict``. Each of them on one file
and on a 4-shard checkpoint, warm (the files were just read) and cold (every file dropped from
the page cache before the run, checked with mincore), every run in a fresh process
(peer_runner.py). The floors of the same run, measured first and last: a memcpy of every byte
split over all cores (warm) and one thread's sequential read of the evicted file(s) (cold).
Runs are interleaved round by round, so drift on a shared machine hits every row alike.

Writes results.md, results.json and chart.png into --out (default benchmarks/results/peers,
--quick: benchmarks/results/peers-quick). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peer_loaders  # noqa: E402
import peer_runner  # noqa: E402
from peer_loaders import LOADERS, MiB, GiB  # noqa: E402

CACHES = ("warm", "cold")
NOT_COLD = 0.01  # a cold run with more of a file resident than this is flagged


def parse_size(text: str) -> int:
    units = {"gib": GiB, "mib": MiB, "kib": 1 << 10}
    low = text.lower()
    for unit, factor in units.items():
        if low.endswith(unit):
            return int(float(low[: -len(unit)]) * factor)
    return int(low)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 MiB, float32 only, 1 run per row")
    p.add_argument("--size", help="model size (default 1GiB; --quick 16MiB)")
    p.add_argument("--dtypes", help="comma-separated, of float32,bfloat16 (default both; "
                                    "--quick float32)")
    p.add_argument("--layouts", default="single,sharded")
    p.add_argument("--caches", default="warm,cold")
    p.add_argument("--loaders", default=",".join(peer_loaders.PEERS),
                   help="comma-separated keys of peer_loaders.LOADERS")
    p.add_argument("--repeat", type=int, help="runs per row (default 5; --quick 1)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--tmpdir", help="where the checkpoints go (default: the system temp dir)")
    p.add_argument("--report-only", metavar="RESULTS_JSON",
                   help="rewrite results.md and chart.png from a results.json; measure nothing")
    args = p.parse_args(argv)
    args.size = parse_size(args.size or ("16MiB" if args.quick else "1GiB"))
    args.dtypes = (args.dtypes or ("float32" if args.quick else "float32,bfloat16")).split(",")
    args.layouts = args.layouts.split(",")
    args.caches = args.caches.split(",")
    args.loaders = args.loaders.split(",")
    for name, values, allowed in (("--dtypes", args.dtypes, peer_loaders.DTYPES),
                                  ("--layouts", args.layouts, peer_loaders.LAYOUTS),
                                  ("--caches", args.caches, CACHES),
                                  ("--loaders", args.loaders, LOADERS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {list(allowed)}")
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.out = args.out or os.path.join(HERE, "results", "peers-quick" if args.quick else "peers")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_lines() -> list:
    import torch

    import safetensors_c

    lines = [f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, "
             f"Python {platform.python_version()}, torch {torch.__version__}, "
             f"safetensors_c {getattr(safetensors_c, '__version__', '?')}"]
    for module in ("safetensors", "runai_model_streamer", "fastsafetensors"):
        try:
            from importlib.metadata import version

            lines.append(f"{module} {version(module.replace('_', '-'))}")
        except Exception:
            lines.append(f"{module}: not installed")
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
        lines.append(f"CPU: {model}")
    except OSError:
        pass
    return lines


# -- running -------------------------------------------------------------------


def run_all(args, zygote, files_by_dtype, warmups, loaders) -> list:
    """Every run's result, as a list of dicts (one per run)."""
    runs = []

    def one(loader, dtype, layout, cache, phase):
        job = dict(loader=loader.key, files=files_by_dtype[dtype].to_json(), size=args.size,
                   dtype=dtype, layout=layout, cache=cache, warmup=warmups[dtype].to_json())
        result = zygote.run(job)
        result.update(loader=loader.key, dtype=dtype, layout=layout, cache=cache, phase=phase)
        runs.append(result)
        if result.get("error"):
            log(f"  {loader.key} {dtype} {layout} {cache}: ERROR {result['error'][-400:]}")
        else:
            log(f"  {loader.key:18} {dtype:8} {layout:7} {cache} {phase:5} "
                f"{result['seconds'] * 1e3:9.1f} ms  load {result['load_avg_1min']:.2f}  "
                f"others {result['others_cpu_s']:.2f} s CPU")

    for dtype in args.dtypes:
        for layout in args.layouts:
            for cache in args.caches:
                floors = [l for l in loaders if l.floor == cache]
                rows = [l for l in loaders if not l.floor]
                for _ in range(args.repeat):
                    for floor in floors:
                        one(floor, dtype, layout, cache, "first")
                for round_ in range(args.repeat):
                    shift = round_ % len(rows) if rows else 0
                    for loader in rows[shift:] + rows[:shift]:
                        one(loader, dtype, layout, cache, "row")
                for _ in range(args.repeat):
                    for floor in floors:
                        one(floor, dtype, layout, cache, "last")
    return runs


# -- reporting -----------------------------------------------------------------


def _mib(kib) -> str:
    return f"{kib / 1024:.0f}"


def summarise(runs, loader_key, dtype, layout, cache, phase=None):
    good = [r for r in runs if r["loader"] == loader_key and r["dtype"] == dtype
            and r["layout"] == layout and r["cache"] == cache and "seconds" in r
            and not r.get("error") and (phase is None or r["phase"] == phase)]
    if not good:
        return None
    seconds = [r["seconds"] for r in good]

    def grown(field):  # the most the load added above the built model, over the runs
        return max(r["peak_sampled_kib"].get(field, 0) - r["before_kib"].get(field, 0)
                   for r in good)

    return dict(
        n=len(good), median=statistics.median(seconds), low=min(seconds), high=max(seconds),
        anon_kib=grown("RssAnon"), file_kib=grown("RssFile"),
        hwm_kib=max(r["after_kib"]["VmHWM"] - r["before_kib"]["VmRSS"] for r in good),
        load=(min(r["load_avg_1min"] for r in good), max(r["load_avg_1min"] for r in good)),
        others=statistics.median(r["others_cpu_s"] for r in good),
        others_max=max(r["others_cpu_s"] for r in good),
        resident=max(r["resident_max"] for r in good))


def targets(runs, args, loaders) -> list:
    """Issue 21's targets for load_model, from this run's medians."""
    out = ["## Targets (medians of this run)", "",
           "| table | target | measured | result |", "|---|---|---|---|"]
    peers = [l for l in loaders if not l.floor and not l.ours]
    for dtype in args.dtypes:
        for layout in args.layouts:
            for cache in args.caches:
                ours = summarise(runs, "ours", dtype, layout, cache)
                floor = summarise(runs, "floor.memcpy" if cache == "warm" else "floor.seqread",
                                  dtype, layout, cache)
                if not ours:
                    continue
                where = f"{dtype}, {layout}, {cache}"
                if floor and cache == "warm":
                    ratio = ours["median"] / floor["median"]
                    out.append(f"| {where} | load_model time <= 1.1x the memcpy on all cores | "
                               f"{ratio:.2f}x | {'met' if ratio <= 1.1 else '**missed**'} |")
                elif floor:
                    rate = floor["median"] / ours["median"]
                    out.append(f"| {where} | load_model rate >= 0.97x the sequential read | "
                               f"{rate:.2f}x | {'met' if rate >= 0.97 else '**missed**'} |")
                others = [(summarise(runs, l.key, dtype, layout, cache), l) for l in peers]
                others = [(s["median"], l) for s, l in others if s]
                if others:
                    best, who = min(others, key=lambda x: x[0])
                    ratio = ours["median"] / best
                    out.append(f"| {where} | never behind any peer | fastest peer ({who.label}) "
                               f"{best:.3f} s, ours {ours['median']:.3f} s ({ratio:.2f}x its "
                               f"time) | {'met' if ratio <= 1.0 else '**missed**'} |")
    return out + [""]


def markdown(runs, args, files_by_dtype, loaders, notes, wall_s, machine=None, when=None) -> str:
    out = ["# safetensors_c beside its peers", "",
           f"Command: `python benchmarks/peers.py {' '.join(args.argv)}`"
           f" ({when or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
           f"{wall_s:.0f} s wall).", ""]
    out += [f"- {line}" for line in machine or machine_lines()]
    out += [f"- note: {n}" for n in notes]
    out += ["", "Median seconds (min-max) over the runs; GB/s = 10^9 bytes of tensor data per "
            "second; *x floor* = the row's median time / the floor's median time (warm: the "
            "memcpy on all cores; cold: the sequential read; 1.00 = at the floor, below 1 = "
            "faster than it); *x ours* = the row's median / safetensors_c's. Peak RSS is the "
            "most the load added above the built model, over the runs: RssAnon (private memory, "
            "sampled every 2 ms), RssFile (mapped file pages, sampled) and VmHWM (the exact peak "
            "of their sum). *load* = the 1-minute load average before each run (min-max); "
            "*others* = CPU seconds every other process on the machine used during a run "
            "(median, max).", ""]
    out += targets(runs, args, loaders)
    for dtype in args.dtypes:
        files = files_by_dtype[dtype]
        for layout in args.layouts:
            for cache in args.caches:
                count = 1 if layout == "single" else len(files.shards)
                out += [f"## {dtype}, {files.nbytes / MiB:.0f} MiB, {count} file(s), {cache}",
                        "", "| loader | seconds | GB/s | x floor | x ours | +RssAnon MiB | "
                        "+RssFile MiB | +VmHWM MiB | load | others CPU s | runs |",
                        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
                floor = next((l for l in loaders if l.floor == cache), None)
                floor_all = summarise(runs, floor.key, dtype, layout, cache) if floor else None
                ours = summarise(runs, "ours", dtype, layout, cache)
                entries = []
                if floor:
                    entries.append((floor.label + ", first", floor.key, "first"))
                entries += [(l.label, l.key, None) for l in loaders if not l.floor]
                if floor:
                    entries.append((floor.label + ", last", floor.key, "last"))
                for label, key, phase in entries:
                    s = summarise(runs, key, dtype, layout, cache, phase)
                    if s is None:
                        error = next((r.get("error") for r in runs if r["loader"] == key
                                      and r["dtype"] == dtype and r["layout"] == layout
                                      and r["cache"] == cache and r.get("error")), None)
                        why = "failed: " + error.strip().splitlines()[-1][:120] if error else \
                            "not measured"
                        out.append(f"| {label} | {why} | | | | | | | | | |")
                        continue
                    xf = f"{s['median'] / floor_all['median']:.2f}" if floor_all else "-"
                    xo = f"{s['median'] / ours['median']:.2f}" if ours else "-"
                    memory = ("-", "-", "-") if phase else (
                        _mib(s["anon_kib"]), _mib(s["file_kib"]), _mib(s["hwm_kib"]))
                    out.append(
                        f"| {'**' + label + '**' if key == 'ours' else label} | "
                        f"{s['median']:.3f} ({s['low']:.3f}-{s['high']:.3f}) | "
                        f"{files.nbytes / s['median'] / 1e9:.2f} | {xf} | {xo} | "
                        f"{' | '.join(memory)} | {s['load'][0]:.2f}-{s['load'][1]:.2f} | "
                        f"{s['others']:.2f} ({s['others_max']:.2f}) | {s['n']} |")
                if cache == "cold":
                    worst = max((r.get("resident_max", 0) for r in runs if r["dtype"] == dtype
                                 and r["layout"] == layout and r["cache"] == "cold"), default=0)
                    out.append("")
                    out.append(f"Cold: at most {worst:.1%} of any file was resident before a "
                               "run (mincore, after fsync + posix_fadvise(DONTNEED)).")
                    if worst > NOT_COLD:
                        out.append(f"**These runs were not cold**: more than {NOT_COLD:.0%} of "
                                   "a file stayed in the page cache (tmpfs, or pages mapped "
                                   "elsewhere?); put --tmpdir on a disk.")
                out.append("")
    return "\n".join(out) + "\n"


def chart(runs, args, files_by_dtype, loaders, path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    panels = [(d, l, c) for d in args.dtypes for l in args.layouts for c in args.caches]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.0 + 0.32 * len(loaders) * len(panels)),
                             squeeze=False)
    for ax, (dtype, layout, cache) in zip(axes[:, 0], panels):
        nbytes = files_by_dtype[dtype].nbytes
        bars = []
        for loader in loaders:
            if loader.floor and loader.floor != cache:
                continue
            s = summarise(runs, loader.key, dtype, layout, cache)
            if s:
                bars.append((loader.label, nbytes / s["median"] / 1e9,
                             nbytes / s["high"] / 1e9, nbytes / s["low"] / 1e9, loader))
        if not bars:
            continue
        rates = [b[1] for b in bars]
        errors = [[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]]
        colors = ["tab:green" if b[4].ours else "tab:blue" if b[4].floor else "tab:gray"
                  for b in bars]
        ax.barh(range(len(bars)), rates, xerr=errors, color=colors, capsize=2)
        ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{dtype}, {nbytes / MiB:.0f} MiB, {layout}, {cache}", fontsize=9,
                     loc="left")
        for i, rate in enumerate(rates):
            ax.text(rate, i, f" {rate:.2f}", va="center", fontsize=7)
    axes[-1, 0].set_xlabel("GB/s, median of the runs (bars: min-max); longer is faster")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def report_only(args) -> int:
    import types

    with open(args.report_only) as f:
        saved = json.load(f)
    for key, value in saved["settings"].items():
        setattr(args, key, value)
    args.argv = saved["argv"]
    files_by_dtype = {d: types.SimpleNamespace(nbytes=n, shards=[None] * saved["shards"][d])
                      for d, n in saved["bytes"].items()}
    loaders = [LOADERS[k] for k in ("floor.memcpy", "floor.seqread", *args.loaders)
               if any(r["loader"] == k for r in saved["runs"])]
    os.makedirs(args.out, exist_ok=True)
    notes = list(saved["notes"])
    note = chart(saved["runs"], args, files_by_dtype, loaders,
                 os.path.join(args.out, "chart.png"))
    text = markdown(saved["runs"], args, files_by_dtype, loaders, notes + [note] if note else
                    notes, saved.get("wall_s", 0), saved["machine"],
                    saved.get("date"))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.report_only:
        return report_only(args)
    started = time.perf_counter()
    wanted = [LOADERS[k] for k in ("floor.memcpy", "floor.seqread")] + \
        [LOADERS[k] for k in args.loaders]
    notes, loaders = [], []
    for loader in wanted:
        if loader.available():
            loaders.append(loader)
        else:
            note = f"{loader.label} skipped: `{loader.needs}` is not installed"
            notes.append(note)
            print(note, flush=True)
    tmp = tempfile.mkdtemp(prefix="stc-peers-", dir=args.tmpdir)
    zygote = None
    try:
        files_by_dtype, warmups = {}, {}
        for dtype in args.dtypes:
            directory = os.path.join(tmp, dtype)
            os.makedirs(directory)
            files_by_dtype[dtype] = peer_loaders.write_checkpoints(directory, args.size, dtype)
            os.makedirs(os.path.join(directory, "warmup"))
            warmups[dtype] = peer_loaders.write_checkpoints(
                os.path.join(directory, "warmup"), peer_loaders.WARMUP_SIZE, dtype)
            log(f"{dtype}: {files_by_dtype[dtype].nbytes / MiB:.0f} MiB of tensors, "
                f"{len(files_by_dtype[dtype].shards)} shards")
        zygote = peer_runner.Zygote()
        runs = run_all(args, zygote, files_by_dtype, warmups, loaders)
    finally:
        if zygote is not None:
            zygote.close()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    note = chart(runs, args, files_by_dtype, loaders, os.path.join(args.out, "chart.png"))
    if note:
        notes.append(note)
    text = markdown(runs, args, files_by_dtype, loaders, notes, time.perf_counter() - started)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"argv": args.argv, "machine": machine_lines(), "notes": notes,
                   "bytes": {d: f.nbytes for d, f in files_by_dtype.items()},
                   "shards": {d: len(f.shards) for d, f in files_by_dtype.items()},
                   "settings": {k: getattr(args, k) for k in ("size", "dtypes", "layouts",
                                                              "caches", "loaders", "repeat")},
                   "wall_s": time.perf_counter() - started,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs},
                  f, indent=1)
    print(text)
    failed = [r for r in runs if r.get("error")]
    if failed:
        log(f"error: {len(failed)} run(s) failed (see results.json)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
