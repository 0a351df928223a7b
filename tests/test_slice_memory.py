"""get_slice over sources read through Python (io.BytesIO, byte sources,
URLs): the result equals NumPy indexing of the whole tensor, and the memory
it takes stays a small multiple of the result however many runs it has."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import safetensors_c
from safetensors_c import SafetensorError, _reader, safe_open

from conftest import basic_index

E = Ellipsis
N = None

DTYPES = [np.uint8, np.int16, np.float32, np.int64, np.complex64, np.bool_, ml_dtypes.bfloat16]


class ByteSource:
    """A byte source (read_at only) that records every read."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.size = len(self.data)
        self.name = "<test byte source>"
        self.reads = []

    def read_at(self, offset, length):
        self.reads.append((offset, length))
        return self.data[offset:offset + length]


class RangeSource(ByteSource):
    """A byte source with read_ranges, as remote storage has."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.calls = []

    def read_ranges(self, ranges):
        ranges = list(ranges)
        self.calls.append(ranges)
        return [memoryview(self.data)[o:o + n] for o, n in ranges]


def make_array(dtype, shape, seed=0):
    count = int(np.prod(shape, dtype=np.int64))
    values = (np.arange(count, dtype=np.int64) * 7 + seed) % 251
    if np.dtype(dtype) == np.bool_:
        values = values % 2
    return values.astype(np.float64).astype(dtype).reshape(shape)


def open_python_read(data: bytes, kind: str):
    source = {"bytesio": lambda: io.BytesIO(data), "source": lambda: ByteSource(data),
              "ranges": lambda: RangeSource(data)}[kind]()
    return safe_open(source, "np")


def check_index(handle, name, tensor, index):
    try:
        expected = tensor[index]
    except IndexError:
        with pytest.raises(IndexError):
            handle.get_slice(name)[index]
        return
    got = handle.get_slice(name)[index]
    assert type(got) is type(expected)
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    assert np.asarray(got).tobytes() == np.ascontiguousarray(expected).tobytes()


# MARK: equality with NumPy ----------------------------------------------------

# Tiny budgets drive every path (units cut into blocks, several steps,
# several windows, ranges coalesced or not) on tensors of a few bytes.
BUDGETS = [
    pytest.param((8 << 20, 4096, 1 << 16), id="default"),
    pytest.param((16, 0, 3), id="budget16-gap0-window3"),
    pytest.param((1, 8, 1), id="budget1-gap8-window1"),
    pytest.param((40, 64, 2), id="budget40-gap64-window2"),
]


@pytest.fixture(params=BUDGETS)
def budget(request, monkeypatch):
    batch, gap, window = request.param
    monkeypatch.setattr(_reader, "_BATCH_MIN", batch)
    monkeypatch.setattr(_reader, "_GAP", gap)
    monkeypatch.setattr(_reader, "_WINDOW", window)
    return request.param


@st.composite
def case(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7))
    dtype = draw(st.sampled_from(DTYPES))
    return shape, dtype, draw(basic_index(shape))


_FILES = {}


def file_for(shape, dtype):
    key = (shape, np.dtype(dtype).str, np.dtype(dtype).name)
    if key not in _FILES:
        tensor = make_array(dtype, shape, seed=len(_FILES))
        # A tensor before and after: offsets inside the data section are not 0.
        data = safetensors_c.save(
            {"a": np.ones(3, np.uint8), "x": tensor, "z": np.ones(5, np.int16)}
        )
        _FILES[key] = (data, tensor)
    return _FILES[key]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=case(), kind=st.sampled_from(["bytesio", "source", "ranges"]))
def test_random_indices_match_numpy(budget, drawn, kind):
    shape, dtype, index = drawn
    data, tensor = file_for(shape, dtype)
    with open_python_read(data, kind) as f:
        check_index(f, "x", tensor, index)


FIXED = [
    (slice(None), slice(None, None, 4)),
    (slice(None, None, -1), slice(None, None, -3)),
    (slice(None, None, 2),), (slice(None, None, -2),), (slice(1, None, 3), 5),
    (E, 2), (2, E), (N, E, N), (slice(None), N, slice(2, 9)), (0, 0, 0), (),
    (slice(3, 3),), (slice(None), slice(5, 1)), (slice(None, None, -1),) * 3,
    (slice(None), slice(None), slice(None, None, 2)), (slice(None), 1, slice(None, None, -1)),
    (slice(-2, None), slice(None, 2), slice(1, 2)), E, N, -1, (7, 0),
]


@pytest.mark.parametrize("kind", ["bytesio", "source", "ranges"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_fixed_indices_match_numpy(budget, kind, dtype):
    data, tensor = file_for((6, 8, 10), dtype)
    with open_python_read(data, kind) as f:
        for index in FIXED:
            check_index(f, "x", tensor, index)


@pytest.mark.parametrize("code", ["F4", "F6_E2M3"])
def test_packed_dtypes_slice_like_the_mapped_file(budget, code, tmp_path):
    raw = make_array(np.uint8, (6, 12), seed=3)
    packed = safetensors_c.packed(raw, code)
    data = safetensors_c.save({"p": packed})
    path = tmp_path / "p.safetensors"
    path.write_bytes(data)
    with safe_open(path, "np") as mapped, safe_open(io.BytesIO(data), "np") as f:
        for index in [slice(None, None, 2), slice(None, None, -1), (slice(None), 1),
                      (slice(1, 5, 3), slice(None, None, -2)), (N, 2), (slice(4, 4),)]:
            expected = mapped.get_slice("p")[index]
            got = f.get_slice("p")[index]
            assert np.shape(got) == np.shape(expected)
            assert type(got) is type(expected)
            assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()


def test_results_are_independent_arrays(budget):
    data, tensor = file_for((6, 8, 10), np.float32)
    with safe_open(io.BytesIO(data), "np") as f:
        first = f.get_slice("x")[:, ::3]
        first[...] = -1
        assert np.array_equal(f.get_slice("x")[:, ::3], tensor[:, ::3])
        assert first.flags.writeable


# MARK: views no slice makes (read_view's own contract) ------------------------


@pytest.mark.parametrize(
    "offset, shape, strides",
    [
        (0, (4, 3), (0, 4)),            # a repeated row (stride 0)
        (8, (3, 3), (4, 4)),            # overlapping rows
        (4, (5, 2), (4, 40)),           # transposed: the inner stride is the larger
        (36, (3, 4), (-12, 4)),         # rows backwards
        (0, (2, 3, 2), (40, 4, 20)),    # interleaved
    ],
)
def test_read_view_of_any_strides_matches_as_strided(budget, offset, shape, strides):
    tensor = np.arange(60, dtype=np.float32).reshape(6, 10)
    data = safetensors_c.save({"x": tensor})
    reader = _reader.open_source(ByteSource(data))
    got = reader.read_view("x", offset, shape, strides)
    base = tensor.reshape(-1)
    expected = np.lib.stride_tricks.as_strided(base[offset // 4:], shape=shape, strides=strides)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "offset, shape, strides",
    [(0, (6, 11), (40, 4)), (236, (2,), (4,)), (-4, (2,), (4,)), (0, (3,), (-4,)),
     (0, (2, 2), (236, 4))],
)
def test_read_view_outside_the_tensor_is_refused(offset, shape, strides):
    data = safetensors_c.save({"x": np.zeros((6, 10), np.float32), "y": np.ones(64, np.uint8)})
    reader = _reader.open_source(ByteSource(data))
    with pytest.raises(SafetensorError, match="strided view is outside the tensor"):
        reader.read_view("x", offset, shape, strides)


# MARK: a source that lies ---------------------------------------------------


class ShortSource(RangeSource):
    """Hands back one byte less than asked for, once the header is read."""

    def read_ranges(self, ranges):
        chunks = super().read_ranges(ranges)
        return [chunk[:-1] if len(chunk) > 1 else chunk for chunk in chunks]


def test_a_source_returning_short_ranges_fails_the_slice(budget):
    data, _ = file_for((6, 8, 10), np.float32)
    with safe_open(ShortSource(data), "np") as f:
        with pytest.raises(SafetensorError, match="bytes instead of") as info:
            f.get_slice("x")[:, ::2, 1:]
        assert info.value.code == "STC_ERR_FILE_CHANGED"


# MARK: reads stay few ---------------------------------------------------------


def test_reads_are_coalesced_and_bounded():
    tensor = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)  # 4 MiB, rows of 4 KiB
    data = safetensors_c.save({"t": tensor})
    source = RangeSource(data)
    with safe_open(source, "np") as f:
        source.calls.clear()
        # Every 4th column: every run is near the next: one range.
        np.testing.assert_array_equal(f.get_slice("t")[:, ::4], tensor[:, ::4])
        assert [len(call) for call in source.calls] == [1]
        assert sum(n for call in source.calls for _, n in call) <= tensor.nbytes
        source.calls.clear()
        # Rows 16 KiB apart: each row alone, exactly its bytes.
        np.testing.assert_array_equal(f.get_slice("t")[::4, 100:900], tensor[::4, 100:900])
        assert sum(len(call) for call in source.calls) == 256
        assert sum(n for call in source.calls for _, n in call) == 256 * 800 * 4


def test_each_read_call_spans_a_bounded_part_of_the_tensor():
    """A remote source coalesces the ranges of one read_ranges call into
    buffers spanning them: a column of a large tensor must not arrive as one
    call spanning the whole tensor."""
    tensor = np.arange(4096 * 2048, dtype=np.float32).reshape(4096, 2048)  # 32 MiB
    data = safetensors_c.save({"t": tensor})
    source = RangeSource(data)
    with safe_open(source, "np") as f:
        for index in [np.s_[:, 7], np.s_[:, ::4], np.s_[::-3, 1::5]]:
            source.calls.clear()
            np.testing.assert_array_equal(f.get_slice("t")[index], tensor[index])
            spans = [max(o + n for o, n in call) - min(o for o, n in call) for call in source.calls]
            assert max(spans) <= 16 << 20, (index, spans)
            # ... and the calls stay few: about one per budget of the tensor.
            assert len(source.calls) <= 5, index
            assert sum(n for call in source.calls for _, n in call) <= tensor.nbytes


# MARK: memory -------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import io, json, sys, tracemalloc
    import numpy as np
    import safetensors_c

    kind, index_text = sys.argv[1], sys.argv[2]
    tensor = np.arange(4096 * 4096, dtype=np.float32).reshape(4096, 4096)  # 64 MiB
    data = safetensors_c.save({"t": tensor})
    index = eval(index_text, {"np": np})
    expected = tensor[index]
    del tensor

    class Source:
        name = "<source>"
        size = len(data)
        def read_at(self, offset, length):
            return data[offset:offset + length]

    source = io.BytesIO(data) if kind == "bytesio" else Source()
    with safetensors_c.safe_open(source, "np") as f:
        part = f.get_slice("t")
        tracemalloc.start()
        got = part[index]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert np.array_equal(got, expected)
    print(json.dumps({"peak": peak, "result": got.nbytes}))
    """
)


@pytest.mark.parametrize("kind", ["bytesio", "source"])
@pytest.mark.parametrize(
    "index",
    ["np.s_[:, ::4]", "np.s_[::-1, ::-4]", "np.s_[::2, 1::2]", "np.s_[:, :1024]", "np.s_[1::4]"],
)
def test_peak_memory_is_a_small_multiple_of_the_result(kind, index):
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, kind, index],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["result"] == 16 << 20
    # The result itself, plus at most one step of source bytes and their copy.
    assert measured["peak"] <= 3 * measured["result"], measured
