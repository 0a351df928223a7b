"""What a load leaves in the page cache: ``load_model`` with and without
``drop_cache=True``, beside the reference, on a cold checkpoint.

    python benchmarks/drop_cache.py                 # 1 GiB of float32, 5 runs per row
    python benchmarks/drop_cache.py --size 256MiB --repeat 3

Each run is a fresh process: the checkpoint is evicted (posix_fadvise
DONTNEED, checked with mincore), a preallocated model is filled from it, and
the run reports the time, the fraction of the checkpoint's pages left in
the page cache afterwards, and the process's RssAnon and RssFile growth
during the load. A load that leaves the whole file cached pushes the same
amount of someone else's cache out when memory is short; a load with
``drop_cache=True`` leaves the cache as it found it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # measure the tree, built in place
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from checkpoints import parse_size  # noqa: E402
from probes import drop_from_page_cache, resident_fraction, status_kib  # noqa: E402

LOADERS = ("ours", "ours drop_cache=True", "reference")

CHILD = r"""
import json, sys, time
sys.path[:0] = [{root!r}, {here!r}]
import torch
from probes import drop_from_page_cache, resident_fraction, status_kib
from peer_loaders import build_model
import safetensors_c.torch as ours
model = build_model({size}, "float32")
path, loader = {path!r}, {loader!r}
if loader == "reference":
    import safetensors.torch as reference
drop_from_page_cache(path)
cached_before = resident_fraction(path)
before = status_kib()
start = time.perf_counter()
if loader == "reference":
    reference.load_model(model, path)
else:
    ours.load_model(model, path, drop_cache=loader.endswith("True"))
seconds = time.perf_counter() - start
after = status_kib()
print(json.dumps(dict(seconds=seconds, cached_before=cached_before,
                      cached_after=resident_fraction(path),
                      rss_anon_mib=(after["RssAnon"] - before["RssAnon"]) / 1024,
                      rss_file_mib=(after["RssFile"] - before["RssFile"]) / 1024)))
"""


def one_run(path: str, size: int, loader: str) -> dict:
    code = CHILD.format(root=ROOT, here=HERE, size=size, path=path, loader=loader)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)

    import torch  # noqa: F401 - the model and the file
    from peer_loaders import build_model
    import safetensors_c.torch as ours

    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = os.path.join(tmp, "model.safetensors")
        ours.save_model(build_model(size, "float32"), path)
        drop_from_page_cache(path)
        print(f"{os.path.getsize(path) / 2**20:.0f} MiB checkpoint, cold before every run; "
              f"load average {os.getloadavg()[0]:.2f} at the start")
        runs = {loader: [] for loader in LOADERS}
        for _ in range(args.repeat):
            for loader in LOADERS:  # interleaved: noise spreads over every row
                runs[loader].append(one_run(path, size, loader))
        print(f"load average {os.getloadavg()[0]:.2f} at the end\n")
        print("| loader | time, s (min / median / max) | file cached after | "
              "+RssAnon MiB | +RssFile MiB |")
        print("| --- | --- | --- | --- | --- |")
        for loader, rows in runs.items():
            times = sorted(r["seconds"] for r in rows)
            cached = statistics.median(r["cached_after"] for r in rows)
            anon = statistics.median(r["rss_anon_mib"] for r in rows)
            filed = statistics.median(r["rss_file_mib"] for r in rows)
            print(f"| {loader} | {times[0]:.3f} / {statistics.median(times):.3f} / "
                  f"{times[-1]:.3f} | {cached:.1%} | {anon:.0f} | {filed:.0f} |")
        assert all(r["cached_before"] < 0.01 for rows in runs.values() for r in rows), \
            "the checkpoint was not evicted before a run"


if __name__ == "__main__":
    main()
