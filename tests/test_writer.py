"""save / save_file: byte-exact output, input checks, atomic replacement."""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open

from conftest import NUMPY_DTYPE_OF, RANK, assert_same_array, tmp_files


def expected_file(items, metadata=None) -> bytes:
    """Hand-built file bytes. items: (name, code, shape, data bytes) in file order."""
    parts = []
    if metadata is not None:
        meta = ",".join(
            f"{json.dumps(k, ensure_ascii=False)}:{json.dumps(v, ensure_ascii=False)}"
            for k, v in metadata
        )
        parts.append('"__metadata__":{%s}' % meta)
    offset = 0
    for name, code, shape, data in items:
        end = offset + len(data)
        parts.append(
            '%s:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'
            % (json.dumps(name, ensure_ascii=False), code, ",".join(map(str, shape)), offset, end)
        )
        offset = end
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(d for *_, d in items)


# MARK: - Exact bytes


def test_empty_dict_is_16_bytes(tmp_path):
    data = safetensors_c.save({})
    assert data == b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    path = tmp_path / "e.safetensors"
    safetensors_c.save_file({}, path)
    assert path.read_bytes() == data


def test_format_md_example():
    data = safetensors_c.save({"test": np.zeros((2, 2), np.int32)})
    header = b'{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}'
    assert len(header) == 60
    assert data == struct.pack("<Q", 64) + header + b"    " + b"\x00" * 16
    assert len(data) == 88


def test_no_padding_when_aligned():
    # '{"abcd":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}' is 56 bytes.
    data = safetensors_c.save({"abcd": np.array([9], np.uint8)})
    (n,) = struct.unpack_from("<Q", data)
    assert n == 56
    assert data[8 : 8 + n].endswith(b"}}")
    assert data[8 + n :] == b"\x09"


@pytest.mark.parametrize("extra", range(0, 9))
def test_padding_is_spaces_to_a_multiple_of_8(extra):
    name = "n" * (extra + 1)
    data = safetensors_c.save({name: np.array([1], np.uint8)})
    (n,) = struct.unpack_from("<Q", data)
    assert n % 8 == 0
    header = data[8 : 8 + n]
    stripped = header.rstrip(b" ")
    assert len(header) - len(stripped) < 8
    assert stripped.endswith(b"}")
    assert data == expected_file([(name, "U8", [1], b"\x01")])


def test_order_by_dtype_rank_then_name():
    tensors = {}
    items = []
    rng = np.random.default_rng(5)
    for code in RANK:
        if code not in NUMPY_DTYPE_OF:
            continue
        for name in (f"b_{code}", f"A_{code}", f"a_{code}"):
            array = rng.integers(0, 256, 3 * NUMPY_DTYPE_OF[code].itemsize, dtype=np.uint8)
            if code == "BOOL":
                array &= 1
            tensors[name] = array.view(NUMPY_DTYPE_OF[code])
    # Insertion order must not matter.
    shuffled = dict(sorted(tensors.items(), key=lambda kv: hash(kv[0]) % 97))
    for code in reversed(RANK):
        for name in sorted(n for n in tensors if n.endswith("_" + code) and n[1] == "_"):
            if tensors[name].dtype != NUMPY_DTYPE_OF[code]:
                continue
            items.append((name, code, [3], tensors[name].tobytes()))
    assert len(items) == len(tensors)
    assert safetensors_c.save(shuffled) == expected_file(items)
    assert safetensors_c.save(tensors) == expected_file(items)


def test_names_sorted_by_code_point_within_a_dtype():
    names = ["b", "B", "a", "A", "aa", "é", "z", "😀", "\uffff", "_", "0", ""]
    tensors = {n: np.array([i], np.uint8) for i, n in enumerate(names)}
    items = [(n, "U8", [1], bytes([names.index(n)])) for n in sorted(names)]
    assert safetensors_c.save(tensors) == expected_file(items)


def test_zero_size_tensors_ordered_like_others():
    tensors = {"a": np.zeros(2, np.uint8), "b": np.zeros(0, np.float64), "c": np.zeros(0, np.uint8)}
    items = [("b", "F64", [0], b""), ("a", "U8", [2], b"\x00\x00"), ("c", "U8", [0], b"")]
    assert safetensors_c.save(tensors) == expected_file(items)


def test_metadata_first():
    tensors = {"x": np.array([1.5], np.float32)}
    data = safetensors_c.save(tensors, metadata={"format": "pt"})
    assert data == expected_file(
        [("x", "F32", [1], np.float32(1.5).tobytes())], metadata=[("format", "pt")]
    )
    assert b'{"__metadata__":{"format":"pt"},"x":' in data


def test_metadata_none_and_empty():
    tensors = {"x": np.array([1], np.uint8)}
    assert b"__metadata__" not in safetensors_c.save(tensors)
    assert b"__metadata__" not in safetensors_c.save(tensors, metadata=None)
    data = safetensors_c.save(tensors, metadata={})
    assert data == expected_file([("x", "U8", [1], b"\x01")], metadata=[])
    assert b'{"__metadata__":{},"x":' in data
    assert safetensors_c.load(data)["x"].tolist() == [1]
    assert safetensors_c.save({}, metadata={}) == expected_file([], metadata=[])


def test_metadata_several_keys_sorted():
    metadata = {"b": "2", "a": "1", "é": "3", "A": "0"}
    data = safetensors_c.save({}, metadata=metadata)
    assert data == expected_file([], metadata=sorted(metadata.items()))


NAMES_TO_ESCAPE = [
    'quo"te',
    "back\\slash",
    "nl\nnl",
    "\t\r\b\f",
    "\x00",
    "\x01\x1f\x0b\x1e",
    "del\x7f",
    "sl/ash",
    "é",
    "日本語",
    "😀",
    "\u2028\u2029\ufeff",
    "",
    " space ",
    "__metadata_",
    "__Metadata__",
]


@pytest.mark.parametrize("name", NAMES_TO_ESCAPE, ids=[repr(n) for n in NAMES_TO_ESCAPE])
def test_name_escaping(name, tmp_path, backend):
    data = safetensors_c.save({name: np.array([7], np.uint8)})
    assert data == expected_file([(name, "U8", [1], b"\x07")])
    escaped = json.dumps(name, ensure_ascii=False).encode("utf-8")
    assert escaped in data
    for escape in re.findall(rb"\\u[0-9a-fA-F]{4}", data):
        assert escape == escape.lower()  # lowercase hex only
    path = tmp_path / "n.safetensors"
    safetensors_c.save_file({name: np.array([7], np.uint8)}, path)
    assert path.read_bytes() == data
    with safe_open(path, "np", backend=backend) as f:
        assert f.keys() == [name]
        assert f.get_tensor(name).tolist() == [7]


def test_specific_escapes():
    data = safetensors_c.save({"a\x01\x1f\"\\/\x7fé": np.zeros(0, np.uint8)})
    assert b'"a\\u0001\\u001f\\"\\\\/\x7f\xc3\xa9"' in data


@pytest.mark.parametrize("value", NAMES_TO_ESCAPE, ids=[repr(n) for n in NAMES_TO_ESCAPE])
def test_metadata_escaping(value):
    data = safetensors_c.save({}, metadata={value: value})
    assert data == expected_file([], metadata=[(value, value)])
    assert safe_metadata(data) == {value: value}


def safe_metadata(data):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        with open(path, "wb") as fh:
            fh.write(data)
        with safe_open(path, "np") as f:
            return f.metadata()


def test_save_file_equals_save(tmp_path, sample_tensors):
    path = tmp_path / "s.safetensors"
    safetensors_c.save_file(sample_tensors, path, metadata={"k": "v"})
    assert path.read_bytes() == safetensors_c.save(sample_tensors, metadata={"k": "v"})
    safetensors_c.save_file(sample_tensors, str(path))
    assert path.read_bytes() == safetensors_c.save(sample_tensors)
    assert safetensors_c.save_file(sample_tensors, path) is None


def test_accepts_mapping_types(sample_tensors):
    class Frozen(Mapping):
        def __init__(self, d):
            self._d = d

        def __getitem__(self, k):
            return self._d[k]

        def __iter__(self):
            return iter(self._d)

        def __len__(self):
            return len(self._d)

    assert safetensors_c.save(Frozen(sample_tensors)) == safetensors_c.save(sample_tensors)
    assert safetensors_c.save({}, metadata=Frozen({"a": "b"})) == safetensors_c.save(
        {}, metadata={"a": "b"}
    )


# MARK: - Bad input: nothing is written


BAD_INPUTS = {
    "list": (([("a", np.zeros(1))],), {}, TypeError, "dict"),
    "none": ((None,), {}, TypeError, "dict"),
    "int_key": (({1: np.zeros(1)},), {}, TypeError, "str"),
    "bytes_key": (({b"a": np.zeros(1)},), {}, TypeError, "str"),
    "list_value": (({"a": [1, 2]},), {}, TypeError, "ndarray"),
    "scalar_value": (({"a": np.float32(1)},), {}, TypeError, "ndarray"),
    "none_value": (({"a": None},), {}, TypeError, "ndarray"),
    "metadata_int_value": (({"a": np.zeros(1)},), {"metadata": {"k": 1}}, TypeError, "str"),
    "metadata_int_key": (({"a": np.zeros(1)},), {"metadata": {1: "v"}}, TypeError, "str"),
    "metadata_none_value": (({"a": np.zeros(1)},), {"metadata": {"k": None}}, TypeError, "str"),
    "metadata_list": (({"a": np.zeros(1)},), {"metadata": [("k", "v")]}, TypeError, "metadata"),
    "metadata_name": (({"__metadata__": np.zeros(1)},), {}, ValueError, "__metadata__"),
    "metadata_name_with_metadata": (
        ({"a": np.zeros(1), "__metadata__": np.zeros(1)},), {"metadata": {"k": "v"}},
        ValueError, "__metadata__"),
    "unsupported_dtype_in_middle": (
        ({"a": np.zeros(1), "b": np.zeros(1, np.complex128), "c": np.zeros(1)},), {},
        SafetensorError, "complex128"),
    "object_dtype": (({"a": np.array([None])},), {}, SafetensorError, "object"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case, tmp_path):
    args, kwargs, exc, fragment = BAD_INPUTS[case]
    with pytest.raises(exc, match=fragment):
        safetensors_c.save(*args, **kwargs)
    path = tmp_path / "out.safetensors"
    with pytest.raises(exc, match=fragment):
        safetensors_c.save_file(args[0], path, **kwargs)
    assert not path.exists()
    assert tmp_files(tmp_path) == []


def test_metadata_name_rejected_is_a_value_error_not_safetensor_error():
    with pytest.raises(ValueError) as info:
        safetensors_c.save({"__metadata__": np.zeros(1)})
    assert not isinstance(info.value, SafetensorError) or "reserved" in str(info.value)


class DuplicateItems(Mapping):
    """A mapping whose items() yields one name twice (a dict cannot)."""

    def __init__(self, pairs):
        self._pairs = pairs

    def __getitem__(self, key):
        for k, v in self._pairs:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._pairs)

    def __len__(self):
        return len(self._pairs)


def test_duplicate_names_rejected(tmp_path):
    tensors = DuplicateItems([("a", np.zeros(1)), ("a", np.ones(2))])
    with pytest.raises(SafetensorError, match="same name"):
        safetensors_c.save(tensors)
    path = tmp_path / "dup.safetensors"
    with pytest.raises(SafetensorError, match="same name"):
        safetensors_c.save_file(tensors, path)
    assert tmp_files(tmp_path) == []


def test_unencodable_names_rejected(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(UnicodeError):
        safetensors_c.save_file({"a\ud800": np.zeros(1)}, path)
    with pytest.raises(UnicodeError):
        safetensors_c.save_file({}, path, metadata={"k": "\udfff"})
    assert tmp_files(tmp_path) == []


def test_non_path_filename(tmp_path):
    with pytest.raises(TypeError, match="filename"):
        safetensors_c.save_file({}, 3)
    with pytest.raises(TypeError, match="filename"):
        safetensors_c.save_file({}, None)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        safetensors_c.save_file({"a": np.zeros(1)}, tmp_path / "no" / "such.safetensors")
    assert tmp_files(tmp_path) == []


def test_target_is_a_directory(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        safetensors_c.save_file({"a": np.zeros(1)}, target)
    assert target.is_dir()
    assert tmp_files(target) == []
    assert tmp_files(tmp_path) == ["dir"]


def inconsistent_packed():
    """A PackedArray whose logical shape needs fewer bytes than it holds:
    planning succeeds, writing its data fails half-way through the file."""
    raw = np.arange(4, dtype=np.uint8)
    bad = safetensors_c.packed(raw, "F4")
    bad._stored_shape = (2,)  # 1 byte, but 4 are held
    return bad


def test_failure_while_writing_data_leaves_nothing(tmp_path):
    tensors = {"big": np.ones(1000, np.float64), "p": inconsistent_packed()}
    with pytest.raises(SafetensorError, match="'p'"):
        safetensors_c.save(tensors)
    path = tmp_path / "fail.safetensors"
    with pytest.raises(SafetensorError, match="'p'"):
        safetensors_c.save_file(tensors, path)
    assert tmp_files(tmp_path) == []


# MARK: - Atomic replacement


def test_save_over_existing_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old contents that are not a safetensors file")
    safetensors_c.save_file({"a": np.arange(3)}, path)
    assert path.read_bytes() == safetensors_c.save({"a": np.arange(3)})
    assert tmp_files(tmp_path) == ["x.safetensors"]


def test_save_over_the_file_being_read(tmp_path, backend):
    path = tmp_path / "x.safetensors"
    original = {"a": np.arange(10, dtype=np.float32), "b": np.ones((2, 2), np.int8)}
    safetensors_c.save_file(original, path)
    loaded = safetensors_c.load_file(path, backend=backend)
    # Write the loaded arrays back to the same path.
    safetensors_c.save_file(loaded, path)
    assert path.read_bytes() == safetensors_c.save(original)
    with safe_open(path, "np", backend=backend) as f:
        held = f.get_tensor("a")
        held_slice = f.get_slice("b")
        # Replace the file with different data while arrays and the handle live.
        safetensors_c.save_file({"a": np.full(10, -1, np.float32), "c": np.zeros(50)}, path)
        assert_same_array(held, original["a"])
        assert_same_array(f.get_tensor("a"), original["a"])
        assert_same_array(held_slice[:], original["b"])
    assert_same_array(loaded["a"], original["a"])
    assert_same_array(loaded["b"], original["b"])
    new = safetensors_c.load_file(path)
    assert sorted(new) == ["a", "c"]
    assert new["a"].tolist() == [-1] * 10
    assert tmp_files(tmp_path) == ["x.safetensors"]


def test_failed_save_leaves_existing_target_untouched(tmp_path):
    path = tmp_path / "keep.safetensors"
    safetensors_c.save_file({"a": np.arange(4)}, path)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    inode = path.stat().st_ino
    failures = [
        {"a": np.zeros(1), "b": np.zeros(1, np.complex128), "c": np.zeros(1)},
        {"a": np.zeros(1), "__metadata__": np.zeros(1)},
        {"a": np.zeros(1), "p": inconsistent_packed()},
        {"a": "not an array"},
    ]
    for tensors in failures:
        with pytest.raises((SafetensorError, ValueError, TypeError)):
            safetensors_c.save_file(tensors, path)
        assert path.read_bytes() == before
        assert path.stat().st_ino == inode
        assert path.stat().st_mtime_ns == mtime
        assert tmp_files(tmp_path) == ["keep.safetensors"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o755, 0o444])
def test_replacing_keeps_permission_bits(tmp_path, mode):
    path = tmp_path / "perm.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    safetensors_c.save_file({"a": np.zeros(2)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_bytes() == safetensors_c.save({"a": np.zeros(2)})


def test_new_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = tmp_path / "new.safetensors"
        safetensors_c.save_file({"a": np.zeros(2)}, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_save_through_symlink_gives_the_new_data(tmp_path):
    # The rename replaces the name given: the symlink itself becomes a file.
    # Whatever the policy, the data at `path` is the new data.
    real = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    safetensors_c.save_file({"a": np.zeros(1)}, real)
    link.symlink_to(real)
    safetensors_c.save_file({"a": np.ones(1)}, link)
    assert safetensors_c.load_file(link)["a"].tolist() == [1.0]
    assert not any(name.startswith(".") or name.endswith(".tmp") for name in tmp_files(tmp_path))


def test_many_saves_leave_no_temporary_files(tmp_path):
    path = tmp_path / "x.safetensors"
    for i in range(20):
        safetensors_c.save_file({"a": np.full(3, i)}, path)
    assert tmp_files(tmp_path) == ["x.safetensors"]
    assert safetensors_c.load_file(path)["a"].tolist() == [19, 19, 19]


def test_all_dtypes_in_one_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for code, dtype in NUMPY_DTYPE_OF.items():
        raw = rng.integers(0, 256, 6 * dtype.itemsize, dtype=np.uint8)
        if code == "BOOL":
            raw &= 1
        tensors[code.lower()] = raw.view(dtype).reshape(2, 3)
    tensors["f4"] = safetensors_c.packed(np.arange(6, dtype=np.uint8).reshape(2, 3), "F4")
    path = tmp_path / "all.safetensors"
    safetensors_c.save_file(tensors, path)
    loaded = safetensors_c.load_file(path)
    for name, array in tensors.items():
        assert_same_array(np.asarray(loaded[name]), np.asarray(array))
    with safe_open(path, "np") as f:
        codes = [f.get_slice(n).get_dtype() for n in f.offset_keys()]
    assert codes == sorted(codes, key=RANK.index, reverse=True)
    assert ml_dtypes.bfloat16 == loaded["bf16"].dtype
