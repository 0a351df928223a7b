"""Benchmarks safetensors_c against the reference safetensors, pickle, torch and NumPy.

    python benchmarks/run.py [--quick] [--cold] [--sizes KIND=SIZE ...] [--repeat N]
                             [--out DIR]

Generates deterministic synthetic checkpoints in a temporary directory,
writes each competitor's native file from the same tensors, measures every
row in a fresh process (forked by worker.py), and writes results.md,
results.json and chart.png into --out. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _paths  # noqa: E402  (puts the in-tree package first when it is built in place)

import chart  # noqa: E402
import checkpoints  # noqa: E402
import competitors  # noqa: E402
import machine  # noqa: E402
import report  # noqa: E402
import targets  # noqa: E402
from stats import Row, format_time  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20

# kind -> size (bytes for llm/llm_bf16/big, tensor count for small/wide); 0 skips it.
PRESETS = {
    "full": dict(sizes={"llm": GiB, "llm_bf16": GiB, "small": 10_000, "wide": 200_000,
                        "big": GiB}, repeat=5, budget_s=20.0),
    "quick": dict(sizes={"llm": 64 * MiB, "llm_bf16": 0, "small": 2_000, "wide": 20_000,
                         "big": 0}, repeat=3, budget_s=1.0),
    "tiny": dict(sizes={"llm": 2 * MiB, "llm_bf16": 0, "small": 200, "wide": 1_000, "big": 0},
                 repeat=1, budget_s=0.5),
}
OPTIONAL = ("torch", "safetensors")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes, fewer runs: under a minute; prints a summary table")
    p.add_argument("--cold", action="store_true",
                   help="drop each file from the page cache before every load")
    p.add_argument("--sizes", nargs="+", default=[], metavar="KIND=SIZE",
                   help="e.g. llm=256MiB small=5000 wide=0 (0 skips); kinds: "
                        + ", ".join(checkpoints.KINDS))
    p.add_argument("--repeat", type=int, help="timed runs per row (default 5, --quick 3)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="stop repeating a row after this long once it has 3 runs")
    p.add_argument("--out", help="output directory (default benchmarks/results, "
                                 "--quick: benchmarks/results/quick)")
    p.add_argument("--tmpdir", help="where the checkpoint files go (default: system temp)")
    p.add_argument("--report-only", metavar="RESULTS_JSON",
                   help="rewrite results.md and chart.png from a results.json; measure nothing")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--without", default="", help=argparse.SUPPRESS)  # e.g. torch,safetensors
    args = p.parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    sizes = dict(preset["sizes"])
    for item in args.sizes:
        kind, _, size = item.partition("=")
        if kind not in checkpoints.KINDS or not size:
            p.error(f"--sizes {item!r}: use KIND=SIZE with KIND one of {checkpoints.KINDS}")
        try:
            sizes[kind] = checkpoints.parse_size(size)
        except ValueError as exc:
            p.error(str(exc))
    args.sizes = {k: v for k, v in sizes.items() if v > 0}
    args.repeat = args.repeat or preset["repeat"]
    args.reduced = args.quick or args.tiny  # fewer rows: see competitors' quick=False
    args.budget = args.budget if args.budget is not None else preset["budget_s"]
    default_out = "results/quick" if (args.quick or args.tiny) else "results"
    args.out = args.out or os.path.join(HERE, default_out)
    args.without = {m.strip() for m in args.without.split(",") if m.strip()}
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- files -------------------------------------------------------------------


def write_native_files(spec, tmp: str, available) -> tuple[dict, dict]:
    """Each format's own file of ``spec``'s tensors: ({fmt: path}, {fmt: why not})."""
    tensors = checkpoints.build(spec)
    paths, failed = {}, {}
    for fmt in competitors.FORMATS.values():
        if spec.kind not in fmt.kinds:
            continue
        if fmt.needs and not available(fmt.needs):
            failed[fmt.key] = f"{fmt.needs} is not available"
            continue
        path = os.path.join(tmp, spec.kind + fmt.suffix)
        writer = competitors.NATIVE_WRITERS[fmt.key]
        started = time.perf_counter()
        try:
            writer.save(writer.prepare(tensors, paths.get("stc")), path)
            if not os.path.exists(path) and os.path.exists(path + ".npy"):
                os.rename(path + ".npy", path)
            with open(path, "rb+") as f:  # settle the writeback before timing anything
                os.fsync(f.fileno())
        except Exception as exc:
            failed[fmt.key] = f"{writer.label} cannot write it: {type(exc).__name__}: {exc}"[:200]
            log(f"  no {fmt.key} file: {failed[fmt.key]}")
            continue
        paths[fmt.key] = path
        log(f"  wrote {os.path.basename(path)}: {checkpoints.format_bytes(os.path.getsize(path))}"
            f" in {time.perf_counter() - started:.1f} s")
    return paths, failed


# -- measuring ---------------------------------------------------------------


def plan(spec, paths, failed, args, available) -> list:
    """(Row, job) pairs for one checkpoint; a Row with a note where a job can't run."""
    name, shape = spec.largest if spec.kind in competitors.SLICEABLE else (None, (0,))
    common = dict(kind=spec.kind, size=spec.size, repeat=args.repeat, budget_s=args.budget,
                  slice_name=name, slice_rows=max(1, shape[0] // 8), stc_path=paths.get("stc"))
    stc_bytes = os.path.getsize(paths["stc"]) if "stc" in paths else None
    out = []

    def add(target, action, fmt, needs, cold, job_extra):
        row = Row(spec.kind, target.key, target.label, action, limit=target.limit, cold=cold,
                  file_bytes=stc_bytes)
        if needs and not available(needs):
            row.note = f"{needs} is not available"
        elif fmt and fmt not in paths:
            row.note = failed.get(fmt, f"no {fmt} file")
        elif "stc" not in paths:
            row.note = failed.get("stc", "no safetensors file")
        out.append((row, None if row.note else dict(common, key=target.key, action=action,
                                                     cold=cold, **job_extra)))

    for loader in competitors.LOADERS:
        if spec.kind not in loader.kinds or (args.reduced and not loader.quick):
            continue
        needs = loader.needs or (competitors.FORMATS[loader.fmt].needs if loader.fmt else None)
        job = {"path": paths.get(loader.fmt)}
        add(loader, loader.action, loader.fmt, needs, args.cold, job)
        if loader.cold_check and not args.cold and spec.kind == "llm":
            add(loader, loader.action, loader.fmt, needs, True, job)
    for writer in competitors.WRITERS:
        if args.reduced and (not writer.quick or spec.kind != "llm"):
            continue
        if spec.kind in writer.kinds:
            suffix = competitors.FORMATS[writer.native].suffix if writer.native else ".bin"
            out_path = os.path.join(args.tmp, f"out-{writer.key}-{spec.kind}{suffix}")
            add(writer, "save", None, writer.needs, False, {"out_path": out_path})
    return out


class Zygotes:
    """One worker zygote per set of libraries; each forks a child per job."""

    def __init__(self, env: dict, available) -> None:
        self.env, self.available, self.procs = env, available, {}

    def _start(self, group: str):
        modules = ["torch"] if group == "torch" else []
        if self.available("safetensors"):
            modules.append("safetensors.numpy")
        return subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), *modules],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=self.env)

    def run(self, job: dict, group: str) -> dict:
        proc = self.procs.get(group)
        if proc is None or proc.poll() is not None:
            proc = self.procs[group] = self._start(group)
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError as exc:
            line = ""
            log(f"  worker failed: {exc}")
        if not line:
            return {"samples": [], "error": f"worker exited with status {proc.wait()} "
                                            "(see its stderr above)"}
        return json.loads(line)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()


def worker_env(args) -> dict:
    env = dict(os.environ)
    if _paths.ROOT_FOR_WORKERS:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [_paths.ROOT_FOR_WORKERS, env.get("PYTHONPATH")])
        )
    # A fixed threshold turns off glibc's adaptive one: large freed arrays go back
    # to the kernel, so every run in a worker pays for its memory like a fresh process.
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 << 10)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# -- main --------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args.report_only, args.out)
    started = time.perf_counter()
    missing = {m for m in OPTIONAL if m in args.without or importlib.util.find_spec(m) is None}

    def available(module):
        return module not in missing

    notes = [f"{m} is not available{' (--without)' if m in args.without else ''}: "
             "its rows are skipped" for m in sorted(missing)]
    args.tmp = tempfile.mkdtemp(prefix="stc-bench-", dir=args.tmpdir)
    machine_rows = machine.describe(ROOT, args.tmp, missing)
    zygotes = Zygotes(worker_env(args), available)
    rows = []
    stc_failures = []
    try:
        for kind in checkpoints.KINDS:
            if kind not in args.sizes:
                continue
            spec = checkpoints.spec(kind, args.sizes[kind])
            log(f"{kind}: {spec.describe()}")
            paths, failed = write_native_files(spec, args.tmp, available)
            if "stc" in failed:
                stc_failures.append(f"{kind}: {failed['stc']}")
            for row, job in plan(spec, paths, failed, args, available):
                rows.append(row)
                if job is None:
                    continue
                group = "torch" if row.key.startswith(("torch.", "stc_torch.")) else "base"
                row_started = time.perf_counter()
                result = zygotes.run(job, group)
                row.samples = result["samples"]
                if result.get("error"):
                    row.note = result["error"]
                metric = "open" if row.action in ("load", "keys", "slice", "save") else "total"
                log(f"  {row.label + (' [cold]' if row.cold else ''):<48} "
                    + (format_time(row.median(metric)) if row.samples else f"-- {row.note}")
                    + f"  [{len(row.samples)} runs, {time.perf_counter() - row_started:.1f} s]")
            for path in paths.values():
                os.unlink(path)
    finally:
        zygotes.close()
        shutil.rmtree(args.tmp, ignore_errors=True)

    machine_rows.append(("benchmark wall time", f"{time.perf_counter() - started:.0f} s"))
    settings = dict(command="python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
                    cold=args.cold, repeat=args.repeat)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"settings": settings, "sizes": args.sizes, "machine": machine_rows,
                   "notes": notes, "rows": [r.to_json() for r in rows]}, f, indent=1)
    write_report(rows, args.sizes, settings, machine_rows, notes, args.out)
    if stc_failures:
        log("error: safetensors_c could not write its own checkpoints: " + "; ".join(stc_failures))
        return 1
    return 0


def write_report(rows, sizes, settings, machine_rows, notes, out) -> None:
    specs = {kind: checkpoints.spec(kind, size) for kind, size in sizes.items()}
    notes = list(notes)
    if "llm_bf16" in specs:
        notes.append("bfloat16 in .npz is stored as raw 2-byte void ('V2'): np.save has no "
                     "bfloat16; pickle and torch keep the dtype")
    verdicts = targets.evaluate(rows, sizes)
    chart_note = chart.draw(rows, specs, os.path.join(out, "chart.png"))
    if chart_note:
        notes.append(chart_note)
    md_path = os.path.join(out, "results.md")
    with open(md_path, "w") as f:
        f.write(report.markdown(rows, specs, verdicts, machine_rows, notes, settings))
    print(report.summary(rows, specs, verdicts, notes, os.path.relpath(md_path)))


def report_only(path: str, out: str) -> int:
    with open(path) as f:
        saved = json.load(f)
    rows = [Row(**row) for row in saved["rows"]]
    write_report(rows, saved["sizes"], saved["settings"], [tuple(m) for m in saved["machine"]],
                 saved.get("notes", []), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
