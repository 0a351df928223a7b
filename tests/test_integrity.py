"""Per-tensor SHA-256 digests in __metadata__."""

from __future__ import annotations

import hashlib
import json

import ml_dtypes
import numpy as np
import pytest

import safetensors_c

from safetensors_c import load_file, safe_open, save_file
from safetensors_c.integrity import (
    DIGEST_KEY,
    DIGEST_KEY_V2,
    add_digests,
    has_digests,
    save_file_with_digests,
    tensor_record_digest,
    verify_digests,
)

TENSORS = {
    "a": np.arange(10, dtype=np.float32),
    "b": np.arange(6, dtype=">i4").reshape(2, 3).T,  # big-endian, non-contiguous
    "c": np.ones(3, dtype=ml_dtypes.bfloat16),
    "z": np.zeros((0,), np.int8),
}


def test_roundtrip_and_key_format(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file_with_digests(TENSORS, path, metadata={"k": "v"})
    with safe_open(path) as f:
        meta = f.metadata()
    assert meta["k"] == "v"
    assert DIGEST_KEY not in meta  # the bytes-only v1 entry is no longer written
    digests = json.loads(meta[DIGEST_KEY_V2])["tensors"]
    assert sorted(digests) == sorted(TENSORS)
    stored = load_file(path)
    with safe_open(path) as f:
        for name, array in stored.items():
            code, shape = f.reader.info(name)[:2]
            byte_digest = hashlib.sha256(array.tobytes()).hexdigest()
            assert digests[name] == tensor_record_digest(name, code, shape, byte_digest)
    assert verify_digests(path) == []
    assert has_digests(path)


def test_tampered_byte_names_the_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file_with_digests(TENSORS, path)
    with safe_open(path) as f:
        file = f.reader
        _code, _shape, _np, begin, _end = file.info("c")
        start = file.data_start
    raw = bytearray(path.read_bytes())
    raw[start + begin] ^= 0x01
    path.write_bytes(bytes(raw))
    assert verify_digests(path) == ["c"]


def test_missing_and_extra_digests(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = add_digests({"a": TENSORS["a"], "gone": TENSORS["a"]})
    save_file({"a": TENSORS["a"], "new": TENSORS["a"]}, path, metadata=meta)
    assert verify_digests(path) == ["gone", "new"]


def test_no_digests_raises(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(TENSORS, path)
    assert not has_digests(path)
    with pytest.raises(ValueError, match="no tensor digests"):
        verify_digests(path)


def test_save_file_digests_and_safe_open_verification(tmp_path):
    path = tmp_path / "digested.safetensors"
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    safetensors_c.save_file(tensors, path, metadata={"note": "x"}, digests=True)
    with safetensors_c.safe_open(path, "np", verify_digests=True) as f:
        assert f.metadata()["note"] == "x"
        assert np.array_equal(f.get_tensor("a"), tensors["a"])
    # Flip one byte of "b" (the I64 tensor comes first in the file).
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start] ^= 0xFF
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(raw)
    with pytest.raises(safetensors_c.SafetensorError) as info:
        safetensors_c.safe_open(tampered, "np", verify_digests=True)
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
    assert "'b'" in str(info.value) and "'a'" not in str(info.value)
    # Opening without verification still works: digests are opt-in.
    with safetensors_c.safe_open(tampered, "np") as f:
        assert f.keys() == ["a", "b"]


def test_verify_digests_on_a_file_without_digests_is_an_error(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors_c.save_file({"a": np.zeros(2)}, path)
    with pytest.raises(safetensors_c.SafetensorError) as info:
        safetensors_c.safe_open(path, "np", verify_digests=True)
    assert info.value.code == "STC_ERR_NO_DIGESTS"
