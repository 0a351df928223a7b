"""Differential tests against the reference ``safetensors`` package."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import safetensors_c

from conftest import NUMPY_DTYPE_OF, assert_same_array, build, entry, random_array

safetensors = pytest.importorskip("safetensors")
import safetensors.numpy as ref_np  # noqa: E402

# What the reference's NumPy loaders can return.
REF_LOAD_CODES = ["BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "C64", "F64",
                  "I64", "U64"]
REF_SAFE_OPEN_CODES = REF_LOAD_CODES + ["BF16"]
# What the reference can save from NumPy (all whole-byte codes, ml_dtypes included).
REF_SAVE_CODES = list(NUMPY_DTYPE_OF)


def ref_open_all(path):
    with safetensors.safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.keys(), f.offset_keys(), f.metadata()


def ours_open_all(path, backend="mmap"):
    with safetensors_c.safe_open(path, "np", backend=backend) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.keys(), f.offset_keys(), f.metadata()


# MARK: - Reading each other's files


@pytest.mark.parametrize("code", REF_SAVE_CODES)
def test_we_read_reference_files(tmp_path, code, backend):
    rng = np.random.default_rng(len(code))
    tensors = {
        "x": random_array(code, (3, 4), rng),
        "s": random_array(code, (), rng),
        "e": random_array(code, (0, 2), rng),
    }
    path = tmp_path / "ref.safetensors"
    ref_np.save_file(tensors, str(path), metadata={"who": "reference"})
    with safetensors_c.safe_open(path, "np", backend=backend) as f:
        assert f.metadata() == {"who": "reference"}
        for name, expected in tensors.items():
            assert_same_array(f.get_tensor(name), expected)
    loaded = safetensors_c.load(ref_np.save(tensors))
    for name, expected in tensors.items():
        assert_same_array(loaded[name], expected)


@pytest.mark.parametrize("code", REF_SAFE_OPEN_CODES)
def test_reference_reads_our_files(tmp_path, code):
    rng = np.random.default_rng(100 + len(code))
    tensors = {
        "x": random_array(code, (3, 4), rng),
        "s": random_array(code, (), rng),
        "e": random_array(code, (0, 2), rng),
    }
    path = tmp_path / "ours.safetensors"
    safetensors_c.save_file(tensors, path, metadata={"who": "us"})
    got, keys, offset_keys, metadata = ref_open_all(path)
    assert metadata == {"who": "us"}
    for name, expected in tensors.items():
        assert_same_array(got[name], expected)
    if code in REF_LOAD_CODES:
        loaded = ref_np.load(safetensors_c.save(tensors))
        for name, expected in tensors.items():
            assert_same_array(loaded[name], expected)
        loaded = ref_np.load_file(str(path))
        for name, expected in tensors.items():
            assert_same_array(loaded[name], expected)


def test_reference_bf16_f8_files_round_trip_bytes(tmp_path):
    # The reference cannot load F8 into NumPy, but its files must be
    # byte-identical to ours and load here.
    rng = np.random.default_rng(3)
    tensors = {code.lower(): random_array(code, (5,), rng) for code in REF_SAVE_CODES}
    assert ref_np.save(tensors) == safetensors_c.save(tensors)


# MARK: - Byte-identical writers


@st.composite
def tensor_dicts(draw):
    names = draw(
        st.lists(
            st.text(
                alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=8
            ).filter(lambda n: n != "__metadata__"),
            min_size=0,
            max_size=6,
            unique=True,
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in names:
        code = draw(st.sampled_from(REF_SAVE_CODES))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        tensors[name] = random_array(code, shape, rng)
    metadata = draw(
        st.none()
        | st.just({})
        | st.dictionaries(st.text(max_size=6).filter(lambda s: not _has_surrogate(s)),
                          st.text(max_size=6).filter(lambda s: not _has_surrogate(s)),
                          min_size=1, max_size=1)
    )
    return tensors, metadata


def _has_surrogate(s):
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tensor_dicts())
def test_save_bytes_identical_to_reference(case):
    tensors, metadata = case
    assume(tensors or metadata != {})  # a reference bug: see test_reference_empty_metadata_bug
    ours = safetensors_c.save(tensors, metadata=metadata)
    theirs = ref_np.save(tensors, metadata=metadata)
    assert ours == theirs


def test_save_bytes_identical_fixed_cases(tmp_path):
    cases = [
        ({}, None),
        ({}, {"k": "v"}),
        ({"test": np.zeros((2, 2), np.int32)}, None),
        ({"a": np.array(1.5, np.float32), "b": np.zeros((0, 3), np.int8)}, {"k": "v"}),
        ({'q"\\/\n\x01\x7fé😀': np.arange(3, dtype=np.uint16)}, {"\x00": "\x1f"}),
        ({"A": np.zeros(1, np.uint64), "a": np.zeros(1, np.bool_), "B": np.zeros(1, np.uint64)},
         {}),
        ({"x": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)).copy(order="C")},
         None),
    ]
    for tensors, metadata in cases:
        assert safetensors_c.save(tensors, metadata=metadata) == ref_np.save(
            tensors, metadata=metadata
        )
        ours = tmp_path / "ours.safetensors"
        theirs = tmp_path / "theirs.safetensors"
        safetensors_c.save_file(tensors, ours, metadata=metadata)
        ref_np.save_file(tensors, str(theirs), metadata=metadata)
        assert ours.read_bytes() == theirs.read_bytes()


def test_reference_empty_metadata_bug(tmp_path):
    """With no tensors and metadata={}, the reference writes `{},"__metadata__":{}}`,
    which is not JSON; we write `{"__metadata__":{}}`, which both readers accept."""
    theirs = ref_np.save({}, metadata={})
    ours = safetensors_c.save({}, metadata={})
    assert theirs[8:].rstrip(b" ") == b'{},"__metadata__":{}}'
    assert ours[8:].rstrip(b" ") == b'{"__metadata__":{}}'
    with pytest.raises(safetensors_c.SafetensorError) as info:
        safetensors_c.load(theirs)
    assert info.value.code == "STC_ERR_INVALID_JSON"
    path = tmp_path / "ours.safetensors"
    path.write_bytes(ours)
    assert ref_open_all(path)[1:] == ([], [], {})
    assert ours_open_all(path)[1:] == ([], [], {})


# MARK: - Header accessors agree


def test_keys_offset_keys_metadata_agree(tmp_path):
    names = ["b", "B", "a", "é", "😀", "z", "_", "aa"]
    rng = np.random.default_rng(9)
    codes = ["F32", "U8", "I64", "F16", "BOOL", "U8", "F64", "I32"]
    tensors = {n: random_array(c, (2,), rng) for n, c in zip(names, codes)}
    tensors["empty"] = np.zeros((0,), np.float32)
    for metadata in (None, {}, {"k": "v"}):
        path = tmp_path / "agree.safetensors"
        ref_np.save_file(tensors, str(path), metadata=metadata)
        r_tensors, r_keys, r_offset_keys, r_meta = ref_open_all(path)
        for backend in ("mmap", "pread"):
            o_tensors, o_keys, o_offset_keys, o_meta = ours_open_all(path, backend)
            assert o_keys == r_keys
            assert o_offset_keys == r_offset_keys
            assert o_meta == r_meta
            for name in r_keys:
                assert_same_array(o_tensors[name], r_tensors[name])


def test_crafted_offset_order_agrees(tmp_path):
    header = {
        "late": entry("U8", [2], 2, 4),
        "z0": entry("U8", [0], 0, 0),
        "early": entry("U8", [2], 0, 2),
        "end": entry("U8", [0], 4, 4),
    }
    path = tmp_path / "c.safetensors"
    path.write_bytes(build(header, b"abcd"))
    ref = ref_open_all(path)
    ours = ours_open_all(path)
    assert ours[1] == ref[1]
    assert ours[2] == ref[2]


# MARK: - Both reject the same malformed files


OK = '"dtype":"U8","shape":[2],"data_offsets":[0,2]'

BOTH_REJECT = {
    "too_small": b"abc",
    "header_too_large": build(b"{}", n=100_000_001),
    "header_past_eof": build(b"{}", n=64, pad=False),
    "invalid_utf8": build(b'{"\xff":{' + OK.encode() + b"}}", b"ab"),
    "trailing_comma": build('{"a":{' + OK + ",}}", b"ab"),
    "comment": build('{"a":{' + OK + "}}/**/", b"ab"),
    "nan": build('{"a":{"x":NaN,' + OK + "}}", b"ab"),
    "leading_zero": build('{"a":{"x":01,' + OK + "}}", b"ab"),
    "control_char": build('{"a\x01":{' + OK + "}}", b"ab"),
    "lone_surrogate": build('{"a\\ud800":{' + OK + "}}", b"ab"),
    "bad_escape": build('{"a\\x41":{' + OK + "}}", b"ab"),
    "trailing_nul": build(b"{}\x00", pad=False),
    "top_level_array": build(b"[]"),
    "nesting_128": build('{"a":{"x":' + "[" * 126 + "]" * 126 + "," + OK + "}}", b"ab"),
    "negative_shape": build('{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}', b"ab"),
    "float_shape": build('{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}', b"ab"),
    "huge_number": build('{"a":{"dtype":"U8","shape":[18446744073709551616],'
                         '"data_offsets":[0,2]}}', b"ab"),
    "offsets_arity": build('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0]}}', b"ab"),
    "missing_dtype": build('{"a":{"shape":[2],"data_offsets":[0,2]}}', b"ab"),
    "unknown_dtype": build('{"a":{"dtype":"f32","shape":[2],"data_offsets":[0,2]}}', b"ab"),
    "metadata_int": build('{"__metadata__":{"k":1}}'),
    "dup_field": build('{"a":{"dtype":"U8",' + OK + "}}", b"ab"),
    "dup_metadata": build('{"__metadata__":{},"__metadata__":{}}'),
    "hole": build({"a": entry("U8", [2], 1, 3)}, b"abc"),
    "overlap": build({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 1, 3)}, b"abc"),
    "begin_after_end": build({"a": entry("U8", [2], 2, 0)}, b"ab"),
    "zero_size_inside": build({"a": entry("U8", [8], 0, 8), "z": entry("U8", [0], 4, 4)},
                              b"12345678"),
    "overflow": build({"a": entry("U8", [2**32, 2**32], 0, 0)}),
    "f4_odd": build({"a": entry("F4", [3], 0, 2)}, b"ab"),
    "size_mismatch": build({"a": entry("U8", [3], 0, 2)}, b"ab"),
    "truncated": build({"a": entry("U8", [2], 0, 2)}, b"a"),
    "trailing": build({"a": entry("U8", [2], 0, 2)}, b"abc"),
    "pickle": b"\x80\x04\x95" + b"\x00" * 20,
}


@pytest.mark.parametrize("case", list(BOTH_REJECT))
def test_both_reject(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BOTH_REJECT[case])
    with pytest.raises(safetensors.SafetensorError):
        with safetensors.safe_open(str(path), "np") as f:
            f.keys()
    with pytest.raises(safetensors_c.SafetensorError):
        safetensors_c.safe_open(path, "np")


DELIBERATELY_STRICTER = {
    "dup_tensor_name": build('{"a":{' + OK + '},"a":{' + OK + "}}", b"ab"),
    "dup_metadata_key": build('{"__metadata__":{"k":"1","k":"2"}}'),
    "dup_unknown_field": build('{"a":{"x":1,"x":2,' + OK + "}}", b"ab"),
    "dup_key_nested_in_unknown": build('{"a":{"x":{"y":1,"y":2},' + OK + "}}", b"ab"),
}


@pytest.mark.parametrize("case", list(DELIBERATELY_STRICTER))
def test_duplicate_keys_we_are_stricter(tmp_path, case):
    """The reference lets the last duplicate win; its README says duplicates are
    disallowed, and we reject them (a deliberate deviation)."""
    path = tmp_path / "dup.safetensors"
    path.write_bytes(DELIBERATELY_STRICTER[case])
    with safetensors.safe_open(str(path), "np") as f:
        f.keys()  # accepted by the reference
    with pytest.raises(safetensors_c.SafetensorError) as info:
        safetensors_c.safe_open(path, "np")
    assert info.value.code == "STC_ERR_DUPLICATE_KEY"


def test_both_accept_unusual_but_valid(tmp_path):
    cases = [
        build(" \n{}\t ", pad=False),
        build(b"{}", pad=False),
        build('{"a":{"d\\u0074ype":"U8","shape":[2],"data_offsets":[0,2]}}', b"ab"),
        build('{"a":{"x":' + "[" * 125 + "]" * 125 + "," + OK + "}}", b"ab"),
        # (Zero-size tensors at one offset are left out: the reference's
        # offset_keys order among such ties is arbitrary; ours is by name.)
        build({"z": entry("U8", [0], 0, 0), "a": entry("U8", [2], 0, 2),
               "y": entry("U8", [0], 2, 2)}, b"ab"),
        build('{"__metadata__":null}'),
        build('{"a\\u0000":{' + OK + "}}", b"ab"),
    ]
    for i, data in enumerate(cases):
        path = tmp_path / f"ok{i}.safetensors"
        path.write_bytes(data)
        ref = ref_open_all(path)
        ours = ours_open_all(path)
        assert ours[1] == ref[1]
        assert ours[2] == ref[2]
        assert ours[3] == ref[3]
        for name in ref[1]:
            assert_same_array(ours[0][name], ref[0][name])
