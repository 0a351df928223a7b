"""safe_open and the top-level functions: the API users see."""

from __future__ import annotations

import gc
import os
import pathlib
import weakref

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open

from conftest import assert_same_array, build, entry


# MARK: - Package surface


def test_version_is_a_nonempty_string():
    assert isinstance(safetensors_c.__version__, str)
    assert safetensors_c.__version__
    assert safetensors_c.__version__[0].isdigit()


def test_top_level_reexports_are_the_numpy_module_functions():
    import safetensors_c.numpy as stnp

    assert safetensors_c.load is stnp.load
    assert safetensors_c.load_file is stnp.load_file
    assert safetensors_c.save is stnp.save
    assert safetensors_c.save_file is stnp.save_file
    for name in ("safe_open", "SafetensorError", "load", "load_file", "save", "save_file"):
        assert name in safetensors_c.__all__


def test_safetensor_error_is_a_value_error():
    assert issubclass(SafetensorError, ValueError)
    assert SafetensorError is safetensors_c._core.SafetensorError


def test_top_level_round_trip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    data = safetensors_c.save(tensors)
    assert isinstance(data, bytes)
    assert_same_array(safetensors_c.load(data)["a"], tensors["a"])
    safetensors_c.save_file(tensors, tmp_path / "x.safetensors")
    assert_same_array(safetensors_c.load_file(tmp_path / "x.safetensors")["a"], tensors["a"])


# MARK: - Header accessors


def test_keys_sorted_offset_keys_in_data_order(tmp_path, backend):
    # The writer orders by dtype rank descending: U64 'z' first, BOOL 'a' last.
    tensors = {
        "a": np.zeros(3, np.bool_),
        "m": np.zeros(2, np.float32),
        "z": np.zeros(1, np.uint64),
        "B": np.zeros(1, np.float32),
    }
    path = tmp_path / "o.safetensors"
    safetensors_c.save_file(tensors, path)
    with safe_open(path, "np", backend=backend) as f:
        assert f.keys() == ["B", "a", "m", "z"]
        assert f.offset_keys() == ["z", "B", "m", "a"]
        assert list(f.get_tensors()) == ["z", "B", "m", "a"]
    assert list(safetensors_c.load_file(path, backend=backend)) == ["z", "B", "m", "a"]


def test_offset_keys_follow_the_offsets_not_the_header_order(craft, backend):
    header = {
        "first_in_header": entry("U8", [2], 2, 4),
        "second_in_header": entry("U8", [2], 0, 2),
    }
    path = craft(header, b"abcd")
    with safe_open(path, "np", backend=backend) as f:
        assert f.keys() == ["first_in_header", "second_in_header"]
        assert f.offset_keys() == ["second_in_header", "first_in_header"]
        assert f.get_tensor("first_in_header").tobytes() == b"cd"
        assert f.get_tensor("second_in_header").tobytes() == b"ab"


def test_keys_sorted_by_code_point(craft):
    names = ["b", "B", "é", "a", "A", "_", "😀", "aa"]
    header = {n: entry("U8", [0], 0, 0) for n in names}
    with safe_open(craft(header), "np") as f:
        assert f.keys() == sorted(names)


@pytest.mark.parametrize(
    "header, expected",
    [
        ({}, None),
        ({"__metadata__": None}, None),
        ({"__metadata__": {}}, {}),
        ({"__metadata__": {"k": "v", "": "", "é": "😀"}}, {"k": "v", "": "", "é": "😀"}),
    ],
    ids=["absent", "null", "empty", "values"],
)
def test_metadata(craft, header, expected, backend):
    with safe_open(craft(header), "np", backend=backend) as f:
        metadata = f.metadata()
        assert metadata == expected
        assert type(metadata) is type(expected)
        assert f.keys() == []


def test_metadata_after_the_tensors(craft):
    header = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"__metadata__":{"x":"y"}}'
    with safe_open(craft(header, b"\x05"), "np") as f:
        assert f.metadata() == {"x": "y"}
        assert f.keys() == ["a"]


def test_save_file_metadata_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors_c.save_file({"a": np.zeros(1)}, path, metadata={"b": "2", "a": "1"})
    with safe_open(path, "np") as f:
        assert f.metadata() == {"a": "1", "b": "2"}


# MARK: - Reading tensors


def test_get_tensor_values(sample_file, sample_tensors, backend):
    with safe_open(sample_file, "np", backend=backend) as f:
        for name, expected in sample_tensors.items():
            assert_same_array(f.get_tensor(name), expected)
        got = f.get_tensors()
        assert set(got) == set(sample_tensors)
        for name, expected in sample_tensors.items():
            assert_same_array(got[name], expected)


def test_get_tensors_order_is_offset_order(sample_file, backend):
    with safe_open(sample_file, "np", backend=backend) as f:
        assert list(f.get_tensors()) == f.offset_keys()


def test_get_slice_full_index(sample_file, sample_tensors, backend):
    with safe_open(sample_file, "np", backend=backend) as f:
        s = f.get_slice("weight")
        assert s.get_shape() == [4, 5]
        assert s.get_dtype() == "F32"
        assert_same_array(s[:], sample_tensors["weight"])
        assert_same_array(s[1:3, ::2], sample_tensors["weight"][1:3, ::2])
        scalar = f.get_slice("scalar")
        assert scalar.get_shape() == []
        assert scalar.get_dtype() == "I16"


def test_backends_give_identical_arrays(sample_file):
    with safe_open(sample_file, "np", backend="mmap") as a, safe_open(
        sample_file, "np", backend="pread"
    ) as b:
        assert a.keys() == b.keys()
        assert a.offset_keys() == b.offset_keys()
        assert a.metadata() == b.metadata()
        for name in a.keys():
            assert_same_array(a.get_tensor(name), b.get_tensor(name))
    la = safetensors_c.load_file(sample_file, backend="mmap")
    lb = safetensors_c.load_file(sample_file, backend="pread")
    assert list(la) == list(lb)
    for name in la:
        assert_same_array(la[name], lb[name])


def test_unknown_tensor_name(sample_file, backend):
    with safe_open(sample_file, "np", backend=backend) as f:
        with pytest.raises(SafetensorError, match="no tensor named 'nope'"):
            f.get_tensor("nope")
        with pytest.raises(SafetensorError, match="no tensor named 'nope'"):
            f.get_slice("nope")
        with pytest.raises(SafetensorError, match="nope"):
            f.get_tensor("nope\x00")
        # A name that cannot be UTF-8 (lone surrogate) is simply absent.
        with pytest.raises(SafetensorError):
            f.get_tensor("\ud800")


@pytest.mark.parametrize("bad", [1, None, b"weight", 1.5, ["weight"]])
def test_non_str_name_is_type_error(sample_file, bad):
    with safe_open(sample_file, "np") as f:
        with pytest.raises(TypeError, match="str"):
            f.get_tensor(bad)
        with pytest.raises(TypeError, match="str"):
            f.get_slice(bad)


def test_names_with_nul_and_unicode(craft, backend):
    header = b'{"a\\u0000b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},' \
             b'"\xc3\xa9\\ud83d\\ude00":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    with safe_open(craft(header, b"\x01\x02"), "np", backend=backend) as f:
        assert f.keys() == ["a\x00b", "é😀"]
        assert f.get_tensor("a\x00b").tolist() == [1]
        assert f.get_tensor("é😀").tolist() == [2]
        with pytest.raises(SafetensorError):
            f.get_tensor("a")


# MARK: - Lifetime


def test_use_after_close_raises(sample_file, backend):
    f = safe_open(sample_file, "np", backend=backend)
    f.close()
    for call in (
        f.keys,
        f.offset_keys,
        f.metadata,
        f.get_tensors,
        lambda: f.get_tensor("weight"),
        lambda: f.get_slice("weight"),
    ):
        with pytest.raises(SafetensorError, match="closed"):
            call()


def test_use_after_with_block_raises(sample_file):
    with safe_open(sample_file, "np") as f:
        assert f.keys()
    with pytest.raises(SafetensorError, match="closed"):
        f.get_tensor("weight")


def test_close_is_idempotent(sample_file):
    f = safe_open(sample_file, "np")
    f.close()
    f.close()
    with pytest.raises(SafetensorError, match="closed"):
        f.keys()


def test_enter_returns_self_and_exceptions_propagate(sample_file):
    f = safe_open(sample_file, "np")
    with pytest.raises(KeyError):
        with f as g:
            assert g is f
            raise KeyError("inner")
    with pytest.raises(SafetensorError, match="closed"):
        f.keys()


def test_slice_obtained_before_close_still_works(sample_file, sample_tensors, backend):
    with safe_open(sample_file, "np", backend=backend) as f:
        s = f.get_slice("weight")
    assert s.get_shape() == [4, 5]
    assert_same_array(s[1:], sample_tensors["weight"][1:])


def test_arrays_outlive_close_with_and_gc(sample_file, sample_tensors, backend):
    with safe_open(sample_file, "np", backend=backend) as f:
        w = f.get_tensor("weight")
        ids = f.get_slice("ids")[1:]
        everything = f.get_tensors()
    f.close()
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None
    # Churn the allocator so that freed memory would be reused.
    junk = [np.full(1000, 0xAB, np.uint8) for _ in range(100)]
    assert_same_array(w, sample_tensors["weight"])
    assert_same_array(ids, sample_tensors["ids"][1:])
    for name, expected in sample_tensors.items():
        assert_same_array(everything[name], expected)
    del junk


def test_load_file_arrays_outlive_everything(sample_file, sample_tensors, backend):
    loaded = safetensors_c.load_file(sample_file, backend=backend)
    gc.collect()
    for name, expected in sample_tensors.items():
        assert_same_array(loaded[name], expected)


def test_unclosed_handle_is_collected(sample_file):
    f = safe_open(sample_file, "np")
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


# MARK: - Arguments


def test_str_and_pathlib_filenames(sample_file, sample_tensors):
    for name in (str(sample_file), pathlib.Path(sample_file)):
        with safe_open(name, "np") as f:
            assert_same_array(f.get_tensor("ids"), sample_tensors["ids"])
        assert_same_array(safetensors_c.load_file(name)["ids"], sample_tensors["ids"])


@pytest.mark.parametrize("framework", ["np", "numpy"])
def test_supported_frameworks(sample_file, framework):
    with safe_open(sample_file, framework) as f:
        assert "weight" in f.keys()


def test_framework_keyword(sample_file):
    with safe_open(sample_file, framework="numpy", device="cpu") as f:
        assert "weight" in f.keys()


@pytest.mark.parametrize(
    "framework", ["NP", "Numpy", "PT", "TF", "Jax", "mxnet", "xyz", ""]
)  # None and 3 are a TypeError, as in the reference: tests/test_dropin_parity.py
def test_unsupported_framework_names_the_supported_ones(sample_file, framework):
    with pytest.raises(SafetensorError) as info:
        safe_open(sample_file, framework)
    message = str(info.value)
    assert repr(framework) in message
    for name in ("np", "numpy", "pt", "torch", "flax", "jax", "tf", "tensorflow", "paddle", "mlx"):
        assert repr(name) in message
    assert info.value.code == "STC_ERR_INVALID_ARGUMENT"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0, "mps", "CPU"])
def test_device_other_than_cpu_rejected(sample_file, device):
    with pytest.raises(SafetensorError, match="cpu") as info:
        safe_open(sample_file, "np", device=device)
    assert repr(device) in str(info.value)


@pytest.mark.parametrize("bad", ["mmapx", "MMAP", "", None, 1])
def test_unknown_backend(sample_file, bad):
    with pytest.raises(SafetensorError, match="backend") as info:
        safe_open(sample_file, "np", backend=bad)
    assert "'mmap'" in str(info.value) and "'pread'" in str(info.value)
    with pytest.raises(SafetensorError, match="backend"):
        safetensors_c.load_file(sample_file, backend=bad)


def test_non_path_filename_is_type_error():
    with pytest.raises(TypeError, match="filename"):
        safe_open(12, "np")
    with pytest.raises(TypeError, match="filename"):
        safetensors_c.load_file(None)


def test_load_rejects_non_buffers():
    with pytest.raises(TypeError, match="bytes-like"):
        safetensors_c.load("not bytes")
    with pytest.raises(TypeError, match="bytes-like"):
        safetensors_c.load(None)


def test_load_accepts_bytes_bytearray_memoryview(sample_tensors):
    data = safetensors_c.save(sample_tensors)
    for image in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        loaded = safetensors_c.load(image)
        for name, expected in sample_tensors.items():
            assert_same_array(loaded[name], expected)


# MARK: - Files that cannot be opened


def test_missing_file_is_file_not_found(tmp_path):
    path = tmp_path / "does-not-exist.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        safe_open(path, "np")
    assert info.value.filename == str(path)
    with pytest.raises(FileNotFoundError):
        safetensors_c.load_file(path)
    with pytest.raises(FileNotFoundError):
        safe_open(path, "np", backend="pread")


def _open_errors(path) -> list[str]:
    """The exception type safe_open raises for each backend."""
    seen = []
    for backend in ("mmap", "pread"):
        try:
            safe_open(path, "np", backend=backend)
            seen.append("no error")
        except BaseException as exc:  # noqa: BLE001 - report whatever it is
            seen.append(type(exc).__name__)
    return seen


def test_unreadable_file_is_permission_error(tmp_path):
    path = tmp_path / "locked.safetensors"
    safetensors_c.save_file({"a": np.arange(3, dtype=np.int32)}, path)
    os.chmod(path, 0)
    if os.geteuid() != 0:
        assert _open_errors(path) == ["PermissionError", "PermissionError"]
        return
    # Root reads any file: drop to an unprivileged user in a forked child.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, ",".join(_open_errors(path)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    assert report.split(",") == ["PermissionError", "PermissionError"]


def test_directory_is_is_a_directory_error(tmp_path, backend):
    with pytest.raises(IsADirectoryError):
        safe_open(tmp_path, "np", backend=backend)
    with pytest.raises(IsADirectoryError):
        safetensors_c.load_file(tmp_path, backend=backend)


def test_os_errors_are_not_safetensor_errors(tmp_path):
    with pytest.raises(OSError) as info:
        safe_open(tmp_path / "missing", "np")
    assert not isinstance(info.value, SafetensorError)


def test_invalid_file_error_names_the_file(craft):
    path = craft(b"{", pad=False)
    with pytest.raises(SafetensorError) as info:
        safe_open(path, "np")
    assert str(path) in str(info.value)


def test_empty_header_file_opens(craft, backend):
    path = craft(b"{}")
    assert path.stat().st_size == 16
    with safe_open(path, "np", backend=backend) as f:
        assert f.keys() == []
        assert f.offset_keys() == []
        assert f.get_tensors() == {}
        assert f.metadata() is None
    assert safetensors_c.load_file(path, backend=backend) == {}
    assert safetensors_c.load(build(b"{}")) == {}
