"""The reference's top-level API over the neutral layer: serialize,
serialize_file, deserialize, TensorSpec, _safe_open_handle, and slices that
raise an IndexError; non-regular files refused without blocking."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import (
    SafetensorError,
    SliceIndexError,
    TensorSpec,
    _safe_open_handle,
    deserialize,
    safe_open,
    serialize,
    serialize_file,
)

try:
    import safetensors as reference
except ImportError:  # pragma: no cover - the test extra installs it
    reference = None

needs_reference = pytest.mark.skipif(reference is None, reason="reference not installed")


def spec(array: np.ndarray, dtype: str, shape=None) -> TensorSpec:
    return TensorSpec(
        dtype=dtype,
        shape=list(array.shape if shape is None else shape),
        data_ptr=array.ctypes.data,
        data_len=array.nbytes,
    )


SAMPLES = {
    "f32": (np.arange(6, dtype=np.float32).reshape(2, 3), "float32"),
    "bf16": (np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16), "bfloat16"),
    "i8": (np.array([-1, 2, -3], np.int8), "int8"),
    "b": (np.array([True, False]), "bool"),
    "e": (np.zeros((0, 3), np.float64), "float64"),
    "f8": (np.ones(3, np.float32).astype(ml_dtypes.float8_e4m3fn), "float8_e4m3fn"),
}


# MARK: TensorSpec -------------------------------------------------------------


def test_tensorspec_keeps_what_it_was_given():
    a = np.zeros((2, 3), np.float32)
    s = spec(a, "float32")
    assert (s.dtype, s.shape, s.data_ptr, s.data_len) == ("F32", [2, 3], a.ctypes.data, 24)
    assert "F32" in repr(s)


def test_tensorspec_is_keyword_only():
    with pytest.raises(TypeError):
        TensorSpec("float32", [1], 0, 4)


@pytest.mark.parametrize("dtype", ["F8_E4M3X", "int4", "float128", "", "Float32"])
def test_tensorspec_refuses_unknown_dtypes_at_construction(dtype):
    with pytest.raises(SafetensorError, match=repr(dtype)):
        TensorSpec(dtype=dtype, shape=[1], data_ptr=0, data_len=0)


def test_tensorspec_f4_pairs_double_the_last_dimension():
    raw = np.zeros((2, 3), np.uint8)
    s = spec(raw, "float4_e2m1fn_x2")
    assert s.dtype == "F4" and s.shape == [2, 6]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_tensorspec_refuses_bad_sizes(bad):
    with pytest.raises(TypeError):
        TensorSpec(dtype="uint8", shape=[1], data_ptr=0, data_len=bad)
    with pytest.raises(TypeError):
        TensorSpec(dtype="uint8", shape=[bad], data_ptr=0, data_len=0)


# MARK: serialize / deserialize ---------------------------------------------------


@needs_reference
def test_serialize_is_byte_identical_to_the_reference():
    ours = serialize({k: spec(a, d) for k, (a, d) in SAMPLES.items()}, {"format": "np"})
    theirs = reference.serialize(
        {
            k: reference.TensorSpec(
                dtype=d, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes
            )
            for k, (a, d) in SAMPLES.items()
        },
        metadata={"format": "np"},
    )
    assert ours == theirs


def test_serialize_round_trips_through_load():
    data = serialize({k: spec(a, d) for k, (a, d) in SAMPLES.items()})
    loaded = safetensors_c.load(data)
    for name, (array, _) in SAMPLES.items():
        assert loaded[name].dtype == array.dtype
        assert loaded[name].tobytes() == array.tobytes()


def test_serialize_refuses_a_length_that_disagrees_with_the_shape():
    a = np.zeros(6, np.float32)
    with pytest.raises(SafetensorError, match="'x'"):
        serialize({"x": spec(a, "float32", shape=[2, 4])})


@pytest.mark.parametrize("value", [np.zeros(2), {"dtype": "float32"}, b"abc"])
def test_serialize_takes_only_tensorspecs(value):
    with pytest.raises(TypeError, match="TensorSpec"):
        serialize({"x": value})
    with pytest.raises(TypeError):
        serialize([("x", value)])


def test_serialize_of_nothing_is_an_empty_file():
    assert serialize({}) == b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "


@needs_reference
def test_deserialize_matches_the_reference():
    data = serialize({k: spec(a, d) for k, (a, d) in SAMPLES.items()})
    ours = deserialize(data)
    theirs = reference.deserialize(data)
    assert sorted((n, t["dtype"], list(t["shape"]), bytes(t["data"])) for n, t in ours) == sorted(
        (n, t["dtype"], list(t["shape"]), bytes(t["data"])) for n, t in theirs
    )
    assert all(isinstance(t["data"], bytearray) for _, t in ours)


def test_deserialize_is_in_file_order_and_validates():
    data = serialize({k: spec(a, d) for k, (a, d) in SAMPLES.items()})
    names = [name for name, _ in deserialize(data)]
    with _safe_open_handle(io.BytesIO(data)) as f:
        assert names == f.offset_keys()
    with pytest.raises(SafetensorError):
        deserialize(data[:-1])
    with pytest.raises(TypeError):
        deserialize("text")


def test_serialize_file_writes_atomically_what_serialize_returns(tmp_path):
    tensors = {k: spec(a, d) for k, (a, d) in SAMPLES.items()}
    path = tmp_path / "out.safetensors"
    assert serialize_file(tensors, path, {"a": "b"}) is None
    assert path.read_bytes() == serialize(tensors, {"a": "b"})
    with pytest.raises(TypeError):
        serialize_file(tensors, 3)


def test_serialize_file_lets_other_threads_run(tmp_path):
    """The bytes go to the file with the GIL released: a Python thread
    counting in a loop keeps counting while a 256 MiB file is written."""
    big = np.ones(64 * 1024 * 1024, np.float32)
    tensors = {"big": spec(big, "float32")}
    counts = []
    stop = threading.Event()

    def count():
        n = 0
        while not stop.is_set():
            n += 1
            if n % 1000 == 0:
                counts.append(time.perf_counter())

    ticker = threading.Thread(target=count)
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        ticker.start()
        time.sleep(0.05)
        start = time.perf_counter()
        serialize_file(tensors, tmp_path / "big.safetensors")
        end = time.perf_counter()
    finally:
        stop.set()
        ticker.join()
        sys.setswitchinterval(old)
    during = [t for t in counts if start <= t <= end]
    # Held GIL: the counter would stall for the whole write. Released: it
    # makes progress all along (checked as ticks in each half of the write).
    middle = (start + end) / 2
    assert any(t < middle for t in during) and any(t >= middle for t in during), (
        f"{len(during)} ticks during a {end - start:.3f}s write"
    )


# MARK: _safe_open_handle ------------------------------------------------------------


class CountingFile(io.RawIOBase):
    """A seekable binary file without fileno() that counts the bytes read."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.bytes_read = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, n=-1):
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        chunk = self._data[self._pos:end]
        self._pos = end
        self.bytes_read += len(chunk)
        return chunk


@pytest.fixture
def big_image():
    tensors = {
        "a": np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024),
        "b": np.full((512, 512), 3, np.int16),
        "c": np.arange(10, dtype=np.float64),
    }
    return safetensors_c.save(tensors), tensors


def test_file_object_without_fileno_reads_only_header_and_asked_ranges(big_image):
    data, tensors = big_image
    f = CountingFile(data)
    header = 8 + int.from_bytes(data[:8], "little")
    with _safe_open_handle(f, "np") as handle:
        assert f.bytes_read <= max(header, 256 * 1024)
        opened = f.bytes_read
        assert handle.keys() == ["a", "b", "c"]
        np.testing.assert_array_equal(handle.get_tensor("c"), tensors["c"])
        assert f.bytes_read - opened == tensors["c"].nbytes
        before = f.bytes_read
        rows = handle.get_slice("a")[10:12]
        np.testing.assert_array_equal(rows, tensors["a"][10:12])
        assert f.bytes_read - before == 2 * 1024 * 4
        before = f.bytes_read
        column = handle.get_slice("a")[:, 5]
        np.testing.assert_array_equal(column, tensors["a"][:, 5])
        # One element of each row, runs coalesced: never more than the tensor.
        assert f.bytes_read - before <= tensors["a"].nbytes


def test_file_object_with_fileno_is_mapped(tmp_path, big_image):
    data, tensors = big_image
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with open(path, "rb") as raw:
        raw.seek(5)
        with _safe_open_handle(raw, "np") as handle:
            assert handle.reader.mapped
            np.testing.assert_array_equal(handle.get_tensor("b"), tensors["b"])
            assert str(path) in repr(handle)
        assert raw.tell() == 5  # its position is not used
    with open(path, "rb") as raw:
        with _safe_open_handle(raw, "np", backend="pread") as handle:
            assert not handle.reader.mapped
            np.testing.assert_array_equal(handle.get_slice("a")[3], tensors["a"][3])


def test_file_object_sources_are_validated_like_files(big_image):
    data, _ = big_image
    bad = bytearray(data)
    bad[8:9] = b"["
    with pytest.raises(SafetensorError) as info:
        _safe_open_handle(io.BytesIO(bytes(bad)), "np")
    assert info.value.code == "STC_ERR_INVALID_JSON"
    with pytest.raises(SafetensorError) as info:
        _safe_open_handle(io.BytesIO(data[:-4]), "np")
    assert info.value.code == "STC_ERR_TRUNCATED_DATA"
    with pytest.raises(SafetensorError, match="ZIP"):
        _safe_open_handle(io.BytesIO(b"PK\x03\x04" + bytes(60)), "np")


def test_file_object_that_shrinks_gives_an_error_not_wrong_data(big_image):
    data, _ = big_image
    f = CountingFile(data)
    handle = _safe_open_handle(f, "np")
    f._data = data[: len(data) - 100]
    last = handle.offset_keys()[-1]
    with pytest.raises(SafetensorError, match="shorter"):
        handle.get_tensor(last)


def test_safe_open_accepts_file_objects_and_load_file_too(big_image):
    data, tensors = big_image
    with safe_open(io.BytesIO(data), framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("a"), tensors["a"])
    loaded = safetensors_c.load_file(io.BytesIO(data))
    assert list(loaded) == safe_open(io.BytesIO(data)).offset_keys() == ["c", "a", "b"]
    np.testing.assert_array_equal(loaded["b"], tensors["b"])


# MARK: slices out of bounds --------------------------------------------------------


@pytest.mark.parametrize("backend", ["mmap", "pread"])
@pytest.mark.parametrize("index", [5, (0, 7), (slice(None), -4), (1, 1, 1)])
def test_out_of_bounds_slices_are_index_errors(tmp_path, backend, index):
    path = tmp_path / "s.safetensors"
    safetensors_c.save_file({"x": np.zeros((2, 3), np.float32)}, path)
    with safe_open(path, "np", backend=backend) as f:
        with pytest.raises(SliceIndexError) as info:
            f.get_slice("x")[index]
    assert isinstance(info.value, IndexError) and isinstance(info.value, SafetensorError)
    assert "'x'" in str(info.value) and "[2, 3]" in str(info.value)


# MARK: non-regular files -------------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    start = time.monotonic()
    for call in (lambda: safe_open(fifo), lambda: safetensors_c.load_file(fifo),
                 lambda: safe_open(fifo, backend="pread")):
        with pytest.raises(SafetensorError) as info:
            call()
        assert info.value.code == "STC_ERR_NOT_REGULAR_FILE"
        assert "FIFO" in str(info.value)
    assert time.monotonic() - start < 5


def test_devices_are_refused(tmp_path):
    for device in ("/dev/zero", "/dev/null"):
        with pytest.raises(SafetensorError) as info:
            safetensors_c.load_file(device)
        assert info.value.code == "STC_ERR_NOT_REGULAR_FILE"
        assert "device" in str(info.value)


def test_fifo_as_index_or_shard_is_refused(tmp_path):
    tensors = {f"t{i}": np.full(100, i, np.float32) for i in range(4)}
    safetensors_c.save_sharded(tensors, tmp_path, max_shard_size=800)
    index = tmp_path / "model.safetensors.index.json"
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_sharded(tmp_path)
    assert info.value.code == "STC_ERR_NOT_REGULAR_FILE"
    # The real index was valid JSON naming the shard: the refusals above are the FIFO's.
    weight_map = json.loads(index.read_text())["weight_map"]
    assert shard.name in weight_map.values() and set(weight_map) == set(tensors)
    index.unlink()
    os.mkfifo(index)
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_sharded(tmp_path)
    assert info.value.code == "STC_ERR_NOT_REGULAR_FILE"
    assert "FIFO" in str(info.value) and "model.safetensors.index.json" in str(info.value)


# MARK: errors a user can act on --------------------------------------------------------


def test_plain_text_is_named_as_text(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes about the model, not weights\n")
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(path)
    assert info.value.code == "STC_ERR_NOT_SAFETENSORS"
    assert "text file" in str(info.value) and "max_header_size" not in str(info.value)


def test_truncation_gives_expected_and_actual_sizes(tmp_path):
    path = tmp_path / "t.safetensors"
    safetensors_c.save_file({"a": np.ones(100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(path)
    assert info.value.code == "STC_ERR_TRUNCATED_DATA"
    assert f"{len(data)} bytes, but it has {len(data) - 10}" in str(info.value)
    path.write_bytes(data[:40])
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(path)
    assert info.value.code == "STC_ERR_HEADER_LENGTH"
    header_end = 8 + int.from_bytes(data[:8], "little")
    assert f"at least {header_end} bytes, but it has 40" in str(info.value)
    path.write_bytes(data + b"xy")
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(path)
    assert f"{len(data)} bytes, but it has {len(data) + 2}" in str(info.value)


def test_errors_raised_in_python_carry_codes(tmp_path):
    path = tmp_path / "c.safetensors"
    safetensors_c.save_file({"a": np.ones(2)}, path)
    f = safe_open(path)
    with pytest.raises(SafetensorError) as info:
        f.get_tensor("missing")
    assert info.value.code == "STC_ERR_NO_SUCH_TENSOR"
    f.close()
    with pytest.raises(SafetensorError) as info:
        f.keys()
    assert info.value.code == "STC_ERR_CLOSED"
    with pytest.raises(SafetensorError) as info:
        safetensors_c.save({"s": np.array(["text"])})
    assert info.value.code == "STC_ERR_UNSUPPORTED_DTYPE"
    with pytest.raises(SafetensorError) as info:
        safe_open(path, backend="aio")
    assert info.value.code == "STC_ERR_INVALID_ARGUMENT"
