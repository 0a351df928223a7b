"""The ``safetensors-c`` command line (also ``python -m safetensors_c``).

    safetensors-c inspect FILE [--json]     tensors, dtypes, shapes, offsets, metadata
                  [--stats]               + min, max, mean, std, NaN/inf/zero counts
    safetensors-c verify FILE...            strict validation (+ digests when recorded)
    safetensors-c convert SRC DST           pickle / PyTorch / joblib / .npy / .npz ->
                                            .safetensors, never executing the pickle;
                                            a model directory of .bin shards -> shards
    safetensors-c scan FILE...              globals and opcodes a pickle would use
    safetensors-c diff A B [--json]         tensors and metadata that differ
    safetensors-c bench                     a quick benchmark

Exit status: 0 on success, 1 when a file is bad, 2 on usage errors (scan:
0 safe, 1 unsafe, 2 usage or unreadable file, 3 unknown). A bad file gives
one line on stderr, never a traceback. Output into a closed pipe (``| head``)
ends the command quietly with status 141, as a process that SIGPIPE killed.
Ctrl-C ends it with status 130 and leaves no output behind (convert writes
into a staging directory beside the output and moves the result into place
only when complete; once that move began, the command finishes).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

import numpy as np

from ._digests import SCHEME_V1, SCHEME_V2, digest_scheme, mismatches as digest_mismatches
from ._display import format_bytes, format_stat
from ._open import safe_open
from ._reader import open_source
from ._terminal import dumps as json_dumps, escape_message, escape_name, escape_prose
from .convert import ConversionError, convert, convert_sharded
from .diff import diff as diff_checkpoints
from .numpy import load_file, save_file
from .scan import scan
from .stats import stats as tensor_stats
from .sharded import (INDEX_SUFFIX, remove_stale_shards, remove_unbound_index,
                      safe_open_sharded, wants_progress)

PROG = "safetensors-c"
#: the exit status of a command whose output pipe was closed (128 + SIGPIPE)
EXIT_BROKEN_PIPE = 141


class _Failure(Exception):
    """A per-file problem, reported as one line."""


def _one_line(exc: BaseException) -> str:
    """The error as one line that is safe to print: a message may quote a
    tensor name or path from the file, control characters and all."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return escape_message(text)


def _err(message: str) -> None:
    print(f"{PROG}: error: {escape_message(message)}", file=sys.stderr)


# MARK: inspect -----------------------------------------------------------------


_INSPECT_COLUMNS = """columns:
  name    the tensor's name (escaped when it holds control characters)
  dtype   its element type (F32, BF16, F8_E4M3, ...)
  shape   its dimensions
  size    the bytes of its data
  offset  where its data begins: bytes from the start of the file
  align   the largest power of two, up to 4096, that divides offset: the
          alignment of the data's address in a mapped file (4096: page
          aligned; 64 or more suits vector loads; below the dtype's element
          size, a zero-copy view of the tensor is unaligned); "alignment" in
          --json
  file    the shard holding the tensor (sharded checkpoints only)
then the tensor count and total size, and the metadata.

exit status: 0 listed, 1 the file is invalid or unreadable, 2 usage error"""


def _alignment(offset: int, cap: int = 4096) -> int:
    """The largest power of two (up to ``cap``) that divides ``offset``."""
    if offset == 0:
        return cap
    return min(offset & -offset, cap)


def _file_rows(file, shard: str | None = None) -> list[dict]:
    """One row per tensor of an open reader, in file order."""
    rows = []
    for name in file.offset_keys():
        code, shape, _np_shape, begin, end = file.info(name)
        offset = file.data_start + begin
        row = {"name": name, "dtype": code, "shape": list(shape), "size": end - begin,
               "offset": offset, "alignment": _alignment(offset)}
        if shard is not None:
            row["file"] = shard
        rows.append(row)
    return rows


def _is_sharded(path: str) -> bool:
    return os.path.isdir(path) or path.endswith(".json")


def _inspect_data(path: str) -> dict:
    if not _is_sharded(path):
        # A path is mapped; a URL costs its header only (one request, two for a
        # header over 256 KiB).
        file = open_source(path)
        return {"file": path, "metadata": file.metadata(), "tensors": _file_rows(file)}
    with safe_open_sharded(path) as f:  # every shard's header, read once
        rows = [row for shard, handle in f.shards.items()
                for row in _file_rows(handle.reader, shard)]
        return {"file": path, "metadata": f.index_metadata(), "tensors": rows}


def _format_size(n: int) -> str:
    return format_bytes(n)


def _print_table(data: dict) -> None:
    """The table of inspect. Every text from the file (names, shard files,
    metadata) is escaped: one entry per line, no control character printed."""
    rows = data["tensors"]
    sharded = any("file" in r for r in rows)
    header = ["name", "dtype", "shape", "size", "offset", "align"] + (["file"] if sharded else [])
    table = [header]
    for r in rows:
        line = [escape_name(r["name"]), escape_name(r["dtype"]),
                "[" + ", ".join(map(str, r["shape"])) + "]",
                _format_size(r["size"]), str(r["offset"]), str(r["alignment"])]
        if sharded:
            line.append(escape_name(r["file"]))
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {3, 4, 5}
    for line in table:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())
    total = sum(r["size"] for r in rows)
    print(f"{_plural(len(rows), 'tensor')}, {_format_size(total)}")
    metadata = data["metadata"]
    if metadata:
        print("metadata:")
        for key, value in metadata.items():
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > 200:
                text = text[:200] + "…"
            print(f"  {escape_name(key)}: {escape_prose(text)}")
    else:
        print("metadata: none")


_STATS_COLUMNS = ("min", "max", "mean", "std", "nan", "inf", "zeros")


def _add_stats(data: dict, path: str) -> None:
    """--stats: every row gains "stats", its tensor's statistics (see safetensors_c.stats)."""
    report = tensor_stats(path)
    for row in data["tensors"]:
        row["stats"] = report[row["name"]].to_json()


def _print_stats_table(data: dict) -> None:
    """The table of inspect --stats: a row of statistics per tensor ("-" where undefined)."""
    header = ["name", "dtype", "shape", *_STATS_COLUMNS]
    table = [header]
    for r in data["tensors"]:
        values = r["stats"]
        table.append([escape_name(r["name"]), escape_name(r["dtype"]),
                      "[" + ", ".join(map(str, r["shape"])) + "]",
                      *(format_stat(values[k]) if not isinstance(values[k], str) else values[k]
                        for k in _STATS_COLUMNS)])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths))).rstrip())
    print(_plural(len(data["tensors"]), "tensor"))


def cmd_inspect(args) -> int:
    try:
        data = _inspect_data(args.file)
        if args.stats:
            _add_stats(data, args.file)
    except (OSError, ValueError, ImportError, _Failure) as exc:
        _err(_one_line(exc))
        return 1
    if args.json:
        print(json_dumps(data, indent=2))  # exact, with every control as a \u escape
    elif args.stats:
        _print_stats_table(data)
    else:
        _print_table(data)
    return 0


# MARK: verify ------------------------------------------------------------------


_BYTES_ONLY = "tensor bytes only; dtypes, shapes, names and metadata unchecked"


def _check_digests(reader, label: str, args) -> str | None:
    """Checks the digests an open, validated file records; returns the scheme
    checked, or None when it records none (a failure with --require-digests).
    Bytes-only (v1) digests are a failure unless --allow-bytes-only."""
    scheme = digest_scheme(reader.metadata())
    if scheme is None:
        if args.require_digests:
            raise _Failure("no digests recorded (--require-digests)")
        return None
    if scheme == SCHEME_V1 and not args.allow_bytes_only:
        raise _Failure(
            f"only bytes-only digests recorded ({SCHEME_V1}: a rewritten dtype, shape or "
            f"name, or edited metadata, would pass); save the file again with digests=True "
            f"({SCHEME_V2}), or pass --allow-bytes-only to accept them")
    update, bar = _progress_bar(reader.file_size, f"Verifying {label}", args.quiet)
    try:
        bad = digest_mismatches(reader, progress=update, allow_bytes_only=True)
    finally:
        if bar is not None:
            bar.close()
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise _Failure(f"SHA-256 mismatch for {_plural(len(bad), 'tensor')}: {shown} "
                       f"(scheme {scheme})")
    return scheme


def _schemes_text(schemes) -> str:
    """The schemes checked, as the summary names them."""
    names = sorted(set(schemes))
    return ", ".join(f"{name}: {_BYTES_ONLY}" if name == SCHEME_V1 else name for name in names)


def _verify_one(path: str, args) -> dict:
    """Verifies one file or sharded checkpoint and returns what was checked:
    ``tensors``, ``shards`` (None for a single file) and ``schemes`` (one per
    file or shard, None where it records no digests). Raises _Failure,
    OSError or ValueError for a bad file."""
    if _is_sharded(path):
        with safe_open_sharded(path) as f:  # the index against every shard's header
            shards = f.shards
            schemes = []
            for name, handle in shards.items():
                try:
                    schemes.append(_check_digests(handle.reader, name, args))
                except _Failure as exc:
                    raise _Failure(f"shard {name!r}: {exc}") from None
            count = len(f)
        found = [scheme for scheme in schemes if scheme is not None]
        bare = [name for name, scheme in zip(shards, schemes) if scheme is None]
        if found and bare:
            # No save writes digests into some shards only: the digests of
            # these were removed (and their tensors could be anything).
            raise _Failure(
                f"{_plural(len(bare), 'shard')} with no digests recorded while "
                f"{len(found)} of {len(shards)} record them: "
                + ", ".join(repr(name) for name in bare[:5]) + (" ..." if len(bare) > 5 else "")
                + "; their digests were removed, or shards of different saves were mixed")
        return {"tensors": count, "shards": len(shards), "schemes": schemes}
    with safe_open(path, framework="np") as f:
        scheme = _check_digests(f.reader, path, args)
        count = len(f)
    return {"tensors": count, "shards": None, "schemes": [scheme]}


def _verify_summary(result: dict) -> str:
    """The text after ``OK  FILE: ``."""
    count, shards = result["tensors"], result["shards"]
    found = [scheme for scheme in result["schemes"] if scheme is not None]
    head = _plural(count, "tensor")
    if shards is not None:
        head += f" in {_plural(shards, 'shard')}"
    if not found:
        return head + ", structure validated; no digests recorded"
    if shards is None:
        return head + f", digests verified ({_schemes_text(found)})"
    return f"{head}, digests verified in {len(found)} of {shards} shards ({_schemes_text(found)})"


def _verify_record(path: str, result: dict | None, error: str | None) -> dict:
    """One entry of ``verify --json``."""
    if result is None:
        return {"path": path, "ok": False, "error": error, "tensors": None, "shards": None,
                "digests": None, "schemes": []}
    found = sorted({scheme for scheme in result["schemes"] if scheme is not None})
    return {"path": path, "ok": True, "error": None, "tensors": result["tensors"],
            "shards": result["shards"], "digests": "verified" if found else "none",
            "schemes": found}


def cmd_verify(args) -> int:
    status = 0
    records = []
    for path in args.files:
        try:
            result = _verify_one(path, args)
        except (OSError, ValueError, _Failure) as exc:
            message = _one_line(exc)
            status = 1
            if args.json:
                records.append(_verify_record(path, None, message))
                continue
            if not message.startswith(path):
                message = f"{escape_name(path)}: {message}"
            print(f"BAD {message}", file=sys.stderr)
            continue
        if args.json:
            records.append(_verify_record(path, result, None))
        else:
            print(f"OK  {escape_name(path)}: {_verify_summary(result)}")
    if args.json:
        print(json_dumps(records, indent=2))  # exact, with every control as a \u escape
    return status


# MARK: convert -----------------------------------------------------------------


def _source_bytes(src: str) -> int:
    """The bytes a conversion reads: the file, or every regular file of a directory."""
    try:
        if os.path.isdir(src):
            return sum(e.stat().st_size for e in os.scandir(src) if e.is_file())
        if src.endswith(".json"):
            return _source_bytes(os.path.dirname(src) or ".")
        return os.path.getsize(src)
    except OSError:
        return 0


def _progress_bar(size: int, desc: str, quiet: bool):
    """A tqdm bar over bytes, or (None, None): with --quiet, when stderr is not a
    terminal, for inputs under 64 MiB (sharded.wants_progress), or without tqdm."""
    if quiet or not wants_progress(None, size):
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024,
               desc=escape_message(desc),  # may name a file or shard
               file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}es" if word.endswith(("s", "x")) else f"{count} {word}s"


def _size_argument(text: str):
    """--max-shard-size: plain digits are bytes; anything else goes to parse_size."""
    return int(text) if text.isascii() and text.isdigit() else text


def _parse_metadata(items: Sequence[str]) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise _Failure(f"--metadata expects KEY=VALUE, not {item!r}")
        out[key] = value
    return out


class _InterruptGuard:
    """Once armed (in the main thread), Ctrl-C is recorded instead of raised:
    from the moment the output starts moving into place, the command
    finishes and says so rather than stopping half way."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def _record(self, signum, frame) -> None:
        self.received = True

    def arm(self) -> None:
        if self._previous is None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._record)

    def disarm(self, ignore: bool = False) -> None:
        """Restores the previous handler; ``ignore``: ignores Ctrl-C from now
        on instead (the program is ending with its output complete: at exit
        Python would reset the handler to the default, and a late Ctrl-C
        would kill the process as if it had been interrupted)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else self._previous)
            self._previous = None


def _staging_name(dst: str) -> str:
    """A name for the staging directory beside ``dst``, random so that no
    other run picks the same one."""
    parent = os.path.dirname(os.path.abspath(dst))
    return os.path.join(parent, f".{PROG}-{secrets.token_hex(8)}.partial")


def _remove_staging(path: str) -> None:
    """Removes a staging directory, even while a worker still writes into it."""
    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return


def _sync_directory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename stands
    finally:
        os.close(fd)


def _move_file_into_place(staged: str, dst: str) -> None:
    try:
        mode = os.stat(dst).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISREG(mode):
        os.chmod(staged, stat.S_IMODE(mode))  # as the writer does: an overwrite keeps the bits
    os.replace(staged, dst)
    _sync_directory(os.path.dirname(os.path.abspath(dst)))


def _move_directory_into_place(staging: str, dst: str, sharded_save: bool) -> None:
    """The files of ``staging`` into ``dst``: a new directory is renamed
    whole; into an existing one the shards go first and the index last, and
    a sharded save (--max-shard-size) removes what the library's
    save_sharded removes (another save's shards, an index of no save)."""
    if not os.path.lexists(dst):
        os.rename(staging, dst)
        _sync_directory(os.path.dirname(os.path.abspath(dst)))
        return
    names = sorted(os.listdir(staging), key=lambda name: (name.endswith(".json"), name))
    index = "model" + INDEX_SUFFIX
    if sharded_save and index in names:
        remove_unbound_index(os.path.join(dst, index))
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(dst, name))
    if sharded_save:
        remove_stale_shards(dst, "model", set(names), remove_index=index not in names)
    _sync_directory(dst)
    os.rmdir(staging)


def _outside_staging(exc: BaseException, staging: str, target: str, dst: str) -> BaseException:
    """The worker's error, naming ``dst`` where it names the staging path."""
    if not isinstance(exc, Exception) or isinstance(exc, _Failure):
        return exc
    text = _one_line(exc)
    if escape_message(staging) not in text:
        return exc
    for inner, outer in ((target, dst), (staging, dst)):
        text = text.replace(escape_message(inner), escape_message(outer))
    failure = _Failure(text)
    failure.__cause__ = exc
    return failure


def _convert_staged(work, dst: str, directory_output: bool, sharded_save: bool,
                    guard: _InterruptGuard):
    """Runs ``work(target)`` on a worker thread, ``target`` inside a staging
    directory beside ``dst``, then moves the result into place (``guard``
    armed) and returns what ``work`` returned.

    Ctrl-C while the work runs reaches this (main) thread at once, even while
    the core writer is busy: the staging directory is removed, ``dst`` is left
    as it was, and KeyboardInterrupt propagates (the worker, a daemon thread,
    ends with the process). Its errors are raised here.
    """
    if directory_output:
        if os.path.lexists(dst) and not os.path.isdir(dst):
            raise _Failure(f"{dst}: the output of a directory conversion is a directory")
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    elif os.path.isdir(dst):
        raise _Failure(f"{dst}: a directory; name the .safetensors file to write")
    staging = _staging_name(dst)
    target = staging if directory_output else os.path.join(staging, os.path.basename(dst))
    outcome: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["result"] = work(target)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    try:  # from before the directory exists, so that an interrupt at any point removes it
        try:
            os.mkdir(staging)  # mode 0777 less the umask, as any directory
        except OSError as exc:  # a missing or read-only directory: say which output
            raise OSError(exc.errno, f"cannot write beside it: {exc.strerror}", dst) from None
        threading.Thread(target=run, name=f"{PROG} convert", daemon=True).start()
        while not done.wait(0.1):
            pass
        if "error" in outcome:
            raise _outside_staging(outcome["error"], staging, target, dst)
        guard.arm()
        if directory_output:
            _move_directory_into_place(staging, dst, sharded_save)
        else:
            _move_file_into_place(target, dst)
    finally:  # what is left of it: everything after an interrupt or error, else nothing
        _remove_staging(staging)
    return outcome["result"]


def cmd_convert(args) -> int:
    directory_source = os.path.isdir(args.src) or args.src.endswith(".json")
    if directory_source and (args.max_shard_size is not None or args.select is not None):
        option = "--max-shard-size" if args.max_shard_size is not None else "--select"
        _err(f"{option} applies to single-file sources (a sharded source keeps its shards)")
        return 2
    progress, bar = _progress_bar(_source_bytes(args.src), "converting", args.quiet)
    options = dict(metadata=None, keep_scalars=args.keep_scalars,
                   allow_expansion=args.allow_expansion, progress=progress)

    def work(target: str):
        if directory_source:
            return convert_sharded(args.src, target, **options)
        return convert(args.src, target, max_shard_size=args.max_shard_size,
                       select=args.select, **options)

    guard = _InterruptGuard()
    try:
        try:
            options["metadata"] = _parse_metadata(args.metadata)
            report = _convert_staged(work, args.dst,
                                     directory_source or args.max_shard_size is not None,
                                     args.max_shard_size is not None, guard)
        except (OSError, ValueError, TypeError, ConversionError, _Failure) as exc:
            _err(_one_line(exc))
            return 1
        finally:
            if bar is not None:
                bar.close()
        _print_converted(args, report, directory_source)
    finally:
        guard.disarm(ignore=getattr(args, "as_program", False))
    if guard.received:
        print(f"{PROG}: interrupted after the output was complete; it is kept",
              file=sys.stderr)
    return 0


def _print_converted(args, report, directory_source: bool) -> None:
    if not args.quiet:
        extra = ""
        if report.aliases:
            extra += (f", {_plural(len(report.aliases), 'shared-storage alias')} recorded "
                      f"in metadata")
        if report.skipped:
            extra += report.skipped_summary()  # a state_dict's _metadata named apart
        elif report.scalars:
            extra += f", {_plural(len(report.scalars), 'non-tensor value')} kept in metadata"
        if directory_source:
            shards = [f for f in report.files if f.endswith(".safetensors")]
            extra = f" in {_plural(len(shards), 'file')}" + extra
        print(f"{escape_name(args.src)} ({report.source_kind}) -> {escape_name(args.dst)}: "
              f"{_plural(len(report.tensors), 'tensor')}{extra}")


# MARK: scan --------------------------------------------------------------------


#: scan's exit status by verdict; with several files the first of unsafe,
#: error, unknown that any file has decides
SCAN_EXIT = {"safe": 0, "unsafe": 1, "error": 2, "unknown": 3}
_SCAN_PRECEDENCE = ("unsafe", "error", "unknown")


def _scan_status(verdicts) -> int:
    for verdict in _SCAN_PRECEDENCE:
        if verdict in verdicts:
            return SCAN_EXIT[verdict]
    return SCAN_EXIT["safe"]


def cmd_scan(args) -> int:
    verdicts = set()
    reports = []
    for path in args.files:
        try:
            report = scan(path)
        except (OSError, ValueError, MemoryError, RecursionError) as exc:
            # the file could not be opened (or is no regular file): report it, go on
            _err(_one_line(exc))
            if args.json:
                reports.append({"path": path, "verdict": "error", "error": str(exc)})
            verdicts.add("error")
            continue
        verdicts.add(report.verdict)
        if args.json:
            reports.append(report.to_dict())
        else:
            print(report)  # its text escapes the names and paths it shows
    if args.json:
        print(json_dumps(reports, indent=2))  # exact, with every control as a \u escape
    return _scan_status(verdicts)


# MARK: diff --------------------------------------------------------------------


def cmd_diff(args) -> int:
    """0 when A and B are identical, 1 when they differ, 2 when one cannot be read."""
    try:
        report = diff_checkpoints(args.a, args.b, all_metadata=args.all_metadata)
    except (OSError, ValueError, TypeError, ImportError, MemoryError, _Failure) as exc:
        _err(_one_line(exc))
        return 2
    if args.json:
        print(json_dumps(report.to_dict(), indent=2))  # exact, with every control as a \u escape
    else:
        print(report)  # its lines escape every name, key and value
    return 0 if report.identical else 1


# MARK: bench -------------------------------------------------------------------


def _source_benchmark() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "run.py")
    return script if os.path.isfile(script) else None


def _builtin_bench() -> int:
    rng = np.random.default_rng(0)
    tensors = {f"layer.{i}.weight": rng.standard_normal((256, 256), dtype=np.float32)
               for i in range(64)}
    with tempfile.TemporaryDirectory() as tmp:
        st_path = os.path.join(tmp, "model.safetensors")
        pk_path = os.path.join(tmp, "model.pkl")

        def best(fn, repeat=5):
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        def save_pickle():
            with open(pk_path, "wb") as f:
                pickle.dump(tensors, f, protocol=5)

        def load_pickle():
            with open(pk_path, "rb") as f:
                pickle.load(f)

        rows = [
            ("save", "safetensors_c", best(lambda: save_file(tensors, st_path))),
            ("save", "pickle", best(save_pickle)),
            ("load", "safetensors_c", best(lambda: load_file(st_path))),
            ("load", "pickle", best(load_pickle)),
        ]
    size = sum(a.nbytes for a in tensors.values())
    print(f"built-in benchmark: {len(tensors)} float32 tensors, {size >> 20} MiB (best of 5)")
    for op, who, seconds in rows:
        print(f"  {op:5} {who:14} {seconds * 1e3:9.3f} ms")
    return 0


def cmd_bench(args) -> int:
    script = _source_benchmark()
    if script is not None and not args.builtin:
        return subprocess.call([sys.executable, script, "--quick"])
    return _builtin_bench()


# MARK: main --------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors quote the command line escaped: a stray
    argument may be a hostile file name a shell glob expanded."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {escape_message(message)}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Inspect, verify and convert "
                                ".safetensors files; convert pickles without running them.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Each command's exit status is in its --help. Every command exits with\n"
                       "130 on Ctrl-C (convert then leaves no output behind) and with 141 when\n"
                       "its output pipe is closed (e.g. | head), without a traceback.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                   help="print the version of safetensors_c and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="list tensors and metadata",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_INSPECT_COLUMNS)
    s.add_argument("file", help="a .safetensors file, or a sharded checkpoint (directory "
                                "or index .json)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--stats", action="store_true",
                   help="read every tensor and show its min, max, mean, std (over finite "
                        "values) and counts of NaN, inf and zeros; with --json, each tensor "
                        "gains a \"stats\" object (null where undefined, an infinite min or "
                        "max as \"inf\"/\"-inf\"); a progress bar on a terminal")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser(
        "verify", help="validate files strictly (and their digests)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate each file (or sharded checkpoint) strictly, and check the\n"
                    "digests it records (scheme sha256-record-v2: each tensor's name, dtype,\n"
                    "shape and bytes, and the metadata). A file without digests is reported\n"
                    "as such: its structure was validated, nothing more.",
        epilog="exit status:\n"
               "  0  every file is valid, and its digests, where recorded, match\n"
               "  1  a file is invalid or unreadable, a digest does not match, a file records\n"
               "     only bytes-only digests (sha256-bytes-v1) without --allow-bytes-only,\n"
               "     or records no digests with --require-digests\n"
               "  2  usage error")
    s.add_argument("files", nargs="+", metavar="FILE",
                   help="a .safetensors file, or a sharded checkpoint (directory or index "
                        ".json); several are checked one after the other")
    s.add_argument("--json", action="store_true",
                   help="one JSON list on stdout, an entry per FILE: path, ok, error, tensors, "
                        "shards (null for one file), digests (\"verified\" or \"none\") and the "
                        "schemes checked; the exit status is the same")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--require-digests", action="store_true",
                   help="a file (or shard) that records no digests is an error")
    s.add_argument("--allow-bytes-only", action="store_true",
                   help="accept files whose only digests are the older bytes-only scheme "
                        "(sha256-bytes-v1), which does not cover dtypes, shapes, names or "
                        "metadata")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("convert", help="convert a checkpoint without executing it")
    s.add_argument("src", help="a checkpoint file, or a model directory / *.bin.index.json "
                               "of sharded .bin weights")
    s.add_argument("dst", help="the .safetensors file (a directory for a directory source)")
    s.add_argument("--keep-scalars", action="store_true",
                   help="keep the non-tensor values of the checkpoint (numbers, strings, "
                        "a state_dict's _metadata) in __metadata__")
    s.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="add KEY=VALUE to the output's __metadata__ (repeat for more; wins "
                        "over the entries the conversion writes)")
    s.add_argument("--max-shard-size", default=None, metavar="SIZE", type=_size_argument,
                   help="write a sharded checkpoint into DST (a directory) in shards of at "
                        "most SIZE bytes: an integer or 5GB, 500MB, 10GiB (GB = 10^9, "
                        "GiB = 2^30); a larger tensor gets a shard of its own")
    s.add_argument("--select", default=None, metavar="KEY",
                   help="convert only this part of the checkpoint, under its own names "
                        "(e.g. 'model' of a training checkpoint; dotted for nested parts)")
    s.add_argument("--allow-expansion", action="store_true",
                   help="write views as copies beyond the default limit (each storage "
                        "written at most 2x its bytes, plus 64 MiB in all); a crafted "
                        "checkpoint can then expand far beyond its own size")
    s.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("scan", help="report what loading a file would import and call "
                                    "(verdict: safe, unsafe or unknown)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit status (with several files, the first of 1, 2, 3 that "
                              "applies):\n"
                              "  0  every file is safe: loading it imports and calls nothing but\n"
                              "     what rebuilds tensors\n"
                              "  1  a file is unsafe: it would import or call something else\n"
                              "  2  usage error, or a file could not be read\n"
                              "  3  a file is unknown: not a format scan understands, so nothing\n"
                              "     is known about what loading it would do")
    s.add_argument("files", nargs="+", metavar="FILE",
                   help="pickle, PyTorch (.pt, .bin), joblib, .npy or .npz files")
    s.add_argument("--json", action="store_true",
                   help="one JSON list on stdout, an entry per FILE with its verdict and "
                        "findings (verdict \"error\" and the error for a file not read)")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser(
        "diff", help="compare two checkpoints tensor by tensor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare checkpoint A with checkpoint B: tensors only in A or only in B,\n"
                    "dtype or shape changes, and for the other common tensors whether their\n"
                    "bytes are identical, how many values differ, the max absolute difference\n"
                    "|a-b| and the max relative difference |a-b|/max(|a|,|b|) (0 where equal).\n"
                    "Floats are compared in float64, integers exactly; NaN equals NaN. Then\n"
                    "the metadata. Tensors are read one at a time, large ones in chunks.",
        epilog="exit status:\n"
               "  0  identical (the same tensors, bytes and metadata)\n"
               "  1  A and B differ\n"
               "  2  a checkpoint cannot be read, or a usage error")
    for side in ("a", "b"):
        s.add_argument(side, metavar=side.upper(),
                       help="a .safetensors file, a URL, or a sharded checkpoint (directory, "
                            "index .json, or a URL ending in / or .json)")
    s.add_argument("--json", action="store_true",
                   help="machine-readable output: every compared tensor with bit_identical, "
                        "mismatched, nan_mismatched, max_abs, max_rel (\"inf\" for infinity)")
    s.add_argument("--all-metadata", action="store_true",
                   help="also compare the bookkeeping entries otherwise ignored: the save id "
                        "of a sharded save and the recorded digests")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser("bench", help="a quick benchmark")
    s.add_argument("--builtin", action="store_true",
                   help="the small built-in comparison even in a source checkout")
    s.set_defaults(func=cmd_bench)
    return p


def _version() -> str:
    """safetensors_c.__version__, the one source of the version (the package
    is always imported before this module, so it is read, not imported)."""
    return sys.modules[__package__].__version__


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so that flushing it at exit (into the
    closed pipe) raises nothing and prints no "Exception ignored"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is no file (captured, replaced): nothing is flushed to a pipe


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: flush while it can be caught
        sys.stdout.flush()
        raise
    args.as_program = argv is None  # the process itself (console script, -m), not a caller
    try:
        status = int(args.func(args))
    except KeyboardInterrupt:
        _err("interrupted")
        status = 130
    except _Failure as exc:
        _err(_one_line(exc))
        status = 1
    sys.stdout.flush()  # a closed pipe shows here, not at exit
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (141, quietly, when
    stdout is a pipe whose reader went away, e.g. ``| head``)."""
    try:
        return _run(argv)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
