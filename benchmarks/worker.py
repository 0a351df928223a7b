"""The measuring side: a zygote process that forks one child per measurement.

    python worker.py [MODULE ...]    # imports MODULEs, then serves jobs

run.py starts a zygote, which imports NumPy, safetensors_c and the optional
libraries once, then reads one JSON job per line on stdin. For each job it
forks a fresh child that runs the row and reports back, so no competitor's
heap, mappings or peak RSS ever leak into another's numbers, and no row
pays for importing torch. The zygote itself never runs a competitor.

Inside a child the row runs ``repeat`` times after one unrecorded warm-up
run, or fewer once it has used its time budget (at least 3 runs, or 1 for
a row whose single run takes over half the budget: that run is kept).
Before each run the peak RSS is reset to the current RSS
(``/proc/self/clear_refs``), so each run's "extra memory" is its own; run.py
also sets a fixed ``MALLOC_MMAP_THRESHOLD_`` so that freed arrays go back to
the kernel and every run faults its memory in afresh, as a fresh process
would. Answers one JSON line per job on stdout: {"samples": [...]} or
{"samples": [], "error": "..."}.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

import checkpoints
import competitors
import probes

def _one_run(job: dict, target, payload) -> dict:
    """One timed run; ``target`` is a Loader or a Writer."""
    action = job["action"]
    path = job.get("path")
    if job.get("cold") and path and action != "save":
        probes.drop_from_page_cache(path)
    gc.collect()
    probes.reset_peak_rss()
    base = probes.rss_bytes()
    sample = {}

    start = time.perf_counter()
    if action == "save":
        result = target.save(payload, job["out_path"] if target.to_file else None)
    elif action == "memory":
        result = payload
    else:
        result = target.run(path, job.get("slice_name"), job.get("slice_rows"))
    opened = time.perf_counter()
    sample["open"] = opened - start
    sample["rss_open"] = probes.peak_rss_bytes() - base

    if action in competitors.ACTIONS_THAT_READ:
        arrays = probes.as_arrays(result)
        sample["read_bytes"] = sum(a.nbytes for a in arrays)
        probes.checksum(arrays)
        sample["total"] = time.perf_counter() - start
        sample["rss_total"] = probes.peak_rss_bytes() - base
        del arrays
    elif action == "seqread":
        sample["read_bytes"] = os.path.getsize(path)
        sample["total"] = sample["open"]
        sample["rss_total"] = sample["rss_open"]
    del result
    if action == "save" and target.to_file:
        os.unlink(job["out_path"])
    return sample


def measure(job: dict) -> dict:
    if job["action"] == "save":
        target = competitors.writer(job["key"])
    else:
        target = competitors.loader(job["key"])
    payload = None
    if job["action"] in ("save", "memory"):
        spec = checkpoints.spec(job["kind"], job["size"])
        payload = checkpoints.build(spec)
        if job["action"] == "save":
            payload = target.prepare(payload, job.get("stc_path"))

    repeat, budget = job["repeat"], job["budget_s"]
    samples = []
    began = time.perf_counter()
    warm_up = _one_run(job, target, payload)  # first-call setup, page cache
    slow = time.perf_counter() - began > budget / 2
    if slow:  # a row this slow gains nothing from warming up: keep the run
        samples.append(warm_up)
    min_runs = 1 if slow else min(3, repeat)
    while len(samples) < repeat:
        if len(samples) >= min_runs and time.perf_counter() - began > budget:
            break
        samples.append(_one_run(job, target, payload))
    return {"samples": samples}


def _child(job: dict, pipe_w: int) -> None:
    try:
        result = measure(job)
    except BaseException as exc:  # reported as a note in the tables, never fatal
        result = {"samples": [], "error": f"{type(exc).__name__}: {exc}"[:300]}
    with os.fdopen(pipe_w, "w") as pipe:
        pipe.write(json.dumps(result))


def _warm_up_torch() -> None:
    """torch.load's first call imports and sets up a lot (~1 s): do it once, here."""
    import tempfile

    import torch

    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.save({"x": torch.zeros(4), "y": torch.zeros(2, dtype=torch.bfloat16)}, f.name)
        torch.load(f.name, weights_only=True)
        torch.load(f.name, weights_only=True, mmap=True)


def serve() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        pipe_r, pipe_w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(pipe_r)
            status = 0
            try:
                _child(job, pipe_w)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(pipe_w)
        with os.fdopen(pipe_r) as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        if not answer:
            answer = json.dumps({"samples": [], "error": f"worker died (wait status {status})"})
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    import numpy  # noqa: F401  (import once, in the zygote)

    import safetensors_c  # noqa: F401

    for module in sys.argv[1:]:
        __import__(module)
    if "torch" in sys.argv[1:]:
        _warm_up_torch()
    serve()
