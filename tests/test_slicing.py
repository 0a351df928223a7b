"""get_slice(name)[index] behaves exactly like get_tensor(name)[index]."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import safetensors_c
from safetensors_c import safe_open

from conftest import BACKENDS, assert_same_array, basic_index

E = Ellipsis
N = None

DTYPES = {
    "f32": np.float32,
    "i64": np.int64,
    "u8": np.uint8,
    "bool": np.bool_,
    "c64": np.complex64,
    "bf16": ml_dtypes.bfloat16,
    "f8": ml_dtypes.float8_e4m3fn,
}

SHAPES = {
    "t3": (4, 5, 6),
    "t1": (7,),
    "t0": (),
    "empty": (0, 3),
    "t4": (2, 3, 1, 4),
}


def make_array(dtype, shape, seed=0):
    count = int(np.prod(shape, dtype=np.int64))
    values = (np.arange(count) * 7 + seed) % 251
    if np.dtype(dtype) == np.bool_:
        values = values % 2
    return values.astype(np.float64).astype(dtype).reshape(shape)


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory):
    tensors = {}
    for dname, dtype in DTYPES.items():
        for sname, shape in SHAPES.items():
            tensors[f"{dname}_{sname}"] = make_array(dtype, shape, seed=len(tensors))
    path = tmp_path_factory.mktemp("slicing") / "s.safetensors"
    safetensors_c.save_file(tensors, path)
    return path, tensors


@pytest.fixture(scope="module")
def handles(slice_file):
    path, _ = slice_file
    opened = {b: safe_open(path, "np", backend=b) for b in BACKENDS}
    yield opened
    for f in opened.values():
        f.close()


def check_same(result, expected):
    """Same type (scalar vs array), dtype, shape and bytes."""
    assert type(result) is type(expected), (type(result), type(expected))
    assert_same_array(result, expected)


def compare(f, name, index):
    tensor = f.get_tensor(name)
    try:
        expected = tensor[index]
    except Exception as exc:  # NumPy rejects it: so must we, the same way.
        with pytest.raises(type(exc)):
            f.get_slice(name)[index]
        return None
    result = f.get_slice(name)[index]
    check_same(result, expected)
    return result


INDICES_3D = [
    0, 3, -1, -4, np.int64(2), np.int32(-2), np.uint8(1),
    slice(None), slice(1, 3), slice(None, None, 2), slice(None, None, -1), slice(3, 0, -2),
    slice(-3, -1), slice(-100, 100), slice(2, 2), slice(3, 1), slice(5, None), slice(None, 0),
    slice(None, None, 7), slice(None, None, -7), slice(1, None, -1),
    (), (0,), (0, 0), (0, 0, 0), (-1, -1, -1), (1, slice(None), 2), (slice(None), 1),
    (E,), (E, 0), (0, E), (E, 1, 2), (1, E, 2), (0, 1, 2, E), (E, slice(None, None, -2)),
    (N,), (N, 0), (0, N, 1), (E, N), (N, E, N), (0, 1, 2, N), (N, N, N),
    (slice(1, 3), N, slice(None, None, -1), 4),
    (slice(None, None, -1), slice(None, None, -1), slice(None, None, -1)),
    (slice(0, 0), 1), (1, slice(4, 2)),
    E, N,
    # Advanced indexing.
    [0, 2], [-1, 0, 0], [], ([0, 1], [2, 3]), (slice(None), [4, 0]), (E, [1, 1, 5]),
    np.array([1, 3]), np.array([[0, 1], [2, 3]]), (0, np.array([True, False, True, False, True])),
    np.array([True, False, True, True]), np.zeros((4, 5, 6), dtype=bool),
    (np.array([0, 1]), N, [2, 3]),
    # 0-d integer arrays are advanced indices to NumPy (a copy, not a view).
    np.array(2), np.array(-1, dtype=np.int8), (0, np.array(1)), (E, np.array(3)),
    # Errors.
    4, -5, 2**40, -(2**63), (0, 5), (0, 0, 6), (0, 0, 0, 0), (E, E), (0, E, 0, E),
    1.5, "x", [4], [0.5], (slice(None), [5]), np.array([True, False]), {"a": 1}, [[[[[0]]]]],
]


def index_id(index):
    text = repr(index).replace("slice(None, None, None)", ":")
    return text if len(text) < 40 else text[:37] + "..."


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", INDICES_3D, ids=index_id)
def test_3d_indices(handles, backend, index):
    compare(handles[backend], "f32_t3", index)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize(
    "index",
    [0, -1, (1, 2), (slice(1, None, 2), E, -1), (N, 3, slice(None, None, -1)), ()],
    ids=index_id,
)
def test_dtypes(handles, backend, dname, index):
    compare(handles[backend], f"{dname}_t3", index)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "index",
    [(), E, (E,), N, (N,), (E, N), (N, E, N), 0, slice(None), -1, (0,), [0], [], True,
     np.array(True), np.array(False)],
    ids=index_id,
)
@pytest.mark.parametrize("dname", ["f32", "bool", "bf16"])
def test_zero_d(handles, backend, index, dname):
    compare(handles[backend], f"{dname}_t0", index)


def test_zero_d_scalar_type(handles):
    for f in handles.values():
        scalar = f.get_slice("i64_t0")[()]
        assert isinstance(scalar, np.int64)
        array = f.get_slice("i64_t0")[...]
        assert isinstance(array, np.ndarray) and array.shape == ()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "index",
    [slice(None), 0, (slice(None), 1), (slice(None), slice(None, None, -1)), (E, 2), (N, E),
     slice(0, 0), (slice(None), 3), [], [0]],
    ids=index_id,
)
def test_empty_tensor(handles, backend, index):
    compare(handles[backend], "u8_empty", index)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "index",
    [0, (1, 2), (E, 0), (slice(None), slice(None), 0), (1, 2, 0, 3), (N, 1, E, 2),
     (slice(None, None, -1), 0, slice(None), slice(1, 3))],
    ids=index_id,
)
def test_4d(handles, backend, index):
    compare(handles[backend], "i64_t4", index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_1d_scalars(handles, backend):
    f = handles[backend]
    for dname in DTYPES:
        for i in range(-7, 7):
            compare(f, f"{dname}_t1", i)


def test_slice_results_are_independent_of_later_writes(slice_file):
    path, tensors = slice_file
    with safe_open(path, "np", backend="pread") as f:
        part = f.get_slice("f32_t3")[1]
        part[...] = -1
        assert_same_array(f.get_slice("f32_t3")[1], tensors["f32_t3"][1])


def test_slice_metadata(handles, slice_file):
    _, tensors = slice_file
    for f in handles.values():
        s = f.get_slice("f32_t3")
        assert s.get_shape() == [4, 5, 6]
        assert s.get_dtype() == "F32"
        assert f.get_slice("bf16_t0").get_shape() == []
        assert f.get_slice("bf16_t0").get_dtype() == "BF16"
        assert f.get_slice("f8_t1").get_dtype() == "F8_E4M3"


def test_values_match_the_saved_arrays(handles, slice_file):
    _, tensors = slice_file
    for f in handles.values():
        for name, expected in tensors.items():
            assert_same_array(f.get_slice(name)[...], expected)


def test_packed_slice_shape_and_bytes(tmp_path, backend):
    raw = np.arange(12, dtype=np.uint8).reshape(3, 4)
    packed = safetensors_c.packed(raw, "F4")
    path = tmp_path / "p.safetensors"
    safetensors_c.save_file({"p": packed}, path)
    with safe_open(path, "np", backend=backend) as f:
        s = f.get_slice("p")
        assert s.get_shape() == [3, 8]
        assert s.get_dtype() == "F4"
        assert np.asarray(s[1:]).tobytes() == raw[1:].tobytes()
        assert np.asarray(s[:, 1]).tobytes() == raw[:, 1].tobytes()


# MARK: - Random basic indices


@st.composite
def shape_and_index(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    return shape, draw(basic_index(shape))


@pytest.fixture(scope="module")
def random_files(tmp_path_factory):
    """One file per shape, created on demand, shared by the hypothesis examples."""
    directory = tmp_path_factory.mktemp("random")
    cache = {}

    def get(shape, backend):
        if shape not in cache:
            array = make_array(np.int16, shape, seed=len(cache))
            path = directory / f"r{len(cache)}.safetensors"
            safetensors_c.save_file({"x": array, "pad": np.ones(3, np.uint8)}, path)
            cache[shape] = {b: safe_open(path, "np", backend=b) for b in BACKENDS}
        return cache[shape][backend]

    yield get
    for handles_of_shape in cache.values():
        for f in handles_of_shape.values():
            f.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=shape_and_index(), backend=st.sampled_from(BACKENDS))
def test_random_basic_indices(random_files, case, backend):
    shape, index = case
    compare(random_files(shape, backend), "x", index)
