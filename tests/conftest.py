"""Shared helpers for the Python API tests.

``build`` makes the raw bytes of a (possibly malformed) file; the ``craft``
fixture writes them to a fresh file in ``tmp_path`` and returns its path.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ml_dtypes  # noqa: E402

import safetensors_c  # noqa: E402
import safetensors_c.numpy  # noqa: E402

# The package under test: the checkout's, or in tests/wheel_check.sh's run the
# installed wheel's. Tests that read its Python source read it here.
PACKAGE = Path(safetensors_c.__file__).resolve().parent

BACKENDS = ("mmap", "pread")

# code -> NumPy dtype a tensor of that code loads as (packed ones excluded)
NUMPY_DTYPE_OF = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "C64": np.dtype("<c8"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
}
PACKED_CODES = ("F4", "F6_E2M3", "F6_E3M2")
PACKED_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

# Writer rank order (FORMAT.md): lowest rank first.
RANK = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
    "F64", "I64", "U64",
]
assert len(RANK) == 22


def pytest_configure(config):
    # Registered here, not in pyproject.toml: the wheel run (tests/wheel_check.sh) copies
    # only tests/ and deselects these with -m "not source_tree".
    config.addinivalue_line(
        "markers", "source_tree: reads the checkout (csrc/, docs/, README.md, benchmarks/, "
        "pyproject.toml), which an installed wheel does not carry")


def header_bytes(header) -> bytes:
    """The JSON text of a header given as bytes, str, or a JSON-able object."""
    if isinstance(header, bytes):
        return header
    if isinstance(header, str):
        return header.encode("utf-8")
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build(header, data: bytes = b"", pad: bool = True, n: int | None = None) -> bytes:
    """Raw file bytes: the 8-byte length, the header, the data.

    ``pad`` right-pads the header with spaces to a multiple of 8 (as the
    writer does); ``n`` overrides the length prefix.
    """
    text = header_bytes(header)
    if pad:
        text += b" " * (-len(text) % 8)
    length = len(text) if n is None else n
    return struct.pack("<Q", length) + text + bytes(data)


def entry(dtype: str, shape, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def random_array(code: str, shape, rng: np.random.Generator) -> np.ndarray:
    """A random array of a non-packed dtype, from random bytes (any bit pattern)."""
    dtype = NUMPY_DTYPE_OF[code]
    count = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    if code == "BOOL":
        raw = raw & 1
    return raw.view(dtype).reshape(shape)


def assert_same_array(actual, expected) -> None:
    """Same dtype, shape and bytes (NaN-safe, -0.0-safe)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


def tmp_files(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def craft(tmp_path):
    """craft(header, data=b"", pad=True, n=None, name=...) -> path of a new file."""
    counter = iter(range(1_000_000))

    def make(header, data: bytes = b"", pad: bool = True, n: int | None = None, name=None):
        path = tmp_path / (name or f"crafted{next(counter)}.safetensors")
        path.write_bytes(build(header, data, pad=pad, n=n))
        return path

    return make


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def sample_tensors():
    rng = np.random.default_rng(1234)
    return {
        "weight": rng.standard_normal((4, 5)).astype(np.float32),
        "bias": rng.standard_normal(5).astype(np.float64),
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
        "mask": np.array([True, False, True]),
        "scalar": np.array(7, dtype=np.int16),
        "empty": np.zeros((0, 3), dtype=np.uint8),
    }


@pytest.fixture
def sample_file(tmp_path, sample_tensors):
    path = tmp_path / "sample.safetensors"
    safetensors_c.save_file(sample_tensors, path, metadata={"format": "np"})
    return path

@pytest.fixture
def remote_checkpoint(tmp_path):
    """(file bytes, tensors) of the file the loopback HTTP servers serve:
    a small tensor in the speculative first read, one far beyond it."""
    tensors = {
        "a": np.arange(1000, dtype=np.float32),
        "far": np.arange(200_000, dtype=np.float64),  # 1.6 MB: beyond the first read
    }
    path = tmp_path / "h.safetensors"
    safetensors_c.numpy.save_file(tensors, str(path))
    return path.read_bytes(), tensors


# Each framework's tests (tests/frameworks/) run in a pytest process of their
# own, launched by tests/test_frameworks.py: some frameworks crash when
# imported into one process with another (paddle after tensorflow).
if not os.environ.get("STC_FRAMEWORK_SUITE"):
    collect_ignore = ["frameworks"]


@st.composite
def basic_index(draw, shape):
    """A random basic index (ints, slices, None, one Ellipsis) for `shape`,
    sometimes out of range: the slicing tests compare ours with NumPy on it."""
    parts = []
    dims_left = len(shape)
    used_ellipsis = False
    n_parts = draw(st.integers(0, len(shape) + 2))
    for _ in range(n_parts):
        kind = draw(st.sampled_from(["int", "slice", "slice", "none", "ellipsis"]))
        if kind == "ellipsis" and not used_ellipsis:
            used_ellipsis = True
            parts.append(Ellipsis)
            continue
        if kind == "none":
            parts.append(None)
            continue
        size = shape[len(shape) - dims_left] if dims_left > 0 else 3
        bound = size + 2
        if kind == "int":
            parts.append(draw(st.integers(-bound, bound)))
        else:
            start = draw(st.none() | st.integers(-bound, bound))
            stop = draw(st.none() | st.integers(-bound, bound))
            step = draw(st.none() | st.integers(-4, 4).filter(lambda s: s != 0))
            parts.append(slice(start, stop, step))
        dims_left -= 1
    if draw(st.booleans()) and len(parts) == 1:
        return parts[0]
    return tuple(parts)
