"""Digests v2: one record binds each tensor's name, dtype, shape and bytes, and one the
metadata; old v1 files still verify and say so; malformed digest entries are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open, save_file
from safetensors_c.integrity import (
    DIGEST_KEY,
    DIGEST_KEY_V2,
    METADATA_NAME,
    digest_scheme,
    save_file_with_digests,
    tensor_digest,
    verify_digests,
)


W = np.arange(6, dtype=np.float32).reshape(2, 3)


def _saved(tmp_path, tensors=None, metadata=None):
    path = tmp_path / "m.safetensors"
    tensors = tensors or {"w": W}
    save_file_with_digests(tensors, path, metadata=metadata)
    return path


def _rewrite_header(path, old: str, new: str) -> None:
    assert len(old) == len(new)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + n].decode()
    assert header.count(old) == 1, header
    path.write_bytes(raw[:8] + header.replace(old, new).encode() + raw[8 + n :])


@pytest.mark.parametrize("old, new", [
    ('"dtype":"F32","shape":[2,3]', '"dtype":"I32","shape":[2,3]'),
    ('"dtype":"F32","shape":[2,3]', '"dtype":"F16","shape":[2,6]'),
    ('"dtype":"F32","shape":[2,3]', '"dtype":"F32","shape":[3,2]'),
])
def test_a_dtype_or_shape_rewrite_fails_verification(tmp_path, old, new):
    path = _saved(tmp_path)
    assert verify_digests(path) == []
    _rewrite_header(path, old, new)
    with safe_open(path) as f:  # the file is still valid, and its bytes unchanged
        assert tensor_digest(f.get_tensor("w")) == tensor_digest(W)
    assert verify_digests(path) == ["w"]
    with pytest.raises(SafetensorError) as info:
        safetensors_c.safe_open(path, "np", verify_digests=True)
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH" and "sha256-record-v2" in str(info.value)


def test_a_renamed_tensor_fails_verification(tmp_path):
    path = _saved(tmp_path, {"ab": np.ones(2, np.float32)})
    _rewrite_header(path, '"ab":{', '"ba":{')
    assert verify_digests(path) == ["ab", "ba"]


def test_edited_metadata_fails_verification(tmp_path):
    path = _saved(tmp_path, metadata={"license": "mit"})
    _rewrite_header(path, '"license":"mit"', '"license":"bsd"')
    assert verify_digests(path) == [METADATA_NAME]


def test_schemes_are_named_and_v1_files_verify_only_when_allowed(tmp_path):
    path = _saved(tmp_path)
    with safe_open(path) as f:
        meta = f.metadata()
    assert digest_scheme(path) == "sha256-record-v2"
    v2 = json.loads(meta[DIGEST_KEY_V2])
    assert sorted(v2) == ["metadata", "scheme", "tensors"] and v2["scheme"] == "sha256-record-v2"
    old = tmp_path / "old.safetensors"  # as the first releases wrote it: v1 only
    save_file({"w": W}, old, metadata={DIGEST_KEY: json.dumps({"w": tensor_digest(W)})})
    assert digest_scheme(old) == "sha256-bytes-v1"
    with pytest.raises(SafetensorError, match="bytes-only") as info:
        verify_digests(old)
    assert info.value.code == "STC_ERR_WEAK_DIGESTS"
    assert verify_digests(old, allow_bytes_only=True) == []


@pytest.mark.parametrize("key, value, why", [
    (DIGEST_KEY, '{"w":"%s","w":"%s"}' % ("a" * 64, "b" * 64), "repeats the key 'w'"),
    (DIGEST_KEY, '{"w":"%s"}' % ("A" * 64), "64 lowercase hex digits"),
    (DIGEST_KEY, '{"w":"abc"}', "64 lowercase hex digits"),
    (DIGEST_KEY, "[1,2]", "is not a map"),
    (DIGEST_KEY, "{", "is not JSON"),
    (DIGEST_KEY_V2, '{"metadata":"%s","scheme":"sha256-record-v3","tensors":{}}' % ("a" * 64),
     "unknown scheme"),
    (DIGEST_KEY_V2, '{"metadata":"%s","scheme":"sha256-record-v2","tensors":{},"x":1}'
     % ("a" * 64), 'exactly the fields'),
    (DIGEST_KEY_V2, '{"metadata":"%s","scheme":"sha256-record-v2","scheme":"sha256-record-v2",'
     '"tensors":{}}' % ("a" * 64), "repeats the key 'scheme'"),
])
def test_malformed_digest_entries_are_refused(tmp_path, key, value, why):
    path = tmp_path / "bad.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, path, metadata={key: value})
    with pytest.raises(SafetensorError, match=why) as info:
        verify_digests(path)
    assert info.value.code == "STC_ERR_INVALID_DIGESTS"
    with pytest.raises(SafetensorError, match=why):
        safetensors_c.safe_open(path, "np", verify_digests=True)


def test_packed_and_every_dtype_verify(tmp_path):
    import ml_dtypes

    tensors = {
        "f4": safetensors_c.packed(np.arange(4, dtype=np.uint8), "F4"),
        "bf16": np.ones(3, dtype=ml_dtypes.bfloat16),
        "be": np.arange(6, dtype=">i4").reshape(2, 3).T,
        "empty": np.zeros((0, 3), np.int8),
    }
    path = _saved(tmp_path, tensors, metadata={"k": "v"})
    assert verify_digests(path) == []
    with safetensors_c.safe_open(path, "np", verify_digests=True) as f:
        assert sorted(f.keys()) == sorted(tensors)


def test_save_file_digests_true_writes_v2(tmp_path):
    path = tmp_path / "d.safetensors"
    safetensors_c.save_file({"a": np.ones(2)}, path, digests=True)
    assert digest_scheme(path) == "sha256-record-v2"
    _rewrite_header(path, '"dtype":"F64"', '"dtype":"I64"')
    assert verify_digests(path) == ["a"]
