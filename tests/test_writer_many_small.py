"""The writer with many small tensors: few system calls, the same bytes, and
errors of the gathered writes still reported.

The core gathers writes under 24 KiB into a 96 KiB buffer; these tests look at
what a caller can see of that: how many write() calls a save makes (from
/proc/self/io), that the bytes equal the reference's and a one-at-a-time
image, that a failure inside the gathered data (a file size limit) is an
OSError with the target untouched, and that a strided array between small
ones lands where it belongs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import _core

ROOT = Path(__file__).resolve().parents[1]


def _write_calls() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    raise AssertionError("no syscw line in /proc/self/io")


def _many(n: int, size: int = 64) -> dict:
    return {f"layer.{i}.weight": np.full(size, i, dtype=np.float32) for i in range(n)}


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io")
def test_ten_thousand_small_tensors_take_few_write_calls(tmp_path):
    tensors = _many(10_000)  # 2.5 MiB of data in 256-byte tensors
    path = tmp_path / "many.safetensors"
    safetensors_c.save_file(tensors, path)  # warm up imports and caches
    before = _write_calls()
    safetensors_c.save_file(tensors, path)
    calls = _write_calls() - before
    # One per tensor before; now about one per 96 KiB (plus pytest's own output).
    assert calls < 50, f"{calls} write() calls for 10,000 small tensors"
    loaded = safetensors_c.load_file(path)
    assert len(loaded) == 10_000
    assert loaded["layer.9999.weight"][0] == 9999.0


def test_many_small_tensors_match_the_reference_bytes(tmp_path):
    reference = pytest.importorskip("safetensors.numpy")
    tensors = _many(3_000, size=17)  # odd sizes: no tensor ends on a gather boundary
    tensors.update({f"big.{i}": np.arange(70_000 + i, dtype=np.int16) for i in range(3)})
    tensors["scalar"] = np.array(3.5, dtype=np.float64)
    tensors["empty"] = np.zeros((0, 4), dtype=np.uint8)
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    safetensors_c.save_file(tensors, ours, metadata={"k": "v"})
    reference.save_file(tensors, str(theirs), metadata={"k": "v"})
    assert ours.read_bytes() == theirs.read_bytes()
    assert safetensors_c.save(tensors, metadata={"k": "v"}) == theirs.read_bytes()


def test_strided_array_between_small_ones_keeps_its_place(tmp_path):
    base = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    tensors = {f"a{i:04d}": np.full(8, i, dtype=np.float32) for i in range(500)}
    tensors["a0250x"] = base[:, ::3]  # sorts between a0250 and a0251, not C-contiguous
    tensors["a0251y"] = base.T
    path = tmp_path / "mixed.safetensors"
    safetensors_c.save_file(tensors, path)
    assert path.read_bytes() == safetensors_c.save(tensors)
    loaded = safetensors_c.load_file(path)
    np.testing.assert_array_equal(loaded["a0250x"], base[:, ::3])
    np.testing.assert_array_equal(loaded["a0251y"], base.T)
    assert loaded["a0499"][0] == 499.0


def test_wrong_sized_array_creates_no_temporary_file(tmp_path):
    """Sizes are checked before the temporary file exists: a lying array
    leaves the directory exactly as it was."""
    path = tmp_path / "t.safetensors"
    names = [f"t{i}" for i in range(1000)]
    arrays = [np.zeros(4, np.float32) for _ in names]
    arrays[-1] = np.zeros(3, np.float32)  # its shape says 4 values
    with pytest.raises(safetensors_c.SafetensorError, match=r"'t999'.*12 bytes.*16") as info:
        _core.save(names, ["F32"] * 1000, [(4,)] * 1000, arrays, None, str(path))
    assert info.value.code == "STC_ERR_SIZE_MISMATCH"
    assert os.listdir(tmp_path) == []


def test_core_takes_shapes_as_any_sequence_of_integers():
    arrays = [np.zeros((2, 3), np.float32)] * 3
    shapes = [(2, 3), [2, 3], (np.int64(2), np.uint8(3))]
    out = _core.save(["a", "b", "c"], ["F32"] * 3, shapes, arrays, None, None)
    assert out == safetensors_c.save({n: arrays[0] for n in "abc"})


@pytest.mark.parametrize("shape, exc", [((2.0, 3), TypeError), ((2, -3), OverflowError),
                                        ("ab", TypeError), (5, TypeError)])
def test_core_rejects_shapes_that_are_not_integers(shape, exc):
    with pytest.raises(exc):
        _core.save(["a"], ["F32"], [shape], [np.zeros(6, np.float32)], None, None)


def test_same_name_twice_among_dtypes_is_rejected():
    """Duplicates are found whether or not the tensors share one dtype."""
    names = ["x", "y", "x"]
    arrays = [np.zeros(1, np.float32), np.zeros(1, np.int8), np.zeros(1, np.float64)]
    with pytest.raises(safetensors_c.SafetensorError, match="same name"):
        _core.save(names, ["F32", "I8", "F64"], [(1,)] * 3, arrays, None, None)
    with pytest.raises(safetensors_c.SafetensorError, match="same name"):
        _core.save(names, ["F32"] * 3, [(1,)] * 3, [np.zeros(1, np.float32)] * 3, None, None)


FSIZE_HELPER = r'''
import json, os, resource, signal, sys
sys.path.insert(0, os.environ["STC_ROOT"])
import numpy as np
import safetensors_c
target, limit = sys.argv[1], int(sys.argv[2])
tensors = {f"t{i:05d}": np.full(64, i, dtype=np.float32) for i in range(20000)}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    safetensors_c.save_file(tensors, target)
except OSError as exc:
    print(json.dumps({"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}))
else:
    print(json.dumps({"type": None}))
'''


@pytest.mark.parametrize("limit", [1 << 20, (3 << 20) + 12345, (5 << 20) - 1])
def test_file_size_limit_inside_gathered_writes_is_an_oserror(tmp_path, limit):
    """5 MiB of 256-byte tensors under a file size limit: the failing write is a
    gathered one (or the last flush at commit); the error is still EFBIG and
    the old file stays."""
    target = tmp_path / "m.safetensors"
    safetensors_c.save_file({"old": np.arange(3)}, target)
    before = target.read_bytes()
    proc = subprocess.run([sys.executable, "-c", FSIZE_HELPER, str(target), str(limit)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, STC_ROOT=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] is not None, "the save passed the file size limit"
    assert result["errno"] == errno.EFBIG, result
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == [target.name]
