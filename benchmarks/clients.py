"""End to end: transformers' from_pretrained, and load_model into an existing model, with the
compatibility switch on (safetensors_c) and off (the reference package).

    python benchmarks/clients.py                      # ~1 GiB GPT-2-like model, 3 runs per row
    python benchmarks/clients.py --size-mib 256 --repeat 5
    python benchmarks/clients.py --dir /somewhere     # where the model is built (and kept)

Every timed run is a process of its own, started with SAFETENSORS_C_COMPAT=1 or =0: the
switch is what a user would flip, and a fresh process gives an honest peak RSS. The process
imports torch and transformers and loads a tiny model of the same architecture first (the
first load of a process sets up seconds' worth of lazy imports), then times only the load. "cold" runs drop the model's
files from the page cache first (fsync, then posix_fadvise(DONTNEED); `fincore` reports what
stayed resident, if it is installed); "warm" runs read them once beforehand. Rows alternate
between the switch settings so that drift on a shared machine hits both alike; medians are
quoted.

Rows:
- from_pretrained: AutoModelForCausalLM.from_pretrained(dir). transformers 5 opens the file
  with safe_open, takes get_slice(name)[...] of each tensor (in a pool of 4 threads) and lets the
  parameters adopt those tensors: with both packages they are views of the mapped file, so the
  bytes are read when first used. The row therefore also gives the time to touch every page of
  every parameter once after the load (the rest of "ready to run").
- load_model: safetensors.torch.load_model(model, file) into a model built beforehand.
- floor: the file's bytes read once into a preallocated buffer (os.readv): the one copy a
  loader that fills its own parameters cannot avoid.

"RSS before" is the RSS after the imports (and, for load_model, after building the model);
the peak (VmHWM) is reset there, so "peak RSS" is the highest RSS during the load and "added"
the most the load itself held at once (page-cache pages of a mapped file count while mapped).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _paths import ROOT_FOR_WORKERS

MODEL_FILE = "model.safetensors"


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """The process's peak RSS since the last reset_peak_rss() (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Forgets the peak reached so far (the imports' transient one): Linux's clear_refs 5."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def model_config(size_mib: int):
    from transformers import GPT2Config

    # F32, untied head: params ~ 12 * layers * d^2 + 2 * vocab * d.
    d, vocab = 1024, 8192
    per_layer = 12 * d * d * 4
    layers = max(1, round((size_mib * 2**20 - 2 * vocab * d * 4) / per_layer))
    return GPT2Config(vocab_size=vocab, n_positions=256, n_embd=d, n_layer=layers, n_head=16,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)


def tiny_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)


def build(directory: str, size_mib: int) -> None:
    """The measured model, and a tiny one of the same architecture for the warm-up."""
    stamp = os.path.join(directory, "built-for.json")
    if os.path.exists(stamp) and json.load(open(stamp)) == {"size_mib": size_mib}:
        return
    import torch
    from transformers import GPT2LMHeadModel

    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(directory + "-tiny", ignore_errors=True)
    torch.manual_seed(0)
    GPT2LMHeadModel(tiny_config()).save_pretrained(directory + "-tiny")
    model = GPT2LMHeadModel(model_config(size_mib))
    model.save_pretrained(directory)
    del model
    json.dump({"size_mib": size_mib}, open(stamp, "w"))


def files_of(directory: str) -> list[str]:
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))
            if n.endswith(".safetensors")]


def evict(paths: list[str]) -> int | None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return resident_bytes(paths)


def warm(paths: list[str]) -> int | None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    return resident_bytes(paths)


def resident_bytes(paths: list[str]) -> int | None:
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES"] + paths,
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return sum(int(x) for x in out.stdout.split())


# -- one timed run, in its own process --------------------------------------------------------


def touch(model) -> None:
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            flat = t.detach().reshape(-1)
            flat[:: max(1, 4096 // t.element_size())].sum()


def worker(op: str, directory: str) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    import safetensors
    import safetensors.torch

    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    through = "safetensors_c" if hasattr(safetensors, "__safetensors_c_version__") else "reference"
    path = os.path.join(directory, MODEL_FILE)
    # The first from_pretrained / load_model of a process imports and sets up more than the
    # load itself (seconds of it): a tiny model of the same architecture pays for that first.
    tiny = AutoModelForCausalLM.from_pretrained(directory + "-tiny")
    safetensors.torch.load_model(tiny, os.path.join(directory + "-tiny", MODEL_FILE))
    del tiny
    if op == "from_pretrained":
        before = rss_mib()
        reset_peak_rss()
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(directory)
        seconds = time.perf_counter() - start
        # Parameters may still be views of a mapped file whose pages are read on first use:
        # time touching every page of every tensor once, the rest of "ready to run".
        start = time.perf_counter()
        touch(model)
        touched = time.perf_counter() - start
    elif op == "load_model":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        model = AutoModelForCausalLM.from_config(config)
        before = rss_mib()
        reset_peak_rss()
        start = time.perf_counter()
        missing, unexpected = safetensors.torch.load_model(model, path, strict=False)
        seconds = time.perf_counter() - start
        assert not unexpected, unexpected
    elif op == "floor":
        size = os.path.getsize(path)
        buffer = torch.ones(size, dtype=torch.uint8)   # faulted in, like a built model's
        view = memoryview(buffer.numpy())
        before = rss_mib()
        reset_peak_rss()
        start = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:done + (1 << 26)]], done)
                if n <= 0:
                    raise OSError("short read")
                done += n
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
        model = buffer
    else:
        raise ValueError(op)
    if op != "from_pretrained":
        touched = 0.0
    return {"op": op, "through": through, "seconds": seconds, "touch_seconds": touched,
            "rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}


def run_one(op: str, switch: str, cache: str, directory: str) -> dict:
    paths = files_of(directory)
    resident = evict(paths) if cache == "cold" else warm(paths)
    env = dict(os.environ, SAFETENSORS_C_COMPAT=switch, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if ROOT_FOR_WORKERS:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT_FOR_WORKERS, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, __file__, "--worker", op, "--dir", directory],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} switch={switch} {cache}: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(cache=cache, switch=switch, resident_before_load=resident)
    expected = "safetensors_c" if switch == "1" else "reference"
    assert result["through"] == expected, result
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--ops", default="from_pretrained,load_model,floor")
    parser.add_argument("--caches", default="warm,cold")
    parser.add_argument("--json", default=None, help="also write the raw runs here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.dir)))
        return

    directory = args.dir or os.path.join(tempfile.gettempdir(), f"stc-clients-bench-{args.size_mib}")
    build(directory, args.size_mib)
    size = sum(os.path.getsize(p) for p in files_of(directory))
    print(f"model: {directory} ({size / 2**20:.0f} MiB in {len(files_of(directory))} file(s))")
    runs = []
    for cache in args.caches.split(","):
        for op in args.ops.split(","):
            switches = ("1",) if op == "floor" else ("1", "0")
            for i in range(args.repeat):
                order = switches if i % 2 == 0 else tuple(reversed(switches))
                for switch in order:
                    runs.append(run_one(op, switch, cache, directory))
    if args.json:
        json.dump(runs, open(args.json, "w"), indent=1)

    print()
    print("| load | cache | through | median s | + touch every page s | GiB/s (with touch) | "
          "peak RSS MiB | RSS before MiB | added MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cache in args.caches.split(","):
        for op in args.ops.split(","):
            for through in ("safetensors_c", "reference"):
                rows = [r for r in runs if r["op"] == op and r["cache"] == cache
                        and r["through"] == through]
                if not rows:
                    continue
                s = statistics.median(r["seconds"] for r in rows)
                total = statistics.median(r["seconds"] + r["touch_seconds"] for r in rows)
                peak = statistics.median(r["peak_rss_mib"] for r in rows)
                before = statistics.median(r["rss_before_mib"] for r in rows)
                label = "(one read)" if op == "floor" else through
                print(f"| {op} | {cache} | {label} | {s:.3f} | {total:.3f} | "
                      f"{size / 2**30 / total:.2f} | "
                      f"{peak:.0f} | {before:.0f} | {peak - before:.0f} |")
    resident = [r["resident_before_load"] for r in runs if r["cache"] == "cold"]
    if resident and all(x is not None for x in resident):
        print(f"\ncold runs: at most {max(resident) / 2**20:.1f} MiB of the model resident "
              "before each load (fincore)")


if __name__ == "__main__":
    main()
