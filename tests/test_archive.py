"""_archive: regular files only, zip members checked and read within declared sizes,
tar as torch reads it, the pickle opcode walk."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass

import pytest

from safetensors_c._archive import (
    ArchiveError,
    NotRegularFileError,
    Source,
    ZipArchive,
    is_tar,
    open_regular,
    walk_pickle,
)
from safetensors_c._pickle_vm import ConversionError


# MARK: a zip writer that can lie ----------------------------------------------------------


@dataclass
class Entry:
    name: str
    data: bytes  # the bytes stored (compressed already when method is 8)
    size: int  # the uncompressed size declared
    crc: int
    method: int = 0
    flags: int = 0
    local_name: str | None = None  # a different name in the local header


def entry(name: str, body: bytes, method: int = 0, **kwargs) -> Entry:
    data = body
    if method == 8:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = c.compress(body) + c.flush()
    return Entry(name, data, kwargs.pop("size", len(body)), kwargs.pop("crc", zlib.crc32(body)),
                 method, **kwargs)


def make_zip(entries: list[Entry], prefix: bytes = b"", offsets: list[int] | None = None) -> bytes:
    """Local headers, data, central directory and end record; ``offsets`` overrides
    where each directory entry says its local header is (overlapping members)."""
    out = bytearray(prefix)
    locals_at = []
    written: dict[int, int] = {}
    for e in entries:
        if id(e) in written:  # the same entry listed again: one local header, many entries
            locals_at.append(written[id(e)])
            continue
        written[id(e)] = len(out)
        locals_at.append(len(out))
        raw = (e.local_name or e.name).encode()
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, e.flags, e.method, 0, 0, e.crc,
                           len(e.data), e.size, len(raw), 0) + raw + e.data
    directory_at = len(out)
    for i, e in enumerate(entries):
        raw = e.name.encode()
        at = (offsets[i] if offsets else locals_at[i]) - len(prefix)
        out += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, e.flags, e.method, 0,
                           0, e.crc, len(e.data), e.size, len(raw), 0, 0, 0, 0, 0,
                           at + len(prefix)) + raw
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                       len(out) - directory_at, directory_at, 0)
    return bytes(out)


def deflated_zeros(n: int) -> bytes:
    """n zero bytes as a raw deflate stream, built from one repeated block (fast)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)  # independent of the rest
    tail = c.compress(bytes(n & ((1 << 20) - 1))) + c.flush()
    return block * (n >> 20) + tail


def zeros_crc(n: int) -> int:
    crc = 0
    chunk = bytes(1 << 20)
    for _ in range(n >> 20):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(bytes(n & ((1 << 20) - 1)), crc)


# MARK: regular files only ------------------------------------------------------------------


def _no_block(func, *args):
    """Runs func in a thread; fails instead of hanging when it blocks."""
    result = {}

    def run():
        try:
            result["value"] = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"{func.__name__} blocked"
    return result


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    result = _no_block(Source, str(fifo))
    assert isinstance(result.get("error"), NotRegularFileError)
    assert "a FIFO (named pipe), not a regular file" in str(result["error"])


def test_devices_directories_and_sockets_are_refused(tmp_path):
    with pytest.raises(NotRegularFileError, match="a character device, not a regular file"):
        Source("/dev/zero")
    with pytest.raises(NotRegularFileError, match="a directory, not a regular file"):
        Source(str(tmp_path))
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        with pytest.raises(NotRegularFileError, match="a socket, not a regular file"):
            Source(str(path))
    finally:
        server.close()


def test_symlink_to_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "model.bin"
    link.symlink_to(fifo)
    result = _no_block(open_regular, str(link))
    assert isinstance(result.get("error"), NotRegularFileError)


def test_missing_file_keeps_its_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Source(str(tmp_path / "absent"))


def test_not_regular_is_a_conversion_error():
    assert issubclass(NotRegularFileError, ConversionError)
    assert issubclass(ArchiveError, ConversionError)


# MARK: zip -----------------------------------------------------------------------------


def test_stored_members_are_views_of_the_mapping(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(make_zip([entry("a/data/0", b"x" * 1000)]))
    with Source(str(path)) as source:
        archive = ZipArchive(source.view, "a.zip")
        data = archive.read(archive.members[0])
        assert isinstance(data, memoryview) and data.obj is source.mapping
        assert bytes(data) == b"x" * 1000
        del data


def test_deflated_member_read_and_crc_checked():
    body = os.urandom(5000)
    archive = ZipArchive(make_zip([entry("m", body, 8)]), "t.zip")
    assert bytes(archive.read(archive.members[0])) == body
    bad = ZipArchive(make_zip([entry("m", body, 8, crc=1)]), "t.zip")
    with pytest.raises(ArchiveError, match="member 'm': CRC mismatch"):
        bad.read(bad.members[0])
    stored = ZipArchive(make_zip([entry("m", body, crc=1)]), "t.zip")
    with pytest.raises(ArchiveError, match="CRC mismatch"):
        stored.read(stored.members[0])


def test_encrypted_and_unsupported_members():
    archive = ZipArchive(make_zip([entry("m", b"abc", flags=1)]), "t.zip")
    with pytest.raises(ArchiveError, match="member 'm' is encrypted"):
        archive.read(archive.members[0])
    archive = ZipArchive(make_zip([entry("m", b"abc", method=12)]), "t.zip")
    with pytest.raises(ArchiveError, match="compressed with bzip2, which is not supported"):
        archive.read(archive.members[0])


def test_inflation_stops_at_the_declared_size():
    n = 64 << 20
    lying = Entry("m", deflated_zeros(n), 16, zeros_crc(16), 8)
    archive = ZipArchive(make_zip([lying]), "t.zip")
    with pytest.raises(ArchiveError, match="inflates past its declared 16 bytes"):
        archive.read(archive.members[0])


def test_limit_refuses_before_reading():
    n = 64 << 20
    honest = Entry("m", deflated_zeros(n), n, zeros_crc(n), 8)
    archive = ZipArchive(make_zip([honest]), "t.zip")
    with pytest.raises(ArchiveError, match=f"declares {n} bytes, more than the 16 expected"):
        archive.read(archive.members[0], 16)


def test_impossible_ratio_is_refused():
    forged = Entry("m", b"\x03\x00", 0xFFFFFFF0, 0, 8)
    archive = ZipArchive(make_zip([forged]), "t.zip")
    with pytest.raises(ArchiveError, match="more than deflate can"):
        archive.read(archive.members[0])


def test_structure_problems_are_collected():
    a, b = entry("a", b"A" * 100), entry("b", b"B" * 100)
    # two directory entries for one local header: the same bytes counted twice
    overlapping = ZipArchive(make_zip([a, a], offsets=[0, 0]), "t.zip")
    assert any("overlaps" in message for _, message in overlapping.problems)
    with pytest.raises(ArchiveError, match="overlaps"):
        overlapping.check()
    renamed = ZipArchive(make_zip([entry("a/data.pkl", b"x", local_name="a/other.pkl")]),
                         "t.zip")
    assert "local header names it b'a/other.pkl'" in renamed.problems[0][1]
    prefixed = ZipArchive(make_zip([a], prefix=b"\x80\x02K\x01."), "t.zip")
    assert any("bytes before the first zip member" in m for _, m in prefixed.problems)


def test_hidden_bytes_around_the_members():
    a = entry("a", b"A" * 100)
    data = make_zip([a])
    directory = data.index(b"PK\x01\x02")
    # bytes slipped between the last member and the directory (offsets fixed up)
    hidden = data[:directory] + b"\x80\x02K\x01." + data[directory:-6] + struct.pack(
        "<I", directory + 5) + data[-2:]
    archive = ZipArchive(hidden, "t.zip")
    assert any("between the last member and the central directory" in m
               for _, m in archive.problems)
    appended = ZipArchive(data + b"\x80\x02K\x01.", "t.zip")
    assert any("5 bytes after the end of the zip archive" in m for _, m in appended.problems)
    assert ZipArchive(data, "t.zip").problems == []


def test_names_are_found_ignoring_case():
    archive = ZipArchive(make_zip([entry("a/DATA.PKL", b"x")]), "t.zip")
    assert [m.name for m in archive.find("a/data.pkl")] == ["a/DATA.PKL"]
    twice = ZipArchive(make_zip([entry("a/data.pkl", b"x"), entry("a/Data.pkl", b"y")]),
                       "t.zip")
    with pytest.raises(ArchiveError, match="2 members are named 'a/data.pkl' when case is "
                                           "ignored"):
        twice.find_one("a/data.pkl")


def test_garbage_is_an_archive_error():
    for junk in (b"PK\x03\x04" + b"\x00" * 40, b"PK\x05\x06", os.urandom(100)):
        with pytest.raises(ArchiveError, match="not a readable zip archive"):
            ZipArchive(junk, "t.zip")


# MARK: tar and the opcode walk ---------------------------------------------------------


def test_tar_detection():
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert is_tar(buf.getvalue())
    assert not is_tar(pickle.dumps(list(range(1000))))
    assert not is_tar(b"x" * 511)


def test_walk_finds_code_and_stops_where_unpickling_stops():
    assert walk_pickle(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=4)).code_at == -1
    evil = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."
    walk = walk_pickle(evil)
    assert walk.status == "stop" and walk.code_at == 2
    # REDUCE with nothing to call fails before calling
    assert walk_pickle(b"(R").code_at == -1 and walk_pickle(b"(R").reason == "stack underflow"
    assert walk_pickle(b"\x00").reason == "unknown opcode 0x00"
    assert walk_pickle(b"\x80\x06").reason == "protocol 6"
    assert walk_pickle(b"Pabc\n.").reason == "persistent id without persistent_load"
    assert walk_pickle(b"Pabc\n.", persistent=True).status == "stop"
    # a text argument of any length, as the C unpickler reads it
    long = b"S'" + b"a" * 100000 + b"'\n0" + evil[2:]
    assert walk_pickle(long).code_at > 100000


def test_walk_matches_the_real_unpickler_on_random_inputs():
    """Wherever the walk says the data fails before any import or call, the real
    unpickler fails too (on inputs without globals, so running them is harmless)."""
    import random

    rng = random.Random(0)
    alphabet = b"()0123NKJMUXBC]}\x85\x86\x87tael.sdu\x88\x89\x80\x02\x04\x94q"
    checked = 0
    for _ in range(3000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 24)))
        walk = walk_pickle(data)
        if walk.code_at >= 0:
            continue
        try:
            pickle.loads(data)
            real = "stop"
        except Exception:  # noqa: BLE001 - any failure of the real unpickler
            real = "fail"
        if walk.status == "fail":
            # the walk may be more permissive (it says "stop" where the real one fails),
            # never less
            assert real == "fail", data
        checked += 1
    assert checked > 1000


def test_convert_refuses_fifos_and_devices_without_blocking(tmp_path):
    from safetensors_c.convert import convert

    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    result = _no_block(convert, str(fifo), str(tmp_path / "out.safetensors"))
    assert isinstance(result.get("error"), NotRegularFileError), result
    with pytest.raises(NotRegularFileError, match="/dev/zero: a character device"):
        convert("/dev/zero", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_sharded_index_fifo_is_refused(tmp_path):
    from safetensors_c.convert import _read_bin_index

    index = tmp_path / "pytorch_model.bin.index.json"
    os.mkfifo(index)
    result = _no_block(_read_bin_index, str(index))
    assert isinstance(result.get("error"), ConversionError), result


def test_source_of_an_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with Source(str(path)) as source:
        assert source.size == 0 and len(source.view) == 0


def test_scan_of_a_fifo_in_a_subprocess_does_not_hang(tmp_path):
    fifo = tmp_path / "f.pt"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "safetensors_c", "scan", str(fifo)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2  # a file scan cannot read
    assert "a FIFO (named pipe), not a regular file" in result.stderr


def test_stored_torch_zip_converts_zero_copy(tmp_path):
    """The arrays convert reads from a stored torch zip view the file's mapping."""
    import mmap

    import numpy as np

    torch = pytest.importorskip("torch")
    from safetensors_c.convert import read_checkpoint

    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    kind, tensors, *_ = read_checkpoint(path)
    obj = tensors["w"]
    while isinstance(obj, np.ndarray) or type(obj).__name__ == "DummyArray":
        obj = obj.base
    assert kind == "pytorch zip"
    assert isinstance(obj, memoryview) and isinstance(obj.obj, mmap.mmap)
    assert tensors["w"].tolist() == list(range(1000))
