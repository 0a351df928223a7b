"""Leak tests: every read, write and error path, thousands of times, in a subprocess.

Each test runs a helper script (``HELPER`` below) with ``sys.executable -c`` so
that the measurements see only that workload. The helper runs one cycle of
operations ``WARMUP`` times (filling caches, free lists and lazily imported
modules), takes a snapshot, runs the cycle ``ITERATIONS`` more times, takes a
second snapshot and prints both as JSON. A snapshot holds:

- ``rss``: VmRSS from /proc/self/status, in bytes;
- ``objects``: ``len(gc.get_objects())`` after a full collection;
- ``blocks``: ``sys.getallocatedblocks()`` (every object and PyMem block,
  including untracked ones such as NumPy arrays and bytes);
- ``heap``: glibc's ``mallinfo2().uordblks``, the bytes currently allocated
  by ``malloc`` (where the C core and NumPy allocate), when available;
- ``refs``: ``sys.gettotalrefcount()`` on debug builds of CPython.

A leak of one object or one small ``malloc`` per cycle shows up as thousands
of objects or tens of kilobytes after ``ITERATIONS`` cycles, far above the
bounds below; ``test_canary_leak_is_detected`` runs the same measurement on a
cycle that leaks one object and 64 bytes of ``malloc`` on purpose and checks
that the bounds catch it, so these tests can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"

WARMUP = 300
ITERATIONS = 5000

# Growth allowed between the two snapshots (after warm-up).
MAX_RSS_GROWTH = 4 * 1024 * 1024
MAX_OBJECT_GROWTH = 100
MAX_BLOCK_GROWTH = 1000
MAX_HEAP_GROWTH = 64 * 1024
MAX_REFCOUNT_GROWTH = 1000

HELPER = r'''
import ctypes, gc, json, os, sys
sys.path.insert(0, os.environ["STC_ROOT"])
import numpy as np
import ml_dtypes
import safetensors_c
from safetensors_c import SafetensorError, safe_open, load, load_file, save, save_file

config = json.loads(sys.argv[1])
mode = config["mode"]
work = config["dir"]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


try:
    _libc = ctypes.CDLL(None)
    _mallinfo2 = _libc.mallinfo2
    _mallinfo2.restype = _Mallinfo2
    _mallinfo2.argtypes = []
except (OSError, AttributeError):
    _mallinfo2 = None


def snapshot():
    gc.collect()
    gc.collect()
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    snap = {
        "rss": rss,
        "objects": len(gc.get_objects()),
        "blocks": sys.getallocatedblocks(),
    }
    if _mallinfo2 is not None:
        snap["heap"] = _mallinfo2().uordblks
    if hasattr(sys, "gettotalrefcount"):
        snap["refs"] = sys.gettotalrefcount()
    return snap


# ---------------------------------------------------------------- fixtures
rng = np.random.default_rng(5)
TENSORS = {
    "w": rng.standard_normal((16, 8)).astype(np.float32),
    "ids": np.arange(24, dtype=np.int64).reshape(4, 6),
    "mask": np.array([True, False, True]),
    "half": np.arange(6, dtype=np.float16),
    "bf": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16),
    "f8": np.arange(4, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn),
    "c": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    "scalar": np.array(7, dtype=np.int16),
    "empty": np.zeros((0, 3), dtype=np.uint8),
    "f4": safetensors_c.packed(np.arange(4, dtype=np.uint8), "F4", [8]),
}
META = {"format": "np"}
GOOD = os.path.join(work, "good.safetensors")
OUT = os.path.join(work, "out.safetensors")
save_file(TENSORS, GOOD, metadata=META)
with open(GOOD, "rb") as fh:
    BLOB = fh.read()
W = TENSORS["w"]


def check(cond):
    if not cond:
        raise AssertionError("wrong result inside the leak loop")


def cycle_ok(i):
    for backend in ("mmap", "pread"):
        with safe_open(GOOD, "np", backend=backend) as f:
            check(len(f.keys()) == len(TENSORS))
            f.offset_keys()
            check(f.metadata() == META)
            check("w" in f and "nope" not in f and len(f) == len(TENSORS))
            a = f.get_tensor("w")
            check(a[3, 4] == W[3, 4])
            a[0, 0] = 1.0  # copy-on-write / private memory
            everything = f.get_tensors()
            check(everything["ids"][3, 5] == 23)
            everything["bf"].sum()
            everything["f4"].logical_shape
            s = f.get_slice("w")
            check(s.get_shape() == [16, 8] and s.get_dtype() == "F32")
            check(s[1:3, ::2].shape == (2, 4))
            check(s[-1, 3] == W[-1, 3])
            check(s[[0, 2]].shape == (2, 8))
            s[..., None, 1:2]
            f.get_slice("f4")[1:3]
            f.get_slice("empty")[:, 1]
            f.get_slice("scalar")[()]
            repr(f)
        # Arrays that outlive their handle keep the owner alive, then free it.
        f = safe_open(GOOD, "np", backend=backend)
        kept = f.get_tensor("ids")
        f.close()
        check(kept[1, 1] == 7)
        del kept, f
        loaded = load_file(GOOD, backend=backend)
        check(loaded["c"][1] == 3 - 4j)
        del loaded
    check(load(BLOB)["w"][2, 2] == W[2, 2])
    check(load(bytearray(BLOB))["ids"][0, 1] == 1)
    check(load(memoryview(BLOB))["mask"][2])
    blob = save(TENSORS, metadata=META)
    check(blob == BLOB)
    save(TENSORS)
    save({"t": W.T})  # non-contiguous: copied row by row
    save({"be": np.arange(3, dtype=">i4")})  # big-endian: converted
    save_file(TENSORS, OUT, metadata=META)
    save_file({"t": W[::2, ::-1]}, OUT)


# ---------------------------------------------------------------- error paths
EXPECTED = json.loads(open(config["expected"]).read())
BAD = {}  # one vector for each rejection kind
for name, code in sorted(EXPECTED.items()):
    if code != "OK":
        BAD.setdefault(code, os.path.join(config["vectors"], name))
BAD_BLOBS = {}
for code, path in BAD.items():
    with open(path, "rb") as fh:
        BAD_BLOBS[code] = fh.read()
MISSING = os.path.join(work, "missing.safetensors")
NO_DIR = os.path.join(work, "no", "such", "dir", "x.safetensors")
closed = safe_open(GOOD, "np")
CLOSED_SLICE = closed.get_slice("w")
closed.close()
TRUNC = os.path.join(work, "trunc.safetensors")


def expect(exc_type, fn, *args, code=None, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        if code is not None and getattr(exc, "code", None) != code:
            raise AssertionError(f"{fn}: code {exc.code!r}, expected {code!r}")
        str(exc)
        return
    raise AssertionError(f"{fn}{args} did not raise {exc_type.__name__}")


def open_mmap(path):
    safe_open(path, "np", backend="mmap")


def open_pread(path):
    safe_open(path, "np", backend="pread")


def cycle_errors(i):
    for code, path in BAD.items():
        expect(SafetensorError, open_mmap, path, code=code)
        expect(SafetensorError, open_pread, path, code=code)
        expect(SafetensorError, load_file, path, code=code)
        expect(SafetensorError, load, BAD_BLOBS[code], code=code)
    expect(SafetensorError, load, bytearray(BAD_BLOBS["STC_ERR_INVALID_JSON"]))
    expect(FileNotFoundError, safe_open, MISSING, "np")
    expect(FileNotFoundError, load_file, MISSING, backend="pread")
    expect(IsADirectoryError, load_file, work)
    expect(SafetensorError, safe_open, GOOD, "mxnet")
    expect(SafetensorError, safe_open, GOOD, "np", backend="nope")
    expect(TypeError, safe_open, 42, "np")
    expect(SafetensorError, safe_open, GOOD, "np", max_header_size=8)
    for backend in ("mmap", "pread"):
        with safe_open(GOOD, "np", backend=backend) as f:
            expect(SafetensorError, f.get_tensor, "nope")
            expect(SafetensorError, f.get_slice, "nope")
            s = f.get_slice("w")
            expect(IndexError, s.__getitem__, (0, 0, 0))
            expect(IndexError, s.__getitem__, 99)
            expect(IndexError, s.__getitem__, "x")
        expect(SafetensorError, f.keys)
        expect(SafetensorError, f.metadata)
        expect(SafetensorError, f.get_tensor, "w")
        expect(SafetensorError, f.get_tensors)
        expect(SafetensorError, f.get_slice, "w")
        expect(SafetensorError, len, f)
    CLOSED_SLICE[0]  # a slice keeps its file: still readable after close()
    expect(TypeError, save, [W])
    expect(TypeError, save, {1: W})
    expect(TypeError, save, {"a": [1, 2]})
    expect(SafetensorError, save, {"a": np.array(["x"])})
    expect(SafetensorError, save, {"a": np.zeros(2, dtype=np.complex128)})
    expect(SafetensorError, save, {"a": np.zeros(2, dtype=object)})
    expect(TypeError, save, {"a": W}, metadata={"k": 1})
    expect(TypeError, save, {"a": W}, metadata=["k"])
    expect(ValueError, save, {"__metadata__": W})
    expect(TypeError, save_file, {"a": W}, 42)
    expect(FileNotFoundError, save_file, {"a": W}, NO_DIR)
    expect(TypeError, load, 42)
    # A file that shrank after opening (FILE_CHANGED on every read path).
    with open(TRUNC, "wb") as fh:
        fh.write(BLOB)
    for backend in ("mmap", "pread"):
        f = safe_open(TRUNC, "np", backend=backend)
        os.truncate(TRUNC, 64)
        expect(SafetensorError, f.get_tensor, "w", code="STC_ERR_FILE_CHANGED")
        expect(SafetensorError, f.get_tensors, code="STC_ERR_FILE_CHANGED")
        expect(SafetensorError, f.get_slice("w").__getitem__, (slice(0, 2),), code="STC_ERR_FILE_CHANGED")
        f.close()
        with open(TRUNC, "wb") as fh:
            fh.write(BLOB)


# ---------------------------------------------------------------- canary
CANARY = []
_malloc = ctypes.CDLL(None).malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]


def cycle_canary(i):
    CANARY.append([])  # one (gc-tracked) object, never freed
    _malloc(64)  # 64 bytes of malloc, never freed


cycle = {"ok": cycle_ok, "errors": cycle_errors, "canary": cycle_canary}[mode]
for i in range(config["warmup"]):
    cycle(i)
before = snapshot()
for i in range(config["iterations"]):
    cycle(i)
after = snapshot()
print(json.dumps({"before": before, "after": after, "bad_kinds": sorted(BAD)}))
'''


def run_helper(directory, mode: str, warmup: int = WARMUP, iterations: int = ITERATIONS) -> dict:
    config = {
        "mode": mode,
        "dir": str(directory),
        "warmup": warmup,
        "iterations": iterations,
        "vectors": str(VECTORS),
        "expected": str(VECTORS / "expected.json"),
    }
    env = dict(os.environ, STC_ROOT=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", HELPER, json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"helper failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]
    result["growth"] = {key: after[key] - before[key] for key in before}
    return result


def leaks(growth: dict) -> list[str]:
    """Every measurement above its bound, as readable strings."""
    bounds = {
        "rss": MAX_RSS_GROWTH,
        "objects": MAX_OBJECT_GROWTH,
        "blocks": MAX_BLOCK_GROWTH,
        "heap": MAX_HEAP_GROWTH,
        "refs": MAX_REFCOUNT_GROWTH,
    }
    return [
        f"{key} grew by {growth[key]} (bound {bound})"
        for key, bound in bounds.items()
        if key in growth and growth[key] > bound
    ]


pytestmark = [
    pytest.mark.skipif(
        not Path("/proc/self/status").exists(), reason="needs /proc/self/status for VmRSS"
    ),
    # Under tests/sanitize.sh, ASan keeps freed memory in quarantine on
    # purpose, so memory only grows; the sanitizer checks leaks its own way.
    pytest.mark.skipif(
        "asan" in os.environ.get("LD_PRELOAD", ""),
        reason="memory growth is meaningless under AddressSanitizer",
    ),
]


@pytest.fixture
def workdir(tmp_path):
    """A scratch directory, on tmpfs when there is one: save_file syncs the
    file and its directory, which on a disk costs milliseconds per save and
    measures nothing here."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        import tempfile
        import shutil

        path = Path(tempfile.mkdtemp(prefix="stc-leaks-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


def test_read_and_write_paths_do_not_leak(workdir):
    """open / keys / metadata / get_tensor / get_tensors / get_slice (basic and
    advanced indices, packed and ml_dtypes dtypes) on both backends, arrays that
    outlive their handle, load_file (both backends), load of bytes, bytearray
    and memoryview, save and save_file (contiguous, strided, big-endian)."""
    result = run_helper(workdir, "ok")
    assert leaks(result["growth"]) == [], result


def test_error_paths_do_not_leak(workdir):
    """Every rejection kind of tests/vectors (through both backends, load_file
    and load), missing files, a directory, bad arguments, unknown tensor names,
    bad indices, use after close, every bad save input, and files that shrink
    under an open handle."""
    result = run_helper(workdir, "errors", warmup=300, iterations=2000)
    # Each rejection kind of the vectors is exercised.
    expected = json.loads((VECTORS / "expected.json").read_text())
    assert result["bad_kinds"] == sorted(set(expected.values()) - {"OK"})
    assert leaks(result["growth"]) == [], result


def test_canary_leak_is_detected(workdir):
    """The measurement itself: a cycle leaking one object and 64 bytes of
    malloc per iteration must break the object and heap (or RSS) bounds."""
    result = run_helper(workdir, "canary", warmup=10, iterations=ITERATIONS)
    growth = result["growth"]
    assert growth["objects"] >= ITERATIONS - 10
    found = leaks(growth)
    assert any(f.startswith("objects") for f in found), found
    if "heap" in growth:
        assert growth["heap"] >= 64 * ITERATIONS
        assert any(f.startswith("heap") for f in found), found
