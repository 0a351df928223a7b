"""Every dtype of the format: NumPy dtypes, byte-exact round trips, packed types."""

from __future__ import annotations

import json
import struct
import zlib

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import PackedArray, SafetensorError, safe_open

from conftest import (
    NUMPY_DTYPE_OF,
    PACKED_BITS,
    PACKED_CODES,
    RANK,
    assert_same_array,
    build,
    entry,
    random_array,
    random_bytes,
)

WHOLE_CODES = sorted(NUMPY_DTYPE_OF, key=RANK.index)


def header_of(data: bytes) -> dict:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n])


def test_all_22_dtypes_are_covered():
    assert set(WHOLE_CODES) | set(PACKED_CODES) == set(RANK)
    assert [code for code, _ in safetensors_c._core.dtypes()] == RANK


# MARK: - Whole-byte dtypes


@pytest.mark.parametrize("code", WHOLE_CODES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 3), (2, 3, 1, 2)])
def test_round_trip_byte_exact(tmp_path, code, shape, backend):
    rng = np.random.default_rng(zlib.crc32(repr((code, shape)).encode()))
    array = random_array(code, shape, rng)
    data = safetensors_c.save({"x": array})
    header = header_of(data)
    assert header["x"]["dtype"] == code
    assert header["x"]["shape"] == list(shape)
    assert data.endswith(array.tobytes()) or array.nbytes == 0
    path = tmp_path / "d.safetensors"
    safetensors_c.save_file({"x": array}, path)
    assert path.read_bytes() == data
    for loaded in (
        safetensors_c.load(data)["x"],
        safetensors_c.load_file(path, backend=backend)["x"],
    ):
        assert loaded.dtype == NUMPY_DTYPE_OF[code]
        assert loaded.dtype == array.dtype
        assert_same_array(loaded, array)
    # Loaded arrays save back to the same bytes.
    assert safetensors_c.save(safetensors_c.load_file(path, backend=backend)) == data


@pytest.mark.parametrize(
    "dtype, code",
    [
        (np.bool_, "BOOL"),
        (np.uint8, "U8"),
        (np.int8, "I8"),
        (np.int16, "I16"),
        (np.uint16, "U16"),
        (np.float16, "F16"),
        (np.int32, "I32"),
        (np.uint32, "U32"),
        (np.float32, "F32"),
        (np.complex64, "C64"),
        (np.float64, "F64"),
        (np.int64, "I64"),
        (np.uint64, "U64"),
        (np.intp, "I64"),
        (np.longlong, "I64"),
        (ml_dtypes.bfloat16, "BF16"),
        (ml_dtypes.float8_e5m2, "F8_E5M2"),
        (ml_dtypes.float8_e4m3fn, "F8_E4M3"),
        (ml_dtypes.float8_e8m0fnu, "F8_E8M0"),
        (ml_dtypes.float8_e4m3fnuz, "F8_E4M3FNUZ"),
        (ml_dtypes.float8_e5m2fnuz, "F8_E5M2FNUZ"),
    ],
)
def test_dtype_to_code(dtype, code):
    header = header_of(safetensors_c.save({"x": np.zeros(2, dtype)}))
    assert header["x"]["dtype"] == code


def test_ml_dtypes_values():
    values = np.array([1.0, -2.5, 0.0, 3.0], dtype=ml_dtypes.bfloat16)
    data = safetensors_c.save({"b": values})
    assert data.endswith(bytes.fromhex("803f" "20c0" "0000" "4040"))
    loaded = safetensors_c.load(data)["b"]
    assert loaded.dtype == ml_dtypes.bfloat16
    assert loaded.astype(np.float32).tolist() == [1.0, -2.5, 0.0, 3.0]


def test_bool_bytes_other_than_0_and_1_are_kept(craft, backend):
    # The format stores BOOL as bytes; we do not normalise them.
    path = craft({"b": entry("BOOL", [3], 0, 3)}, b"\x00\x01\x02")
    with safe_open(path, "np", backend=backend) as f:
        b = f.get_tensor("b")
        assert b.dtype == np.bool_
        assert b.view(np.uint8).tolist() == [0, 1, 2]


def test_nan_and_signed_zero_payloads_preserved():
    raw = np.array([0x7FC00001, 0xFFC00000, 0x80000000, 0x7F800000], dtype=np.uint32)
    floats = raw.view(np.float32)
    loaded = safetensors_c.load(safetensors_c.save({"f": floats}))["f"]
    assert loaded.view(np.uint32).tolist() == raw.tolist()


# MARK: - Packed sub-byte dtypes


def packed_numpy_shape(code, shape):
    bits = PACKED_BITS[code]
    if shape and (shape[-1] * bits) % 8 == 0:
        return tuple(shape[:-1]) + (shape[-1] * bits // 8,)
    count = int(np.prod(shape, dtype=np.int64))
    return (count * bits // 8,)


PACKED_CASES = [
    ("F4", [3, 4]),
    ("F4", [8]),
    ("F4", [2, 3]),  # last dim odd: flat bytes
    ("F4", [0, 4]),
    ("F4", [2, 0]),
    ("F4", [5, 2, 6]),
    ("F6_E2M3", [2, 8]),
    ("F6_E2M3", [4]),
    ("F6_E2M3", [4, 2]),  # last dim not a multiple of 4: flat bytes
    ("F6_E2M3", [0]),
    ("F6_E3M2", [2, 4]),
    ("F6_E3M2", [3, 12]),
    ("F6_E3M2", [2, 2]),  # flat bytes
]


@pytest.mark.parametrize("code, shape", PACKED_CASES)
def test_packed_loads_as_packed_array(craft, code, shape, backend):
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * PACKED_BITS[code] // 8
    raw = random_bytes(nbytes, seed=nbytes)
    header = {"p": entry(code, shape, 0, nbytes)}
    path = craft(header, raw)
    expected_shape = packed_numpy_shape(code, shape)
    with safe_open(path, "np", backend=backend) as f:
        sl = f.get_slice("p")
        assert sl.get_shape() == shape
        assert sl.get_dtype() == code
        arrays = [f.get_tensor("p"), f.get_tensors()["p"]]
    arrays.append(safetensors_c.load_file(path, backend=backend)["p"])
    arrays.append(safetensors_c.load(path.read_bytes())["p"])
    for a in arrays:
        assert isinstance(a, PackedArray)
        assert a.dtype == np.uint8
        assert a.shape == expected_shape
        assert a.format_dtype == code
        assert a.logical_shape == tuple(shape)
        assert a.tobytes() == raw
        # Saving the loaded array writes the same file.
        assert safetensors_c.save({"p": a}) == path.read_bytes()


def test_packed_save_with_other_tensors_keeps_rank_order(tmp_path):
    f4 = safetensors_c.packed(np.arange(4, dtype=np.uint8).reshape(2, 2), "F4")
    assert f4.logical_shape == (2, 4)
    tensors = {"f4": f4, "u8": np.arange(3, dtype=np.uint8), "b": np.ones(1, np.bool_)}
    data = safetensors_c.save(tensors)
    header = header_of(data)
    assert list(header) == ["u8", "f4", "b"]  # U8 > F4 > BOOL
    assert header["f4"] == entry("F4", [2, 4], 3, 7)
    loaded = safetensors_c.load(data)
    assert loaded["f4"].logical_shape == (2, 4)
    assert loaded["f4"].tobytes() == bytes([0, 1, 2, 3])


def test_packed_helper_validates():
    raw = np.zeros(3, np.uint8)
    assert safetensors_c.packed(raw, "F6_E2M3", (4,)).logical_shape == (4,)
    with pytest.raises(ValueError):
        safetensors_c.packed(raw, "F6_E2M3", (5,))
    with pytest.raises(ValueError):
        safetensors_c.packed(raw, "F5")
    with pytest.raises(TypeError):
        safetensors_c.packed(raw.astype(np.int8), "F4")


# MARK: - Unsupported dtypes on save


@pytest.mark.parametrize(
    "array, name",
    [
        (np.array([object(), 1], dtype=object), "object"),
        (np.array(["ab", "c"]), "<U2"),
        (np.array([b"ab"]), "|S2"),
        (np.zeros(2, np.longdouble), str(np.dtype(np.longdouble))),
        (np.zeros(2, np.complex128), "complex128"),
        (np.zeros(2, [("a", "<i4"), ("b", "<f4")]), "('a', '<i4')"),
        (np.zeros(2, "V4"), "V4"),
        (np.zeros(2, "datetime64[s]"), "datetime64[s]"),
        (np.zeros(2, "timedelta64[s]"), "timedelta64[s]"),
        (np.zeros(2, ml_dtypes.int4), "int4"),
        (np.zeros(2, ml_dtypes.float8_e4m3), "float8_e4m3"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_dtype_rejected_naming_it(tmp_path, array, name):
    with pytest.raises(SafetensorError) as info:
        safetensors_c.save({"ok": np.zeros(1), "bad": array})
    message = str(info.value)
    assert name in message
    assert "'bad'" in message
    path = tmp_path / "x.safetensors"
    with pytest.raises(SafetensorError):
        safetensors_c.save_file({"bad": array}, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# MARK: - Byte order and memory layout


@pytest.mark.parametrize("dtype", [">f4", ">i2", ">u8", ">c8", ">f8", ">i4", ">f2"])
def test_big_endian_saved_little_endian(dtype):
    values = np.arange(1, 7).reshape(2, 3)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * values
    big = np.asarray(values, dtype=dtype)
    little = big.astype(np.dtype(dtype).newbyteorder("<"))
    data = safetensors_c.save({"x": big})
    assert data == safetensors_c.save({"x": little})
    loaded = safetensors_c.load(data)["x"]
    assert loaded.dtype == little.dtype
    assert loaded.tolist() == values.tolist()
    # The caller's array is not modified.
    assert big.dtype.byteorder == ">"
    assert big.tolist() == values.tolist()


def non_contiguous_cases():
    base = np.arange(60, dtype=np.int32).reshape(3, 4, 5)
    return {
        "strided": base[:, ::2, 1::2],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "negative": base[::-1, :, ::-2],
        "column": base[:, 1, :][:, ::-1],
        "broadcast": np.broadcast_to(np.arange(5, dtype=np.int32), (3, 5)),
        "swapped": base.swapaxes(0, 2),
        "big_endian_strided": base.astype(">i4")[:, ::3],
    }


@pytest.mark.parametrize("kind", list(non_contiguous_cases()))
def test_non_contiguous_saved_in_c_order(tmp_path, kind, backend):
    array = non_contiguous_cases()[kind]
    assert not array.flags.c_contiguous
    expected = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
    data = safetensors_c.save({"x": array})
    assert data == safetensors_c.save({"x": expected})
    path = tmp_path / "nc.safetensors"
    safetensors_c.save_file({"x": array}, path)
    assert path.read_bytes() == data
    assert_same_array(safetensors_c.load_file(path, backend=backend)["x"], expected)


def test_read_only_and_unaligned_inputs():
    ro = np.arange(5, dtype=np.float64)
    ro.flags.writeable = False
    buf = np.zeros(8 * 5 + 1, np.uint8)
    unaligned = buf[1:].view(np.float64)
    unaligned[:] = np.arange(5)
    assert not unaligned.flags.aligned
    data = safetensors_c.save({"ro": ro, "un": unaligned})
    loaded = safetensors_c.load(data)
    assert loaded["ro"].tolist() == [0, 1, 2, 3, 4]
    assert loaded["un"].tolist() == [0, 1, 2, 3, 4]


# MARK: - 0-d and empty arrays


def test_zero_d_array():
    data = safetensors_c.save({"s": np.array(3.5, np.float32)})
    assert header_of(data)["s"] == entry("F32", [], 0, 4)
    loaded = safetensors_c.load(data)["s"]
    assert loaded.shape == ()
    assert loaded.dtype == np.float32
    assert loaded[()] == 3.5


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
def test_empty_arrays(shape, tmp_path, backend):
    tensors = {"e": np.zeros(shape, np.float64), "x": np.arange(2, dtype=np.uint8)}
    data = safetensors_c.save(tensors)
    header = header_of(data)
    assert header["e"] == entry("F64", shape, 0, 0)
    assert header["x"] == entry("U8", [2], 0, 2)
    path = tmp_path / "e.safetensors"
    path.write_bytes(data)
    loaded = safetensors_c.load_file(path, backend=backend)
    assert_same_array(loaded["e"], tensors["e"])
    assert_same_array(loaded["x"], tensors["x"])
