"""safetensors_c.tensorflow and framework="tf"/"tensorflow": eager TF tensors.

Only what is particular to TensorFlow: what every framework does alike is in
test_every_framework.py, which tests/test_frameworks.py runs in the same process.

Runs in a pytest process of its own (tests/test_frameworks.py): paddle
crashes when imported after tensorflow, so nothing here imports paddle.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import ml_dtypes  # noqa: E402

import safetensors  # noqa: E402
import safetensors.tensorflow as ref_tf  # noqa: E402
import safetensors_c  # noqa: E402
import framework_tables  # noqa: E402
import safetensors_c.tensorflow as stc_tf  # noqa: E402
from safetensors_c import SafetensorError, safe_open  # noqa: E402
from safetensors_c._adapters import tensorflow as adapter  # noqa: E402

# Every format dtype TensorFlow has -> its NumPy dtype (the reader's currency),
# with the random arrays and the comparison of the shared suite's table.
TABLE = framework_tables.table("tensorflow")
TF_DTYPES = TABLE.dtypes
F8 = tuple(code for code in TF_DTYPES if code.startswith("F8"))
# The dtypes TF moves through DLPack (bfloat16 as uint16): adopted when aligned.
ADOPTED = tuple(code for code in TF_DTYPES if code not in F8)
random_array, assert_same, every_dtype = TABLE.random_array, TABLE.assert_same, TABLE.every_dtype
address = TABLE.address  # where a CPU tf.Tensor's data lives


def as_tf(tensors):
    return {name: tf.convert_to_tensor(value) for name, value in tensors.items()}


# ---------------------------------------------------------------------------
# MARK: round trips and the reference


def test_our_files_load_identically_in_the_reference(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "ours.safetensors"
    stc_tf.save_file(as_tf(tensors), path)
    # The reference's TF and NumPy loaders have no float8 (they look for
    # numpy.float8_*): those are compared through its raw deserialize().
    with safetensors.safe_open(path, framework="tf") as f:
        for name, expected in tensors.items():
            if name.upper() in F8:
                with pytest.raises(AttributeError):
                    f.get_tensor(name)
            else:
                assert_same(f.get_tensor(name), expected)
    raw = dict(safetensors.deserialize(path.read_bytes()))
    assert set(raw) == set(tensors)
    for name, expected in tensors.items():
        assert raw[name]["dtype"] == name.upper()
        assert list(raw[name]["shape"]) == list(expected.shape)
        assert bytes(raw[name]["data"]) == expected.tobytes()


def test_reference_load_of_bytes_matches_ours():
    # (the reference's TF load() goes through its NumPy loader, which has
    # neither bfloat16 nor the float8 types)
    tensors = {k: v for k, v in every_dtype().items() if k.upper() not in F8 + ("BF16",)}
    image = stc_tf.save(as_tf(tensors))
    theirs = ref_tf.load(image)
    ours = stc_tf.load(image)
    assert set(ours) == set(theirs)  # (ours are in file order, the reference's are not)
    for name in tensors:
        assert ours[name].dtype == theirs[name].dtype
        assert_same(ours[name], theirs[name].numpy())


def test_variables_save_their_current_value(tmp_path):
    variable = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    variable.assign_add(tf.ones([2, 3]))
    loaded = stc_tf.load(stc_tf.save({"v": variable}))
    assert_same(loaded["v"], np.arange(6, dtype=np.float32).reshape(2, 3) + 1)


def test_saving_reads_the_tensors_memory_in_place():
    for code in ADOPTED:
        tensor = tf.convert_to_tensor(random_array(code, (8, 8)))
        neutral = adapter.from_array("x", tensor)
        assert neutral.code == code
        assert neutral.data.__array_interface__["data"][0] == address(tensor), code
    # float8 cannot leave TF through DLPack: one copy, right bytes
    for code in F8:
        expected = random_array(code, (8, 8))
        neutral = adapter.from_array("x", tf.convert_to_tensor(expected))
        assert neutral.data.tobytes() == expected.tobytes()


# ---------------------------------------------------------------------------
# MARK: dtypes TensorFlow lacks


@pytest.mark.parametrize("code", ["F8_E8M0", "F6_E2M3", "F6_E3M2"])
def test_dtypes_tensorflow_lacks_are_refused(tmp_path, code):
    if code == "F8_E8M0":
        tensors = {"x": np.ones(4, ml_dtypes.float8_e8m0fnu)}
    else:
        tensors = {"x": safetensors_c.packed(np.zeros((2, 3), np.uint8), code)}
    path = tmp_path / "x.safetensors"
    safetensors_c.save_file(tensors, path)
    message = rf"'x': dtype {code} cannot be a TensorFlow tensor"
    with pytest.raises(SafetensorError, match=message) as info:
        stc_tf.load_file(path)
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"
    with pytest.raises(SafetensorError, match=message):
        stc_tf.load(path.read_bytes())
    with safe_open(path, framework="tf") as f:
        with pytest.raises(SafetensorError, match=message):
            f.get_tensor("x")
        with pytest.raises(SafetensorError, match=message):
            f.get_slice("x")
    # NumPy still reads it
    assert safetensors_c.load_file(path)["x"].tobytes() == tensors["x"].tobytes()


@pytest.mark.parametrize(
    "value",
    [
        lambda: tf.constant(["a", "b"]),
        lambda: tf.constant([1 + 2j], tf.complex128),
        lambda: tf.constant([1, 2], tf.qint8),
    ],
    ids=["string", "complex128", "qint8"],
)
def test_tf_dtypes_the_format_lacks_are_refused(value):
    tensor = value()
    with pytest.raises(SafetensorError, match=rf"'x': dtype {tensor.dtype.name} cannot be "
                                              "stored") as info:
        stc_tf.save({"x": tensor})
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"


# ---------------------------------------------------------------------------
# MARK: F4: float4_e2m1fn, one value per byte in TF, two per byte in the file

F4_DTYPE = np.dtype(ml_dtypes.float4_e2m1fn)


def random_f4(shape, seed=0):
    count = int(np.prod(shape, dtype=np.int64))
    codes = np.random.default_rng(seed).integers(0, 16, count, dtype=np.uint8)
    return codes.view(F4_DTYPE).reshape(shape)


def packed_f4(values):
    codes = values.reshape(-1).view(np.uint8)
    return ((codes[0::2] & 0x0F) | (codes[1::2] << 4)).astype(np.uint8)


def test_f4_round_trips(tmp_path, helpers):
    values = random_f4((3, 4, 6))
    tensor = tf.convert_to_tensor(values)
    assert tensor.dtype.name == "float4_e2m1fn"
    path = tmp_path / "f4.safetensors"
    stc_tf.save_file({"w": tensor}, path)
    n, header = helpers.header_of(path)
    assert header["w"] == {"dtype": "F4", "shape": [3, 4, 6], "data_offsets": [0, 36]}
    assert path.read_bytes()[8 + n:] == packed_f4(values).tobytes()
    for loaded in (stc_tf.load_file(path)["w"], stc_tf.load(path.read_bytes())["w"],
                   safe_open(path, framework="tf").get_tensor("w")):
        assert loaded.dtype.name == "float4_e2m1fn"
        assert tuple(loaded.shape) == (3, 4, 6)
        assert loaded.numpy().view(np.uint8).tobytes() == values.view(np.uint8).tobytes()
    assert stc_tf.save({"w": stc_tf.load_file(path)["w"]}) == path.read_bytes()


def test_f4_files_of_torch_load_with_the_first_value_in_the_low_nibble(tmp_path):
    torch = pytest.importorskip("torch")
    ref_torch = pytest.importorskip("safetensors.torch")
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    raw = np.array([[0x21, 0x43, 0xF0], [0x7E, 0x00, 0x9A]], np.uint8)
    path = tmp_path / "torch.safetensors"
    ref_torch.save_file(
        {"w": torch.from_numpy(raw.copy()).view(torch.float4_e2m1fn_x2)}, path)
    loaded = stc_tf.load_file(path)["w"]
    assert tuple(loaded.shape) == (2, 6)
    assert loaded.numpy().view(np.uint8).tolist() == [[1, 2, 3, 4, 0, 15], [14, 7, 0, 0, 10, 9]]
    assert loaded.numpy()[0, :4].astype(np.float32).tolist() == [0.5, 1.0, 1.5, 2.0]
    assert stc_tf.save({"w": loaded}) == path.read_bytes()


def test_odd_f4_value_counts_and_f4_slices_are_refused(tmp_path):
    with pytest.raises(SafetensorError, match=r"'w': 3 float4_e2m1fn values cannot fill "
                                              "whole bytes"):
        stc_tf.save({"w": tf.convert_to_tensor(random_f4((3,)))})
    path = tmp_path / "f4.safetensors"
    stc_tf.save_file({"w": tf.convert_to_tensor(random_f4((4, 6)))}, path)
    with safe_open(path, framework="tf") as f:
        with pytest.raises(SafetensorError, match="slicing an F4 tensor is not supported"):
            f.get_slice("w")[1:]


# ---------------------------------------------------------------------------
# MARK: zero-copy


def _aligned_tensors():
    # sizes that are multiples of 64 bytes, so each tensor after the first
    # stays aligned when the data section is
    return {
        "a": random_array("F32", (16, 16)),
        "b": random_array("BF16", (8, 32)),
        "c": random_array("I64", (4, 8)),
        "d": random_array("U8", (64,)),
        "e": random_array("BOOL", (2, 64)),
    }


def test_the_file_never_changes(tmp_path, helpers):
    tensors = _aligned_tensors()
    path = helpers.save_aligned(tensors, tmp_path / "aligned.safetensors")
    before = path.read_bytes()
    a = stc_tf.load_file(path)["a"]
    b = tf.tensor_scatter_nd_update(a, [[0, 0]], [1.0])
    assert address(b) != address(a)
    del a
    gc.collect()
    assert path.read_bytes() == before


def test_float8_tensors_are_copied_once(tmp_path, helpers):
    tensors = {code.lower(): random_array(code, (64,)) for code in F8}
    path = helpers.save_aligned(tensors, tmp_path / "f8.safetensors")
    for name, expected in stc_tf.load_file(path).items():
        assert_same(expected, tensors[name])


def test_read_only_arrays_are_copied_never_adopted():
    for code in ADOPTED:
        raw = np.empty(64 * 3, np.uint8)
        start = -helpers_address(raw) % 64
        array = raw[start:start + 128].view(TF_DTYPES[code])
        array[...] = random_array(code, array.shape)
        array.flags.writeable = False
        tensor = adapter.to_array("x", code, array, None)
        assert address(tensor) != helpers_address(array), code
        assert_same(tensor, array)


def helpers_address(array):
    return array.__array_interface__["data"][0]


# ---------------------------------------------------------------------------
# MARK: bad input


def test_sparse_tensors_are_refused():
    sparse = tf.sparse.SparseTensor(indices=[[0, 1]], values=[1.0], dense_shape=[2, 2])
    with pytest.raises(ValueError, match=r"'s' is a tf.SparseTensor.*tf.sparse.to_dense"):
        stc_tf.save({"s": sparse})
    # a dense copy is fine
    assert_same(stc_tf.load(stc_tf.save({"s": tf.sparse.to_dense(sparse)}))["s"],
                np.array([[0, 1], [0, 0]], np.float32))


def test_ragged_tensors_are_refused():
    with pytest.raises(ValueError, match=r"'r' is a tf.RaggedTensor.*to_tensor"):
        stc_tf.save({"r": tf.ragged.constant([[1], [2, 3]])})


def test_symbolic_tensors_are_refused():
    @tf.function
    def inside(x):
        return stc_tf.save({"x": x})

    with pytest.raises(TypeError, match="'x' is a symbolic tensor"):
        inside(tf.zeros([2]))


def test_bad_metadata_is_refused():
    with pytest.raises(TypeError, match="metadata must map str to str"):
        stc_tf.save({"x": tf.zeros([1])}, metadata={"k": 1})


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints


def test_sharded_save_checks_every_input_first(tmp_path):
    tensors = {"a": tf.zeros([4]), "b": [1, 2]}
    with pytest.raises(TypeError, match="'b': expected a tf.Tensor"):
        safetensors_c.save_sharded(tensors, tmp_path / "ckpt", framework="tf", progress=False)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_keras_weights_round_trip(tmp_path):
    """A Keras model's weights, saved by name and loaded back."""
    keras = tf.keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    weights = {v.path: v for v in model.weights}
    path = tmp_path / "keras.safetensors"
    stc_tf.save_file(weights, path)
    x = tf.random.stateless_normal([5, 3], seed=[1, 2])
    expected = model(x)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    loaded = stc_tf.load_file(path)
    for variable, name in zip(other.weights, weights):
        variable.assign(loaded[name])
    np.testing.assert_array_equal(other(x).numpy(), expected.numpy())


def test_adopted_tensors_alive_at_exit_are_freed_cleanly(tmp_path, helpers):
    # the DLPack deleter runs when TF frees the buffer, possibly during
    # interpreter shutdown: the process must still exit normally
    import subprocess
    import sys

    path = helpers.save_aligned(_aligned_tensors(), tmp_path / "aligned.safetensors")
    script = (
        "import sys, tensorflow as tf, safetensors_c, safetensors_c.tensorflow as st\n"
        "d = st.load_file(sys.argv[1])\n"
        "f = safetensors_c.safe_open(sys.argv[1], framework='tf')\n"
        "rows, b = f.get_slice('a')[2:4], f.get_tensor('b')\n"
        "print(int(tf.reduce_sum(tf.cast(d['d'], tf.int64))) >= 0, rows.shape, b.dtype.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "(2,", "16)", "bfloat16"]
