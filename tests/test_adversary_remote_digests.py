"""An adversary's second pass over remote reading, digest binding and
sharded save ids (issue 18, items 1, 2 and 5).

Each test is one attack that got through the first hardening: a header
value that smuggles a line break (and whose refusal quoted the
credential), a URL whose refusal quoted its signed query string, a
redirect whose malformed port escaped as an error without a code, a
server whose validator appears only on later answers (so two versions it
names could be mixed), and a sharded checkpoint in which one shard's
digests were stripped while ``safetensors-c verify`` still said OK.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, _remote
from safetensors_c.cli import main
from safetensors_c.integrity import DIGEST_KEY_V2
from safetensors_c.numpy import save_file
from safetensors_c.sharded import SAVE_ID_KEY, load_sharded, safe_open_sharded, save_sharded

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from remote_servers.hostile import HostileServer, VirtualFile  # noqa: E402
from remote_servers.loopback import RANGE, LoopbackServer  # noqa: E402

FAST = {"timeout": 2.0}


@pytest.fixture
def checkpoint(tmp_path):
    tensors = {
        "a": np.arange(1000, dtype=np.float32),
        "far": np.arange(200_000, dtype=np.float64),  # beyond the first read
    }
    path = tmp_path / "h.safetensors"
    save_file(tensors, str(path))
    return path.read_bytes(), tensors


# ---------------------------------------------------------------------------
# MARK: header values from storage_options


@pytest.mark.parametrize("value", [
    "Bearer top-secret\r\nX-Injected: 1",
    "top-secret\nX-Injected: 1",
    "top-secret\r",
    "top-secret\x00",
])
def test_a_header_value_with_a_line_break_is_refused_without_quoting_it(checkpoint, value):
    data, _ = checkpoint
    with HostileServer(VirtualFile(data)) as server:
        with pytest.raises(ValueError) as info:
            _remote.open_url(server.url, {"headers": {"Authorization": value}, **FAST})
        assert "storage_options header 'Authorization'" in str(info.value)
        assert "control character" in str(info.value)
        assert "top-secret" not in str(info.value)  # the credential is not in the message
        assert server.requests == []  # refused before any request


def test_a_header_value_outside_latin_1_is_a_value_error_before_any_request(checkpoint):
    data, _ = checkpoint
    with HostileServer(VirtualFile(data)) as server:
        with pytest.raises(ValueError) as info:
            _remote.open_url(server.url, {"headers": {"X-Api-Key": "s\u00e9cret\u20ac"}})
        assert type(info.value) is ValueError  # not the codec's UnicodeEncodeError
        assert "only Latin-1" in str(info.value)
        assert "cret" not in str(info.value)
        assert server.requests == []


@pytest.mark.parametrize("name", ["X Api Key", "X-Key:", "X-Key\r\nEvil", ""])
def test_a_header_name_that_is_not_a_token_is_refused(checkpoint, name):
    data, _ = checkpoint
    with HostileServer(VirtualFile(data)) as server:
        with pytest.raises(ValueError, match="is not a valid HTTP header name"):
            _remote.open_url(server.url, {"client_kwargs": {"headers": {name: "v"}}})
        assert server.requests == []


def test_a_tab_in_a_header_value_is_still_accepted(checkpoint):
    data, tensors = checkpoint
    with HostileServer(VirtualFile(data)) as server:
        source = _remote.open_url(server.url, {"headers": {"X-Note": "a\tb"}})
        source.close()
        assert server.headers[0]["X-Note"] == "a\tb"


# ---------------------------------------------------------------------------
# MARK: URLs and redirect locations


def test_a_url_with_a_space_is_refused_without_its_query(checkpoint):
    data, _ = checkpoint
    with HostileServer(VirtualFile(data)) as server:
        url = server.url.replace("/model", "/a b/model") + "?sig=top-secret"
        with pytest.raises(ValueError) as info:
            _remote.open_url(url)
        assert "space or control character" in str(info.value)
        assert "top-secret" not in str(info.value)
        assert server.requests == []


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:1:80/x",  # a port that is not a number
    "http://127.0.0.1:99999/x",  # a port out of range
    "http://[::1/x",  # an unclosed bracket
])
def test_a_redirect_to_a_malformed_authority_has_a_code(checkpoint, location):
    data, _ = checkpoint
    with HostileServer(VirtualFile(data), "redirect") as server:
        server.location = location
        with pytest.raises(_remote.RemoteError) as info:
            _remote.open_url(server.url, FAST)
        assert info.value.code == "STC_ERR_BAD_REDIRECT"
        assert "cannot follow a redirect" in str(info.value)


def test_a_redirect_to_a_location_with_a_space_is_refused_with_a_code(checkpoint):
    data, _ = checkpoint
    with HostileServer(VirtualFile(data), "redirect") as server:
        server.location = server.url.replace("/model", "/a b/model") + "?sig=x"
        with pytest.raises(_remote.RemoteError) as info:
            _remote.open_url(server.url, FAST)
        assert info.value.code == "STC_ERR_BAD_REDIRECT"
        assert len(server.requests) == 1  # nothing was sent to it


# ---------------------------------------------------------------------------
# MARK: a validator that appears only on later answers


class _LateValidatorServer(LoopbackServer):
    """Serves ``first`` without an ETag on the first answer; later answers
    carry ETag "v1" with ``first``, then from the ``switch_at``-th answer on,
    ETag "v2" with ``second`` (same size): two versions it names itself."""

    def __init__(self, first: bytes, second: bytes, switch_at: int = 3) -> None:
        super().__init__()
        assert len(first) == len(second)
        self.first, self.second, self.switch_at = first, second, switch_at
        self.count = 0
        self.lock = threading.Lock()

    def _serve(self, h) -> None:
        with self.lock:
            self.count += 1
            count = self.count
        data = self.first if count < self.switch_at else self.second
        start, last = RANGE.match(h.headers["Range"]).groups()
        start, end = int(start), min(int(last) + 1, len(data))
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        h.send_header("Content-Length", str(end - start))
        if count > 1:
            h.send_header("ETag", '"v1"' if count < self.switch_at else '"v2"')
        h.end_headers()
        h.wfile.write(data[start:end])


def test_an_etag_that_appears_only_later_cannot_mix_two_versions(tmp_path):
    big = 100_000  # float64: 800 kB each, beyond the first read and apart
    save_file({"x": np.zeros(big), "y": np.zeros(big)}, str(tmp_path / "a.safetensors"))
    save_file({"x": np.ones(big), "y": np.ones(big)}, str(tmp_path / "b.safetensors"))
    first = (tmp_path / "a.safetensors").read_bytes()
    second = (tmp_path / "b.safetensors").read_bytes()
    with _LateValidatorServer(first, second) as server:
        with safetensors_c.safe_open(server.url, framework="np",
                                     storage_options=FAST) as f:
            with pytest.raises(_remote.RemoteError) as info:
                f.get_tensor("x")  # ETag "v1": first named here
                f.get_tensor("y")  # ETag "v2": another version
        assert info.value.code == "STC_ERR_FILE_CHANGED"
        assert "ETag none -> " in str(info.value)


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints: digests stripped from one shard, saves mixed


INDEX = "model.safetensors.index.json"
SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"


def _two_shards(directory, **options) -> Path:
    tensors = {"a": np.zeros(1000, np.float32), "b": np.zeros(1000, np.float32)}
    save_sharded(tensors, str(directory), max_shard_size=4000, progress=False, **options)
    assert sorted(p.name for p in Path(directory).iterdir()) == [SHARD_1, SHARD_2, INDEX]
    return Path(directory)


def test_verify_fails_when_one_shard_lost_its_digests(tmp_path, capsys):
    directory = _two_shards(tmp_path / "ckpt", digests=True)
    shard = directory / SHARD_2
    with safetensors_c.safe_open(str(shard), framework="np") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != DIGEST_KEY_V2}
    # The attack: new values, and the digests that would betray them removed
    # (the save id kept, so the shard still belongs to the save).
    save_file({"b": np.full(1000, 7, np.float32)}, str(shard), metadata)
    assert main(["verify", str(directory)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("BAD ")
    assert "1 shard with no digests recorded while 1 of 2 record them" in err
    assert repr(SHARD_2) in err
    # The library refused it already: every shard must record digests.
    with pytest.raises(SafetensorError) as info:
        safe_open_sharded(str(directory), verify_digests=True)
    assert info.value.code == "STC_ERR_NO_DIGESTS"


def test_verify_of_shards_that_all_lack_digests_still_says_so(tmp_path, capsys):
    directory = _two_shards(tmp_path / "ckpt")
    assert main(["verify", str(directory)]) == 0
    assert "structure validated; no digests recorded" in capsys.readouterr().out


def _mix_under_an_index_without_save_id(tmp_path) -> Path:
    directory = _two_shards(tmp_path / "ckpt")
    other = _two_shards(tmp_path / "other")
    shutil.copyfile(other / SHARD_2, directory / SHARD_2)  # same layout, another save
    index = json.loads((directory / INDEX).read_text())
    del index["metadata"][SAVE_ID_KEY]  # an index another tool rewrote
    (directory / INDEX).write_text(json.dumps(index))
    return directory


def test_shards_of_two_saves_are_refused_under_an_index_without_save_id(tmp_path):
    directory = _mix_under_an_index_without_save_id(tmp_path)
    for attempt in (
        lambda: load_sharded(str(directory), progress=False),
        lambda: safe_open_sharded(str(directory)),
        lambda: load_sharded(str(directory / INDEX), progress=False),
    ):
        with pytest.raises(SafetensorError) as info:
            attempt()
        assert info.value.code == "STC_ERR_SHARD_MISMATCH"
        assert f"shards {SHARD_1!r} and {SHARD_2!r} are from different saves" in str(info.value)


def test_verify_refuses_shards_of_two_saves_under_an_index_without_save_id(tmp_path, capsys):
    directory = _mix_under_an_index_without_save_id(tmp_path)
    assert main(["verify", str(directory)]) == 1
    assert "are from different saves" in capsys.readouterr().err


def test_an_index_without_save_id_over_shards_without_one_loads(tmp_path):
    directory = _two_shards(tmp_path / "ckpt")
    for name in (SHARD_1, SHARD_2):  # as transformers would write them
        with safetensors_c.safe_open(str(directory / name), framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(directory / name), {"format": "np"})
    index = json.loads((directory / INDEX).read_text())
    del index["metadata"][SAVE_ID_KEY]
    (directory / INDEX).write_text(json.dumps(index))
    assert sorted(load_sharded(str(directory), progress=False)) == ["a", "b"]


# ---------------------------------------------------------------------------
# MARK: a source used again after fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_send_on_its_parents_pooled_connection(checkpoint):
    data, tensors = checkpoint
    with HostileServer(VirtualFile(data)) as server:
        source = _remote.open_url(server.url, FAST)  # one request; its connection is pooled
        assert len(server.peers) == 1
        pid = os.fork()
        if pid == 0:  # the child: read, then report only through the exit status
            code = 1
            try:
                got = bytes(source.read_at(len(data) - 8, 8))
                code = 0 if got == data[-8:] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert len(server.peers) == 2
        # A socket of its own: parent and child never read each other's answers.
        assert server.peers[1] != server.peers[0]
        # The parent's pooled connection is still good.
        assert bytes(source.read_at(len(data) - 16, 8)) == data[-16:-8]  # past the first read
        assert server.peers[2] == server.peers[0]
        source.close()
