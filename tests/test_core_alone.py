"""The C extension on its own: `_core` loaded without the package (no
`safetensors_c/__init__.py`, no `_reader`, no hooks installed into it) opens
files and hands out arrays of every dtype, and one table of dtype names
serves the core and the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import _core, _dtypes

ROOT = Path(__file__).resolve().parent.parent

# Loads the extension by its file, under its own name, and nothing else of
# the package; then opens a file and reports what every tensor came out as.
ALONE = r"""
import importlib.machinery, importlib.util, json, sys
path, target = sys.argv[1], sys.argv[2]
loader = importlib.machinery.ExtensionFileLoader("safetensors_c._core", path)
spec = importlib.util.spec_from_file_location("safetensors_c._core", path, loader=loader)
core = importlib.util.module_from_spec(spec)
sys.modules["safetensors_c._core"] = core
loader.exec_module(core)
report = {"package_modules": sorted(m for m in sys.modules if m.startswith("safetensors_c"))}
for backend in ("mmap", "pread"):
    f = core.open(target, backend)
    out = {}
    for name in f.keys():
        a = f.tensor(name)
        out[name] = {
            "dtype": str(a.dtype), "shape": list(a.shape), "type": type(a).__name__,
            "bytes": a.view("u1").reshape(-1).tolist(),
            "format_dtype": getattr(a, "format_dtype", None),
            "logical_shape": list(a.logical_shape) if hasattr(a, "logical_shape") else None,
        }
    report[backend] = out
report["image"] = sorted(core.open_buffer(open(target, "rb").read()).keys())
report["names"] = core.dtype_names()
print(json.dumps(report))
"""


def _every_dtype():
    """One small tensor of every dtype of the format, with bytes that tell
    the values apart, as (name, code, logical shape, raw bytes)."""
    rng = np.random.default_rng(7)
    out = []
    for code, bits in _core.dtypes():
        shape = (2, 4) if bits % 8 else (3,)
        nbytes = 2 * 4 * bits // 8 if bits % 8 else 3 * bits // 8
        raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
        if code == "BOOL":
            raw = raw % 2
        out.append((f"t_{code}", code, shape, raw))
    return out


def _file(tmp_path):
    tensors = {}
    for name, code, shape, raw in _every_dtype():
        if code in _dtypes.PACKED_BITS:
            tensors[name] = safetensors_c.packed(raw, code, shape)
        else:
            tensors[name] = raw.view(_dtypes.numpy_dtype(code)).reshape(shape)
    path = tmp_path / "every.safetensors"
    safetensors_c.save_file(tensors, str(path))
    return path


def _run_alone(path):
    proc = subprocess.run(
        [sys.executable, "-I", "-c", ALONE, _core.__file__, str(path)],
        capture_output=True, text=True, timeout=120, cwd=str(path.parent),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_core_alone_loads_no_package_module(tmp_path):
    report = _run_alone(_file(tmp_path))
    assert report["package_modules"] == ["safetensors_c._core"]


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_core_alone_hands_out_every_dtype(tmp_path, backend):
    """Without any hook from the package: NumPy and ml_dtypes dtypes by the
    core's own table, packed F4/F6 as the core's PackedArray with their
    format dtype and logical shape; the bytes are the file's."""
    path = _file(tmp_path)
    got = _run_alone(path)[backend]
    for name, code, shape, raw in _every_dtype():
        entry = got[name]
        assert entry["bytes"] == raw.tolist(), name
        if code in _dtypes.PACKED_BITS:
            assert entry["type"] == "PackedArray", name
            assert entry["dtype"] == "uint8", name
            assert entry["format_dtype"] == code
            assert entry["logical_shape"] == list(shape)
        else:
            assert entry["type"] == "ndarray", name
            assert entry["dtype"] == str(_dtypes.numpy_dtype(code)), name
            assert entry["shape"] == list(shape)


def test_core_alone_opens_an_image(tmp_path):
    path = _file(tmp_path)
    assert _run_alone(path)["image"] == sorted(n for n, *_ in _every_dtype())


def test_one_table_of_dtype_names(tmp_path):
    """The core's names are the package's, and name every ml_dtypes type and
    NumPy type the package loads."""
    names = _run_alone(_file(tmp_path))["names"]
    assert names == _dtypes.DTYPE_NAMES
    assert list(names) == [c for c, bits in _core.dtypes() if c not in ("F6_E2M3", "F6_E3M2")]
    for code in _dtypes.ML_CODES:
        assert np.dtype(getattr(ml_dtypes, names[code])) == _dtypes.numpy_dtype(code)
    for code, name in names.items():
        if code not in _dtypes.ML_CODES and code not in _dtypes.PACKED_BITS:
            assert np.dtype(name) == _dtypes.numpy_dtype(code)


def test_the_package_uses_the_cores_packed_array():
    assert safetensors_c.PackedArray is _core.PackedArray
    assert not hasattr(_core, "_set_hooks")


def test_packed_views_keep_format_and_lose_a_logical_shape_they_no_longer_have():
    raw = np.arange(6, dtype=np.uint8).reshape(2, 3)
    f6 = safetensors_c.packed(raw, "F6_E2M3")
    assert f6.logical_shape == (2, 4)
    flat = f6.reshape(-1)
    assert isinstance(flat, _core.PackedArray) and flat.format_dtype == "F6_E2M3"
    assert flat._stored_shape is None
    assert flat.logical_shape == (8,)
    odd = f6[:, :2]  # 2 bytes of F6 are not whole values
    with pytest.raises(ValueError, match=r"cannot tell the logical shape of a F6_E2M3 array "
                                         r"of shape \(2, 2\)"):
        odd.logical_shape
    bare = np.zeros(4, np.uint8).view(_core.PackedArray)
    with pytest.raises(ValueError, match="this PackedArray has no format dtype"):
        bare.logical_shape
    # a hostile format_dtype is no packed code: no shape, no crash
    bare.format_dtype = 12345
    with pytest.raises(ValueError, match="no format dtype"):
        bare.logical_shape
