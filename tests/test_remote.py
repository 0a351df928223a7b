"""Remote reading: URLs and fsspec file objects.

Three servers, all on 127.0.0.1:
- a real nginx (Debian's nginx-light), started here with a temporary
  configuration; its access log ($http_range, $body_bytes_sent) is the
  ground truth for how many bytes each operation moved. Skipped only when
  the nginx binary is absent.
- the misbehaving server of tests/remote_servers/hostile.py, one per test.
- fsspec's memory:// and file:// file systems (no server at all).

Byte bounds checked against nginx (P = the 256 KiB speculative first read):
- opening: one request of min(P, size) bytes when 8 + header <= P, else
  exactly two requests moving 8 + header bytes in all;
- get_tensor: exactly the tensor's bytes (nothing when they lie within P);
- get_slice: exactly the selected runs when they are further apart than the
  coalescing gap (64 KiB); never more than the runs plus the gaps merged;
- load_file: exactly the file's size, every byte once;
- inspect: the header requests only.
"""

from __future__ import annotations

import json
import os
import ssl
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, _remote
from safetensors_c.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_servers.hostile import HostileServer, VirtualFile  # noqa: E402
from remote_servers.nginx import serving_nginx  # noqa: E402

P = _remote.DEFAULT_PREFETCH
MiB = 1 << 20

fsspec = pytest.importorskip("fsspec")


# ---------------------------------------------------------------------------
# MARK: checkpoints


def _tensors_big():
    rng = np.random.default_rng(1)
    return {
        "embed": rng.standard_normal((4096, 1024)).astype(np.float32),  # 16 MiB, rows of 4 KiB
        "wide": rng.standard_normal((64, 65536)).astype(np.float32),  # 16 MiB, rows of 256 KiB
        "bias": np.arange(7, dtype=np.int64),
        "mask": rng.random((33, 5)) > 0.5,
        "half": rng.standard_normal((129, 3)).astype(np.float16),
    }


def _tensors_sharded():
    return {f"block.{i}.w": np.full((256, 256), i, dtype=np.float32) for i in range(6)}


def _tensors_many():
    # 6000 tiny tensors: a header larger than the speculative first read.
    return {f"layer.{i:05d}.scale": np.full((1,), i, dtype=np.float32) for i in range(6000)}


def _data_start(path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _span(path, name):
    """A tensor's absolute [start, end) in the file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        begin, end = json.loads(f.read(n))[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def _fill_nginx_root(root) -> None:
    save_file(_tensors_big(), str(root / "big.safetensors"), metadata={"format": "np"})
    save_file(_tensors_many(), str(root / "many.safetensors"))
    save_file({"x": np.arange(10, dtype=np.float32)}, str(root / "small.safetensors"))
    safetensors_c.save_sharded(_tensors_sharded(), str(root / "sharded"), max_shard_size=600_000)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    yield from serving_nginx(tmp_path_factory.mktemp("nginx"), _fill_nginx_root, tls=True)


def _ranges(entries):
    """[(start, end)] of the logged range requests."""
    out = []
    for e in entries:
        assert e.status == 206, e
        first, last = e.range[len("bytes="):].split("-")
        out.append((int(first), int(last) + 1))
    return out


def _assert_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------------------
# MARK: nginx: bytes per operation


def test_open_costs_one_request_for_a_small_header(nginx):
    path = nginx.root / "big.safetensors"
    with safetensors_c.safe_open(nginx.url_of("big.safetensors"), framework="np") as f:
        assert f.keys() == sorted(_tensors_big())
        assert f.metadata() == {"format": "np"}
        log = nginx.log()
    assert [(e.range, e.sent) for e in log] == [(f"bytes=0-{P - 1}", P)]
    assert _data_start(path) < P


def test_large_header_costs_two_requests_and_no_tensor_bytes(nginx):
    path = nginx.root / "many.safetensors"
    header_end = _data_start(path)
    assert header_end > P  # the case under test
    with safetensors_c.safe_open(nginx.url_of("many.safetensors"), framework="np") as f:
        assert len(f.keys()) == 6000
        log = nginx.log()
        assert _ranges(log) == [(0, P), (P, header_end)]
        assert sum(e.sent for e in log) == header_end
        assert f.get_tensor("layer.04321.scale").tolist() == [4321.0]
        log = nginx.log()
    assert sum(e.sent for e in log) == 4


def test_get_tensor_moves_exactly_its_bytes(nginx):
    path = nginx.root / "big.safetensors"
    local = _tensors_big()
    with safetensors_c.safe_open(nginx.url_of("big.safetensors"), framework="np") as f:
        nginx.log()
        for name in ("embed", "wide", "bias"):
            got = f.get_tensor(name)
            np.testing.assert_array_equal(got, local[name])
            assert got.dtype == local[name].dtype
            log = nginx.log()
            start, end = _span(path, name)
            # Bytes already held from the first read are not fetched again.
            assert sum(e.sent for e in log) == max(0, end - max(start, P)), name
            # 16 MiB is one block: at most one request.
            assert len(log) == (1 if end > P else 0)


def test_get_slice_reads_only_the_runs(nginx):
    local = _tensors_big()
    with safetensors_c.safe_open(nginx.url_of("big.safetensors"), framework="np") as f:
        nginx.log()
        # 1/8 of the rows (the last, beyond the first read): one contiguous run.
        np.testing.assert_array_equal(f.get_slice("embed")[-512:], local["embed"][-512:])
        assert sum(e.sent for e in nginx.log()) == 512 * 1024 * 4
        # 64 runs of 32 KiB, 224 KiB apart: no coalescing, exact bytes.
        np.testing.assert_array_equal(f.get_slice("wide")[:, :8192], local["wide"][:, :8192])
        log = nginx.log()
        assert sum(e.sent for e in log) == 64 * 8192 * 4
        assert len(log) == 64
        # Every other 4 KiB row: runs 4 KiB apart are coalesced into one
        # request, bounded by runs + gaps.
        got = f.get_slice("embed")[1000:2000:2]
        np.testing.assert_array_equal(got, local["embed"][1000:2000:2])
        log = nginx.log()
        runs = 500 * 4096
        assert len(log) == 1
        assert runs <= sum(e.sent for e in log) <= runs + 499 * 4096


def test_load_file_moves_every_byte_once_in_parallel_parts(nginx):
    path = nginx.root / "big.safetensors"
    got = load_file(nginx.url_of("big.safetensors"))
    _assert_equal(got, _tensors_big())
    log = nginx.log()
    ranges = sorted(_ranges(log))
    assert ranges[0] == (0, P)
    covered = 0
    for start, end in ranges:
        assert start == covered  # no byte twice, none skipped
        covered = end
    assert covered == os.path.getsize(path)
    assert sum(e.sent for e in log) == os.path.getsize(path)
    assert all(end - start <= _remote.DEFAULT_BLOCK_SIZE for start, end in ranges)
    assert len(ranges) >= 3


def test_source_options_split_into_blocks(nginx):
    url = nginx.url_of("big.safetensors")
    source = _remote.open_url(url, max_concurrency=4, block_size=1 * MiB)
    nginx.log()
    local = _tensors_big()
    with safetensors_c.safe_open(source, framework="np") as f:
        np.testing.assert_array_equal(f.get_tensor("wide"), local["wide"])
    log = nginx.log()
    assert len(log) == 16 and all(e.sent == MiB for e in log)
    assert source.requests == 17


def test_inspect_cli_fetches_only_the_header(nginx):
    url = nginx.url_of("many.safetensors")
    nginx.log()
    result = subprocess.run(
        [sys.executable, "-m", "safetensors_c", "inspect", url, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["tensors"]) == 6000
    log = nginx.log()
    assert sum(e.sent for e in log) == _data_start(nginx.root / "many.safetensors")
    assert len(log) == 2


def test_load_sharded_reads_the_remote_index(nginx):
    local = _tensors_sharded()
    directory = nginx.root / "sharded"
    shards = sorted(p.name for p in directory.iterdir() if p.suffix == ".safetensors")
    assert len(shards) > 1
    index_size = (directory / "model.safetensors.index.json").stat().st_size
    shard_bytes = sum((directory / s).stat().st_size for s in shards)
    # A directory URL costs one 8-byte request to find the index; then the
    # index and every shard are read whole, each byte once.
    for url, probe in ((nginx.url + "/sharded", 8), (nginx.url + "/sharded/", 8),
                       (nginx.url + "/sharded/model.safetensors.index.json", 0)):
        nginx.log()
        _assert_equal(safetensors_c.load_sharded(url, progress=False), local)
        log = nginx.log()
        assert all(e.status == 206 for e in log)
        assert sum(e.sent for e in log) == probe + index_size + shard_bytes, url


def test_sharded_open_reads_one_shard_for_one_tensor(nginx):
    local = _tensors_sharded()
    nginx.log()
    with safetensors_c.safe_open_sharded(nginx.url + "/sharded") as f:
        np.testing.assert_array_equal(f.get_tensor("block.3.w"), local["block.3.w"])
    log = nginx.log()
    # Headers (the index probe, the index, each shard's first read), then
    # only the rest of the one tensor asked for.
    data_requests = [e for e in log if e.range not in (f"bytes=0-{P - 1}", "bytes=0-7")]
    assert len(data_requests) <= 1
    assert sum(e.sent for e in data_requests) <= 256 * 256 * 4


def test_missing_file_is_file_not_found(nginx):
    with pytest.raises(FileNotFoundError, match=r"/nope\.safetensors: not found \(HTTP 404\)"):
        safetensors_c.safe_open(nginx.url_of("nope.safetensors"), framework="np")
    with pytest.raises(FileNotFoundError):
        safetensors_c.load_sharded(nginx.url + "/no-such-dir")


def test_https_with_the_servers_certificate(nginx):
    if nginx.tls is None:
        pytest.skip("openssl is not installed: no certificate for the https server")
    url = nginx.tls_url + "/big.safetensors"
    context = ssl.create_default_context(cafile=str(nginx.tls[0]))
    nginx.log()
    got = load_file(url, storage_options={"ssl": context})
    _assert_equal(got, _tensors_big())
    assert sum(e.sent for e in nginx.log()) == os.path.getsize(nginx.root / "big.safetensors")
    # Without it the self-signed certificate is refused, naming the URL.
    with pytest.raises(ssl.SSLCertVerificationError, match=r"https://127\.0\.0\.1:\d+/big"):
        safetensors_c.safe_open(url, framework="np")


def test_torch_load_file_over_http(nginx):
    torch = pytest.importorskip("torch")
    import safetensors_c.torch as st_torch

    got = st_torch.load_file(nginx.url_of("big.safetensors"))
    local = _tensors_big()
    assert sorted(got) == sorted(local)
    for name, value in local.items():
        assert isinstance(got[name], torch.Tensor)
        np.testing.assert_array_equal(got[name].numpy(), value)


def test_verify_digests_over_http(nginx):
    tensors = {"a": np.arange(100, dtype=np.float32), "b": np.ones((3, 3), np.int16),
               "far": np.arange(100_000, dtype=np.float32)}  # beyond the first read
    path = nginx.root / "digests.safetensors"
    save_file(tensors, str(path), digests=True)
    with safetensors_c.safe_open(nginx.url_of("digests.safetensors"), framework="np",
                                 verify_digests=True) as f:
        for name in tensors:
            np.testing.assert_array_equal(f.get_tensor(name), tensors[name])
        _assert_equal(f.get_tensors(), tensors)

    # The same file with one byte of "a" and one of "far" changed: same size, same header,
    # same recorded digests. nginx serves it faithfully; the digests refuse it.
    raw = bytearray(path.read_bytes())
    for name in ("a", "far"):
        start, end = _span(path, name)
        raw[(start + end) // 2] ^= 0x40
    (nginx.root / "tampered.safetensors").write_bytes(bytes(raw))
    url = nginx.url_of("tampered.safetensors")
    with safetensors_c.safe_open(url, framework="np", verify_digests=True) as f:
        np.testing.assert_array_equal(f.get_tensor("b"), tensors["b"])  # untouched: served
        for name in ("a", "far"):
            with pytest.raises(SafetensorError, match=f"tensor '{name}'") as info:
                f.get_tensor(name)
            assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
        with pytest.raises(SafetensorError) as info:
            f.get_slice("far")[10:20]
        assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
        with pytest.raises(SafetensorError) as info:
            f.get_tensors()
        assert info.value.code == "STC_ERR_DIGEST_MISMATCH"
    # The control: without verification the changed bytes are what is read.
    unverified = load_file(url)
    assert not np.array_equal(unverified["far"], tensors["far"])
    assert not np.array_equal(unverified["a"], tensors["a"])


def test_fsspec_http_file_object_as_a_byte_source(nginx):
    pytest.importorskip("aiohttp")
    url = nginx.url_of("big.safetensors")
    local = _tensors_big()
    nginx.log()
    with fsspec.open(url, "rb") as file:
        source = _remote.open_fsspec_file(file)
        with safetensors_c.safe_open(source, framework="np") as f:
            np.testing.assert_array_equal(f.get_slice("wide")[-8:], local["wide"][-8:])
    log = nginx.log()
    ranged = [e for e in log if e.range != "-"]
    # fsspec may look the file up first (HEAD or a plain GET it abandons);
    # the reads themselves are the first read and the 8 rows.
    assert sum(e.sent for e in ranged) == P + 8 * 65536 * 4


# ---------------------------------------------------------------------------
# MARK: fsspec protocols and file objects


def test_memory_protocol(tmp_path):
    tensors = _tensors_big()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    fs = fsspec.filesystem("memory")
    fs.pipe("/remote-test/m.safetensors", path.read_bytes())
    try:
        _assert_equal(load_file("memory://remote-test/m.safetensors"), tensors)
        with safetensors_c.safe_open("memory://remote-test/m.safetensors", framework="np") as f:
            np.testing.assert_array_equal(f.get_slice("wide")[3:5, 10:20], tensors["wide"][3:5, 10:20])
        with fs.open("/remote-test/m.safetensors", "rb") as file:
            with safetensors_c.safe_open(file, framework="np") as f:
                np.testing.assert_array_equal(f.get_tensor("embed"), tensors["embed"])
        with pytest.raises(FileNotFoundError, match="memory://remote-test/none.safetensors"):
            load_file("memory://remote-test/none.safetensors")
    finally:
        fs.rm("/remote-test", recursive=True)


def test_file_protocol_and_storage_options(tmp_path):
    tensors = {"a": np.arange(12, dtype=np.int32).reshape(3, 4)}
    path = tmp_path / "f.safetensors"
    save_file(tensors, str(path))
    url = path.as_uri()
    _assert_equal(load_file(url), tensors)
    _assert_equal(load_file(url, storage_options={"auto_mkdir": False}), tensors)
    with pytest.raises(TypeError, match="storage_options"):
        load_file(str(path), storage_options={"auto_mkdir": False})


def test_fsspec_sharded_local_directory_url(tmp_path):
    tensors = {f"t{i}": np.full((100, 100), i, dtype=np.float64) for i in range(4)}
    safetensors_c.save_sharded(tensors, str(tmp_path / "ck"), max_shard_size=100_000)
    _assert_equal(safetensors_c.load_sharded((tmp_path / "ck").as_uri()), tensors)


def test_without_fsspec_urls_name_the_extra(tmp_path):
    tensors = {"a": np.arange(4, dtype=np.float32)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    with HostileServer(VirtualFile(path.read_bytes())) as server:
        code = (
            "import sys; sys.modules['fsspec'] = None\n"
            "import safetensors_c\n"
            f"print(safetensors_c.load_file({server.url!r})['a'].tolist())\n"
            "try:\n"
            "    safetensors_c.load_file('memory://x.safetensors')\n"
            "except ImportError as exc:\n"
            "    print('ImportError', exc)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[0.0, 1.0, 2.0, 3.0]"  # http(s) needs no fsspec
    assert lines[1].startswith("ImportError")
    assert 'pip install "safetensors_c[remote]"' in lines[1]


# ---------------------------------------------------------------------------
# MARK: the hostile server


FAST = {"timeout": 1.0}

# mode -> (exception type, message part); the failure is on the tensor read
# (the first, header, request is answered correctly).
MISBEHAVIOURS = {
    "ignore-range": (_remote.RemoteError, "answered 200 OK (the whole file) to a range request"),
    "wrong-range": (_remote.RemoteError, "sent Content-Range 'bytes 262145-"),
    "no-range": (_remote.RemoteError, "206 Partial Content without a Content-Range"),
    "short": (_remote.RemoteError, "short body"),
    "long": (_remote.RemoteError, "Content-Length"),
    "grow": (_remote.RemoteError, "the file changed size between requests"),
    "etag": (_remote.RemoteError, 'the file changed between requests (ETag "v1" -> "v2")'),
    "stall": (TimeoutError, "stalled: no data for 1 s"),
    "stall-body": (TimeoutError, "stalled: no data for 1 s"),
    "status:500": (_remote.RemoteError, "HTTP 500"),
    "status:503": (_remote.RemoteError, "HTTP 503"),
    "status:403": (PermissionError, "access denied (HTTP 403"),
    "redirect-loop": (_remote.RemoteError, "more than 5 redirects"),
    "chunked-long": (_remote.RemoteError, "the body is longer than the range"),
}


@pytest.mark.parametrize("mode", sorted(MISBEHAVIOURS))
def test_misbehaviour_on_a_tensor_read(remote_checkpoint, mode):
    data, tensors = remote_checkpoint
    kind, message = MISBEHAVIOURS[mode]
    with HostileServer(VirtualFile(data), mode, after=1) as server:
        started = time.monotonic()
        with safetensors_c.safe_open(server.url, framework="np", storage_options=FAST) as f:
            assert f.keys() == ["a", "far"]
            with pytest.raises(kind) as info:
                f.get_tensor("far")
        assert time.monotonic() - started < 10
    assert issubclass(kind, OSError)
    text = str(info.value)
    assert message in text
    assert f"{server.url} (bytes " in text or f"{server.url}: " in text
    assert len(server.requests) <= 1 + 3 + 5  # bounded: retries and redirects


@pytest.mark.parametrize("mode", ["ignore-range", "wrong-range", "no-range", "short", "stall"])
def test_misbehaviour_on_open(remote_checkpoint, mode):
    data, _ = remote_checkpoint
    kind, message = MISBEHAVIOURS[mode]
    if mode == "wrong-range":
        message = "sent Content-Range 'bytes 1-"
    with HostileServer(VirtualFile(data), mode) as server:
        with pytest.raises(kind, match="bytes 0-262143") as info:
            safetensors_c.safe_open(server.url, framework="np", storage_options=FAST)
    assert message in str(info.value)


def test_good_server_gives_the_local_result(remote_checkpoint):
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        _assert_equal(load_file(server.url), tensors)
        ranges = [r for _, _, r in server.requests]
    assert ranges[0] == f"bytes=0-{P - 1}"
    assert ranges[1:] == [f"bytes={P}-{len(data) - 1}"]


@pytest.mark.parametrize("mode", ["chunked", "drop-idle"])
def test_valid_variants_are_accepted(remote_checkpoint, mode):
    # Chunked 206 answers are valid HTTP; a keep-alive connection the server
    # closed is replaced (within the retry bound) without an error.
    data, tensors = remote_checkpoint
    with HostileServer(VirtualFile(data), mode) as server:
        source = _remote.open_url(server.url, block_size=64 << 10, max_concurrency=1)
        with safetensors_c.safe_open(source, framework="np") as f:
            _assert_equal(f.get_tensors(), tensors)
            np.testing.assert_array_equal(f.get_slice("far")[10:20], tensors["far"][10:20])
    assert len(server.requests) == source.requests


def test_header_length_claiming_gigabytes(remote_checkpoint):
    # The first 8 bytes claim a 5 GiB header in a "file" of 10 GiB that is
    # never materialised: refused after the first request, in little memory.
    head = struct.pack("<Q", 5 << 30) + b"{" + b" " * 100
    with HostileServer(VirtualFile(head, size=10 << 30)) as server:
        tracemalloc.start()
        try:
            with pytest.raises(SafetensorError, match="header"):
                safetensors_c.safe_open(server.url, framework="np", storage_options=FAST)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(server.requests) == 1
    assert server.bytes_sent == P
    assert peak < 8 * MiB


def test_whole_file_answer_to_a_range_is_not_read(remote_checkpoint):
    # A 10 GiB 200 OK answer: refused from its status line, body not read.
    with HostileServer(VirtualFile(b"\0" * 64, size=10 << 30), "ignore-range") as server:
        tracemalloc.start()
        try:
            with pytest.raises(_remote.RemoteError, match="200 OK"):
                safetensors_c.safe_open(server.url, framework="np", storage_options=FAST)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * MiB
    assert server.bytes_sent < 64 * MiB


def test_storage_options_reach_the_server(remote_checkpoint):
    data, tensors = remote_checkpoint
    options = {"headers": {"X-Token": "abc"}, "client_kwargs": {"auth": ("user", "pw")}}
    with HostileServer(VirtualFile(data)) as server:
        _assert_equal(load_file(server.url, storage_options=options), tensors)
        with pytest.raises(TypeError, match=r"storage_options \['anon'\] are not supported"):
            load_file(server.url, storage_options={"anon": True})
    for headers in server.headers:
        assert headers["X-Token"] == "abc"
        assert headers["Authorization"] == "Basic dXNlcjpwdw=="
        assert headers["Accept-Encoding"] == "identity"


def test_connection_refused_names_the_url():
    with HostileServer(VirtualFile(b"")) as server:
        url = server.url
    with pytest.raises(ConnectionRefusedError, match=r"127\.0\.0\.1.*bytes 0-262143"):
        safetensors_c.safe_open(url, framework="np", storage_options=FAST)


def test_empty_and_tiny_remote_files():
    with HostileServer(VirtualFile(b"")) as server:
        with pytest.raises(SafetensorError):
            safetensors_c.safe_open(server.url, framework="np")
    with HostileServer(VirtualFile(b"\x08\0\0\0")) as server:
        with pytest.raises(SafetensorError):
            safetensors_c.safe_open(server.url, framework="np")


def test_concurrent_readers_share_one_source(remote_checkpoint):
    data, tensors = remote_checkpoint
    far_start = P  # "far" reaches past the first read: each get_tensor is one request
    with HostileServer(VirtualFile(data)) as server:
        source = _remote.open_url(server.url)
        with safetensors_c.safe_open(source, framework="np") as f:
            errors = []

            def work():
                try:
                    for _ in range(5):
                        np.testing.assert_array_equal(f.get_tensor("far"), tensors["far"])
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not [t for t in threads if t.is_alive()], "a reader did not finish in 60 s"
        ranges = [r for _, _, r in server.requests]
    assert not errors, errors
    # One source for all: one open (the first read), then one request per read, all
    # through that source; nothing opened again per thread.
    assert ranges[0] == f"bytes=0-{P - 1}"
    assert ranges.count(f"bytes=0-{P - 1}") == 1
    assert len(ranges) == 1 + 4 * 5
    assert all(r.startswith(f"bytes={far_start}-") for r in ranges[1:]), ranges
    assert source.requests == len(ranges)


# ---------------------------------------------------------------------------
# MARK: read planning


def test_plan_coalesces_near_runs_and_splits_long_ones():
    spans, parts = _remote.plan_reads(
        [(0, 10), (20, 10), (10_000, 5), (5, 3)], coalesce_gap=100, block_size=4096
    )
    assert spans == [(0, 30), (10_000, 10_005)]
    assert parts == spans
    spans, parts = _remote.plan_reads([(0, 10_000)], block_size=4096)
    assert spans == [(0, 10_000)]
    assert parts == [(0, 4096), (4096, 8192), (8192, 10_000)]


def test_plan_bounds_the_number_of_requests():
    runs = [(i * 1000, 10) for i in range(1000)]
    spans, _ = _remote.plan_reads(runs, coalesce_gap=0, max_requests=10, block_size=1 << 30)
    assert len(spans) == 10
    assert spans[0][0] == 0 and spans[-1][1] == 999 * 1000 + 10
    assert _remote.plan_reads([(5, 0)]) == ([], [])


def test_read_ranges_returns_each_range(remote_checkpoint):
    data, _ = remote_checkpoint
    with HostileServer(VirtualFile(data)) as server:
        source = _remote.open_url(server.url, block_size=4096, max_concurrency=3)
        asks = [(len(data) - 10, 10), (P - 5, 10), (0, 8), (300_000, 50_000), (300_010, 7), (9, 0)]
        got = source.read_ranges(asks)
        assert [bytes(g) for g in got] == [data[o:o + n] for o, n in asks]
        with pytest.raises(ValueError, match="outside the file"):
            source.read_at(len(data) - 1, 2)
        source.close()


def test_is_url():
    assert _remote.is_url("https://host/x.safetensors")
    assert _remote.is_url("s3://bucket/x")
    assert _remote.is_url("simplecache::s3://bucket/x")
    assert not _remote.is_url("/tmp/x.safetensors")
    assert not _remote.is_url("C:\\models\\x.safetensors")
    assert not _remote.is_url(b"https://x")


def test_messages_hide_credentials_and_query():
    assert (
        _remote.display_url("https://user:secret@host:8443/a/b.safetensors?X-Sig=123")
        == "https://host:8443/a/b.safetensors?..."
    )
