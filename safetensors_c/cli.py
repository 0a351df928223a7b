"""The ``safetensors-c`` command line (also ``python -m safetensors_c``).

    safetensors-c inspect FILE [--json]     tensors, dtypes, shapes, offsets, metadata
    safetensors-c verify FILE...            strict validation (+ digests when recorded)
    safetensors-c convert SRC DST           pickle / PyTorch / joblib / .npy / .npz ->
                                            .safetensors, never executing the pickle;
                                            a model directory of .bin shards -> shards
    safetensors-c scan FILE...              globals and opcodes a pickle would use
    safetensors-c bench                     a quick benchmark

Exit status: 0 on success, 1 when a file is bad (or unsafe, for scan), 2 on
usage errors. A bad file gives one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import numpy as np

from ._digests import SCHEME_V1, SCHEME_V2, digest_scheme, mismatches as digest_mismatches
from ._display import format_bytes
from ._open import safe_open
from ._reader import open_source
from ._terminal import dumps as json_dumps, escape_message, escape_name, escape_prose
from .convert import ConversionError, convert, convert_sharded
from .numpy import load_file, save_file
from .scan import scan
from .sharded import safe_open_sharded

PROG = "safetensors-c"
_PROGRESS_MIN_BYTES = 64 << 20


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
        rows = [row for shard, handle in f._open_shards().items()
                for row in _file_rows(handle._handle(), shard)]
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


def cmd_inspect(args) -> int:
    try:
        data = _inspect_data(args.file)
    except (OSError, ValueError, ImportError, _Failure) as exc:
        _err(_one_line(exc))
        return 1
    if args.json:
        print(json_dumps(data, indent=2))  # exact, with every control as a \u escape
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


def _verify_one(path: str, args) -> str:
    if _is_sharded(path):
        with safe_open_sharded(path) as f:  # the index against every shard's header
            shards = f._open_shards()
            schemes = []
            for name, handle in shards.items():
                try:
                    schemes.append(_check_digests(handle._handle(), name, args))
                except _Failure as exc:
                    raise _Failure(f"shard {name!r}: {exc}") from None
            count = len(f)
        found = [scheme for scheme in schemes if scheme is not None]
        head = f"{_plural(count, 'tensor')} in {_plural(len(shards), 'shard')}"
        if not found:
            return head + ", structure validated; no digests recorded"
        bare = [name for name, scheme in zip(shards, schemes) if scheme is None]
        if bare:
            # No save writes digests into some shards only: the digests of
            # these were removed (and their tensors could be anything).
            raise _Failure(
                f"{_plural(len(bare), 'shard')} with no digests recorded while "
                f"{len(found)} of {len(shards)} record them: "
                + ", ".join(repr(name) for name in bare[:5]) + (" ..." if len(bare) > 5 else "")
                + "; their digests were removed, or shards of different saves were mixed")
        return (f"{head}, digests verified in {len(found)} of {len(shards)} shards "
                f"({_schemes_text(found)})")
    with safe_open(path, framework="np") as f:
        scheme = _check_digests(f._handle(), path, args)
        count = len(f)
    if scheme is None:
        return _plural(count, "tensor") + ", structure validated; no digests recorded"
    return _plural(count, "tensor") + f", digests verified ({_schemes_text([scheme])})"


def cmd_verify(args) -> int:
    status = 0
    for path in args.files:
        try:
            summary = _verify_one(path, args)
        except (OSError, ValueError, _Failure) as exc:
            message = _one_line(exc)
            if not message.startswith(path):
                message = f"{escape_name(path)}: {message}"
            print(f"BAD {message}", file=sys.stderr)
            status = 1
            continue
        print(f"OK  {escape_name(path)}: {summary}")
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
    terminal, for inputs under 64 MiB, or without tqdm."""
    if quiet or size < _PROGRESS_MIN_BYTES or not sys.stderr.isatty():
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


def cmd_convert(args) -> int:
    directory_source = os.path.isdir(args.src) or args.src.endswith(".json")
    if directory_source and (args.max_shard_size is not None or args.select is not None):
        option = "--max-shard-size" if args.max_shard_size is not None else "--select"
        _err(f"{option} applies to single-file sources (a sharded source keeps its shards)")
        return 2
    progress, bar = _progress_bar(_source_bytes(args.src), "converting", args.quiet)
    options = dict(metadata=None, keep_scalars=args.keep_scalars,
                   allow_expansion=args.allow_expansion, progress=progress)
    try:
        options["metadata"] = _parse_metadata(args.metadata)
        if directory_source:
            report = convert_sharded(args.src, args.dst, **options)
        else:
            report = convert(args.src, args.dst, max_shard_size=args.max_shard_size,
                             select=args.select, **options)
    except (OSError, ValueError, TypeError, ConversionError, _Failure) as exc:
        _err(_one_line(exc))
        return 1
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        extra = ""
        if report.aliases:
            extra += (f", {_plural(len(report.aliases), 'shared-storage alias')} recorded "
                      f"in metadata")
        if report.skipped:
            extra += (f", {_plural(len(report.skipped), 'non-tensor value')} skipped "
                      f"(--keep-scalars keeps them in metadata)")
        elif report.scalars:
            extra += f", {_plural(len(report.scalars), 'non-tensor value')} kept in metadata"
        if directory_source:
            shards = [f for f in report.files if f.endswith(".safetensors")]
            extra = f" in {_plural(len(shards), 'file')}" + extra
        print(f"{escape_name(args.src)} ({report.source_kind}) -> {escape_name(args.dst)}: "
              f"{_plural(len(report.tensors), 'tensor')}{extra}")
    return 0


# MARK: scan --------------------------------------------------------------------


def cmd_scan(args) -> int:
    status = 0
    reports = []
    for path in args.files:
        try:
            report = scan(path)
        except (OSError, ValueError, MemoryError, RecursionError) as exc:
            # the file could not be opened (or is no regular file): report it, go on
            _err(_one_line(exc))
            if args.json:
                reports.append({"path": path, "verdict": "error", "error": str(exc)})
            status = 1
            continue
        if not report.safe:
            status = 1
        if args.json:
            reports.append(report.to_dict())
        else:
            print(report)  # its text escapes the names and paths it shows
    if args.json:
        print(json_dumps(reports, indent=2))  # exact, with every control as a \u escape
    return status


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
                                ".safetensors files; convert pickles without running them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="list tensors and metadata")
    s.add_argument("file", help="a .safetensors file, or a sharded checkpoint (directory "
                                "or index .json)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
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
    s.add_argument("files", nargs="+", metavar="FILE")
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
    s.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--max-shard-size", default=None,
                   help="write a sharded checkpoint into DST (a directory)")
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
                                    "(verdict: safe, unsafe or unknown)")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("bench", help="a quick benchmark")
    s.add_argument("--builtin", action="store_true",
                   help="the small built-in comparison even in a source checkout")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except _Failure as exc:
        _err(_one_line(exc))
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
