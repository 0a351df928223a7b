"""picklescan, fickling, modelscan and safetensors_c's scan over one corpus.

    python benchmarks/scanner_comparison.py [--markdown]

The corpus is the one of tests/test_scan_corpus.py (built here, in a temporary
directory, with torch, joblib and NumPy): benign files from the real producers
and malicious files of the bypass classes of the scanners' published advisories.
Each tool gets each file the way its users run it:

- picklescan: ``picklescan.scanner.scan_file_path(path)`` (flagged when it
  reports infected files or dangerous globals, error when it reports a scan error);
- fickling: ``fickling --check-safety PATH`` (exit 0 clean, 1 unsafe, other: error);
- modelscan: ``ModelScan().scan(path)`` (flagged when it reports issues, error when
  it reports errors, "skipped" when it did not scan the file: a user sees no issue);
- safetensors_c: ``scan(path).verdict`` ("safe" is clean; "unsafe" and "unknown"
  are flagged).

A malicious file is *caught* when flagged (or, for a tool that fails on it, counted
apart as an error); it is *missed* when the tool calls it clean or skips it. A
benign file flagged or failed on is a *false alarm*.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLEAN, FLAGGED, ERROR, SKIPPED = "clean", "flagged", "error", "skipped"


def run_ours(path: str) -> str:
    from safetensors_c.scan import scan

    return CLEAN if scan(path).verdict == "safe" else FLAGGED


def run_picklescan(path: str) -> str:
    from picklescan.scanner import scan_file_path

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = scan_file_path(path)
    except Exception:  # noqa: BLE001 - a tool crashing on a file is an outcome
        return ERROR
    if result.infected_files or result.issues_count:
        return FLAGGED
    return ERROR if result.scan_err else CLEAN


def run_fickling(path: str) -> str:
    try:
        # fickling writes safety_results.json into its working directory: keep it
        # next to the file scanned, never in the caller's tree.
        proc = subprocess.run([sys.executable, "-m", "fickling", "--check-safety",
                               os.path.abspath(path)],
                              capture_output=True, text=True, timeout=300,
                              cwd=os.path.dirname(os.path.abspath(path)))
    except subprocess.TimeoutExpired:
        return ERROR
    return {0: CLEAN, 1: FLAGGED}.get(proc.returncode, ERROR)


_MODELSCAN = None


def run_modelscan(path: str) -> str:
    global _MODELSCAN
    from modelscan.modelscan import ModelScan

    logging.disable(logging.CRITICAL)
    if _MODELSCAN is None:
        _MODELSCAN = ModelScan
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = _MODELSCAN().scan(path)
    except Exception:  # noqa: BLE001 - a tool crashing on a file is an outcome
        return ERROR
    summary = result.get("summary", {})
    if summary.get("total_issues", 0) or result.get("issues"):
        return FLAGGED
    if result.get("errors"):
        return ERROR
    scanned = summary.get("scanned", {}).get("total_scanned", 0)
    return CLEAN if scanned else SKIPPED


TOOLS = {
    "picklescan": run_picklescan,
    "fickling": run_fickling,
    "modelscan": run_modelscan,
    "safetensors_c scan": run_ours,
}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for tool, dist in (("picklescan", "picklescan"), ("fickling", "fickling"),
                       ("modelscan", "modelscan"), ("safetensors_c scan", "safetensors_c")):
        try:
            out[tool] = version(dist)
        except Exception:  # noqa: BLE001
            out[tool] = "?"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="per-file table too")
    args = parser.parse_args()
    from test_scan_corpus import build_corpus

    with tempfile.TemporaryDirectory() as tmp:
        samples = build_corpus(tmp)
        outcome = {(s.name, t): run(s.path) for s in samples for t, run in TOOLS.items()}
    tools = list(TOOLS)
    print("| file | class | " + " | ".join(tools) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in tools) + " |")
    if args.markdown:
        for s in samples:
            marks = []
            for t in tools:
                o = outcome[(s.name, t)]
                bad = (o in (CLEAN, SKIPPED)) if s.malicious else (o != CLEAN)
                marks.append(f"**{o}**" if bad else o)
            label = "malicious" if s.malicious else "benign"
            print(f"| `{s.name}` | {label}: {s.kind} | " + " | ".join(marks) + " |")
    malicious = [s for s in samples if s.malicious]
    benign = [s for s in samples if not s.malicious]
    print()
    print(f"Summary over {len(malicious)} malicious and {len(benign)} benign files "
          f"(versions: " + ", ".join(f"{t} {v}" for t, v in versions().items()) + "):")
    print()
    print("| tool | caught | missed | errors on malicious | false alarms (benign flagged "
          "or failed) |")
    print("| --- | --- | --- | --- | --- |")
    status = 0
    for t in tools:
        caught = sum(outcome[(s.name, t)] == FLAGGED for s in malicious)
        missed = [s.name for s in malicious if outcome[(s.name, t)] in (CLEAN, SKIPPED)]
        errors = sum(outcome[(s.name, t)] == ERROR for s in malicious)
        false = [s.name for s in benign if outcome[(s.name, t)] != CLEAN]
        print(f"| {t} | {caught} | {len(missed)} | {errors} | {len(false)} |")
        if t == "safetensors_c scan" and (missed or false):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
