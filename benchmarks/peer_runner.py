"""One timed load per fresh process, and what the machine did meanwhile (benchmarks/peers.py,
benchmarks/contention.py).

A zygote imports torch and every installed loader once, runs nothing, and forks a child per
run, so a run pays neither for imports nor for anything an earlier run mapped or allocated.
The child builds its model (every page touched), makes the page cache warm (reads the files)
or cold (fsync + posix_fadvise(DONTNEED) on each file, then checks with mincore(2) what stayed
resident), resets its peak RSS and says it is ready. The zygote then records the machine's
load (1-minute load average, CPU time of every process so far), starts a watcher thread that
samples the child's RssAnon and RssFile from /proc/<pid>/status every 2 ms, and lets the child
load. After the load the child reports its time, its own CPU time and its VmHWM; the zygote
works out the CPU time the rest of the machine used during the load (the machine's total,
less the child's and the zygote's own) and the CPU time of any processes it was asked to
watch (the busy processes of contention.py).

    python benchmarks/peer_runner.py      # the zygote: JSON jobs on stdin, results on stdout
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")

import _paths  # noqa: E402,F401  (the in-tree package first)

import peer_loaders  # noqa: E402
import probes  # noqa: E402

SAMPLE_S = 0.002


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _import_loaders() -> None:
    import torch  # noqa: F401

    import safetensors_c.torch  # noqa: F401

    for module in ("safetensors.torch", "runai_model_streamer", "fastsafetensors"):
        try:
            __import__(module)
        except ImportError:
            pass


# -- the child -------------------------------------------------------------------


def _child(job: dict, ready_w: int, go_r: int, result_w: int) -> None:
    import torch

    loader = peer_loaders.LOADERS[job["loader"]]
    files = peer_loaders.Files.from_json(job["files"])
    if loader.threads:
        torch.set_num_threads(loader.threads)
    if job.get("warmup") and not loader.floor:
        # This process's first load of this kind, on a small checkpoint of the same layout:
        # what the loader sets up once per process (lazy imports, thread pools) stays out of
        # the timed load, as it would for a program that loads its second model.
        tiny = peer_loaders.Files.from_json(job["warmup"])
        small = peer_loaders.build_model(peer_loaders.WARMUP_SIZE, job["dtype"])
        loader.prepare(small, tiny, job["layout"])()
        del small
    model = peer_loaders.build_model(job["size"], job["dtype"])
    run = loader.prepare(model, files, job["layout"])
    paths = loader.paths(files, job["layout"])
    if job["cache"] == "cold":
        for path in paths:
            probes.drop_from_page_cache(path)
    else:
        for path in paths:
            with open(path, "rb", buffering=0) as f:
                while f.read(16 << 20):
                    pass
    resident = [probes.resident_fraction(path) for path in paths]
    gc.collect()
    probes.reset_peak_rss()
    before = probes.status_kib()
    os.write(ready_w, b"r")
    os.read(go_r, 1)
    cpu = _own_cpu()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    cpu = _own_cpu() - cpu
    after = probes.status_kib()
    problem = None if loader.floor else peer_loaders.check(model, files.expected)
    result = dict(seconds=seconds, cpu_s=cpu, before_kib=before, after_kib=after,
                  resident_min=min(resident), resident_max=max(resident),
                  torch_threads=torch.get_num_threads(), error=problem)
    os.write(result_w, json.dumps(result).encode() + b"\n")


def _read_line(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


class _Watcher(threading.Thread):
    """Peaks of the child's RssAnon, RssFile and their sum, sampled from outside it."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak = pid, threading.Event(), {}

    def run(self) -> None:
        while not self.stop.is_set():
            status = probes.status_kib(self.pid)
            if not status:
                return
            total = status.get("RssAnon", 0) + status.get("RssFile", 0)
            for key, value in (("RssAnon", status.get("RssAnon", 0)),
                               ("RssFile", status.get("RssFile", 0)), ("sum", total)):
                self.peak[key] = max(self.peak.get(key, 0), value)
            self.stop.wait(SAMPLE_S)


def run_job(job: dict) -> dict:
    """Forks the child for ``job``, measures around its load, returns the result."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its stdout is the zygote's protocol, so it prints to stderr
        status = 0
        try:
            os.dup2(2, 1)
            for fd in (ready_r, go_w, result_r):
                os.close(fd)
            _child(job, ready_w, go_r, result_w)
        except BaseException:
            os.write(result_w, json.dumps({"error": traceback.format_exc()[-3000:]}).encode()
                     + b"\n")
            os.write(ready_w, b"x")
            status = 1
        finally:
            os._exit(status)
    for fd in (ready_w, go_r, result_w):
        os.close(fd)
    watched = job.get("watch_pids", [])
    try:
        state = os.read(ready_r, 1)
        if state != b"r":  # failed before its load
            line = _read_line(result_r)
            return json.loads(line) if line else {"error": "the child died before loading"}
        load_avg = os.getloadavg()[0]
        watcher = _Watcher(pid)
        machine0, own0 = probes.machine_busy_seconds(), _own_cpu()
        watched0 = [probes.cpu_seconds_of(p) for p in watched]
        watcher.start()
        os.write(go_w, b"g")
        line = _read_line(result_r)
        machine1, own1 = probes.machine_busy_seconds(), _own_cpu()
        watched1 = [probes.cpu_seconds_of(p) for p in watched]
        watcher.stop.set()
        watcher.join()
        result = json.loads(line) if line else {"error": "the child died while loading"}
        if "seconds" in result:
            result.update(
                load_avg_1min=load_avg, peak_sampled_kib=watcher.peak,
                others_cpu_s=max(0.0, (machine1 - machine0) - result["cpu_s"] - (own1 - own0)),
                watched_cpu_s=sum(watched1) - sum(watched0))
        return result
    finally:
        for fd in (ready_r, go_w, result_r):
            os.close(fd)
        os.waitpid(pid, 0)


def main() -> None:
    _import_loaders()
    # Pays torch's lazy imports of model building once, here; tiny tensors, so torch's
    # thread pool is not started (the children are forked from this process).
    peer_loaders.build_model(peer_loaders.WARMUP_SIZE, "float32")
    gc.collect()
    gc.freeze()  # the children's collections skip everything imported here
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run_job(json.loads(line))), flush=True)


class Zygote:
    """The parent's handle on a zygote process."""

    def __init__(self) -> None:
        import subprocess

        env = dict(os.environ)
        if _paths.ROOT_FOR_WORKERS:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [_paths.ROOT_FOR_WORKERS, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        if not self.proc.stdout.readline():
            raise RuntimeError(f"the zygote exited with status {self.proc.wait()}")

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"the zygote exited with status {self.proc.wait()}"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


if __name__ == "__main__":
    main()
