"""The packed F4/F6 rules and the dtype names are stated once: the nibble
order, the NumPy shape of packed bytes and the pairs shape in `_dtypes` (the
F4/F6 bit order of the C side in the core's dtype.c), the names in one table
the adapters map from. The C core and the Python rules agree."""

from __future__ import annotations

import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import _core, _dtypes
from conftest import PACKAGE

ROOT = Path(__file__).resolve().parent.parent

NIBBLE_OPS = re.compile(r"&\s*0x0[fF]\b|>>\s*4\b|<<\s*4\b")


def test_nibble_order_is_written_only_in_dtypes():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "_dtypes.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if NIBBLE_OPS.search(line)
    ]
    assert not found, "F4 nibbles handled outside _dtypes:\n" + "\n".join(found)


@pytest.mark.source_tree  # reads csrc/core/stats.c
def test_the_core_states_the_packed_bit_order_once():
    stats = (ROOT / "csrc/core/stats.c").read_text()
    assert "stc__packed_code" in stats
    assert not re.search(r">>\s*4\b|0x3Fu|6 \* \(", stats)


@pytest.mark.parametrize("path", ["_adapters/torch.py", "_adapters/flax.py",
                                  "_adapters/tensorflow.py", "_dtypes.py"])
def test_dtype_names_are_not_spelled_again(path):
    text = (PACKAGE / path).read_text()
    for name in ("float8_e4m3fnuz", "float8_e5m2fnuz"):
        assert name not in text, f"{path} spells {name}: map from _dtypes.DTYPE_NAMES"


def test_the_name_table_is_the_cores():
    assert _dtypes.DTYPE_NAMES == _core.dtype_names()
    assert _dtypes.DTYPE_NAMES["F8_E4M3FNUZ"] == "float8_e4m3fnuz"
    assert set(_dtypes.DTYPE_NAMES) == set(_dtypes.SUPPORTED_CODES) - {"F6_E2M3", "F6_E3M2"}


def test_f4_bytes_decode_alike_in_the_core_and_in_python():
    """Statistics the core computes over F4 bytes are those of the values
    _dtypes.unpack_f4 reads (low nibble first): a byte whose two nibbles
    differ tells the orders apart."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, 999, dtype=np.uint8)
    raw[0] = 0x7F  # low nibble 0xF (-6.0), high nibble 0x7 (6.0)
    values = _dtypes.unpack_f4(raw).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
    count, nan, inf, zeros, finite, lo, hi, mean, _ = _core.stats("F4", raw)
    assert (count, nan, inf, finite) == (values.size, 0, 0, values.size)
    assert zeros == int(np.count_nonzero(values == 0))
    assert (lo, hi) == (values.min(), values.max())
    assert mean == pytest.approx(values.mean())
    # and the first value of the file is the low nibble
    first = safetensors_c.packed(raw[:1], "F4")
    assert _core.stats("F4", np.asarray(first))[5] == -6.0


def test_pack_and_unpack_are_inverse():
    codes = np.arange(16, dtype=np.uint8).repeat(3)
    packed = _dtypes.pack_f4(codes)
    assert packed.size == codes.size // 2
    assert packed[0] == 0x00 and packed[1] == 0x10  # (0, 0), then (0, 1): high nibble second
    assert _dtypes.unpack_f4(packed).tolist() == codes.tolist()


@pytest.mark.parametrize("code", ["F4", "F6_E2M3", "F6_E3M2"])
@pytest.mark.parametrize("shape", [(8,), (2, 4), (3, 2, 8), (4, 6), (2, 2), (6,), (0, 4)])
def test_the_numpy_shape_rule_is_the_cores(code, shape, tmp_path):
    """The core (mapped and read) and _dtypes.array_from_bytes give the same
    uint8 shape for packed bytes: the last dimension in whole groups when it
    fills them, else one flat run."""
    count = int(np.prod(shape))
    bits = _dtypes.PACKED_BITS[code]
    if count * bits % 8:
        pytest.skip("not whole bytes")
    raw = np.arange(count * bits // 8, dtype=np.uint8)
    path = tmp_path / "p.safetensors"
    safetensors_c.save_file({"p": safetensors_c.packed(raw, code, shape)}, str(path))
    expected = _dtypes.packed_numpy_shape(code, shape, raw.size)
    for backend in ("mmap", "pread"):
        got = _core.open(str(path), backend).tensor("p")
        assert got.shape == expected
        assert got.logical_shape == shape
    python = _dtypes.array_from_bytes(code, shape, bytearray(raw.tobytes()))
    assert python.shape == expected and python.logical_shape == shape
    assert python.format_dtype == code


def test_pairs_shape_is_the_torch_shape():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    from safetensors_c.torch import load

    raw = np.arange(12, dtype=np.uint8)
    data = safetensors_c.save({"q": safetensors_c.packed(raw, "F4", (2, 12))})
    tensor = load(data)["q"]
    assert tuple(tensor.shape) == _dtypes.f4_pairs_shape((2, 12)) == (2, 6)
    assert _dtypes.f4_values_shape(tuple(tensor.shape)) == (2, 12)
