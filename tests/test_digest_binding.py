"""Verification binds what is returned: a source that changes after it was
opened and verified cannot hand out other bytes, and a file cannot be
downgraded to the bytes-only digest scheme to slip a dtype or shape edit past
a verifier.

The adversaries: a server that switches to another file of the same size and
ETag after the open; a local file rewritten in place (its mtime put back)
under a ``backend="pread"`` handle; a file object whose bytes change under
the handle; a file whose v2 digest record was deleted and whose header was
edited."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open, save_file
from safetensors_c import integrity
from safetensors_c.cli import main
from safetensors_c.integrity import DIGEST_KEY, DIGEST_KEY_V2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_servers.switching import SwitchingServer  # noqa: E402

# "big" reaches past the 256 KiB a remote source reads (and keeps) at open,
# so its bytes are fetched again on every read.
BIG = np.arange(128 * 1024, dtype=np.float32)
TENSORS = {"big": BIG, "small": np.arange(12, dtype=np.int16).reshape(3, 4)}


def _data_start(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def _offsets(path, name):
    with safe_open(path) as f:
        reader = f.reader
        begin, end = reader.info(name)[3:5]
        return reader.data_start + begin, reader.data_start + end


def _digested(tmp_path, name="m.safetensors"):
    path = tmp_path / name
    save_file(TENSORS, path, digests=True)
    return path


def _altered(path, *names) -> bytes:
    """The file's bytes with one byte of each tensor named changed: same
    size, same header, same digests."""
    raw = bytearray(path.read_bytes())
    for name in names:
        begin, end = _offsets(path, name)
        raw[(begin + end) // 2] ^= 0x40
    return bytes(raw)


def _assert_refused(info, name):
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
    assert f"tensor {name!r}" in str(info.value)


# MARK: a server that switches files under the same ETag -------------------------


@pytest.fixture
def switching(tmp_path):
    path = _digested(tmp_path)
    with SwitchingServer(path.read_bytes(), _altered(path, "big")) as server:
        yield server


def test_server_switching_content_after_open_is_refused_on_read(switching):
    with safe_open(switching.url, verify_digests=True) as f:
        np.testing.assert_array_equal(f.get_tensor("big"), BIG)  # the first file, verified
        switching.switch()  # same size, same ETag, same Last-Modified, other bytes
        with pytest.raises(SafetensorError) as info:
            f.get_tensor("big")
        _assert_refused(info, "big")
        with pytest.raises(SafetensorError) as info:
            f.get_tensors()
        _assert_refused(info, "big")
        # A slice of a verified source is not read apart from its tensor's digest.
        with pytest.raises(SafetensorError) as info:
            f.get_slice("big")[10:20]
        _assert_refused(info, "big")
        with pytest.raises(SafetensorError) as info:
            f.get_slice("big")[::-7]
        _assert_refused(info, "big")
        # "small" lies in the bytes read at open, unchanged: still served.
        np.testing.assert_array_equal(f.get_tensor("small"), TENSORS["small"])


def test_server_switching_before_any_tensor_read_is_refused(switching):
    with safe_open(switching.url, framework="np", verify_digests=True) as f:
        switching.switch()
        with pytest.raises(SafetensorError) as info:
            f.get_slice("big")[-3:]
        _assert_refused(info, "big")


def test_server_switching_is_refused_through_the_sharded_handle(tmp_path):
    path = _digested(tmp_path)
    index = {"metadata": {"total_size": sum(a.nbytes for a in TENSORS.values())},
             "weight_map": {name: "model.safetensors" for name in TENSORS}}
    others = {"model.safetensors.index.json": json.dumps(index).encode()}
    with SwitchingServer(path.read_bytes(), _altered(path, "big"), others) as server:
        url = server.url.rsplit("/", 1)[0] + "/model.safetensors.index.json"
        with safetensors_c.safe_open_sharded(url, verify_digests=True) as f:
            np.testing.assert_array_equal(f.get_tensor("big"), BIG)
            server.switch()
            with pytest.raises(SafetensorError) as info:
                f.get_tensor("big")
            _assert_refused(info, "big")
        server.switched.clear()
        loaded = safetensors_c.load_sharded(url, verify_digests=True, progress=False)
        assert loaded.keys() == {"big", "small"}
        server.switch()
        with pytest.raises(SafetensorError) as info:
            safetensors_c.load_sharded(url, verify_digests=True, progress=False)
        _assert_refused(info, "big")


# MARK: a local file rewritten in place -----------------------------------------


def _rewrite_in_place(path, data: bytes) -> None:
    """Writes ``data`` over the file's bytes (same inode, same size) and puts
    its mtime back, as a careful adversary would."""
    before = os.stat(path)
    with open(path, "r+b") as file:
        file.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_pread_handle_refuses_a_file_rewritten_in_place(tmp_path):
    path = _digested(tmp_path)
    altered = _altered(path, "small")
    with safe_open(path, backend="pread", verify_digests=True) as f:
        np.testing.assert_array_equal(f.get_tensor("small"), TENSORS["small"])
        _rewrite_in_place(path, altered)
        with pytest.raises(SafetensorError) as info:
            f.get_tensor("small")
        _assert_refused(info, "small")
        with pytest.raises(SafetensorError) as info:
            f.get_slice("small")[1, 1:3]
        _assert_refused(info, "small")
        with pytest.raises(SafetensorError) as info:
            f.get_tensors()
        _assert_refused(info, "small")
        np.testing.assert_array_equal(f.get_tensor("big"), BIG)


def test_mapped_handle_refuses_a_file_rewritten_in_place_with_its_mtime_put_back(tmp_path):
    # Same size, same mtime: nothing the core's cheap change detection sees.
    # The first access is a view of the mapping (which shows the new bytes),
    # later ones are read afresh: each is hashed when handed out.
    path = _digested(tmp_path)
    with safe_open(path, verify_digests=True) as f:
        np.testing.assert_array_equal(f.get_tensor("big"), BIG)
        _rewrite_in_place(path, _altered(path, "small", "big"))
        for name in ("small", "big"):
            with pytest.raises(SafetensorError) as info:
                f.get_tensor(name)
            _assert_refused(info, name)
        with pytest.raises(SafetensorError) as info:
            f.get_slice("small")[1:]
        _assert_refused(info, "small")
        with pytest.raises(SafetensorError) as info:
            f.get_tensors()
        _assert_refused(info, "big")


def test_pread_sharded_load_refuses_a_shard_rewritten_after_open(tmp_path):
    directory = tmp_path / "ckpt"
    tensors = {f"w{i}": np.full(64, i, np.float32) for i in range(3)}
    safetensors_c.save_sharded(tensors, directory, max_shard_size=300, progress=False,
                               digests=True)
    shard = directory / "model-00002-of-00003.safetensors"
    with safetensors_c.safe_open_sharded(directory, backend="pread", verify_digests=True) as f:
        np.testing.assert_array_equal(f.get_tensor("w1"), tensors["w1"])
        _rewrite_in_place(shard, _altered(shard, "w1"))
        with pytest.raises(SafetensorError) as info:
            f.get_tensors()
        _assert_refused(info, "w1")


# MARK: a file object whose bytes change -----------------------------------------


class _NoFilenoFile:
    """A seekable binary file object with no descriptor to map (as a network
    file system's client or an archive member gives)."""

    def __init__(self, path):
        self._file = open(path, "rb", buffering=0)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._file.seek(offset, whence)

    def read(self, n=-1):
        return self._file.read(n)

    def close(self):
        self._file.close()


def test_bytesio_changed_after_open_is_refused(tmp_path):
    path = _digested(tmp_path)
    buffer = io.BytesIO(path.read_bytes())
    with safe_open(buffer, verify_digests=True) as f:
        np.testing.assert_array_equal(f.get_slice("small")[1:, ::2], TENSORS["small"][1:, ::2])
        begin, _ = _offsets(path, "small")
        view = buffer.getbuffer()
        view[begin] ^= 0x01
        del view
        with pytest.raises(SafetensorError) as info:
            f.get_tensor("small")
        _assert_refused(info, "small")
        with pytest.raises(SafetensorError) as info:
            f.get_slice("small")[0]
        _assert_refused(info, "small")


def test_file_object_without_descriptor_rewritten_after_open_is_refused(tmp_path):
    path = _digested(tmp_path)
    file = _NoFilenoFile(path)
    try:
        with safe_open(file, verify_digests=True) as f:
            _rewrite_in_place(path, _altered(path, "big"))
            with pytest.raises(SafetensorError) as info:
                f.get_tensor("big")
            _assert_refused(info, "big")
    finally:
        file.close()


def test_verified_slices_of_a_byte_source_give_numpy_values(tmp_path):
    import ml_dtypes

    tensors = {"m": np.arange(60, dtype=np.float32).reshape(3, 4, 5),
               "bf": np.arange(10, dtype=ml_dtypes.bfloat16)}
    path = tmp_path / "s.safetensors"
    save_file(tensors, path, digests=True)
    indices = [np.s_[1], np.s_[:, 1:3], np.s_[::-1, ..., ::2], np.s_[..., -1], np.s_[2, 3, 4],
               np.s_[0:0], np.s_[[0, 2], 1]]
    with safe_open(io.BytesIO(path.read_bytes()), verify_digests=True) as f:
        for index in indices:
            got = f.get_slice("m")[index]
            np.testing.assert_array_equal(got, tensors["m"][index])
            assert np.shape(got) == np.shape(tensors["m"][index])
        np.testing.assert_array_equal(f.get_slice("bf")[3:7], tensors["bf"][3:7])
        assert f.get_slice("bf")[3:7].dtype == tensors["bf"].dtype


def test_open_checks_the_header_against_the_digests_for_sources_read_again(tmp_path):
    # A byte source is not hashed at open; what no read can mend still fails there.
    path = tmp_path / "m.safetensors"
    save_file(TENSORS, path, metadata={"license": "mit"}, digests=True)
    with safe_open(path) as f:
        metadata = f.metadata()
    metadata["license"] = "bsd"
    save_file(TENSORS, path, metadata=metadata)
    with pytest.raises(SafetensorError, match="__metadata__") as info:
        safe_open(io.BytesIO(path.read_bytes()), verify_digests=True)
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
    metadata["license"] = "mit"
    save_file({**TENSORS, "extra": np.zeros(2)}, path, metadata=metadata)
    with pytest.raises(SafetensorError, match="'extra'") as info:
        safe_open(path, backend="pread", verify_digests=True)
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH"


# MARK: no downgrade to the bytes-only scheme -------------------------------------


def _downgraded(tmp_path):
    """A file saved with digests whose v2 record was deleted and replaced by a
    bytes-only v1 record (as older releases also wrote), then whose header
    was edited: "small" I16 [3, 4] now reads as U16 [4, 3], same bytes."""
    path = _digested(tmp_path, "downgraded.safetensors")
    with safe_open(path) as f:
        metadata = f.metadata()
        arrays = {name: f.get_tensor(name) for name in f.keys()}
    del metadata[DIGEST_KEY_V2]
    metadata[DIGEST_KEY] = json.dumps(
        {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in arrays.items()})
    arrays["small"] = arrays["small"].view(np.uint16).reshape(4, 3)
    save_file(arrays, path, metadata=metadata)
    return path


def test_writer_no_longer_records_the_bytes_only_scheme(tmp_path):
    with safe_open(_digested(tmp_path)) as f:
        assert DIGEST_KEY not in f.metadata() and DIGEST_KEY_V2 in f.metadata()


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_downgrade_is_refused_by_safe_open(tmp_path, backend):
    path = _downgraded(tmp_path)
    with pytest.raises(SafetensorError, match="sha256-bytes-v1") as info:
        safe_open(path, backend=backend, verify_digests=True)
    assert info.value.code == "STC_ERR_WEAK_DIGESTS"
    with pytest.raises(SafetensorError) as info:
        safe_open(io.BytesIO(path.read_bytes()), verify_digests=True)
    assert info.value.code == "STC_ERR_WEAK_DIGESTS"
    # Accepted only when asked for, and then only the bytes are checked.
    with safe_open(path, backend=backend, verify_digests=True, allow_bytes_only=True) as f:
        assert f.get_tensor("small").dtype == np.uint16


def test_downgrade_is_refused_by_verify_digests(tmp_path):
    path = _downgraded(tmp_path)
    with pytest.raises(SafetensorError, match="allow_bytes_only=True") as info:
        integrity.verify_digests(path)
    assert info.value.code == "STC_ERR_WEAK_DIGESTS"
    assert integrity.verify_digests(path, allow_bytes_only=True) == []
    assert integrity.digest_scheme(path) == "sha256-bytes-v1"


def test_downgrade_is_refused_by_the_cli(tmp_path, capsys):
    path = _downgraded(tmp_path)
    assert main(["verify", str(path)]) == 1
    captured = capsys.readouterr()
    assert "digests verified" not in captured.out
    assert captured.err.startswith(f"BAD {path}: ") and "sha256-bytes-v1" in captured.err
    assert "--allow-bytes-only" in captured.err
    assert main(["verify", "--allow-bytes-only", str(path)]) == 0
    out = capsys.readouterr().out
    assert "digests verified (sha256-bytes-v1: tensor bytes only" in out


def test_bytes_only_digests_still_catch_changed_bytes_when_allowed(tmp_path):
    path = _downgraded(tmp_path)
    path.write_bytes(_altered(path, "big"))
    assert integrity.verify_digests(path, allow_bytes_only=True) == ["big"]
    with pytest.raises(SafetensorError) as info:
        safe_open(path, verify_digests=True, allow_bytes_only=True)
    assert info.value.code == "STC_ERR_DIGEST_MISMATCH" and "sha256-bytes-v1" in str(info.value)


# MARK: the CLI says what it checked ---------------------------------------------


def test_cli_names_the_scheme_it_checked(tmp_path, capsys):
    path = _digested(tmp_path)
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"OK  {path}: 2 tensors, digests verified (sha256-record-v2)")


def test_cli_says_plainly_when_a_file_has_no_digests(tmp_path, capsys):
    path = tmp_path / "plain.safetensors"
    save_file(TENSORS, path)
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"OK  {path}: 2 tensors, structure validated; no digests recorded"
    assert main(["verify", "--require-digests", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"BAD {path}: no digests recorded (--require-digests)")


def test_cli_require_digests_on_a_sharded_checkpoint(tmp_path, capsys):
    directory = tmp_path / "ckpt"
    tensors = {f"w{i}": np.full(64, i, np.float32) for i in range(2)}
    safetensors_c.save_sharded(tensors, directory, max_shard_size=300, progress=False)
    assert main(["verify", str(directory)]) == 0
    assert "2 tensors in 2 shards, structure validated; no digests recorded" in (
        capsys.readouterr().out)
    assert main(["verify", "--require-digests", str(directory)]) == 1
    assert "no digests recorded (--require-digests)" in capsys.readouterr().err
    safetensors_c.save_sharded(tensors, directory, max_shard_size=300, progress=False,
                               digests=True)
    assert main(["verify", "--require-digests", str(directory)]) == 0
    assert ("2 tensors in 2 shards, digests verified in 2 of 2 shards (sha256-record-v2)"
            in capsys.readouterr().out)


def test_cli_verify_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit) as info:
        main(["verify", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--require-digests", "--allow-bytes-only", "exit status", "0 ", "1 ", "2 "):
        assert needle in text


def test_a_verified_mapped_handle_still_hands_out_views(tmp_path):
    """Checking the file at open only reads it: the first access of each
    tensor is still a zero-copy view of the mapping, later ones independent."""
    path = _digested(tmp_path)
    with safe_open(path, framework="np", verify_digests=True) as f:
        for name, expected in TENSORS.items():
            first = f.get_tensor(name)
            owner = first
            while getattr(owner, "base", None) is not None:
                owner = owner.base
            assert isinstance(owner, safetensors_c._core._File) and owner.mapped, name
            again = f.get_tensor(name)
            assert not np.shares_memory(first, again)
            np.testing.assert_array_equal(again, expected)
