"""What a checkpoint would import and call if loaded, found without running it.

    from safetensors_c.scan import scan

    report = scan("pytorch_model.bin")
    report.verdict    # "safe", "unsafe" or "unknown"
    report.reasons    # why, when it is not "safe"

Verdicts are made by content, never by name: the file's format is recognised
from its bytes (zip, the legacy torch tar and pickle formats, joblib, pickle
protocol markers, NumPy magic, safetensors), and every member of every
archive (nested ones too) is examined by what its bytes are, with names
compared the way the loader that reads them compares them (PyTorch's zip
reader ignores case; ``np.load`` reads any member). A file is also read the
way the other loaders would read it: a safetensors file is read as a pickle,
a zip and a tar too; any reading that could run code makes it "unsafe".

"unknown" means the scanner could not analyse everything a loader would
read (a corrupt, encrypted or unsupported member, a pickle our interpreter
cannot follow to its end, bytes that belong to no part of the format, a
format it does not parse). Treat "unknown" as unsafe: only "safe" is a
promise.

Nothing is executed: pickles run on :mod:`safetensors_c._pickle_vm`, archives
are read by :mod:`safetensors_c._archive`, never past the sizes they
declare, so the scanner's memory and time are bounded in proportion to its
input.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

from . import _core, _display, error_codes
from ._archive import (
    NPY_MAGIC,
    ZIP_EMPTY,
    ArchiveError,
    Source,
    TarArchive,
    ZipArchive,
    ZipMember,
    is_tar,
    is_zip_start,
    npy_header,
    walk_pickle,
)
from ._pickle_vm import ConversionError, Finding, Machine, Opaque, StorageType
from ._terminal import escape_message, escape_name

__all__ = ["ScanReport", "scan", "scan_buffer", "TORCH_LEGACY_MAGIC", "ELEMENT_SIZE"]

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_NESTING = 3  # archives inside archives
#: an inflated member analysed as a pickle is held in memory; larger ones are refused
MAX_PICKLE_MEMBER = 256 << 20
#: deflate inflates at most ~1032:1; nested archives could multiply that, the budget stops it
INFLATE_BUDGET_RATIO = 1100

# reasons a ScanReport's repr shows before "and N more"
_REPR_REASONS = 3

# finding kinds that mean "could not analyse" rather than "would run code"
_UNKNOWN_KINDS = ("error", "unknown")

#: bytes per element of each torch dtype name a storage may have
ELEMENT_SIZE = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
    "int64": 8, "uint64": 8, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
    "complex64": 8, "complex128": 16, "float8_e5m2": 1, "float8_e4m3fn": 1,
    "float8_e8m0fnu": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float4_e2m1fn_x2": 1,
}

_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
               (b"\x28\xb5\x2f\xfd", "zstd"))
_INTERNAL_ERRORS = (ConversionError, ValueError, TypeError, KeyError, IndexError,
                    AttributeError, OverflowError, struct.error, RecursionError, MemoryError,
                    EOFError, UnicodeError, BufferError)


# MARK: the report ------------------------------------------------------------------


@dataclass
class ScanReport:
    """What a file would import and call, and whatever could not be analysed."""

    path: str
    kind: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """"safe", "unsafe" (something would run) or "unknown" (not fully analysable)."""
        bad = [f for f in self.findings if not f.safe]
        if any(f.kind not in _UNKNOWN_KINDS for f in bad):
            return "unsafe"
        return "unknown" if bad else "safe"

    @property
    def safe(self) -> bool:
        return self.verdict == "safe"

    @property
    def reasons(self) -> list[str]:
        """One line per finding that is not safe."""
        out = []
        for f in self.findings:
            if not f.safe:
                where = f"{f.where}: " if f.where and not f.name.startswith(f.where) else ""
                if f.kind in _UNKNOWN_KINDS:
                    out.append(f"{where}{f.name}")
                else:
                    note = f" ({f.note})" if f.note else ""
                    out.append(f"{where}{f.kind} {f.name}{note}")
        return list(dict.fromkeys(out))

    @property
    def globals(self) -> list[str]:
        """Every distinct global, in order of first use."""
        return list(dict.fromkeys(f.name for f in self.findings if f.kind == "global"))

    @property
    def unsafe_globals(self) -> list[str]:
        return list(
            dict.fromkeys(f.name for f in self.findings if f.kind == "global" and not f.safe)
        )

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "findings": [
                {"kind": f.kind, "name": f.name, "where": f.where, "offset": f.offset,
                 "safe": f.safe, "note": f.note}
                for f in self.findings
            ],
        }

    def __str__(self) -> str:
        # Names, member paths and the file's path come from the file (or its
        # name): escaped, so none can add a line or drive the terminal.
        lines = [f"{escape_name(self.path)}: {self.kind}: {self.verdict}"]
        seen = set()
        for f in self.findings:
            key = (f.kind, f.name, f.where, f.safe)
            if f.safe and key in seen:
                continue
            seen.add(key)
            where = f"{escape_name(f.where)} " if f.where else ""
            name = escape_name(f.name)
            if f.safe:
                mark = "ok"
            elif f.kind in _UNKNOWN_KINDS:
                mark = "UNKNOWN"
            else:
                mark = "UNSAFE"
            if f.kind == "unknown":
                lines.append(f"  {mark} {name}  [{where}byte {f.offset}]")
                continue
            note = f" ({escape_message(f.note)})" if f.note else ""
            lines.append(f"  {mark} {f.kind} {name}  [{where}byte {f.offset}]{note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        # The verdict first, as a REPL shows it; path and reasons escaped.
        reasons = self.reasons
        counts = f"{len(self.findings)} finding{'' if len(self.findings) == 1 else 's'}"
        if reasons:
            shown = "; ".join(escape_name(r) for r in reasons[:_REPR_REASONS])
            more = f"; and {len(reasons) - _REPR_REASONS} more" \
                if len(reasons) > _REPR_REASONS else ""
            counts += f", {len(reasons)} not safe: {shown}{more}"
        return f"<ScanReport {self.verdict}: {escape_name(self.path)} ({self.kind}), {counts}>"

    def _repr_html_(self) -> str:
        return _display.scan_report_html(self)


# MARK: the scanner -----------------------------------------------------------------


@dataclass
class _Storage:
    """A storage a pickle declares through a persistent id."""

    key: str
    dtype: str
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * ELEMENT_SIZE[self.dtype]


@dataclass
class _Run:
    value: Any
    end: int
    complete: bool  # the unpickler reaches STOP
    inert: bool  # it imports and calls nothing before it stops or fails
    error: str = ""  # why our interpreter stopped, if it did


def _child(where: str, name: str, depth: int) -> str:
    return name if depth == 0 else f"{where}/{name}"


class _Scan:
    def __init__(self, size: int) -> None:
        self.findings: list[Finding] = []
        self.budget = INFLATE_BUDGET_RATIO * size + (64 << 20)

    def add(self, kind: str, name: str, where: str, offset: int = 0, safe: bool = False,
            note: str = "") -> None:
        self.findings.append(Finding(kind, name, offset, safe, note, where))

    def unknown(self, message: str, where: str, offset: int = 0) -> None:
        self.add("unknown", message, where, offset, False, "not fully analysable")

    # -- pickles -------------------------------------------------------------------

    def pickle(self, data: Any, pos: int, where: str, *, persistent_load=None,
               persistent: bool = False) -> _Run:
        """Runs one pickle from ``pos`` on the scanning interpreter."""
        machine = Machine(data, pos, scan=True, label=where, persistent_load=persistent_load)
        error = None
        value = None
        try:
            value = machine.run()
        except ConversionError as exc:
            error = str(exc)
        except _INTERNAL_ERRORS as exc:
            error = f"{where}: {type(exc).__name__}: {exc}"
        for f in machine.findings:
            f.where = where
        if error is None:
            self.findings.extend(machine.findings)
            return _Run(value, machine.pos, True, False)
        walk = walk_pickle(data, pos, persistent=persistent or persistent_load is not None)
        if walk.code_at < 0:
            # The real unpickler stops (or finishes) before it imports or calls anything.
            return _Run(None, walk.end, walk.status == "stop", True, error)
        self.findings.extend(machine.findings)
        self.unknown(
            f"{error}; a real unpickler would import or call things here (from byte "
            f"{walk.code_at}) that could not be analysed", where, walk.code_at)
        return _Run(None, machine.pos, False, False, error)

    def storage_loader(self, where: str, storages: dict[str, _Storage], legacy: bool):
        def persistent_load(pid: Any) -> Any:
            length = 6 if legacy else 5
            if (not isinstance(pid, tuple) or len(pid) != length or pid[0] != "storage"
                    or not isinstance(pid[1], StorageType) or not isinstance(pid[2], str)
                    or not isinstance(pid[4], int) or isinstance(pid[4], bool) or pid[4] < 0
                    or pid[1].name not in ELEMENT_SIZE):
                self.unknown(f"an unrecognised persistent id {pid!r:.80}", where)
                return Opaque("persistent id")
            if legacy and pid[5] is not None:
                self.unknown("storage views (PyTorch < 0.4) are not analysed", where)
            storage = _Storage(pid[2], pid[1].name, pid[4])
            old = storages.setdefault(storage.key, storage)
            if old != storage:
                self.unknown(f"storage {storage.key!r} is declared twice, differently", where)
            return old

        return persistent_load

    def hidden_pickle(self, data: Any, where: str) -> None:
        """Raw tensor bytes that start like a pickle: reported if they name unsafe globals."""
        machine = Machine(data, 0, scan=True, label=where)
        try:
            machine.run()
        except _INTERNAL_ERRORS:
            pass
        bad = [f for f in machine.findings if f.kind == "global" and not f.safe]
        for f in bad:
            f.where = where
            f.note = "a pickle hidden in raw tensor data"
        self.findings.extend(bad)

    # -- whole files ---------------------------------------------------------------

    def file(self, view: memoryview, where: str) -> str:
        if not len(view):
            self.unknown("the file is empty", where)
            return "empty"
        head = bytes(view[:16])
        if is_zip_start(head):
            return self.zip(view, where, 0)
        status, message = _safetensors_status(view)
        kind: str | None = None
        if is_tar(view):
            kind = self.tar(view, where, 0)  # torch.load tries tar first on a non-zip file
        elif head.startswith(NPY_MAGIC):
            self.npy(view, where)
            return "npy"
        elif status == "ok":
            kind = "safetensors"
        elif status == "trailing":
            kind = "safetensors"
            self.unknown(f"{message}: the bytes after the data could be another format "
                         f"(a polyglot)", where)
        else:
            for magic, name in _COMPRESSED:
                if head.startswith(magic):
                    self.unknown(f"a {name}-compressed file: decompress it and scan the "
                                 f"result", where)
                    return name
        pickled = self.top_pickle(view, where, primary=kind is None)
        if kind is None:
            if pickled is None and _is_pickle_marker(head):
                self.unknown("a malformed pickle (the unpickler fails before it imports or "
                             "calls anything)", where)
                kind = "pickle"
            elif pickled is None:
                self.unknown("not a format this scanner analyses (not a pickle, zip, tar, "
                             ".npy or .safetensors file)", where)
                kind = "unrecognised format"
            if pickled is not None:
                kind = pickled
        self.embedded_zip(view, where)
        return kind

    def top_pickle(self, view: memoryview, where: str, primary: bool) -> str | None:
        """The file read by pickle.load, np.load(allow_pickle=True) or torch's legacy
        loader. Returns the kind, or None when no pickle reading gets anywhere."""
        run = self.pickle(view, 0, where)
        if run.inert and not run.complete:
            return None
        if not primary:
            if run.complete:
                self.add("polyglot", "the file is also a complete pickle", where, 0, False,
                         "pickle.load or torch.load(weights_only=False) would read it as one")
            return "pickle"
        if not run.complete:
            return "pickle"
        if run.error:
            # the real unpickler would import and call nothing, but our interpreter could
            # not follow the data to its end: what it would build is not known
            self.unknown(f"{run.error} (nothing is imported or called up to there)", where)
            return "pickle"
        if type(run.value) is int and run.value == TORCH_LEGACY_MAGIC:
            self.torch_legacy(view, run.end, where)
            return "pytorch legacy"
        kind = "pickle"
        if any(f.kind == "global" and f.name.startswith("joblib.") for f in self.findings):
            kind = "joblib"
        pos = run.end
        while pos < len(view):
            if view[pos] != 0x80:
                self.unknown(f"{len(view) - pos} bytes after the pickle's STOP (another format "
                             f"appended: a polyglot?)", where, pos)
                break
            label = f"{where} (pickle at byte {pos})"
            self.add("opcode", "trailing pickle", label, pos, True,
                     "another pickle after STOP (pickle.load stops at STOP)")
            run = self.pickle(view, pos, label)
            if not run.complete:
                break
            pos = run.end
        return kind

    def torch_legacy(self, view: memoryview, pos: int, where: str) -> None:
        """The rest of torch's legacy format: protocol, system info, main pickle, storage
        keys, then each storage's element count and raw bytes up to the end."""
        labels = ("protocol version", "system info")
        for label in labels:
            run = self.pickle(view, pos, f"{where} ({label})")
            if not run.complete:
                self.unknown(f"the legacy checkpoint's {label} pickle is malformed", where, pos)
                return
            pos = run.end
        storages: dict[str, _Storage] = {}
        main = f"{where} (main pickle)"
        run = self.pickle(view, pos, main, persistent_load=self.storage_loader(main, storages,
                                                                              True))
        if not run.complete:
            self.unknown("the legacy checkpoint's main pickle is malformed", where, pos)
            return
        keys = self.pickle(view, run.end, f"{where} (storage keys)")
        if not keys.complete or not isinstance(keys.value, list) or not all(
                isinstance(k, str) for k in keys.value):
            self.unknown("the legacy checkpoint's storage key list is malformed", where,
                         run.end)
            return
        pos = keys.end
        for key in keys.value:
            storage = storages.get(key)
            if storage is None:
                self.unknown(f"storage {key!r} is not declared by the main pickle", where, pos)
                return
            if pos + 8 > len(view):
                self.unknown(f"storage {key!r} is cut short", where, pos)
                return
            (numel,) = struct.unpack("<q", view[pos : pos + 8])
            if numel != storage.numel:
                self.unknown(f"storage {key!r} holds {numel} elements, the main pickle "
                             f"declares {storage.numel}", where, pos)
                return
            pos += 8 + storage.nbytes
            if pos > len(view):
                self.unknown(f"storage {key!r} runs past the end of the file", where, pos)
                return
        if pos != len(view):
            self.unknown(f"{len(view) - pos} bytes after the last storage (another format "
                         f"appended: a polyglot?)", where, pos)

    def embedded_zip(self, view: memoryview, where: str) -> None:
        """zipfile.ZipFile finds an archive by its end record, whatever comes first."""
        tail = bytes(view[max(0, len(view) - 65557) :])
        if ZIP_EMPTY not in tail:
            return
        try:
            ZipArchive(view, where)
        except ArchiveError:
            return  # the signature bytes occur, but no archive parses
        self.add("polyglot", "the file also holds a zip archive", where, 0, True,
                 "zipfile.ZipFile and tools built on it would read it")
        self.zip(view, where, 1)

    # -- zip -----------------------------------------------------------------------

    def zip(self, view: Any, where: str, depth: int) -> str:
        try:
            archive = ZipArchive(view, where)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return "zip"
        for member, message in archive.problems:
            self.unknown(message, where)
        by_name: dict[str, list[str]] = {}
        for m in archive.members:
            by_name.setdefault(m.name.casefold(), []).append(m.name)
        for names in by_name.values():
            if len(names) > 1:
                self.unknown(f"{len(names)} members are named {names[0]!r} when case is "
                             f"ignored ({', '.join(map(repr, names[:4]))}): loaders may "
                             f"read any of them", where)
        members = archive.members
        if not members:
            return "zip"
        done: set[int] = set(archive.overlapping)  # already reported; their bytes are read once
        kind = "zip"
        first = members[0].name
        prefix = first.split("/", 1)[0] if "/" in first else None
        pickles = archive.find(prefix + "/data.pkl") if prefix else []
        if pickles:
            kind = "pytorch zip"
            if archive.find(prefix + "/constants.pkl"):
                kind = "TorchScript archive"
                self.unknown("a TorchScript archive (it has constants.pkl): torch.load hands "
                             "it to torch.jit.load, whose code is not analysed", where)
            storages: dict[str, _Storage] = {}
            for m in pickles:
                done.add(id(m))
                label = _child(where, m.name, depth)
                data = self.member(archive, m, label, MAX_PICKLE_MEMBER)
                if data is None:
                    continue
                run = self.pickle(data, 0, label,
                                  persistent_load=self.storage_loader(label, storages, False))
                if run.complete and run.end != len(data):
                    self.unknown(f"{len(data) - run.end} bytes after the pickle's STOP",
                                 label, run.end)
            for key, storage in storages.items():
                found = archive.find(f"{prefix}/data/{key}")
                if not found:
                    self.unknown(f"storage {key!r} is declared by data.pkl but missing from "
                                 f"the archive", where)
                for m in found:
                    done.add(id(m))
                    self.storage(archive, m, storage, _child(where, m.name, depth))
        elif members and all(m.name.lower().endswith(".npy") for m in members):
            kind = "npz"
        for m in members:
            if id(m) not in done:
                self.member_blob(archive, m, _child(where, m.name, depth), depth)
        return kind

    def member(self, archive: ZipArchive, m: ZipMember, where: str, cap: int | None) -> Any:
        """A member's bytes for analysis, or None (with a finding) when unreadable."""
        try:
            if m.method != 0:
                if cap is not None and m.size > cap:
                    raise ArchiveError(f"{where}: an inflated member of {m.size} bytes is too "
                                       f"large to analyse (limit {cap})", m.name)
                self.spend(m, where)
            return archive.read(m)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return None

    def spend(self, m: ZipMember, where: str) -> None:
        self.budget -= m.size
        if self.budget < 0:
            raise ArchiveError(f"{where}: inflating it would exceed the scanner's budget "
                               f"({INFLATE_BUDGET_RATIO}x the input): nested compression?",
                               m.name)

    def storage(self, archive: ZipArchive, m: ZipMember, storage: _Storage, where: str) -> None:
        if m.size != storage.nbytes:
            self.unknown(f"storage {storage.key!r} holds {m.size} bytes, data.pkl declares "
                         f"{storage.numel} x {ELEMENT_SIZE[storage.dtype]} = {storage.nbytes}",
                         where)
            return
        try:
            if m.method != 0:
                self.spend(m, where)
            archive.read(m, storage.nbytes, keep=False)
            head = archive.head(m, 2)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return
        if _is_pickle_marker(head):
            if m.method == 0 or m.size <= MAX_PICKLE_MEMBER:
                self.hidden_pickle(archive.read(m, storage.nbytes), where)

    def member_blob(self, archive: ZipArchive, m: ZipMember, where: str, depth: int) -> None:
        if m.method != 0 and self.npy_member(archive, m, where):
            return
        if m.method != 0 and m.size > MAX_PICKLE_MEMBER:
            # too big to hold: inert if its first megabyte already stops any unpickler
            try:
                head = archive.head(m, 1 << 20)
                walk = walk_pickle(head, persistent=True)
                if (walk.code_at >= 0 or walk.end >= len(head) - 64 or is_zip_start(head)
                        or head.startswith(NPY_MAGIC) or len(head) >= 512 and is_tar(head)):
                    raise ArchiveError(f"{where}: an inflated member of {m.size} bytes is too "
                                       f"large to analyse (limit {MAX_PICKLE_MEMBER})", m.name)
                self.spend(m, where)
                archive.read(m, keep=False)
            except ArchiveError as exc:
                self.unknown(str(exc), where)
            return
        data = self.member(archive, m, where, None)
        if data is not None:
            self.blob(data, where, depth)

    def npy_member(self, archive: ZipArchive, m: ZipMember, where: str) -> bool:
        """A compressed .npy member judged by its header before it is inflated: its
        size must be what the header declares. Returns False if it is no plain .npy."""
        try:
            head = archive.head(m, 65536 + 16)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return True
        if not head.startswith(NPY_MAGIC):
            return False
        try:
            header = npy_header(head, where)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return True
        if header.dtype.hasobject:
            return False  # its pickle is analysed whole
        if m.size != header.data_offset + header.nbytes:
            self.unknown(f"the array needs {header.nbytes} bytes of data, the member declares "
                         f"{m.size - header.data_offset}", where)
            return True
        try:
            self.spend(m, where)
            archive.read(m, keep=False)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
        return True

    def blob(self, data: Any, where: str, depth: int) -> None:
        """A member examined by what its bytes are."""
        head = bytes(data[:16])
        if is_zip_start(head):
            if depth + 1 > MAX_NESTING:
                self.unknown(f"archives nested deeper than {MAX_NESTING} levels", where)
            else:
                self.zip(data, where, depth + 1)
            return
        if head.startswith(NPY_MAGIC):
            self.npy(data, where)
            return
        if is_tar(data):
            if depth + 1 > MAX_NESTING:
                self.unknown(f"archives nested deeper than {MAX_NESTING} levels", where)
            else:
                self.tar(data, where, depth + 1)
            return
        run = self.pickle(data, 0, where, persistent=True)
        if run.complete and run.end < len(data):
            self.unknown(f"{len(data) - run.end} bytes after the pickle's STOP", where,
                         run.end)

    # -- npy -----------------------------------------------------------------------

    def npy(self, data: Any, where: str) -> None:
        try:
            header = npy_header(data, where)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return
        if header.dtype.hasobject:
            self.add("opcode", "object array", where, 0, False,
                     "an object array: np.load(allow_pickle=True) unpickles it")
            run = self.pickle(data, header.data_offset, where)
            if not run.complete and run.inert:
                self.unknown("the object array's pickle is malformed", where,
                             header.data_offset)
            return
        have = len(data) - header.data_offset
        if have != header.nbytes:
            self.unknown(f"the array needs {header.nbytes} bytes of data, there are {have}",
                         where)

    # -- tar -----------------------------------------------------------------------

    def tar(self, view: Any, where: str, depth: int) -> str:
        try:
            archive = TarArchive(view, where)
        except ArchiveError as exc:
            self.unknown(str(exc), where)
            return "tar"
        names = {m.name for m in archive.members}
        torch_like = bool(names & {"storages", "tensors", "pickle"})
        kind = "pytorch tar" if torch_like else "tar"
        for m in archive.members:
            label = _child(where, m.name, depth)
            if m.kind == "directory":
                continue
            if m.kind == "link":
                self.unknown(f"member {m.name!r} is a link to {m.link!r}: extracting it (as "
                             f"torch.load does) would read another file", label)
                continue
            if m.kind != "file":
                self.unknown(f"member {m.name!r} is a {m.kind} member", label)
                continue
            try:
                data = archive.data(m)
            except ArchiveError as exc:
                self.unknown(str(exc), label)
                continue
            if torch_like and archive.get(m.name) is m and m.name in ("storages", "tensors",
                                                                       "pickle"):
                self.torch_tar_member(m.name, data, label)
            else:
                self.blob(data, label, depth)
        return kind

    def torch_tar_member(self, name: str, data: memoryview, where: str) -> None:
        """The three members torch's tar loader unpickles, read as it reads them."""
        pos = 0

        def one(label: str, **kwargs: Any) -> Any:
            nonlocal pos
            run = self.pickle(data, pos, f"{where} ({label})", **kwargs)
            if not run.complete:
                raise ArchiveError(f"{where}: the {label} pickle is malformed")
            pos = run.end
            return run.value

        try:
            if name == "pickle":
                one("main pickle", persistent_load=lambda pid: Opaque("storage"))
            elif name == "storages":
                count = one("storage count")
                if not isinstance(count, int) or not 0 <= count <= len(data):
                    raise ArchiveError(f"{where}: bad storage count {count!r:.40}")
                for _ in range(count):
                    args = one("storage entry")
                    if (not isinstance(args, tuple) or len(args) != 3
                            or not isinstance(args[2], StorageType)
                            or args[2].name not in ELEMENT_SIZE):
                        raise ArchiveError(f"{where}: bad storage entry {args!r:.80}")
                    if pos + 8 > len(data):
                        raise ArchiveError(f"{where}: a storage is cut short")
                    (numel,) = struct.unpack("<q", data[pos : pos + 8])
                    pos += 8 + numel * ELEMENT_SIZE[args[2].name]
                    if numel < 0 or pos > len(data):
                        raise ArchiveError(f"{where}: a storage runs past the member")
                one("storage views")
            else:
                count = one("tensor count")
                if not isinstance(count, int) or not 0 <= count <= len(data):
                    raise ArchiveError(f"{where}: bad tensor count {count!r:.40}")
                for _ in range(count):
                    one("tensor entry")
                    if pos + 8 > len(data):
                        raise ArchiveError(f"{where}: a tensor entry is cut short")
                    (ndim,) = struct.unpack("<i", data[pos : pos + 4])
                    if ndim < 0:
                        raise ArchiveError(f"{where}: negative tensor rank")
                    pos += 8 + 16 * ndim + 8
                    if pos > len(data):
                        raise ArchiveError(f"{where}: a tensor entry runs past the member")
            if pos != len(data):
                raise ArchiveError(f"{where}: {len(data) - pos} bytes after the last entry")
        except ArchiveError as exc:
            self.unknown(f"{exc} (the legacy tar layout is not recognised)", where, pos)


def _is_pickle_marker(head: bytes) -> bool:
    """A protocol 2-5 pickle's first opcode: PROTO and its version."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _safetensors_status(view: memoryview) -> tuple[str, str]:
    """("ok" | "trailing" | "no", message) from the C core's full validation."""
    try:
        handle = _core.open_buffer(view)
    except _core.SafetensorError as exc:
        if getattr(exc, "code", None) == error_codes.TRAILING_DATA:
            return "trailing", str(exc)
        return "no", str(exc)
    except (ValueError, TypeError, OverflowError, BufferError) as exc:
        return "no", str(exc)
    del handle
    return "ok", ""


# MARK: entry points ----------------------------------------------------------------


def scan_buffer(data: Any, path: str = "<buffer>") -> ScanReport:
    """Scans a whole file image held in memory (bytes, mmap, memoryview)."""
    view = memoryview(data).cast("B")
    where = os.path.basename(path) or path
    state = _Scan(len(view))
    try:
        kind = state.file(view, where)
    except _INTERNAL_ERRORS as exc:
        state.unknown(f"the scanner could not analyse the file ({type(exc).__name__}: {exc})",
                      where)
        kind = "unknown"
    return ScanReport(path, kind, state.findings)


def scan(path: Any) -> ScanReport:
    """Reports what loading ``path`` (with pickle, torch.load, np.load, joblib or a
    zip/tar reader) would import and call, and what could not be analysed.

    Raises ``OSError`` when the file cannot be opened and
    :class:`~safetensors_c._archive.NotRegularFileError` (a ``ValueError``) for a
    FIFO, a device or a socket; every problem *inside* the file is a finding.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    with Source(path) as source:
        return scan_buffer(source.view, path)
