"""Remote reading against servers that attack the client.

Each test runs a real server on 127.0.0.1 (tests/remote_servers/hostile.py;
https with a self-signed certificate made by openssl) that tries one way to
take a credential somewhere the caller did not send it, to keep a request
alive for ever, to make the client allocate what was only announced, or to
mix two versions of a file in one read. The promises checked:

- a caller's headers (Authorization from ``auth`` or the URL, Cookie,
  X-Api-Key, any other) go only to the URL's own origin (scheme, host and
  port), unless named in ``forward_headers``; https -> http is refused
  unless ``allow_insecure_redirects``; redirect chains are bounded;
- every request ends within ``2 x timeout + bytes / 64 KiB/s``, whatever the
  server sends, and its connection is closed;
- options are checked before any request;
- memory follows the bytes received, not the bytes announced;
- a validator (ETag, Last-Modified) named by the first answer must be on
  every later answer, unchanged.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import _remote
from safetensors_c.numpy import load_file, save_file

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from remote_servers.hostile import HostileServer, VirtualFile  # noqa: E402
from remote_servers.nginx import make_certificate  # noqa: E402

FAST = {"timeout": 1.0}
GiB = 1 << 30
MiB = 1 << 20

# Every kind of header a caller may use to prove who they are.
SECRETS = {
    "Cookie": "session=secret-cookie",
    "X-Api-Key": "secret-key",
    "Proxy-Authorization": "Basic c2VjcmV0OnByb3h5",
    "X-Custom-Token": "secret-custom",
}
AUTHORIZATION = "Basic dXNlcjpwdw=="  # auth=("user", "pw")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    tls = make_certificate(tmp_path_factory.mktemp("tls"))
    if tls is None:
        pytest.skip("openssl is not installed: no certificate for an https server")
    return tls


def _client_ssl(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def _equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def _secret_headers(headers: dict) -> set:
    """The caller's secret headers present in one request's headers."""
    names = {k.lower() for k in headers}
    return {k for k in list(SECRETS) + ["Authorization"] if k.lower() in names}


# ---------------------------------------------------------------------------
# MARK: redirects and credentials


def test_https_to_http_redirect_is_refused_with_a_code(remote_checkpoint, certificate):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data)) as plain, \
            HostileServer(VirtualFile(data), "redirect", tls=certificate) as secure:
        secure.location = plain.url
        options = {"ssl": _client_ssl(certificate), "auth": ("user", "pw"), "headers": SECRETS}
        with pytest.raises(_remote.RemoteError) as info:
            safetensors_c.safe_open(secure.url, framework="np", storage_options=options)
        assert info.value.code == "STC_ERR_INSECURE_REDIRECT"
        assert "refused a redirect from https to plain http" in str(info.value)
        assert "allow_insecure_redirects" in str(info.value)
        assert plain.requests == []  # nothing went out in clear text
        assert len(secure.requests) == 1
        assert secure.headers[0]["Authorization"] == AUTHORIZATION  # where it was sent


def test_https_to_http_with_opt_in_sends_no_credential(remote_checkpoint, certificate):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as plain, \
            HostileServer(VirtualFile(data), "redirect", tls=certificate) as secure:
        secure.location = plain.url
        options = {
            "ssl": _client_ssl(certificate), "auth": ("user", "pw"), "headers": SECRETS,
            "allow_insecure_redirects": True,
        }
        _equal(load_file(secure.url, storage_options=options), tensors)
        assert len(plain.requests) >= 2  # the header and the tensors
        for headers in plain.headers:
            assert _secret_headers(headers) == set(), headers
        # Later requests went straight to where the redirect led.
        assert len(secure.requests) == 1


def test_redirect_to_another_port_drops_every_caller_header(remote_checkpoint):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as other, \
            HostileServer(VirtualFile(data), "redirect") as origin:
        origin.location = other.url
        options = {"headers": SECRETS, "client_kwargs": {"auth": ("user", "pw")}}
        with safetensors_c.safe_open(origin.url, framework="np", storage_options=options) as f:
            np.testing.assert_array_equal(f.get_tensor("far"), tensors["far"])
        assert origin.headers[0]["Authorization"] == AUTHORIZATION
        assert origin.headers[0]["X-Api-Key"] == "secret-key"
        # Later requests go where the redirect led, without credentials.
        assert len(origin.requests) == 1
        assert len(other.requests) == 2
        for sent in other.headers:
            assert _secret_headers(sent) == set(), sent


def test_a_forwarded_header_follows_the_redirect(remote_checkpoint):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as other, \
            HostileServer(VirtualFile(data), "redirect") as origin:
        origin.location = other.url
        headers = dict(SECRETS, **{"X-Trace": "trace-1"})
        options = {"headers": headers, "auth": ("user", "pw"), "forward_headers": ["x-trace"]}
        _equal(load_file(origin.url, storage_options=options), tensors)
        assert len(other.requests) == 2
        for sent in other.headers:
            assert _secret_headers(sent) == set(), sent
            assert sent["X-Trace"] == "trace-1"  # named as safe to forward


def test_credentials_in_the_url_stay_with_its_origin(remote_checkpoint):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as other, \
            HostileServer(VirtualFile(data), "redirect") as origin:
        origin.location = other.url
        url = origin.url.replace("http://", "http://user:pw@")
        _equal(load_file(url), tensors)
        assert origin.headers[0]["Authorization"] == AUTHORIZATION
        assert all("Authorization" not in sent for sent in other.headers)


def test_a_header_named_safe_is_forwarded_and_only_it(remote_checkpoint):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data)) as other, \
            HostileServer(VirtualFile(data), "redirect") as origin:
        origin.location = other.url
        options = {"headers": SECRETS, "forward_headers": ("Authorization", "Cookie"),
                   "auth": ("user", "pw")}
        source = _remote.open_url(origin.url, options)
        source.close()
        assert other.headers[0]["Authorization"] == AUTHORIZATION
        assert other.headers[0]["Cookie"] == SECRETS["Cookie"]
        assert _secret_headers(other.headers[0]) == {"Authorization", "Cookie"}


def test_redirects_on_the_same_origin_keep_the_headers(remote_checkpoint):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data), "redirect-chain:3") as server:
        options = {"headers": SECRETS, "auth": ("user", "pw")}
        _equal(load_file(server.url, storage_options=options), tensors)
        assert [path.rpartition("=")[2] for _, path, _ in server.requests[:4]] == [
            "/model.safetensors", "1", "2", "3"
        ]
        for sent in server.headers:
            assert _secret_headers(sent) == set(SECRETS) | {"Authorization"}


@pytest.mark.parametrize("mode", ["redirect-chain:6", "redirect-loop"])
def test_redirect_chains_are_bounded(remote_checkpoint, mode):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data), mode) as server:
        with pytest.raises(_remote.RemoteError) as info:
            safetensors_c.safe_open(server.url, framework="np", storage_options=FAST)
    assert info.value.code == "STC_ERR_BAD_REDIRECT"
    assert "more than 5 redirects" in str(info.value)
    assert len(server.requests) == 6


def test_redirect_to_another_scheme_is_refused(remote_checkpoint):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data), "redirect") as server:
        server.location = "file:///etc/passwd"
        with pytest.raises(_remote.RemoteError) as info:
            safetensors_c.safe_open(server.url, framework="np", storage_options=FAST)
    assert info.value.code == "STC_ERR_BAD_REDIRECT"
    assert "cannot follow a redirect to file:///etc/passwd" in str(info.value)


# ---------------------------------------------------------------------------
# MARK: every request ends


# Opening reads 4096 bytes with a 1 s timeout: its deadline is
# 2 x 1 s + 4096 B / (64 KiB/s).
BOUND = 2 * 1.0 + 4096 / (64 << 10)
ENDLESS = ["trickle", "trickle-body", "continue-flood", "trailer-flood"]


def test_the_documented_deadline():
    assert _remote.request_deadline(1.0, 4096) == BOUND
    assert _remote.request_deadline(30.0, 16 << 20) == 60 + 256


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("mode", ENDLESS)
def test_an_endless_answer_ends_at_the_deadline(remote_checkpoint, certificate, mode, tls):
    data, _ = remote_checkpoint
    options = dict(FAST)
    if tls:
        options["ssl"] = _client_ssl(certificate)
    with HostileServer(VirtualFile(data), mode, tls=certificate if tls else None,
                       delay=0.1, give_up=20) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            _remote.open_url(server.url, options, prefetch=4096)
        elapsed = time.monotonic() - started
        # The connection is closed: the server's handler sees it and ends.
        assert server.wait_finished(timeout=10)
    assert info.value.code == "STC_ERR_REMOTE_TIMEOUT"
    assert "did not finish within its deadline of 2.06 s" in str(info.value)
    assert "the connection was closed" in str(info.value)
    assert f"{server.url} (bytes 0-4095)" in str(info.value)
    assert elapsed < BOUND + 8  # generous: a "does not hang" check
    assert len(server.requests) == 1  # a missed deadline is not retried


def test_a_trickled_tensor_read_ends_at_its_deadline(remote_checkpoint):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data), "trickle-body", after=1, delay=0.1) as server:
        source = _remote.open_url(server.url, FAST, block_size=8192)
        with safetensors_c.safe_open(source, framework="np") as f:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="did not finish within its deadline"):
                f.get_tensor("far")
            assert time.monotonic() - started < 30
        assert server.wait_finished(timeout=10)


# ---------------------------------------------------------------------------
# MARK: options checked up front


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 1e12, 0, -1, 0.0, 86401])
def test_bad_timeouts_are_a_value_error_before_any_request(remote_checkpoint, timeout):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds above 0"):
            safetensors_c.safe_open(server.url, framework="np",
                                    storage_options={"timeout": timeout})
        with pytest.raises(ValueError, match="at most 86400"):
            _remote.open_url(server.url, {"timeout": timeout})
    assert server.requests == []


@pytest.mark.parametrize("options, kind, message", [
    ({"timeout": "30"}, TypeError, "timeout must be a number of seconds"),
    ({"timeout": True}, TypeError, "timeout must be a number of seconds"),
    ({"allow_insecure_redirects": "yes"}, TypeError, "must be True or False"),
    ({"forward_headers": "X-Trace"}, TypeError, "must be a list of header names"),
    ({"forward_headers": 5}, TypeError, "must be a list of header names"),
    ({"forward_headers": [b"X"]}, TypeError, "must be a list of header names"),
])
def test_bad_storage_options_before_any_request(remote_checkpoint, options, kind, message):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        with pytest.raises(kind, match=message):
            safetensors_c.safe_open(server.url, framework="np", storage_options=options)
    assert server.requests == []


@pytest.mark.parametrize("option", ["block_size", "prefetch", "coalesce_gap"])
def test_source_sizes_are_bounded_before_any_request(remote_checkpoint, option):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        with pytest.raises(ValueError, match=rf"{option} must be between \d+ and 1073741824"):
            _remote.open_url(server.url, **{option: 1 << 40})
    assert server.requests == []


def test_a_timeout_of_a_day_is_accepted(remote_checkpoint):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        _equal(load_file(server.url, storage_options={"timeout": 86400}), tensors)


# ---------------------------------------------------------------------------
# MARK: memory follows bytes received

# A server that says the file holds a 6 GiB tensor, then sends no byte of it
# (closes, or stalls): the read fails, having allocated little. Measured with
# tracemalloc in a subprocess whose address space is capped at 4 GiB, so that
# a client that allocates what was announced fails there, not on this machine.
_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, struct, sys, tracemalloc
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    sys.path.insert(0, sys.argv[1])
    from remote_servers.hostile import HostileServer, VirtualFile
    import safetensors_c
    claim = 6 << 30
    header = json.dumps({"big": {"dtype": "U8", "shape": [claim], "data_offsets": [0, claim]}})
    header = header.encode() + b" " * (-len(header) % 8)
    head = struct.pack("<Q", len(header)) + header
    with HostileServer(VirtualFile(head, size=len(head) + claim), sys.argv[2], after=1) as server:
        with safetensors_c.safe_open(server.url, framework="np",
                                     storage_options={"timeout": 1.0}) as f:
            tracemalloc.start()
            try:
                f.get_tensor("big")
                outcome = "no error"
            except BaseException as exc:
                outcome = f"{type(exc).__name__} {getattr(exc, 'code', None)} {exc}"
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    print(json.dumps({"outcome": outcome, "peak": peak, "received": server.bytes_sent}))
""")


@pytest.mark.parametrize("mode, outcome", [
    ("headers-only", "RemoteError STC_ERR_REMOTE"),
    ("stall", "TimeoutError STC_ERR_REMOTE_TIMEOUT"),
])
def test_an_announced_6_gib_tensor_that_never_comes_costs_no_memory(mode, outcome):
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(TESTS), mode],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["outcome"].startswith(outcome), report
    assert report["peak"] < 32 * MiB, report  # 8 requests in flight, 1 MiB each at most


def test_a_large_tensor_still_arrives_whole(tmp_path):
    # Buffers that grow with the bytes still hand out the exact bytes, for
    # tensors spanning many requests, and ones that share requests.
    rng = np.random.default_rng(3)
    tensors = {
        "big": rng.standard_normal(3 * MiB // 8 + 5),  # ~3 MiB, several 1 MiB parts
        "next": rng.standard_normal(300_000),
        "tiny": np.arange(3, dtype=np.int8),
    }
    path = tmp_path / "g.safetensors"
    save_file(tensors, str(path))
    with HostileServer(VirtualFile(path.read_bytes())) as server:
        for concurrency in (1, 4):
            source = _remote.open_url(server.url, FAST, block_size=MiB,
                                      max_concurrency=concurrency, prefetch=4096)
            with safetensors_c.safe_open(source, framework="np") as f:
                _equal(f.get_tensors(), tensors)
                np.testing.assert_array_equal(f.get_slice("big")[10:MiB:3],
                                              tensors["big"][10:MiB:3])


# ---------------------------------------------------------------------------
# MARK: one file for the whole read


@pytest.mark.parametrize("mode, message", [
    ("no-etag", 'ETag "v1" -> none'),
    ("etag", 'ETag "v1" -> "v2"'),
    ("lm-change", "Last-Modified Mon, 01 Jan 2024 00:00:00 GMT -> Tue, 02 Jan 2024"),
    ("lm-drop", "Last-Modified Mon, 01 Jan 2024 00:00:00 GMT -> none"),
])
def test_a_later_answer_must_name_the_same_version(remote_checkpoint, mode, message):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data), mode) as server:
        with safetensors_c.safe_open(server.url, framework="np", storage_options=FAST) as f:
            with pytest.raises(_remote.RemoteError) as info:
                f.get_tensor("far")
    assert info.value.code == "STC_ERR_FILE_CHANGED"
    assert f"the file changed between requests ({message}" in str(info.value)
    assert f"{server.url} (bytes " in str(info.value)


# ---------------------------------------------------------------------------
# MARK: a good server still works


def test_a_good_https_server_with_every_option(remote_checkpoint, certificate):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data), "redirect-chain:2", tls=certificate) as server:
        options = {
            "ssl": _client_ssl(certificate), "timeout": 5, "headers": SECRETS,
            "auth": ("user", "pw"), "forward_headers": ["X-Api-Key"],
            "allow_insecure_redirects": False,
        }
        _equal(load_file(server.url, storage_options=options), tensors)
        with safetensors_c.safe_open(server.url, framework="np", storage_options=options) as f:
            np.testing.assert_array_equal(f.get_slice("far")[5:50:7], tensors["far"][5:50:7])
        for sent in server.headers:
            assert sent["Authorization"] == AUTHORIZATION  # one origin throughout


def test_a_good_server_keeps_its_connections(remote_checkpoint):
    # The deadline watchdog closes nothing that finished in time: one
    # keep-alive connection serves every request of a sequential reader.
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        source = _remote.open_url(server.url, FAST, block_size=64 << 10, max_concurrency=1)
        with safetensors_c.safe_open(source, framework="np") as f:
            _equal(f.get_tensors(), tensors)
        source.close()
        assert len(server.requests) > 10
        assert len(set(server.peers)) == 1
