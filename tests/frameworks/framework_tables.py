"""One small table per framework: how the shared suite (test_every_framework.py)
makes that framework's arrays, compares them, and which format dtypes and
names it has. ``table(name)`` imports only that framework (each suite runs
in a process of its own: some frameworks crash when imported together)."""

from __future__ import annotations

import importlib
import types

import numpy as np

import safetensors_c
from safetensors_c import SafetensorError

# Format code -> NumPy dtype name (ml_dtypes names for the extension types),
# for every dtype of the format that has a NumPy dtype.
NUMPY_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "<i2", "U16": "<u2", "F16": "<f2",
    "BF16": "bfloat16", "I32": "<i4", "U32": "<u4", "F32": "<f4", "C64": "<c8", "F64": "<f8",
    "I64": "<i8", "U64": "<u8", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
COMMON = ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64",
          "I64", "U64")


def numpy_dtypes(codes):
    ml_dtypes = importlib.import_module("ml_dtypes")
    out = {}
    for code in codes:
        name = NUMPY_NAMES[code]
        extension = name.startswith(("float8", "bfloat16"))
        out[code] = np.dtype(getattr(ml_dtypes, name) if extension else name)
    return out


def random_bits(dtype, code, shape, seed=0):
    """Any bit pattern of the dtype (NaNs included); BOOL as 0/1."""
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.random.default_rng(seed).integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    if code == "BOOL":
        raw &= 1
    return raw.view(dtype).reshape(shape)


def _base(name, **fields):
    """The fields every table has; ``fields`` gives the framework's own."""
    t = types.SimpleNamespace(
        name=name,
        stc=importlib.import_module(f"safetensors_c.{name}"),
        ref=importlib.import_module(f"safetensors.{name}"),
        ref_numpy=importlib.import_module("safetensors.numpy"),
        zero_shapes=[(), (0,), (3, 0), (0, 0, 2), (1,), (1, 1, 1)],
        after_load=lambda array, expected: None,
        # Zero copy: where a tensor's data lives (None: the framework cannot
        # adopt host memory, every tensor is copied), the alignment at which
        # it adopts the reader's memory (1: any), and a sum computed by the
        # framework's own kernels (they must run on adopted memory).
        # The dtypes adopted beside the shared suite's aligned tensors: (code,
        # shape) of 64-byte multiples, for the framework's own paths.
        # Devices: names of the CPU it accepts; others it refuses (SafetensorError
        # when it supports only the CPU, its own error when they are merely absent
        # here), as other_device_error, when the handle opens or else at its first
        # tensor; names that are no device at all, refused as invalid_device_error
        # says; the module's own loaders that take a device (the reference's JAX and
        # MLX loaders take none).
        **{"address": None, "adopt_alignment": None, "total": None, "adopt_extra": (),
           "device_refused_at_open": True, "device_loaders": (), **fields},
    )
    t.codes = sorted(t.dtypes)
    # The dtypes its own writer saves byte-identically: those of the file the
    # reference writes, unless that file comes from its NumPy writer.
    if not hasattr(t, "ref_save_codes"):
        t.ref_save_codes = t.ref_file_codes

    def random_array(code, shape, seed=0):
        return random_bits(t.dtypes[code], code, shape, seed)

    def every_dtype(shape=(3, 5)):
        return {code.lower(): random_array(code, shape, seed=i)
                for i, code in enumerate(t.dtypes)}

    def as_fw(tensors):
        return {k: t.to_fw(v, safetensors_c._dtypes.code_for_dtype(v.dtype))
                for k, v in tensors.items()}

    t.random_array, t.every_dtype, t.as_fw = random_array, every_dtype, as_fw
    t.zero_codes = tuple(t.dtypes)
    return t


def flax():
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    jax.config.update("jax_enable_x64", True)  # JAX has 64-bit dtypes only then
    cpu = jax.devices("cpu")[0]
    codes = [c for c in NUMPY_NAMES if hasattr(jnp, numpy_dtypes([c])[c].name)]

    def assert_same(actual, expected):
        assert isinstance(actual, jax.Array), type(actual)
        assert actual.devices() == {cpu}
        assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        assert np.asarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()

    t = _base(
        "flax", aliases=("flax", "jax"), label="JAX", dtypes=numpy_dtypes(codes),
        to_fw=lambda array, code: jnp.asarray(array), assert_same=assert_same,
        small=lambda: jnp.ones(2),
        bad_dicts=[[("a", jnp.ones(2))], "abc", None],
        dict_error=(TypeError, "tensors must be a dict of str to jax.Array"),
        bad_values=[[1, 2], "abc", None, 3, object()],
        value_error=(TypeError, r"tensor 'a': expected a jax.Array \(or a numpy.ndarray\)"),
        metadata_format="flax", ref_open_framework="flax",
        ref_writer_codes=lambda shape: (), ref_file_codes=tuple(codes), ref_file_numpy=False,
        index_array=jnp.array, blocked=("jax",),
        address=lambda array: array.unsafe_buffer_pointer(), adopt_alignment=64,
        adopt_extra=(("C64", (8, 8)),),
        total=lambda array: float(jnp.sum(array.astype(jnp.float64))),
        other_error=(TypeError, "expected a jax.Array.*not Tensor"),
        missing="needs JAX, which is not installed: pip install jax",
        cpu_devices=["cpu", cpu], other_devices=["cuda", "gpu", "tpu", 0, "anything"],
        other_device_error=(SafetensorError, r"device .* is not supported for JAX arrays"),
        invalid_devices=["bogus", "gpu:x", "cuda:", 1.5, ["cpu"], -1],
        invalid_device_error=r"device .* is not supported for JAX arrays",
    )
    t.zero_shapes = [(0,), (3, 0, 2), (), (1,)]
    t.zero_codes = ("F32", "BF16", "I64", "BOOL")
    return t


def tensorflow():
    tf = importlib.import_module("tensorflow")
    codes = [c for c in NUMPY_NAMES if c != "F8_E8M0"]

    def assert_same(actual, expected):
        assert isinstance(actual, tf.Tensor), type(actual)
        assert "CPU" in actual.device
        assert actual.dtype.as_numpy_dtype == expected.dtype, (actual.dtype, expected.dtype)
        assert tuple(actual.shape) == expected.shape, (actual.shape, expected.shape)
        assert np.asarray(actual.numpy()).tobytes() == np.ascontiguousarray(expected).tobytes()

    def address(tensor):
        if tensor.dtype == tf.bfloat16:  # DLPack has no bfloat16 here: a bitcast view
            tensor = tf.bitcast(tensor, tf.uint16)
        return np.from_dlpack(tensor).__array_interface__["data"][0]

    return _base(
        "tensorflow", aliases=("tf", "tensorflow"), label="TensorFlow",
        dtypes=numpy_dtypes(codes), to_fw=lambda array, code: tf.convert_to_tensor(array),
        assert_same=assert_same, small=lambda: tf.zeros([1]),
        bad_dicts=[[tf.zeros([1])], "x", None, (("x", tf.zeros([1])),)],
        dict_error=(TypeError, "tensors must be a dict of str to tf.Tensor"),
        bad_values=[[1.0, 2.0], 3.0, "x", None, np.zeros(3, np.float32)],
        value_error=(TypeError, r"tensor 'a': expected a tf.Tensor or a variable, not"),
        metadata_format="tf", ref_open_framework="tf",
        # the reference's NumPy writer fails on 0-d TF tensors
        ref_writer_codes=lambda shape: tuple(codes) if shape != () else (),
        ref_file_codes=tuple(codes), ref_file_numpy=False,
        index_array=tf.constant, blocked=("tensorflow",),
        address=address, adopt_alignment=64,
        total=lambda tensor: float(tf.reduce_sum(tf.cast(tensor, tf.float64))),
        other_error=(TypeError, "expected a tf.Tensor or a variable, not Tensor"),
        missing="needs TensorFlow, which is not installed: pip install tensorflow-cpu",
        cpu_devices=["cpu", "CPU", "/CPU:0", "/device:CPU:0", "cpu:0"],
        other_devices=["gpu", "/GPU:0", "cuda:0", 0],  # no GPU on the test machines
        other_device_error=(RuntimeError, "is not available: TensorFlow sees"),
        invalid_devices=["bogus", "gpu:x", "cuda:", 1.5, ["cpu"]], invalid_device_error="is invalid",
    )


def paddle():
    paddle = importlib.import_module("paddle")
    codes = COMMON + ("F8_E5M2", "F8_E4M3")
    own = {code: getattr(paddle, {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16",
                                  "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
                                  "I32": "int32", "U32": "uint32", "F32": "float32",
                                  "C64": "complex64", "F64": "float64", "I64": "int64",
                                  "U64": "uint64", "F8_E5M2": "float8_e5m2",
                                  "F8_E4M3": "float8_e4m3fn"}[code])
           for code in codes}
    # The NumPy dtype of the same width paddle takes through DLPack, and the
    # paddle dtype that then reinterprets as the wanted one (paddle's own API).
    carriers = {"F8_E5M2": "<u1", "F8_E4M3": "<u1", "BF16": "<i2"}

    def to_fw(array, code):
        if array.size == 0 and code not in ("U16", "U32", "U64"):
            return paddle.empty(list(array.shape), dtype=own[code])
        array = np.array(array, copy=True)
        carrier = carriers.get(code)
        # (paddle has no copy kernels for its unsigned 16-64 bit types: the
        # tensor keeps the copy made here, through DLPack)
        tensor = paddle.utils.dlpack.from_dlpack(
            (array.view(carrier) if carrier else array).__dlpack__())
        if carrier:
            tensor = tensor.view(own[code])
        assert tensor.dtype == own[code]
        return tensor

    def assert_same(actual, expected):
        assert isinstance(actual, paddle.Tensor), type(actual)
        assert actual.place.is_cpu_place()
        code = safetensors_c._dtypes.code_for_dtype(expected.dtype)
        assert actual.dtype == own[code], (actual.dtype, expected.dtype)
        assert tuple(actual.shape) == expected.shape, (actual.shape, expected.shape)
        # paddle's numpy() gives bfloat16 as uint16 and float8 as int8: the bits
        assert np.ascontiguousarray(actual.numpy()).tobytes() == \
            np.ascontiguousarray(expected).tobytes()

    # The dtypes the reference's paddle module saves under their own code (it
    # has no table entry for uint16/32/64, and names paddle.uint16 "bfloat16").
    ref_saves = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "F16", "BF16", "I32", "F32",
                 "C64", "F64", "I64")
    return _base(
        "paddle", aliases=("paddle",), label="Paddle", dtypes=numpy_dtypes(codes),
        to_fw=to_fw, assert_same=assert_same, small=lambda: paddle.zeros([1]),
        bad_dicts=[[paddle.zeros([1])], "x", None, (("x", paddle.zeros([1])),)],
        dict_error=(ValueError, "tensors must be a dict of str to paddle.Tensor"),
        bad_values=[[1.0, 2.0], 3.0, "x", None, np.zeros(3, np.float32)],
        value_error=(ValueError, r"tensor 'a': expected a paddle.Tensor, not"),
        metadata_format="pd", ref_open_framework="np",
        ref_writer_codes=lambda shape: ref_saves, ref_file_codes=ref_saves, ref_file_numpy=False,
        index_array=paddle.to_tensor, blocked=("paddle",),
        address=lambda tensor: tensor.data_ptr(), adopt_alignment=1,
        # float8 through a same-width carrier, uint16 with no copy kernel of paddle's
        adopt_extra=(("F8_E4M3", (64,)), ("U16", (32,))),
        total=lambda tensor: float(tensor.astype("float64").sum()),
        other_error=(ValueError, "expected a paddle.Tensor, not Tensor"),
        missing="needs PaddlePaddle, which is not installed: pip install paddlepaddle",
        cpu_devices=["cpu", "CPU", "cpu:0", paddle.CPUPlace()],
        # paddle here is the CPU build: no GPU or XPU device exists
        other_devices=["gpu", "gpu:0", "cuda", "cuda:1", 0, "xpu:0"],
        other_device_error=(ValueError, "is not available: this paddle sees 0"),
        invalid_devices=["bogus", "gpu:x", "gpu:", 1.5, -1, ["cpu"]], invalid_device_error="is invalid",
        # a handle for a device paddle lacks still reads keys and metadata
        device_refused_at_open=False, device_loaders=("load_file", "load"),
    )


def mlx():
    mx = importlib.import_module("mlx.core")
    own = {"BOOL": mx.bool_, "U8": mx.uint8, "I8": mx.int8, "I16": mx.int16, "U16": mx.uint16,
           "F16": mx.float16, "BF16": mx.bfloat16, "I32": mx.int32, "U32": mx.uint32,
           "F32": mx.float32, "C64": mx.complex64, "F64": mx.float64, "I64": mx.int64,
           "U64": mx.uint64}
    raw = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}

    def host_bytes(array) -> bytes:
        # via a same-width integer view: NumPy cannot take bfloat16 from MLX
        return np.asarray(array.view(raw[array.itemsize])).tobytes()

    def to_fw(array, code):
        # built through same-width integers
        return mx.array(array.view(np.dtype(f"u{array.dtype.itemsize}"))).view(own[code])

    def assert_same(actual, expected):
        assert isinstance(actual, mx.array), type(actual)
        code = safetensors_c._dtypes.code_for_dtype(expected.dtype)
        assert actual.dtype == own[code], (actual.dtype, expected.dtype)
        assert tuple(actual.shape) == expected.shape, (actual.shape, expected.shape)
        assert host_bytes(actual) == np.ascontiguousarray(expected).tobytes()

    def after_load(array, expected):
        # Shards load on worker threads: the arrays must be usable on this
        # one (a lazy MLX array belongs to its thread's stream).
        assert_same(mx.flatten(array), expected.ravel())

    t = _base(
        "mlx", aliases=("mlx",), label="MLX", dtypes=numpy_dtypes(COMMON), to_fw=to_fw,
        assert_same=assert_same, small=lambda: mx.ones(2),
        bad_dicts=[[("a", mx.ones(2))], "abc", None],
        dict_error=(TypeError, "tensors must be a dict of str to mlx.core.array"),
        bad_values=[[1, 2], "abc", None, 3, object()],
        value_error=(TypeError, r"tensor 'a': expected an mlx.core.array \(or a numpy.ndarray\)"),
        metadata_format="mlx", ref_open_framework="mlx",
        ref_writer_codes=lambda shape: (), ref_file_codes=COMMON, ref_file_numpy=True,
        # its mlx.save cannot take bfloat16 (NumPy does not know MLX's bfloat16)
        ref_save_codes=tuple(c for c in COMMON if c != "BF16"),
        index_array=mx.array, blocked=("mlx", "mlx.core"),
        other_error=(TypeError, "expected an mlx.core.array.*not Tensor"),
        missing="needs MLX, which is not installed: pip install mlx",
        cpu_devices=[mx.cpu, mx.Device(mx.cpu), "cpu"],
        other_devices=["cuda", "gpu", "mps", 0, "anything", mx.gpu, mx.Device(mx.gpu)],
        other_device_error=(SafetensorError, r"device .* is not supported for MLX arrays"),
        invalid_devices=["bogus", "gpu:x", "cuda:", 1.5, ["cpu"], -1],
        invalid_device_error=r"device .* is not supported for MLX arrays",
    )
    t.after_load = after_load
    t.zero_shapes = [(0,), (3, 0, 2), (), (1,)]
    t.zero_codes = ("F32", "BF16", "I64", "BOOL")
    return t


TABLES = {"flax": flax, "tensorflow": tensorflow, "paddle": paddle, "mlx": mlx}


def table(name):
    """The table of the framework ``name`` (a key of TABLES), importing it."""
    return TABLES[name]()
