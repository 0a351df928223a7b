"""load_file and save_file per framework: safetensors_c.<fw> against the
reference's safetensors.<fw>, one fresh process per framework, medians.

    python benchmarks/frameworks.py [--size-mib 256] [--repeat 5]
        [--frameworks flax mlx tensorflow paddle] [--aligned]

Each worker builds a transformer-like checkpoint of ``--size-mib`` MiB of
float32 tensors as arrays of its framework, writes it with both libraries
(the files are byte-identical; each library then reads the file it wrote),
and alternates the operations ``--repeat`` times after one warm-up run.
The page cache is warm. ``--aligned`` pads the metadata so that the data
section starts 64-byte aligned (as about one file in eight does by
chance), which is when JAX adopts the mapping. Columns:

- load: ``load_file`` returning every array (for a lazy, mapped load this is
  mostly the page-table work; the bytes are read later);
- load+read: the same, then every byte read once through NumPy (a wrapping
  sum of 8-byte words), after the framework has finished its work;
- save: ``save_file`` of the framework arrays. safetensors_c's save is
  durable (it fsyncs the file before renaming it into place, then the
  directory); the reference's is not, so this ratio includes that fsync;
- durable save: the same, with the reference's save followed by an fsync of
  its file and of the directory, as ours does;
- zero-copy: the share of tensors whose memory is the file's mapping after
  safetensors_c's load (JAX and TensorFlow adopt 64-byte aligned tensors
  only; paddle adopts every tensor).

Adding a framework is one entry in ``FRAMEWORKS``: how to turn NumPy arrays
into its arrays, how to wait for its lazy work, and how to see an array's
bytes from NumPy.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple

import numpy as np

import _paths  # noqa: F401  (the in-tree package when it is built in place)

HERE = os.path.dirname(os.path.abspath(__file__))


class Framework(NamedTuple):
    module: str  # "safetensors_c.<module>" and "safetensors.<module>"
    needs: str  # the module that must import for the row to run
    from_numpy: Callable[[np.ndarray], Any]
    wait: Callable[[Dict[str, Any]], None]  # finish lazy work on loaded arrays
    host_view: Callable[[Any], np.ndarray]  # NumPy view of an array's bytes
    address: Callable[[Any], int]  # where an array's data lives (0: unknown)


# MARK: frameworks (function-local imports: each runs only in its worker)


def _jax_from_numpy(array):
    import jax

    return jax.device_put(array, jax.devices("cpu")[0])


def _jax_wait(arrays):
    for array in arrays.values():
        array.block_until_ready()


def _mlx_from_numpy(array):
    import mlx.core as mx

    out = mx.array(array)
    mx.eval(out)
    return out


def _mlx_wait(arrays):
    import mlx.core as mx

    mx.eval(*arrays.values())


def _mlx_host_view(array):
    import mlx.core as mx

    raw = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}[array.itemsize]
    return np.asarray(array.view(raw))


def _mlx_address(array):
    return _mlx_host_view(array).__array_interface__["data"][0]


def _tf_from_numpy(array):
    import tensorflow as tf

    return tf.convert_to_tensor(array)


def _paddle_from_numpy(array):
    import paddle

    return paddle.to_tensor(array)


def _dlpack_address(array):
    return np.from_dlpack(array).__array_interface__["data"][0]


FRAMEWORKS: Dict[str, Framework] = {
    "flax": Framework(
        module="flax",
        needs="jax",
        from_numpy=_jax_from_numpy,
        wait=_jax_wait,
        host_view=np.asarray,
        address=lambda a: a.unsafe_buffer_pointer(),
    ),
    "mlx": Framework(
        module="mlx",
        needs="mlx.core",
        from_numpy=_mlx_from_numpy,
        wait=_mlx_wait,
        host_view=_mlx_host_view,
        address=_mlx_address,
    ),
    # TF and paddle are eager: nothing to wait for; their CPU tensors are
    # seen from NumPy through DLPack (float32 here), without a copy.
    "tensorflow": Framework(
        module="tensorflow",
        needs="tensorflow",
        from_numpy=_tf_from_numpy,
        wait=lambda arrays: None,
        host_view=np.from_dlpack,
        address=_dlpack_address,
    ),
    "paddle": Framework(
        module="paddle",
        needs="paddle",
        from_numpy=_paddle_from_numpy,
        wait=lambda arrays: None,
        host_view=np.from_dlpack,
        address=lambda a: a.data_ptr(),
    ),
}


# MARK: the worker


def checkpoint(size_mib: int) -> Dict[str, np.ndarray]:
    """Transformer-like float32 tensors totalling about ``size_mib`` MiB."""
    hidden = 1024
    rng = np.random.default_rng(0)
    tensors = {"embed.weight": rng.random((8192, hidden), dtype=np.float32)}  # 32 MiB
    layer = 0
    while sum(t.nbytes for t in tensors.values()) < size_mib << 20:
        for name, shape in (("q", (hidden, hidden)), ("k", (hidden, hidden)),
                            ("v", (hidden, hidden)), ("o", (hidden, hidden)),
                            ("up", (2816, hidden)), ("down", (hidden, 2816)),
                            ("norm", (hidden,))):
            tensors[f"layers.{layer}.{name}.weight"] = rng.random(shape, dtype=np.float32)
        layer += 1
    return tensors


def read_every_byte(views: List[np.ndarray]) -> int:
    total = 0
    for view in views:
        flat = np.ascontiguousarray(view).reshape(-1).view(np.uint8)
        words = flat[: flat.size // 8 * 8].view(np.uint64)
        total += int(np.add.reduce(words, dtype=np.uint64)) + int(flat[words.size * 8:].sum())
    return total


def mapped_ranges(path: str) -> List[tuple]:
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == real:
                out.append(tuple(int(x, 16) for x in fields[0].split("-")))
    return out


def worker(name: str, size_mib: int, repeat: int, directory: str,
           aligned: bool = False) -> Dict[str, Any]:
    spec = FRAMEWORKS[name]
    ours = importlib.import_module(f"safetensors_c.{spec.module}")
    theirs = importlib.import_module(f"safetensors.{spec.module}")
    arrays = {k: spec.from_numpy(v) for k, v in checkpoint(size_mib).items()}
    nbytes = sum(spec.host_view(a).nbytes for a in arrays.values())
    paths = {"ours": os.path.join(directory, f"{name}-ours.safetensors"),
             "theirs": os.path.join(directory, f"{name}-ref.safetensors")}
    libraries = {"ours": ours, "theirs": theirs}
    metadata = {"pad": ""}
    if aligned:
        # Grow a metadata value until the data section starts 64-byte
        # aligned; every tensor here is a multiple of 64 bytes.
        for _ in range(9):
            ours.save_file(arrays, paths["ours"], metadata)
            with open(paths["ours"], "rb") as f:
                missing = -(8 + int.from_bytes(f.read(8), "little")) % 64
            if not missing:
                break
            metadata["pad"] += " " * missing
    # (each save gets a copy of the dict: the reference's TF save replaces
    # its values with NumPy arrays)
    for who, path in paths.items():
        libraries[who].save_file(dict(arrays), path, metadata)
    with open(paths["ours"], "rb") as a, open(paths["theirs"], "rb") as b:
        identical = a.read() == b.read()

    loaded = ours.load_file(paths["ours"])
    ranges = mapped_ranges(paths["ours"])
    adopted = sum(
        any(lo <= spec.address(a) < hi for lo, hi in ranges) for a in loaded.values()
    )
    total_tensors = len(loaded)
    del loaded
    gc.collect()

    def load(who):
        out = libraries[who].load_file(paths[who])
        spec.wait(out)
        return out

    def load_read(who):
        out = load(who)
        read_every_byte([spec.host_view(a) for a in out.values()])
        return out

    def save(who):
        libraries[who].save_file(dict(arrays), paths[who] + ".save", metadata)

    def durable_save(who):
        save(who)
        if who == "theirs":  # ours fsyncs the file and its directory itself
            for target in (paths[who] + ".save", directory):
                fd = os.open(target, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    operations = {"load": load, "load+read": load_read, "save": save,
                  "durable save": durable_save}
    times: Dict[str, Dict[str, List[float]]] = {
        op: {"ours": [], "theirs": []} for op in operations
    }
    for run in range(repeat + 1):  # run 0 warms up
        for op, fn in operations.items():
            for who in ("ours", "theirs") if run % 2 == 0 else ("theirs", "ours"):
                gc.collect()
                start = time.perf_counter()
                result = fn(who)
                elapsed = time.perf_counter() - start
                del result
                if run:
                    times[op][who].append(elapsed)
    for path in paths.values():
        for p in (path, path + ".save"):
            if os.path.exists(p):
                os.remove(p)
    return {
        "framework": name + (" (aligned)" if aligned else ""),
        "bytes": nbytes,
        "tensors": total_tensors,
        "zero_copy": adopted,
        "identical": identical,
        "medians": {op: {who: statistics.median(ts) for who, ts in by.items()}
                    for op, by in times.items()},
        "minimums": {op: {who: min(ts) for who, ts in by.items()} for op, by in times.items()},
        "runs": repeat,
    }


# MARK: the driver


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def table(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| framework | op | safetensors_c median (min) | safetensors median (min) "
        "| ratio of medians (ref/ours) | GB/s (ours, median) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for op, m in r["medians"].items():
            ours, theirs = m["ours"], m["theirs"]
            low = r["minimums"][op]
            lines.append(
                f"| {r['framework']} | {op} | {ours * 1e3:.1f} ms ({low['ours'] * 1e3:.1f}) | "
                f"{theirs * 1e3:.1f} ms ({low['theirs'] * 1e3:.1f}) | "
                f"{theirs / ours:.2f}x | {r['bytes'] / ours / 1e9:.2f} |"
            )
    notes = [
        f"- {r['framework']}: {r['bytes'] / 2**20:.0f} MiB in {r['tensors']} tensors; "
        f"{r['zero_copy']}/{r['tensors']} tensors zero-copy after load_file; files "
        f"{'byte-identical' if r['identical'] else 'DIFFERENT'}; median of {r['runs']} runs"
        for r in results
    ]
    return "\n".join(lines + [""] + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frameworks", nargs="*", default=sorted(FRAMEWORKS))
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--aligned", action="store_true",
                        help="pad the metadata so that the data section is 64-byte aligned "
                             "(JAX and TensorFlow can then adopt every tensor)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    directory = args.tmpdir or tempfile.gettempdir()

    if args.worker:
        print(json.dumps(worker(args.worker, args.size_mib, args.repeat, directory,
                                args.aligned)))
        return

    results = []
    env = dict(os.environ)
    if _paths.ROOT_FOR_WORKERS:
        env["PYTHONPATH"] = os.pathsep.join(
            [_paths.ROOT_FOR_WORKERS] + [p for p in [env.get("PYTHONPATH")] if p]
        )
    for name in args.frameworks:
        if name not in FRAMEWORKS:
            parser.error(f"unknown framework {name!r}; known: {', '.join(sorted(FRAMEWORKS))}")
        if not _installed(FRAMEWORKS[name].needs):
            print(f"{name}: skipped ({FRAMEWORKS[name].needs} is not installed)", file=sys.stderr)
            continue
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "frameworks.py"), "--worker", name,
             "--size-mib", str(args.size_mib), "--repeat", str(args.repeat),
             "--tmpdir", directory] + (["--aligned"] if args.aligned else []),
            capture_output=True, text=True, env=env,
        )
        if proc.returncode != 0:
            print(f"{name}: worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
                  file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
