"""safetensors_c.mlx and framework="mlx": MLX arrays, on the Linux CPU build.

Only what is particular to MLX: what every framework does alike is in
test_every_framework.py, which tests/test_frameworks.py runs in the same process.

Runs in a pytest process of its own (tests/test_frameworks.py). MLX cannot
adopt host memory on the CPU, so loading copies each tensor exactly once:
these tests check where the bytes end up and how much memory is allocated.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import ml_dtypes  # noqa: E402

import safetensors  # noqa: E402
import safetensors.mlx as ref_mlx  # noqa: E402
import safetensors.numpy as ref_numpy  # noqa: E402
import safetensors_c  # noqa: E402
import safetensors_c.mlx as stc_mlx  # noqa: E402
from safetensors_c import SafetensorError, safe_open  # noqa: E402

# Every format dtype MLX has -> (its NumPy dtype, its MLX dtype)
MLX_DTYPES = {
    "BOOL": (np.dtype(np.bool_), mx.bool_),
    "U8": (np.dtype(np.uint8), mx.uint8),
    "I8": (np.dtype(np.int8), mx.int8),
    "I16": (np.dtype("<i2"), mx.int16),
    "U16": (np.dtype("<u2"), mx.uint16),
    "F16": (np.dtype("<f2"), mx.float16),
    "BF16": (np.dtype(ml_dtypes.bfloat16), mx.bfloat16),
    "I32": (np.dtype("<i4"), mx.int32),
    "U32": (np.dtype("<u4"), mx.uint32),
    "F32": (np.dtype("<f4"), mx.float32),
    "C64": (np.dtype("<c8"), mx.complex64),
    "F64": (np.dtype("<f8"), mx.float64),
    "I64": (np.dtype("<i8"), mx.int64),
    "U64": (np.dtype("<u8"), mx.uint64),
}
MISSING = ("F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ")
ML_DTYPE_OF = {
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu,
    "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
}


def random_array(code, shape, seed=0):
    """Any bit pattern of the dtype (NaNs included); BOOL as 0/1."""
    dtype = MLX_DTYPES[code][0] if code in MLX_DTYPES else np.dtype(ML_DTYPE_OF[code])
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.random.default_rng(seed).integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    if code == "BOOL":
        raw &= 1
    return raw.view(dtype).reshape(shape)


RAW = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}


def host_bytes(array) -> bytes:
    """An MLX array's bytes in C order (via a same-width integer view: NumPy
    cannot take bfloat16 from MLX)."""
    return np.asarray(array.view(RAW[array.itemsize])).tobytes()


def address(array) -> int:
    """Where an (evaluated) MLX array's data lives."""
    mx.eval(array)
    return np.asarray(array.view(RAW[array.itemsize])).__array_interface__["data"][0]


def assert_same(actual, expected):
    """An MLX array with the expected dtype, shape and bytes."""
    assert isinstance(actual, mx.array), type(actual)
    code = safetensors_c._dtypes.code_for_dtype(expected.dtype)
    assert actual.dtype == MLX_DTYPES[code][1], (actual.dtype, expected.dtype)
    assert tuple(actual.shape) == expected.shape, (actual.shape, expected.shape)
    assert host_bytes(actual) == np.ascontiguousarray(expected).tobytes()


def as_mlx(tensors):
    """MLX arrays of the same values (built through same-width integers)."""
    out = {}
    for name, value in tensors.items():
        code = safetensors_c._dtypes.code_for_dtype(value.dtype)
        raw = mx.array(value.view(np.dtype(f"u{value.dtype.itemsize}")))
        out[name] = raw.view(MLX_DTYPES[code][1])
    return out


def every_dtype(shape=(3, 5)):
    return {code.lower(): random_array(code, shape, seed=i) for i, code in enumerate(MLX_DTYPES)}


# ---------------------------------------------------------------------------
# MARK: round trips and the reference


def test_float64_stays_float64():
    # mx.array(numpy float64) alone gives float32; the reference loads F64 so.
    values = np.array([1 / 3, 1e-300, 2.0**60 + 1], np.float64)
    data = safetensors_c.numpy.save({"x": values})
    ours = stc_mlx.load(data)["x"]
    assert ours.dtype == mx.float64
    assert np.asarray(ours).tobytes() == values.tobytes()
    assert ref_mlx.load(data)["x"].dtype == mx.float32


def test_the_reference_cannot_save_bfloat16_arrays_but_we_can():
    array = mx.ones(3, dtype=mx.bfloat16)
    # ValueError naming bfloat16 on recent MLX, a RuntimeError about the
    # buffer format on older ones
    with pytest.raises((ValueError, RuntimeError), match="bfloat16|PEP 3118"):
        ref_mlx.save({"x": array})
    assert_same(stc_mlx.load(stc_mlx.save({"x": array}))["x"], np.ones(3, ml_dtypes.bfloat16))


def _mlx_takes_numpy_bfloat16() -> bool:
    try:
        mx.array(np.ones(1, ml_dtypes.bfloat16))
    except (ValueError, TypeError):
        return False
    return True


def test_our_files_load_identically_in_the_reference(tmp_path):
    tensors = every_dtype()
    if not _mlx_takes_numpy_bfloat16():
        # The reference builds MLX arrays from NumPy ones, which older MLX
        # (0.29 and before) refuses for bfloat16; its bytes are checked above.
        del tensors["bf16"]
    path = tmp_path / "ours.safetensors"
    stc_mlx.save_file(as_mlx(tensors), path)
    theirs = ref_mlx.load_file(path)
    assert set(theirs) == set(tensors)
    for name, expected in tensors.items():
        if name == "f64":  # the reference narrows F64 to float32 (test above)
            with np.errstate(over="ignore"):
                narrowed = expected.astype(np.float32)
            assert np.array_equal(np.asarray(theirs[name]), narrowed, equal_nan=True)
            continue
        assert_same(theirs[name], expected)
    with safetensors.safe_open(path, framework="mlx") as f:
        assert_same(f.get_tensor("i64"), tensors["i64"])


def test_transposed_and_sliced_arrays_save_their_values():
    base = mx.arange(24, dtype=mx.int32).reshape(2, 3, 4)
    views = {"t": base.T, "s": base[:, ::2, 1:], "m": mx.moveaxis(base, 0, 2),
             "b": mx.broadcast_to(mx.array([1.0, 2.0], dtype=mx.bfloat16), (3, 2))}
    loaded = stc_mlx.load(stc_mlx.save(views))
    expected = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    assert_same(loaded["t"], expected.T)
    assert_same(loaded["s"], expected[:, ::2, 1:])
    assert_same(loaded["m"], np.moveaxis(expected, 0, 2))
    assert_same(loaded["b"], np.broadcast_to(np.array([1, 2], ml_dtypes.bfloat16), (3, 2)))


def test_the_reference_writes_transposed_arrays_in_memory_order():
    """Why we read through strides: the reference stores a transposed MLX
    array's memory order under the transposed shape, i.e. wrong values."""
    t = mx.arange(6, dtype=mx.int32).reshape(2, 3).T
    theirs = ref_numpy.load(ref_mlx.save({"t": t}))["t"]
    ours = safetensors_c.numpy.load(stc_mlx.save({"t": t}))["t"]
    assert np.array_equal(ours, np.arange(6, dtype=np.int32).reshape(2, 3).T)
    assert not np.array_equal(theirs, ours)


def test_lazy_results_are_evaluated_and_saved():
    x = mx.arange(10, dtype=mx.float32)
    y = (x * 2 + 1)[::3]  # not evaluated yet
    loaded = stc_mlx.load(stc_mlx.save({"y": y}))["y"]
    assert_same(loaded, (np.arange(10, dtype=np.float32) * 2 + 1)[::3])


def test_numpy_arrays_are_accepted():
    tensors = {"w": np.arange(6.0).reshape(2, 3), "s": np.float32(2.5)}
    loaded = stc_mlx.load(stc_mlx.save(tensors))
    assert_same(loaded["w"], np.arange(6.0).reshape(2, 3))
    assert_same(loaded["s"], np.array(2.5, np.float32))


# ---------------------------------------------------------------------------
# MARK: dtypes MLX lacks


@pytest.mark.parametrize("code", MISSING)
def test_float8_is_refused(tmp_path, code):
    path = tmp_path / "f8.safetensors"
    safetensors_c.save_file({"f": random_array(code, (4,)), "ok": np.ones(2, np.float32)}, path)
    with pytest.raises(SafetensorError, match=rf"'f': dtype {code} has no MLX equivalent") as info:
        stc_mlx.load_file(path)
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"
    with pytest.raises(SafetensorError, match=code):
        stc_mlx.load(path.read_bytes())
    with safe_open(path, framework="mlx") as f:
        assert_same(f.get_tensor("ok"), np.ones(2, np.float32))
        with pytest.raises(SafetensorError, match=code):
            f.get_tensor("f")
        with pytest.raises(SafetensorError, match=code):
            f.get_slice("f")


@pytest.mark.parametrize("code", ["F4", "F6_E2M3", "F6_E3M2"])
def test_packed_dtypes_are_refused(tmp_path, code):
    path = tmp_path / "p.safetensors"
    safetensors_c.save_file({"p": safetensors_c.packed(np.zeros((2, 3), np.uint8), code)}, path)
    with pytest.raises(SafetensorError, match=rf"'p': dtype {code} has no MLX equivalent"):
        stc_mlx.load_file(path)


# ---------------------------------------------------------------------------
# MARK: one copy


def test_loading_copies_each_tensor_once_out_of_the_mapping(tmp_path, helpers):
    tensors = {f"t{i}": random_array("F32", (256, 256), seed=i) for i in range(4)}
    path = tmp_path / "big.safetensors"
    safetensors_c.save_file(tensors, path)
    total = sum(t.nbytes for t in tensors.values())
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    tracemalloc.start()
    loaded = stc_mlx.load_file(path)
    mx.eval(*loaded.values())
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # MLX allocated the tensors once; NumPy allocated no copy on the way.
    assert total <= mx.get_active_memory() - before <= total * 1.05
    assert mx.get_peak_memory() - before <= total * 1.05
    assert numpy_peak < total / 20
    for name, expected in tensors.items():
        assert not helpers.in_mapping_of(path, address(loaded[name]))
        assert_same(loaded[name], expected)


def test_loaded_arrays_are_independent_of_the_file(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "x.safetensors"
    safetensors_c.save_file(tensors, path)
    before = path.read_bytes()
    with safe_open(path, framework="mlx") as f:
        a = f.get_tensor("f32")
    os.remove(path)
    gc.collect()
    a_np = np.asarray(a)  # writable NumPy view of MLX's own copy
    a_np[0, 0] = 123.0
    assert float(a[0, 0].item()) == 123.0
    path.write_bytes(before)
    assert_same(stc_mlx.load_file(path)["f32"], tensors["f32"])


def test_read_only_images_are_copied_once(tmp_path):
    tensors = {"a": random_array("F32", (128, 128)), "b": random_array("BF16", (64, 64))}
    image = safetensors_c.numpy.save(tensors)  # immutable bytes
    total = sum(t.nbytes for t in tensors.values())
    gc.collect()
    tracemalloc.start()
    loaded = stc_mlx.load(image)
    mx.eval(*loaded.values())
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert numpy_peak < total / 20  # no copy of the image before MLX's
    for name, expected in tensors.items():
        assert_same(loaded[name], expected)


def test_saving_reads_mlx_memory_without_copying(tmp_path):
    array = mx.arange(1 << 20, dtype=mx.float32)
    mx.eval(array)
    tracemalloc.start()
    data = stc_mlx.save({"a": array})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < array.nbytes * 1.5  # the output bytes, and no copy of the array
    assert_same(stc_mlx.load(data)["a"], np.arange(1 << 20, dtype=np.float32))


# ---------------------------------------------------------------------------
# MARK: safe_open and slices

def test_reference_slices_agree(tmp_path):
    tensors = {"x": random_array("F32", (4, 5, 6)), "i": random_array("I64", (4, 5, 6))}
    path = tmp_path / "s.safetensors"
    safetensors_c.save_file(tensors, path)
    with safe_open(path, framework="mlx") as ours, \
            safetensors.safe_open(path, framework="mlx") as theirs:
        for name in tensors:
            for index in (np.s_[1:3], np.s_[:, 1:4, ::2], np.s_[2]):
                a, b = ours.get_slice(name)[index], theirs.get_slice(name)[index]
                assert a.dtype == b.dtype and host_bytes(a) == host_bytes(b)


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints, and MLX's own loader


def test_mlx_own_loader_agrees(tmp_path):
    """mx.load / mx.save_safetensors read and write the same files (MLX's
    own safetensors loader has no F64)."""
    tensors = {k: v for k, v in every_dtype((3, 4)).items() if k != "f64"}
    path = tmp_path / "ours.safetensors"
    stc_mlx.save_file(as_mlx(tensors), path)
    theirs = mx.load(str(path))
    for name, expected in tensors.items():
        assert_same(theirs[name], expected)
    mx.save_safetensors(str(tmp_path / "mlx.safetensors"), as_mlx(tensors))
    for name, value in stc_mlx.load_file(tmp_path / "mlx.safetensors").items():
        assert_same(value, tensors[name])
