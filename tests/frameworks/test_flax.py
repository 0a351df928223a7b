"""safetensors_c.flax and framework="flax"/"jax": JAX arrays on the CPU.

Only what is particular to JAX: what every framework does alike is in
test_every_framework.py, which tests/test_frameworks.py runs in the same process.

Runs in a pytest process of its own (tests/test_frameworks.py). The suite
turns jax_enable_x64 on for the whole process (JAX has 64-bit dtypes only
then) and turns it off inside the tests that check the refusal without it.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402

import safetensors  # noqa: E402
import safetensors.flax as ref_flax  # noqa: E402
import safetensors_c  # noqa: E402
import framework_tables  # noqa: E402
import safetensors_c.flax as stc_flax  # noqa: E402
from safetensors_c import SafetensorError, safe_open  # noqa: E402
from safetensors_c._adapters import flax as adapter  # noqa: E402

jax.config.update("jax_enable_x64", True)


@contextlib.contextmanager
def without_x64():
    """jax_enable_x64 off for a block (the jax.enable_x64 context manager is
    recent; the config flag works on every JAX this supports)."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)

# Every format dtype JAX has -> its NumPy dtype (the reader's currency), with
# the random arrays and the comparison of the shared suite's table.
TABLE = framework_tables.table("flax")
JAX_DTYPES = TABLE.dtypes
# Older JAX lacks some float8 types (float8_e8m0fnu came late): those are
# refused, tested below.
LACKING = {code: dtype for code, dtype
           in framework_tables.numpy_dtypes(framework_tables.NUMPY_NAMES).items()
           if code not in JAX_DTYPES}
WIDE = ("I64", "U64", "F64")
F8 = tuple(code for code in JAX_DTYPES if code.startswith("F8"))
random_array, assert_same, every_dtype = TABLE.random_array, TABLE.assert_same, TABLE.every_dtype


def as_jax(tensors):
    return {name: jnp.asarray(value) for name, value in tensors.items()}


# ---------------------------------------------------------------------------
# MARK: round trips and the reference


def test_our_files_load_identically_in_the_reference(tmp_path):
    # The reference's JAX loader cannot build float8 arrays (it has no NumPy
    # float8 dtype); every other dtype is compared, and the float8 files are
    # byte-identical to the reference's own (above).
    tensors = {k: v for k, v in every_dtype().items() if k.upper() not in F8}
    path = tmp_path / "ours.safetensors"
    stc_flax.save_file(as_jax(tensors), path)
    theirs = ref_flax.load_file(path)
    assert set(theirs) == set(tensors)
    for name, expected in tensors.items():
        assert_same(theirs[name], expected)
    with safetensors.safe_open(path, framework="flax") as f:
        for name, expected in tensors.items():
            assert_same(f.get_tensor(name), expected)


def test_reference_load_of_bytes_matches_ours():
    tensors = {"w": random_array("F32", (8, 8)), "i": random_array("I64", (3,)),
               "h": random_array("F16", (2, 2))}
    data = ref_flax.save(as_jax(tensors))
    ours, theirs = stc_flax.load(data), ref_flax.load(data)
    assert set(ours) == set(theirs)
    for name in tensors:
        assert_same(ours[name], np.asarray(theirs[name]))


def test_numpy_arrays_and_scalars_are_accepted():
    # What jax.device_get hands back.
    params = jax.device_get({"w": jnp.arange(6.0).reshape(2, 3), "s": jnp.float32(2.5)})
    loaded = stc_flax.load(stc_flax.save(params))
    assert_same(loaded["w"], np.arange(6.0).reshape(2, 3))
    assert_same(loaded["s"], np.array(2.5, np.float32))


def test_transposed_and_sliced_arrays_save_their_values():
    base = jnp.arange(24, dtype=jnp.int32).reshape(2, 3, 4)
    views = {"t": base.T, "s": base[:, ::2, 1:], "n": np.asarray(base).transpose(1, 0, 2)}
    loaded = stc_flax.load(stc_flax.save(views))
    for name, value in views.items():
        assert_same(loaded[name], np.asarray(value))


# ---------------------------------------------------------------------------
# MARK: 64-bit dtypes without jax_enable_x64


@pytest.mark.parametrize("code", WIDE)
def test_64_bit_dtypes_are_refused_without_x64(tmp_path, code):
    path = tmp_path / "w.safetensors"
    safetensors_c.save_file({"wide": random_array(code, (3,)), "ok": np.ones(2, np.float32)}, path)
    with without_x64():
        with pytest.raises(
            SafetensorError, match=rf"'wide': dtype {code} .*JAX .*jax_enable_x64"
        ) as info:
            stc_flax.load_file(path)
        assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"
        with pytest.raises(SafetensorError, match="jax_enable_x64"):
            stc_flax.load(path.read_bytes())
        with safe_open(path, framework="jax") as f:
            assert_same(f.get_tensor("ok"), np.ones(2, np.float32))  # the others still load
            with pytest.raises(SafetensorError, match=rf"dtype {code}"):
                f.get_tensor("wide")
            with pytest.raises(SafetensorError, match=rf"dtype {code}"):
                f.get_slice("wide")
    # ... and load once x64 is on, with their values.
    assert_same(stc_flax.load_file(path)["wide"], random_array(code, (3,)))


def test_the_reference_narrows_what_we_refuse(tmp_path):
    """Why we refuse: without x64 the reference silently cuts the values."""
    path = tmp_path / "w.safetensors"
    safetensors_c.save_file({"big": np.array([2**40 + 1], np.int64)}, path)
    with without_x64():
        theirs = ref_flax.load_file(path)["big"]
        assert theirs.dtype == jnp.int32 and int(theirs[0]) != 2**40 + 1
        with pytest.raises(SafetensorError):
            stc_flax.load_file(path)


# ---------------------------------------------------------------------------
# MARK: dtypes JAX lacks


@pytest.mark.parametrize("code", ["F6_E2M3", "F6_E3M2"])
def test_f6_is_refused(tmp_path, code):
    raw = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "p.safetensors"
    safetensors_c.save_file({"p": safetensors_c.packed(raw, code)}, path)
    with pytest.raises(SafetensorError, match=rf"'p': dtype {code} has no JAX equivalent") as info:
        stc_flax.load_file(path)
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"
    with safe_open(path, framework="flax") as f:
        with pytest.raises(SafetensorError, match=code):
            f.get_tensor("p")
    # A PackedArray in a dict is saved as it is.
    assert stc_flax.save({"p": safetensors_c.packed(raw, code)}) == safetensors_c.numpy.save(
        {"p": safetensors_c.packed(raw, code)}
    )


F4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])

needs_float4 = pytest.mark.skipif(not hasattr(jnp, "float4_e2m1fn"),
                                  reason="this JAX has no float4_e2m1fn")


@needs_float4
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_f4_loads_as_float4_low_nibble_first(tmp_path, backend):
    # bytes 0x10, 0x32, ...: values 0, 1, 2, 3, ... of the table, in order
    nibbles = np.arange(16, dtype=np.uint8)
    raw = (nibbles[0::2] | (nibbles[1::2] << 4)).reshape(2, 4)
    path = tmp_path / "f4.safetensors"
    safetensors_c.save_file({"p": safetensors_c.packed(raw, "F4")}, path)
    loaded = stc_flax.load_file(path, backend=backend)["p"]
    assert loaded.dtype == jnp.float4_e2m1fn and loaded.shape == (2, 8)
    assert np.array_equal(np.asarray(loaded).astype(np.float32).reshape(-1), F4_VALUES)
    assert np.signbit(np.asarray(loaded).astype(np.float32).reshape(-1)[8])  # -0.0
    # saved back: the same bytes
    assert stc_flax.save({"p": loaded}) == safetensors_c.numpy.save(
        {"p": safetensors_c.packed(raw, "F4")})


@needs_float4
def test_f4_agrees_with_torch_float4_x2(tmp_path):
    """PyTorch documents float4_e2m1fn_x2 as (val1 : val0) from MSB to LSB."""
    torch = pytest.importorskip("torch")
    import safetensors.torch as ref_torch

    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    packed = torch.tensor([[0x21, 0x43], [0xF0, 0x8A]], dtype=torch.uint8)
    path = tmp_path / "torch.safetensors"
    ref_torch.save_file({"w": packed.view(torch.float4_e2m1fn_x2)}, path)
    ours = stc_flax.load_file(path)["w"]
    assert ours.shape == (2, 4)
    assert np.asarray(ours).astype(np.float32).tolist() == [[0.5, 1, 1.5, 2], [0, -6, -1, -0.0]]
    out = tmp_path / "ours.safetensors"
    stc_flax.save_file({"w": ours}, out)
    assert out.read_bytes() == path.read_bytes()
    theirs = ref_torch.load_file(out)["w"]
    assert theirs.dtype == torch.float4_e2m1fn_x2
    assert torch.equal(theirs.view(torch.uint8), packed)


@needs_float4
def test_f4_edge_cases(tmp_path):
    empty = jnp.zeros((0, 4), jnp.float4_e2m1fn)
    back = stc_flax.load(stc_flax.save({"e": empty}))["e"]
    assert back.shape == (0, 4) and back.dtype == jnp.float4_e2m1fn
    with pytest.raises(SafetensorError, match=r"'o': 3 float4_e2m1fn values cannot fill"):
        stc_flax.save({"o": jnp.zeros(3, jnp.float4_e2m1fn)})
    # an odd last dimension is fine when the total is even
    odd = jnp.asarray(F4_VALUES[:6].reshape(2, 3).astype(ml_dtypes.float4_e2m1fn))
    again = stc_flax.load(stc_flax.save({"x": odd}))["x"]
    assert again.shape == (2, 3) and np.array_equal(np.asarray(again), np.asarray(odd))
    path = tmp_path / "f4.safetensors"
    stc_flax.save_file({"x": odd}, path)
    with safe_open(path, framework="jax") as f:
        assert f.get_tensor("x").shape == (2, 3)
        with pytest.raises(SafetensorError, match="slicing an F4 tensor is not supported"):
            f.get_slice("x")[0]


@pytest.mark.skipif(not LACKING, reason="this JAX has every float8 type of the format")
def test_float8_types_this_jax_lacks_are_refused(tmp_path):
    for code, dtype in LACKING.items():
        path = tmp_path / f"{code}.safetensors"
        safetensors_c.save_file({"f": np.zeros(3, np.uint8).view(dtype)}, path)
        with pytest.raises(SafetensorError, match=rf"'f': dtype {code} has no JAX equivalent"):
            stc_flax.load_file(path)


@pytest.mark.parametrize("dtype", ["int4", "uint4", "float8_e3m4", "float8_e4m3b11fnuz", "int2"])
def test_jax_dtypes_the_format_lacks_are_refused(dtype):
    if not hasattr(jnp, dtype):
        pytest.skip(f"this JAX has no {dtype}")
    array = jnp.zeros(4, getattr(jnp, dtype))
    with pytest.raises(SafetensorError, match=rf"'x': dtype {dtype} cannot be stored") as info:
        stc_flax.save({"x": array})
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"


# ---------------------------------------------------------------------------
# MARK: zero-copy, and copies made once


def _aligned_tensors():
    # Every size a multiple of 64 bytes, so each tensor starts aligned when
    # the data section does.
    return {
        "a": random_array("F32", (16, 16)),
        "b": random_array("BF16", (4, 32)),
        "c": random_array("U8", (64,)),
        "d": random_array("C64", (8, 8)),
    }


def test_writing_to_the_mapping_is_impossible_through_jax(tmp_path, helpers):
    # The mapping is private: arrays derived from an adopted one are new
    # buffers, and the file is never written.
    tensors = _aligned_tensors()
    path = helpers.save_aligned(tensors, tmp_path / "aligned.safetensors")
    before = path.read_bytes()
    a = stc_flax.load_file(path)["a"]
    b = a.at[0, 0].set(1.0)
    assert b.unsafe_buffer_pointer() != a.unsafe_buffer_pointer()
    assert path.read_bytes() == before
    assert_same(a, tensors["a"])


def test_read_only_arrays_are_copied_never_adopted():
    # e.g. a file image in immutable bytes, or a read-only mapping under
    # strict overcommit: JAX must not hold (and export via DLPack) memory
    # that a consumer could write to.
    raw = np.empty(256 + 64, np.uint8)
    start = -helpers_address(raw) % 64
    source = raw[start:start + 256].view(np.float32)
    source[:] = np.arange(64, dtype=np.float32)
    source.flags.writeable = False
    out = adapter.to_array("x", "F32", source, adapter.placement("cpu"))
    assert out.unsafe_buffer_pointer() != helpers_address(source)
    assert_same(out, np.arange(64, dtype=np.float32))
    # a writable aligned one is adopted (the same path load_file takes)
    writable = raw[start:start + 256].view(np.float32)
    adopted = adapter.to_array("x", "F32", writable, adapter.placement("cpu"))
    assert adopted.unsafe_buffer_pointer() == helpers_address(writable)


def helpers_address(array):
    return array.__array_interface__["data"][0]


# ---------------------------------------------------------------------------
# MARK: bad input


def test_sparse_arrays_are_refused():
    from jax.experimental import sparse

    matrix = sparse.BCOO.fromdense(jnp.eye(3))
    with pytest.raises(ValueError, match=r"tensor 's' is a sparse BCOO array.*todense"):
        stc_flax.save({"s": matrix})


def test_prng_keys_are_refused():
    with pytest.raises(SafetensorError, match=r"'k': a PRNG key array cannot be stored.*key_data"):
        stc_flax.save({"k": jax.random.key(0)})
    # the documented way works
    data = stc_flax.save({"k": jax.random.key_data(jax.random.key(0))})
    restored = jax.random.wrap_key_data(stc_flax.load(data)["k"])
    assert (jax.random.key_data(restored) == jax.random.key_data(jax.random.key(0))).all()


def test_traced_values_are_refused():
    seen = []

    @jax.jit
    def step(x):
        with pytest.raises(TypeError, match="'x' is a traced value inside jax.jit"):
            stc_flax.save({"x": x})
        seen.append(True)
        return x

    step(jnp.ones(2))
    assert seen


def test_deleted_arrays_raise():
    array = jnp.ones(3)
    array.delete()
    with pytest.raises(RuntimeError, match="deleted"):
        stc_flax.save({"a": array})


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints


def test_flax_serialization_state_dicts_round_trip(tmp_path):
    """A Flax model's parameters, flattened as users do it."""
    flax = pytest.importorskip("flax")
    from flax import linen as nn
    from flax.traverse_util import flatten_dict, unflatten_dict

    model = nn.Dense(4)
    params = model.init(jax.random.key(0), jnp.ones((1, 3)))
    flat = {"/".join(k): v for k, v in flatten_dict(params).items()}
    path = tmp_path / "dense.safetensors"
    stc_flax.save_file(flat, path)
    restored = unflatten_dict({tuple(k.split("/")): v for k, v in stc_flax.load_file(path).items()})
    out = model.apply(restored, jnp.ones((1, 3)))
    assert jnp.array_equal(out, model.apply(params, jnp.ones((1, 3))))
    assert flax.__version__


def test_arrays_sharded_over_devices_are_saved_whole(tmp_path):
    """A jax.Array split over several (CPU) devices is gathered once and
    stored as one tensor; JAX needs the device count before it starts, so
    this runs in a fresh interpreter."""
    import subprocess
    import sys

    path = tmp_path / "sharded.safetensors"
    code = (
        "import sys, numpy as np, jax\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec\n"
        "import safetensors_c.flax as stc_flax, safetensors.numpy as ref_numpy\n"
        "assert len(jax.devices('cpu')) == 4\n"
        "mesh = Mesh(np.array(jax.devices('cpu')), ('x',))\n"
        "values = np.arange(64, dtype=np.float32).reshape(8, 8)\n"
        "array = jax.device_put(values, NamedSharding(mesh, PartitionSpec('x')))\n"
        "assert len(array.addressable_shards) == 4\n"
        "stc_flax.save_file({'w': array}, sys.argv[1])\n"
        "assert open(sys.argv[1], 'rb').read() == ref_numpy.save({'w': values})\n"
        "back = stc_flax.load_file(sys.argv[1])['w']\n"
        "assert back.devices() == {jax.devices('cpu')[0]}\n"
        "assert (np.asarray(back) == values).all()\n"
        "print('ok')\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
