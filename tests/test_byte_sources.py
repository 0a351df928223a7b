"""Byte sources share one first-read size and one value of remote options:
the reader's speculative first read is the remote prefetch (a header that
fits costs one read whatever the source), and the remote options are one
frozen, checked RemoteOptions that every source keeps."""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from safetensors_c import _remote
from safetensors_c._reader import SourceReader, open_source

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from remote_servers.hostile import HostileServer, VirtualFile  # noqa: E402

FAST = {"timeout": 5.0}


def _file_with_header(header_bytes: int) -> bytes:
    """A valid file whose header is exactly ``header_bytes`` long (padded
    with spaces) and whose one tensor follows it."""
    header = json.dumps({"t": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}})
    assert len(header) <= header_bytes
    header = header + " " * (header_bytes - len(header))
    return struct.pack("<Q", header_bytes) + header.encode() + bytes(range(16))


class CountingSource:
    """A byte source that records every read it is asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.name = "<counting>"
        self.reads: list = []

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset:offset + length]


def test_one_first_read_size():
    assert _remote.RemoteOptions().prefetch == _remote.DEFAULT_PREFETCH


@pytest.mark.parametrize("extra, reads", [(0, 1), (1, 2)])
def test_a_header_that_fits_the_first_read_costs_one_read(extra, reads):
    """The reader asks a plain byte source for the prefetch size first: a
    header filling it exactly is one read, one byte more is two."""
    header = _remote.DEFAULT_PREFETCH - 8 + extra
    source = CountingSource(_file_with_header(header))
    reader = SourceReader(source)
    assert source.reads[0] == (0, _remote.DEFAULT_PREFETCH)
    assert len(source.reads) == reads
    assert reader.keys() == ["t"]
    assert reader.tensor("t").tolist() == list(range(16))


@pytest.mark.parametrize("extra, requests", [(0, 1), (1, 2)])
def test_a_remote_header_that_fits_the_prefetch_costs_one_request(extra, requests):
    """The same file over HTTP: the source's prefetch and the reader's first
    read are the same size, so opening never asks for the start twice."""
    data = _file_with_header(_remote.DEFAULT_PREFETCH - 8 + extra)
    with HostileServer(VirtualFile(data)) as server:
        reader = open_source(server.url, storage_options=FAST)
        assert len(server.requests) == requests, server.requests
        assert reader.keys() == ["t"]


def test_remote_options_are_one_frozen_checked_value():
    options = _remote.RemoteOptions(max_concurrency=2, prefetch=4096)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.prefetch = 1 << 40  # type: ignore[misc]
    assert options == _remote.RemoteOptions(2, _remote.DEFAULT_BLOCK_SIZE, 4096)


@pytest.mark.parametrize("field, value, kind, message", [
    ("block_size", 1 << 40, ValueError, r"block_size must be between 4096 and 1073741824"),
    ("block_size", 4095, ValueError, r"block_size must be between 4096 and 1073741824"),
    ("prefetch", 7, ValueError, r"prefetch must be between 8 and 1073741824"),
    ("coalesce_gap", -1, ValueError, r"coalesce_gap must be between 0 and 1073741824"),
    ("max_concurrency", 65, ValueError, r"max_concurrency must be between 1 and 64"),
    ("max_concurrency", 0, ValueError, r"max_concurrency must be between 1 and 64"),
    ("prefetch", True, TypeError, r"prefetch must be an int, not bool"),
    ("block_size", 4096.0, TypeError, r"block_size must be an int, not float"),
    ("coalesce_gap", "64", TypeError, r"coalesce_gap must be an int, not str"),
])
def test_remote_options_refuse_what_open_url_refuses(field, value, kind, message):
    with pytest.raises(kind, match=message):
        _remote.RemoteOptions(**{field: value})
    with pytest.raises(kind, match=message):
        _remote.open_url("http://127.0.0.1:9/x.safetensors", **{field: value})


def test_sources_keep_the_options_they_were_given():
    data = _file_with_header(64)
    with HostileServer(VirtualFile(data)) as server:
        source = _remote.open_url(server.url, FAST, max_concurrency=3, prefetch=4096,
                                  block_size=8192, coalesce_gap=0)
        try:
            assert source.options == _remote.RemoteOptions(3, 8192, 4096, 0)
            assert (source.max_concurrency, source.block_size, source.prefetch,
                    source.coalesce_gap) == (3, 8192, 4096, 0)
            # the prefetch asked for is what was read first
            assert server.requests == [("GET", "/model.safetensors", "bytes=0-4095")]
        finally:
            source.close()


def test_a_source_refuses_options_that_are_not_remote_options():
    with pytest.raises(TypeError, match="options must be a RemoteOptions, not dict"):
        _remote.HTTPSource("http://127.0.0.1:9/x", None, {"prefetch": 8})


def test_fsspec_sources_take_the_same_options():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    data = _file_with_header(_remote.DEFAULT_PREFETCH - 8)
    fs.pipe("/byte-sources/one.safetensors", data)
    with fs.open("/byte-sources/one.safetensors", "rb") as f:
        source = _remote.open_fsspec_file(f, _remote.RemoteOptions(prefetch=4096))
        assert source.prefetch == 4096
        assert np.asarray(SourceReader(source).tensor("t")).tolist() == list(range(16))
    source = _remote.open_url("memory:///byte-sources/one.safetensors")
    assert source.options == _remote.RemoteOptions()
    assert source.requests == 1  # the whole header came with the first read
