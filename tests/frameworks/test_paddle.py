"""safetensors_c.paddle and framework="paddle": paddle tensors.

Only what is particular to paddle: what every framework does alike is in
test_every_framework.py, which tests/test_frameworks.py runs in the same process.

Runs in a pytest process of its own (tests/test_frameworks.py): paddle
crashes when imported after tensorflow, so nothing here imports tensorflow.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
import ml_dtypes  # noqa: E402

import safetensors  # noqa: E402
import safetensors.paddle as ref_paddle  # noqa: E402
import safetensors_c  # noqa: E402
import safetensors_c.paddle as stc_paddle  # noqa: E402
from safetensors_c import SafetensorError, safe_open  # noqa: E402
from safetensors_c._adapters import paddle as adapter  # noqa: E402

# Every format dtype paddle has -> (its NumPy dtype, paddle's dtype).
PADDLE_DTYPES = {
    "BOOL": (np.dtype(np.bool_), paddle.bool),
    "U8": (np.dtype(np.uint8), paddle.uint8),
    "I8": (np.dtype(np.int8), paddle.int8),
    "F8_E5M2": (np.dtype(ml_dtypes.float8_e5m2), paddle.float8_e5m2),
    "F8_E4M3": (np.dtype(ml_dtypes.float8_e4m3fn), paddle.float8_e4m3fn),
    "I16": (np.dtype("<i2"), paddle.int16),
    "U16": (np.dtype("<u2"), paddle.uint16),
    "F16": (np.dtype("<f2"), paddle.float16),
    "BF16": (np.dtype(ml_dtypes.bfloat16), paddle.bfloat16),
    "I32": (np.dtype("<i4"), paddle.int32),
    "U32": (np.dtype("<u4"), paddle.uint32),
    "F32": (np.dtype("<f4"), paddle.float32),
    "C64": (np.dtype("<c8"), paddle.complex64),
    "F64": (np.dtype("<f8"), paddle.float64),
    "I64": (np.dtype("<i8"), paddle.int64),
    "U64": (np.dtype("<u8"), paddle.uint64),
}
# The dtypes the reference's paddle loader knows (those its writer saves
# under their own code are the shared suite's table's ref_save_codes).
REF_LOADS = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "F16", "BF16", "I32", "F32",
             "F64", "I64")
# The NumPy dtype of the same width paddle takes through DLPack, and the
# paddle dtype that then reinterprets as the wanted one (paddle's own API).
_CARRIERS = {"F8_E5M2": "<u1", "F8_E4M3": "<u1", "BF16": "<i2"}


def random_array(code, shape, seed=0):
    """Any bit pattern of the dtype (NaNs included); BOOL as 0/1."""
    dtype = PADDLE_DTYPES[code][0]
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.random.default_rng(seed).integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    if code == "BOOL":
        raw &= 1
    return raw.view(dtype).reshape(shape)


def as_paddle_tensor(array, code):
    """A paddle tensor of ``code``'s paddle dtype holding a copy of ``array``'s bytes."""
    if array.size == 0 and code not in ("U16", "U32", "U64"):
        return paddle.empty(list(array.shape), dtype=PADDLE_DTYPES[code][1])
    array = np.array(array, copy=True)
    carrier = _CARRIERS.get(code)
    # (paddle has no copy kernels for its unsigned 16-64 bit types: the
    # tensor keeps the copy made here, through DLPack)
    tensor = paddle.utils.dlpack.from_dlpack(
        (array.view(carrier) if carrier else array).__dlpack__()
    )
    if carrier:
        tensor = tensor.view(PADDLE_DTYPES[code][1])
    assert tensor.dtype == PADDLE_DTYPES[code][1]
    return tensor


def code_of(array):
    for code, (dtype, _) in PADDLE_DTYPES.items():
        if array.dtype == dtype:
            return code
    raise AssertionError(array.dtype)


def as_paddle(tensors):
    return {name: as_paddle_tensor(value, code_of(value)) for name, value in tensors.items()}


def bytes_of(tensor) -> bytes:
    # paddle's numpy() gives bfloat16 as uint16 and float8 as int8: the bits
    return np.ascontiguousarray(tensor.numpy()).tobytes()


def assert_same(actual, expected, place="cpu"):
    """A paddle tensor with the expected dtype, shape and bytes."""
    assert isinstance(actual, paddle.Tensor), type(actual)
    assert actual.place.is_cpu_place() if place == "cpu" else True
    assert actual.dtype == PADDLE_DTYPES[code_of(expected)][1], (actual.dtype, expected.dtype)
    assert tuple(actual.shape) == expected.shape, (actual.shape, expected.shape)
    assert bytes_of(actual) == np.ascontiguousarray(expected).tobytes()


def every_dtype(shape=(3, 5), codes=tuple(PADDLE_DTYPES)):
    return {code.lower(): random_array(code, shape, seed=i) for i, code in enumerate(codes)}


# ---------------------------------------------------------------------------
# MARK: round trips and the reference


@pytest.mark.parametrize("code", ["U16", "U32", "U64"])
def test_unsigned_types_the_reference_cannot_save_are_saved(code):
    expected = np.arange(4, dtype=PADDLE_DTYPES[code][0])
    tensor = as_paddle_tensor(expected, code)
    with pytest.raises(KeyError):
        ref_paddle.save({"x": tensor})
    ours = dict(safetensors.deserialize(stc_paddle.save({"x": tensor})))
    assert ours["x"]["dtype"] == code  # (paddle prints its uint16 as "paddle.bfloat16")
    assert bytes(ours["x"]["data"]) == expected.tobytes()


def test_our_files_load_identically_in_the_reference(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "ours.safetensors"
    stc_paddle.save_file(as_paddle(tensors), path)
    # the reference's paddle loader refuses a file holding any dtype it lacks
    # (U16, U32, U64, C64): it reads a file of the others
    with pytest.raises(KeyError, match="U16|U32|U64|C64"):
        ref_paddle.load(path.read_bytes())
    with pytest.raises(RuntimeError, match="not registered"):  # paddle has no kernel
        ref_paddle.load_file(path)
    loadable = {name: value for name, value in tensors.items() if name.upper() in REF_LOADS}
    stc_paddle.save_file(as_paddle(loadable), tmp_path / "loadable.safetensors")
    for theirs in (ref_paddle.load((tmp_path / "loadable.safetensors").read_bytes()),
                   ref_paddle.load_file(tmp_path / "loadable.safetensors")):
        assert set(theirs) == set(loadable)
        for name, expected in loadable.items():
            assert_same(theirs[name], expected)
        del theirs
        gc.collect()
    raw = dict(safetensors.deserialize(path.read_bytes()))
    for name, expected in tensors.items():
        assert raw[name]["dtype"] == name.upper()
        assert bytes(raw[name]["data"]) == expected.tobytes()


def test_parameters_and_state_dicts_round_trip(tmp_path):
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))
    path = tmp_path / "model.safetensors"
    stc_paddle.save_file(layer.state_dict(), path)
    other = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.Linear(4, 2))
    other.set_state_dict(stc_paddle.load_file(path))
    x = paddle.rand([5, 3])
    np.testing.assert_array_equal(other(x).numpy(), layer(x).numpy())


def test_saving_reads_the_tensors_memory_in_place():
    for code in PADDLE_DTYPES:
        tensor = as_paddle_tensor(random_array(code, (8, 8)), code)
        neutral = adapter.from_array("x", tensor)
        assert neutral.code == code
        assert neutral.data.__array_interface__["data"][0] == tensor.data_ptr(), code
    # a contiguous view saves its own part
    base = as_paddle_tensor(np.arange(12, dtype=np.float32).reshape(3, 4), "F32")
    rows = base[1:]
    assert rows.is_contiguous()
    assert stc_paddle.load(stc_paddle.save({"r": rows}))["r"].numpy().tolist() == \
        np.arange(4, 12, dtype=np.float32).reshape(2, 4).tolist()


def test_saved_memory_stays_alive_until_written():
    # the writer's view holds the tensor: dropping every other reference
    # before writing must not free the memory under it
    expected = random_array("F32", (256, 256))
    neutral = adapter.from_array("x", as_paddle_tensor(expected, "F32"))
    gc.collect()
    junk = [paddle.ones([256, 256]) for _ in range(8)]
    assert neutral.data.tobytes() == expected.tobytes()
    del junk


# ---------------------------------------------------------------------------
# MARK: dtypes paddle lacks


@pytest.mark.parametrize("code", ["F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3",
                                  "F6_E3M2"])
def test_dtypes_paddle_lacks_are_refused(tmp_path, code):
    if code.startswith("F8"):
        dtype = {"F8_E8M0": ml_dtypes.float8_e8m0fnu, "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
                 "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz}[code]
        tensors = {"x": np.ones(4, dtype)}
    else:
        tensors = {"x": safetensors_c.packed(np.zeros((2, 3), np.uint8), code)}
    path = tmp_path / "x.safetensors"
    safetensors_c.save_file(tensors, path)
    message = rf"'x': dtype {code} has no Paddle equivalent"
    with pytest.raises(SafetensorError, match=message) as info:
        stc_paddle.load_file(path)
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"
    with pytest.raises(SafetensorError, match=message):
        stc_paddle.load(path.read_bytes())
    with safe_open(path, framework="paddle") as f:
        with pytest.raises(SafetensorError, match=message):
            f.get_tensor("x")
        with pytest.raises(SafetensorError, match=message):
            f.get_slice("x")
    assert safetensors_c.load_file(path)["x"].tobytes() == tensors["x"].tobytes()


def test_paddle_dtypes_the_format_lacks_are_refused():
    tensor = paddle.to_tensor(np.ones(3, np.complex128))
    with pytest.raises(SafetensorError, match=r"'x': dtype paddle.complex128 cannot be stored") \
            as info:
        stc_paddle.save({"x": tensor})
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"


# ---------------------------------------------------------------------------
# MARK: zero-copy


def _tensors():
    return {
        "a": random_array("F32", (16, 16)),
        "b": random_array("BF16", (8, 31)),
        "c": random_array("I64", (4, 7)),
        "d": random_array("U8", (13,)),
        "e": random_array("F8_E4M3", (5, 3)),
        "f": random_array("U16", (9,)),
        "g": random_array("BOOL", (3, 3)),
    }


def test_copies_from_immutable_bytes_are_writable_and_leave_them_alone():
    # (where each copy lies, and its values: the shared suite)
    tensors = _tensors()
    image = safetensors_c.numpy.save(tensors)
    loaded = stc_paddle.load(image)
    for name, expected in tensors.items():
        assert_same(loaded[name], expected)
        loaded[name].zero_()
        assert not np.ascontiguousarray(loaded[name].numpy()).any(), name
    assert image == safetensors_c.numpy.save(tensors)


def test_writing_to_a_tensor_never_changes_the_file(tmp_path, helpers):
    tensors = _tensors()
    path = tmp_path / "t.safetensors"
    safetensors_c.save_file(tensors, path)
    before = path.read_bytes()
    a = stc_paddle.load_file(path)["a"]
    assert helpers.in_mapping_of(path, a.data_ptr())
    a[0, 0] = 12345.0
    a.add_(paddle.ones_like(a))
    assert float(a[0, 0]) == 12346.0
    assert path.read_bytes() == before
    assert_same(stc_paddle.load_file(path)["a"], tensors["a"])


def test_read_only_arrays_are_copied_never_adopted():
    for code in PADDLE_DTYPES:
        array = random_array(code, (4, 4))
        array.flags.writeable = False
        tensor = adapter.to_array("x", code, array, None)
        assert tensor.data_ptr() != array.__array_interface__["data"][0], code
        assert_same(tensor, array)


# ---------------------------------------------------------------------------
# MARK: bad input


def test_non_contiguous_tensors_are_refused(tmp_path):
    x = paddle.arange(12, dtype="float32").reshape([3, 4])
    for view in (x.t(), x[:, ::2], x.transpose([1, 0])):
        assert not view.is_contiguous()
        with pytest.raises(ValueError, match=r"'v' is not contiguous; call .contiguous\(\)"):
            stc_paddle.save_file({"v": view}, tmp_path / "v.safetensors")
        assert not (tmp_path / "v.safetensors").exists()
        loaded = stc_paddle.load(stc_paddle.save({"v": view.contiguous()}))["v"]
        assert loaded.numpy().tolist() == view.numpy().tolist()


def test_sparse_tensors_are_refused():
    coo = paddle.sparse.sparse_coo_tensor([[0, 1], [1, 0]], [1.0, 2.0], [2, 2])
    csr = paddle.sparse.sparse_csr_tensor([0, 1, 2], [1, 0], [1.0, 2.0], [2, 2])
    for sparse in (coo, csr):
        with pytest.raises(ValueError, match=r"'s' is a sparse tensor.*to_dense"):
            stc_paddle.save({"s": sparse})
    loaded = stc_paddle.load(stc_paddle.save({"s": coo.to_dense()}))["s"]
    assert loaded.numpy().tolist() == [[0.0, 1.0], [2.0, 0.0]]


# ---------------------------------------------------------------------------
# MARK: safe_open and slices

_SLICE_SCRIPT = textwrap.dedent(
    """
    import gc, sys
    import numpy as np
    import paddle
    from {module} import safe_open
    from safetensors.numpy import save_file
    path = sys.argv[1]
    save_file({{"x": np.arange(24, dtype=np.float32).reshape(4, 6)}}, path)
    with safe_open(path, framework="paddle") as f:
        whole = f.get_tensor("x")
        part = f.get_slice("x")[1:3]
        print(float(part.sum()), float(whole.sum()))
    del whole, part, f
    gc.collect()
    print("freed")
    # and tensors still alive when the interpreter exits
    kept = safe_open(path, framework="paddle").get_slice("x")[2:]
    print(float(kept.sum()))
    """
)


def _run_slice_script(module, path):
    return subprocess.run(
        [sys.executable, "-c", _SLICE_SCRIPT.format(module=module), str(path)],
        capture_output=True, text=True, timeout=300,
    )


def test_slicing_and_freeing_a_slice_does_not_abort(tmp_path):
    # the reference aborts here (below); ours must run to the end and exit 0
    proc = _run_slice_script("safetensors_c", tmp_path / "s.safetensors")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["138.0", "276.0", "freed", "210.0"]


def test_the_reference_aborts_freeing_a_paddle_slice(tmp_path):
    """Documents why the test above exists: safetensors 0.8 with paddle 3.x
    frees a sliced tensor's memory through a deleter paddle does not know."""
    proc = _run_slice_script("safetensors", tmp_path / "s.safetensors")
    if proc.returncode == 0:
        pytest.skip("this reference/paddle pair no longer aborts")
    assert proc.returncode == -signal.SIGABRT
    assert "deleter" in proc.stderr


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints


def test_sharded_save_checks_every_input_first(tmp_path):
    tensors = {"a": paddle.zeros([4]), "b": paddle.zeros([2, 3]).t()}
    with pytest.raises(ValueError, match="'b' is not contiguous"):
        safetensors_c.save_sharded(tensors, tmp_path / "ckpt", framework="paddle",
                                   progress=False)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_loaded_tensors_and_slices_save_back(tmp_path):
    # NumPy's views can carry any stride on a dimension of 1 (x[None, 0]);
    # paddle would call those non-contiguous and refuse to save them
    tensors = {"x": random_array("F32", (4, 6)), "e": np.zeros((3, 0), np.float32),
               "b": random_array("BF16", (4, 6))}
    path = tmp_path / "s.safetensors"
    safetensors_c.save_file(tensors, path)
    with safe_open(path, framework="paddle") as f:
        parts = {"row": f.get_slice("x")[None, 0], "col": f.get_slice("x")[:, 2:3],
                 "brow": f.get_slice("b")[None, 1], "e": f.get_tensor("e"),
                 "x": f.get_tensor("x")}
    expected = {"row": tensors["x"][None, 0], "col": tensors["x"][:, 2:3],
                "brow": tensors["b"][None, 1], "e": tensors["e"], "x": tensors["x"]}
    for name, part in parts.items():
        assert part.is_contiguous(), name
    ours = stc_paddle.save(parts)
    assert ours == ref_paddle.save(dict(parts))
    for name, loaded in stc_paddle.load(ours).items():
        assert_same(loaded, expected[name])


def test_reference_module_names():
    # code written against safetensors.paddle (or run through safetensors_c.compat)
    assert stc_paddle._getdtype("BF16") == paddle.bfloat16
    assert stc_paddle._TYPES["F8_E4M3"] == paddle.float8_e4m3fn
    assert stc_paddle._SIZE[paddle.bfloat16] == 2 and stc_paddle._SIZE[paddle.uint64] == 8
    for name in ("safe_open", "serialize", "serialize_file", "deserialize", "TensorSpec"):
        assert getattr(stc_paddle, name) is getattr(safetensors_c, name)
