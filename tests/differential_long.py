#!/usr/bin/env python3
"""The differential test of tests/test_differential.py, for N cases, outside pytest.

    python3 tests/differential_long.py N [--seed S] [--chunk C] [--save DIR]

Generates N cases with the same hypothesis strategy (in chunks of C examples,
each chunk with its own seed), runs the same check on each, and prints the
counts: cases, both-accept, both-reject, deliberate deviations by kind,
disagreements by kind, and the cases per mutation. The bytes of each
disagreeing case are written to DIR (default: a new temporary directory) with
the verdict and detail. Exits 1 on any disagreement, 0 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import test_differential as diff  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first chunk")
    parser.add_argument("--chunk", type=int, default=5000, help="examples per hypothesis run")
    parser.add_argument("--save", default=None, help="directory for disagreeing cases")
    args = parser.parse_args(argv)

    counts: Counter = Counter()
    labels: Counter = Counter()
    save_dir = Path(args.save) if args.save else None  # created at the first disagreement
    scratch = diff.scratch_dir()
    saved = 0
    start = time.monotonic()

    def record(case):
        nonlocal saved, save_dir
        blob, label, expected = case
        verdict, detail = diff.check_case(blob, expected, scratch)
        diff.tally(counts, verdict)
        labels[label.split("/")[0] + "/" + label.split("/")[1]] += 1
        if verdict.startswith("disagreement") and saved < 200:
            if save_dir is None:
                save_dir = Path(tempfile.mkdtemp(prefix="stc-differential-"))
            save_dir.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(blob).hexdigest()[:16]
            (save_dir / f"{digest}.safetensors").write_bytes(blob)
            (save_dir / f"{digest}.txt").write_text(f"{verdict}\n{label}\n{detail}\n")
            saved += 1

    done = 0
    chunk_index = 0
    while done < args.n:
        size = min(args.chunk, args.n - done)
        run = settings(
            max_examples=size,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(seed(args.seed + chunk_index)(given(diff.cases())(record)))
        before = counts["cases"]
        run()
        done += counts["cases"] - before
        chunk_index += 1
        if counts["cases"] == before:  # hypothesis produced nothing: stop
            break
        print(
            f"  ... {counts['cases']} cases, {time.monotonic() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    elapsed = time.monotonic() - start
    deviations = {k: v for k, v in counts.items() if k.startswith("deviation:")}
    disagreements = {k: v for k, v in counts.items() if k.startswith("disagreement:")}
    print(f"cases:          {counts['cases']}  ({elapsed:.0f} s, seeds {args.seed}..{args.seed + chunk_index - 1})")
    print(f"both accept:    {counts['both_accept']}")
    print(f"both reject:    {counts['both_reject']}")
    print(f"deviations:     {sum(deviations.values())}")
    for kind, n in sorted(deviations.items()):
        print(f"  {kind[len('deviation:'):]:<28} {n}")
    print(f"disagreements:  {sum(disagreements.values())}")
    for kind, n in sorted(disagreements.items()):
        print(f"  {kind[len('disagreement:'):]:<28} {n}")
    print("cases per mutation (json/bytes):")
    for label, n in sorted(labels.items()):
        print(f"  {label:<36} {n}")
    if disagreements:
        print(f"disagreeing cases saved in {save_dir}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
