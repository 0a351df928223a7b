"""Opening untrusted checkpoint files and reading their archives by content.

Used by :mod:`safetensors_c.scan` and :mod:`safetensors_c.convert`. Nothing
here trusts a name or a size written in the file:

- :func:`open_regular` opens without blocking and checks, on the opened
  descriptor, that it is a regular file (a FIFO, a device or a socket is
  refused before anything is read); :class:`Source` maps that descriptor.
- :class:`ZipArchive` lists the members of a zip from its central directory,
  checks every local header against it (same name, inside the file, before
  the directory, no two members overlapping) and reads a member streaming,
  never past the size declared for it (by the caller, from what the
  checkpoint declares, and by the directory), checking the CRC. Stored
  members are views of the mapping (zero-copy).
- :class:`TarArchive` lists a tar the way ``tarfile.open(mode="r:")`` (the
  legacy torch loader) reads it; member data are views of the mapping.
- :func:`npy_header` parses a ``.npy`` header within a bounded prefix.
- :func:`walk_pickle` walks a pickle's opcodes the way the real unpickler
  parses them (argument lengths, stack and MARK discipline) without building
  anything, and says whether any opcode that imports or calls would run.

Every malformed input raises :class:`ArchiveError` (a ``ConversionError``)
naming the file and the member.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import pickletools
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from ._pickle_vm import ConversionError

__all__ = [
    "ArchiveError",
    "NotRegularFileError",
    "Source",
    "TarArchive",
    "ZipArchive",
    "ZipMember",
    "is_tar",
    "is_zip_start",
    "npy_header",
    "open_regular",
    "walk_pickle",
]

#: deflate cannot expand data by more than about 1032:1; anything claiming more is forged
MAX_DEFLATE_RATIO = 1100
_CHUNK = 1 << 20
ZIP_LOCAL = b"PK\x03\x04"
ZIP_EMPTY = b"PK\x05\x06"
NPY_MAGIC = b"\x93NUMPY"


class ArchiveError(ConversionError):
    """A malformed, unsupported or hostile archive; ``member`` names the member if any."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class NotRegularFileError(ConversionError):
    """The path names a FIFO, a device, a socket or a directory, not a regular file."""


# MARK: opening -------------------------------------------------------------------


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Opens ``path`` read-only without blocking; refuses anything but a regular file.

    The check is made with ``fstat`` on the descriptor that was opened, so the
    object checked is the object read. Returns ``(fd, stat)``; the caller
    closes ``fd``. Open failures raise the usual ``OSError`` subclass.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # what opening a socket gives
            raise NotRegularFileError(f"{path}: a socket, not a regular file; refusing to "
                                      f"read it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(
                f"{path}: {_file_kind(info.st_mode)}, not a regular file; refusing to read it"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


class Source:
    """A regular file opened by :func:`open_regular` and mapped read-only."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd, info = open_regular(path)
        try:
            self.size = info.st_size
            self.mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.size else None
        finally:
            os.close(fd)
        self.view = memoryview(self.mapping) if self.mapping is not None else memoryview(b"")

    def close(self) -> None:
        try:
            self.view.release()
        except BufferError:
            pass
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:  # arrays still view it; the mapping goes with them
                pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ViewFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview (no copy of the data)."""

    def __init__(self, view: Any) -> None:
        super().__init__()
        self._view = memoryview(view).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view),
                                                                    self._pos + size)
        data = bytes(self._view[self._pos : end]) if end > self._pos else b""
        self._pos = max(self._pos, end)
        return data


# MARK: zip -------------------------------------------------------------------------

_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
               struct.error, NotImplementedError, OverflowError, UnicodeError, KeyError,
               IndexError)


def is_zip_start(head: bytes) -> bool:
    return head[:4] in (ZIP_LOCAL, ZIP_EMPTY)


@dataclass
class ZipMember:
    name: str
    method: int
    flags: int
    crc: int
    csize: int  # compressed size, from the central directory
    size: int  # uncompressed size, from the central directory
    header_offset: int
    data_offset: int

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)


_METHODS = {0: "stored", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd",
            95: "xz", 99: "AES encryption"}


class ZipArchive:
    """A zip's members as its central directory lists them, each checked against its
    local header. Structural problems of single members are collected in
    :attr:`problems` ((member, message) pairs) rather than raised, so a scan can
    report all of them; :meth:`check` raises the first."""

    def __init__(self, view: Any, label: str) -> None:
        self.view = memoryview(view).cast("B")
        self.label = label
        self.problems: list[tuple[str | None, str]] = []
        try:
            zf = zipfile.ZipFile(ViewFile(self.view))
            infos = zf.infolist()
            self.directory_start = int(getattr(zf, "start_dir", len(self.view)))
        except _ZIP_ERRORS as exc:
            raise ArchiveError(f"{label}: not a readable zip archive ({exc})") from None
        self.members: list[ZipMember] = []
        ranges = []
        for info in infos:
            try:
                member, end = self._locate(info)
            except ArchiveError as exc:
                self.problems.append((info.filename, str(exc)))
                continue
            self.members.append(member)
            ranges.append((member.header_offset, end, member))
        ranges.sort(key=lambda r: r[0])
        self.prefix = ranges[0][0] if ranges else 0
        cursor = self.prefix
        previous: ZipMember | None = None
        #: ids of members whose bytes another member already covers (not worth reading)
        self.overlapping: set[int] = set()
        for start, end, member in ranges:
            if start < cursor:
                self.overlapping.add(id(member))
                self.problems.append(
                    (member.name, f"{label}: member {member.name!r} overlaps the member before "
                     f"it (a crafted archive or a zip bomb)"))
            elif start > cursor and not self._descriptor_gap(previous, cursor, start):
                self.problems.append(
                    (member.name, f"{label}: {start - cursor} bytes before member "
                     f"{member.name!r} belong to no member (hidden data?)"))
            cursor = max(cursor, end)
            previous = member
        if (ranges and cursor < self.directory_start
                and not self._descriptor_gap(previous, cursor, self.directory_start)):
            self.problems.append(
                (None, f"{label}: {self.directory_start - cursor} bytes between the last member "
                 f"and the central directory belong to no member (hidden data?)"))
        self._check_end()
        if self.prefix:
            self.problems.append(
                (None, f"{label}: {self.prefix} bytes before the first zip member (another "
                 f"format in front of the archive: a polyglot?)"))

    def _check_end(self) -> None:
        """The end record (and its comment) must close the file: bytes after it are
        another format's (a polyglot)."""
        tail_start = max(0, len(self.view) - 65557)
        tail = bytes(self.view[tail_start:])
        at = tail.rfind(ZIP_EMPTY)
        if at < 0 or at + 22 > len(tail):
            return
        (comment_len,) = struct.unpack("<H", tail[at + 20 : at + 22])
        end = tail_start + at + 22 + comment_len
        if end != len(self.view):
            self.problems.append(
                (None, f"{self.label}: {len(self.view) - end} bytes after the end of the zip "
                 f"archive (another format appended: a polyglot?)"))

    def _descriptor_gap(self, member: ZipMember | None, begin: int, end: int) -> bool:
        # a data descriptor after a member that announces one (flag bit 3): its CRC and
        # sizes, optionally signed, 32- or 64-bit: 12, 16, 20 or 24 bytes
        if member is None or not member.flags & 0x8 or end - begin not in (12, 16, 20, 24):
            return False
        block = bytes(self.view[begin:end])
        if block[:4] == b"PK\x07\x08":
            block = block[4:]
        return struct.unpack("<I", block[:4])[0] == member.crc

    def _locate(self, info: zipfile.ZipInfo) -> tuple[ZipMember, int]:
        label, name = self.label, info.filename
        start = info.header_offset
        view = self.view
        if start < 0 or start + 30 > len(view):
            raise ArchiveError(f"{label}: member {name!r}: local header outside the file", name)
        if bytes(view[start : start + 4]) != ZIP_LOCAL:
            raise ArchiveError(f"{label}: member {name!r}: bad local header signature", name)
        name_len, extra_len = struct.unpack("<HH", view[start + 26 : start + 30])
        raw_name = bytes(view[start + 30 : start + 30 + name_len])
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        try:
            expected = info.orig_filename.encode(encoding)
        except UnicodeError:
            expected = None
        if raw_name != expected:
            raise ArchiveError(
                f"{label}: member {name!r}: the local header names it {raw_name!r:.80} (a "
                f"name trick: readers disagree on what this member is)", name)
        begin = start + 30 + name_len + extra_len
        end = begin + info.compress_size
        if end > min(len(view), self.directory_start):
            raise ArchiveError(f"{label}: member {name!r} runs past its data (into the "
                               f"directory or past the end of the file)", name)
        member = ZipMember(name, info.compress_type, info.flag_bits, info.CRC,
                           info.compress_size, info.file_size, start, begin)
        return member, end

    def check(self) -> None:
        if self.problems:
            member, message = self.problems[0]
            raise ArchiveError(message, member)

    def find(self, name: str) -> list[ZipMember]:
        """Members whose name equals ``name`` ignoring case (how PyTorch's reader looks)."""
        key = name.casefold()
        return [m for m in self.members if m.name.casefold() == key]

    def find_one(self, name: str) -> ZipMember | None:
        found = self.find(name)
        if len(found) > 1:
            raise ArchiveError(
                f"{self.label}: {len(found)} members are named {name!r} when case is ignored "
                f"({', '.join(repr(m.name) for m in found[:4])}); loaders may pick any of "
                f"them", name)
        return found[0] if found else None

    def _readable(self, m: ZipMember, limit: int | None) -> None:
        label = f"{self.label}: member {m.name!r}"
        if m.encrypted:
            raise ArchiveError(f"{label} is encrypted; it cannot be analysed", m.name)
        if m.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            method = _METHODS.get(m.method, f"method {m.method}")
            raise ArchiveError(f"{label} is compressed with {method}, which is not supported "
                               f"(only stored and deflate)", m.name)
        if limit is not None and m.size > limit:
            raise ArchiveError(f"{label} declares {m.size} bytes, more than the {limit} "
                               f"expected; refused before reading it", m.name)
        if m.method == zipfile.ZIP_STORED and m.csize != m.size:
            raise ArchiveError(f"{label}: stored with {m.csize} bytes but declares {m.size}",
                               m.name)
        if m.method == zipfile.ZIP_DEFLATED and m.size > MAX_DEFLATE_RATIO * m.csize + 1024:
            raise ArchiveError(f"{label} claims to inflate {m.csize} bytes into {m.size}, "
                               f"more than deflate can; refused", m.name)

    def read(self, m: ZipMember, limit: int | None = None, *, keep: bool = True,
             crc: bool = True) -> Any:
        """The member's bytes: a view of the mapping when stored, else inflated
        streaming, never past ``min(limit, declared size)`` (+1 byte to notice
        more). The CRC is checked unless ``crc`` is false (stored raw data that
        is not interpreted). With ``keep=False`` only checks, returns None."""
        self._readable(m, limit)
        label = f"{self.label}: member {m.name!r}"
        raw = self.view[m.data_offset : m.data_offset + m.csize]
        if m.method == zipfile.ZIP_STORED:
            if crc and _crc32(raw) != m.crc:
                raise ArchiveError(f"{label}: CRC mismatch (a corrupt or altered member)", m.name)
            return raw if keep else None
        inflater = zlib.decompressobj(-15)
        out = bytearray() if keep else None
        produced = 0
        checksum = 0
        pos = 0
        try:
            while True:
                if inflater.unconsumed_tail:
                    chunk = inflater.unconsumed_tail
                elif pos < len(raw):
                    chunk = raw[pos : pos + _CHUNK]
                    pos += len(chunk)
                else:
                    break
                piece = inflater.decompress(chunk, m.size - produced + 1)
                produced += len(piece)
                if produced > m.size:
                    raise ArchiveError(f"{label} inflates past its declared {m.size} bytes; "
                                       f"refused", m.name)
                checksum = zlib.crc32(piece, checksum)
                if out is not None:
                    out += piece
                if inflater.eof:
                    break
            tail = inflater.flush(1)
        except zlib.error as exc:
            raise ArchiveError(f"{label}: corrupt deflate data ({exc})", m.name) from None
        if tail or not inflater.eof or produced != m.size:
            raise ArchiveError(f"{label}: inflates to {produced} bytes, its directory entry "
                               f"declares {m.size}", m.name)
        if checksum != m.crc:
            raise ArchiveError(f"{label}: CRC mismatch (a corrupt or altered member)", m.name)
        return memoryview(out) if out is not None else None

    def head(self, m: ZipMember, n: int) -> bytes:
        """The first ``n`` bytes of a member (inflating no more than needed)."""
        self._readable(m, None)
        raw = self.view[m.data_offset : m.data_offset + m.csize]
        if m.method == zipfile.ZIP_STORED:
            return bytes(raw[:n])
        inflater = zlib.decompressobj(-15)
        try:
            return inflater.decompress(bytes(raw[: min(len(raw), n + 4096)]), n)
        except zlib.error as exc:
            raise ArchiveError(f"{self.label}: member {m.name!r}: corrupt deflate data "
                               f"({exc})", m.name) from None


def _crc32(view: Any) -> int:
    value = 0
    for pos in range(0, len(view), 1 << 24):
        value = zlib.crc32(view[pos : pos + (1 << 24)], value)
    return value


# MARK: tar -------------------------------------------------------------------------


def is_tar(view: Any) -> bool:
    """Whether the first 512 bytes are a tar header with a valid checksum (the test
    ``tarfile`` makes before reading anything else)."""
    if len(view) < 512:
        return False
    block = bytes(view[:512])
    field = block[148:156]
    try:
        text = field.split(b"\0", 1)[0].strip()
        expected = int(text or b"x", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(struct.unpack("148b", block[:148])) + 256 + sum(struct.unpack("356b",
                                                                               block[156:]))
    return expected in (unsigned, signed)


@dataclass
class TarMember:
    name: str
    kind: str  # "file", "directory", "link", "device", "sparse", "other"
    size: int
    data_offset: int
    link: str = ""


class TarArchive:
    """A tar read as ``tarfile.open(fileobj, mode="r:")`` reads it (the legacy torch
    loader's call); member data are views of the buffer."""

    def __init__(self, view: Any, label: str) -> None:
        self.view = memoryview(view).cast("B")
        self.label = label
        try:
            tf = tarfile.open(fileobj=ViewFile(self.view), mode="r:",
                              format=tarfile.PAX_FORMAT)
            infos = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, OverflowError,
                struct.error) as exc:
            raise ArchiveError(f"{label}: not a readable tar archive ({exc})") from None
        self.members: list[TarMember] = []
        for info in infos:
            if info.issparse():
                kind = "sparse"
            elif info.isreg():
                kind = "file"
            elif info.isdir():
                kind = "directory"
            elif info.issym() or info.islnk():
                kind = "link"
            elif info.ischr() or info.isblk() or info.isfifo():
                kind = "device"
            else:
                kind = "other"
            self.members.append(TarMember(info.name, kind, info.size, info.offset_data,
                                          info.linkname))

    def data(self, m: TarMember) -> memoryview:
        end = m.data_offset + m.size
        if m.kind != "file":
            raise ArchiveError(f"{self.label}: member {m.name!r} is a {m.kind}, not a file",
                               m.name)
        if m.data_offset < 0 or end > len(self.view):
            raise ArchiveError(f"{self.label}: member {m.name!r} runs past the end of the "
                               f"archive", m.name)
        return self.view[m.data_offset : end]

    def get(self, name: str) -> TarMember | None:
        """The member ``tarfile.getmember(name)`` returns: the last one of that name."""
        for m in reversed(self.members):
            if m.name.rstrip("/") == name:
                return m
        return None


# MARK: npy -------------------------------------------------------------------------


@dataclass
class NpyHeader:
    shape: tuple
    fortran: bool
    dtype: Any  # np.dtype
    data_offset: int

    @property
    def count(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def npy_header(data: Any, label: str) -> NpyHeader:
    """Parses a .npy header (versions 1, 2 and 3) from at most its first 64 KiB."""
    import numpy as np  # NumPy is a hard dependency; imported here to keep this module light

    view = memoryview(data).cast("B")
    fp = io.BytesIO(bytes(view[: min(len(view), 65536 + 16)]))
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            reader = getattr(np.lib.format, "_read_array_header", None)
            if reader is not None:
                shape, fortran, dtype = reader(fp, version)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ArchiveError(f"{label}: .npy format version {version} is not supported")
    except ArchiveError:
        raise
    except Exception as exc:  # NumPy raises ValueError, SyntaxError, TypeError, ...
        raise ArchiveError(f"{label}: bad .npy header: {exc}") from None
    return NpyHeader(tuple(shape), bool(fortran), dtype, fp.tell())


# MARK: pickle opcode walk ----------------------------------------------------------

# Opcodes that import a module or call something when the real unpickler runs them.
_CODE_OPS = frozenset(("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ",
                       "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"))


def _opcode_table() -> dict[int, tuple]:
    table = {}
    for op in pickletools.opcodes:
        before, after = op.stack_before, op.stack_after
        if pickletools.markobject in before:
            idx = before.index(pickletools.markobject)
            below = idx
            inside = sum(1 for x in before[idx + 1 :] if x is not pickletools.stackslice)
            effect = ("mark", below, inside, len(after))
        elif op.name == "MARK":
            effect = ("push_mark",)
        elif op.name == "POP":
            effect = ("pop",)
        else:
            effect = ("plain", len(before), len(after))
        arg = op.arg.n if op.arg is not None else 0
        pair = op.arg is not None and op.arg.name == "stringnl_noescape_pair"
        signed4 = op.arg is not None and op.arg.name in ("long4", "string4")
        table[ord(op.code.encode("latin-1"))] = (op.name, arg, pair, signed4, effect)
    return table


_OPCODES = _opcode_table()


@dataclass
class Walk:
    """How far the real unpickler would get: ``status`` is "stop" (reached STOP at
    ``end``) or "fail" (it raises at the opcode at ``end``); ``code_at`` is the
    offset of the first opcode that imports or calls, or -1."""

    status: str
    end: int
    code_at: int
    reason: str = ""


def _newline(view: memoryview, pos: int) -> int:
    while pos < len(view):
        chunk = bytes(view[pos : pos + 65536])
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(chunk)
    return -1


def walk_pickle(data: Any, pos: int = 0, *, persistent: bool = False,
                max_ops: int | None = None) -> Walk:
    """Walks opcodes from ``pos`` without building anything.

    Mirrors the checks of CPython's C unpickler that stop it for certain: an
    unknown opcode, an argument past the end, a negative length, a protocol
    above 5, a stack underflow or a missing MARK, a persistent id without
    ``persistent_load`` (``persistent=False``). Anything else it assumes
    succeeds, so the walk never ends earlier than the real unpickler would.
    """
    view = memoryview(data).cast("B")
    end = len(view)
    frames = [0]
    code_at = -1
    ops = 0
    while True:
        if pos >= end:
            return Walk("fail", pos, code_at, "the data ends without STOP")
        offset = pos
        entry = _OPCODES.get(view[pos])
        if entry is None:
            return Walk("fail", offset, code_at, f"unknown opcode 0x{view[pos]:02x}")
        name, arg, pair, signed4, effect = entry
        pos += 1
        ops += 1
        if max_ops is not None and ops > max_ops:
            return Walk("fail", offset, code_at, "too many opcodes")
        # the argument
        if arg > 0:
            if name == "PROTO" and pos < end and view[pos] > 5:
                return Walk("fail", offset, code_at, f"protocol {view[pos]}")
            pos += arg
        elif arg == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if pair else 1):
                nl = _newline(view, pos)
                if nl < 0:
                    return Walk("fail", offset, code_at, "unterminated text argument")
                pos = nl + 1
        elif arg < 0:
            width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                     pickletools.TAKEN_FROM_ARGUMENT4U: 4,
                     pickletools.TAKEN_FROM_ARGUMENT8U: 8}[arg]
            if pos + width > end:
                return Walk("fail", offset, code_at, "truncated length")
            n = int.from_bytes(view[pos : pos + width], "little",
                               signed=signed4 or arg == pickletools.TAKEN_FROM_ARGUMENT4)
            if n < 0:
                return Walk("fail", offset, code_at, "negative length")
            pos += width + n
        if pos > end:
            return Walk("fail", offset, code_at, "truncated argument")
        if name in ("PERSID", "BINPERSID") and not persistent:
            return Walk("fail", offset, code_at, "persistent id without persistent_load")
        # the stack
        kind = effect[0]
        if kind == "push_mark":
            frames.append(0)
        elif kind == "pop":
            if frames[-1] > 0:
                frames[-1] -= 1
            elif len(frames) > 1:
                frames.pop()
            else:
                return Walk("fail", offset, code_at, "stack underflow")
        elif kind == "mark":
            _, below, inside, after = effect
            if len(frames) < 2 or frames[-1] < inside:
                return Walk("fail", offset, code_at, "MARK missing")
            frames.pop()
            if frames[-1] < below:
                return Walk("fail", offset, code_at, "stack underflow")
            frames[-1] += after - below
        else:
            _, before, after = effect
            if frames[-1] < before:
                return Walk("fail", offset, code_at, "stack underflow")
            frames[-1] += after - before
        if name in _CODE_OPS and code_at < 0:
            code_at = offset
        if name == "STOP":
            return Walk("stop", pos, code_at)
