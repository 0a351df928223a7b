"""Convert pickle-based checkpoints to .safetensors without running them.

    from safetensors_c.convert import convert, scan

    report = scan("pytorch_model.bin")      # what the pickle would import/call
    print(report.verdict)                   # "safe", "unsafe" or "unknown"
    convert("pytorch_model.bin", "model.safetensors")

Sources: PyTorch checkpoints (the zip format of ``torch.save`` since 1.6 and
the legacy non-zip format), plain pickles of dicts of NumPy arrays
(protocols 2 to 5, out-of-band buffers with ``buffers=``), joblib files
(uncompressed), ``.npy`` and ``.npz``. Torch is never imported.

No pickle is ever executed: :mod:`safetensors_c._pickle_vm` interprets the
opcodes itself and resolves globals only from an allow-list of tensor and
array rebuilders (see ``ALLOWED_GLOBALS``), each mapped to a constructor of
ours. Any other global, or an opcode tensors never need, stops the
conversion with :class:`UnsafePickleError` naming it; nothing is written
(the output is written atomically, and only after everything was read).

Nested containers are flattened with dotted names
(``{"state_dict": {"w": t}}`` -> ``"state_dict.w"``; list items by index).
Numbers, strings, booleans and None met on the way are dropped (listed in
the report's ``skipped``), or kept in ``__metadata__`` with
``keep_scalars=True`` (strings as they are, the rest JSON-encoded: ``3``,
``0.5``, ``true``, ``null``). A ``Module.state_dict()`` is an OrderedDict
whose ``_metadata`` attribute (per-module ``{"version": N}``) pickle
restores with BUILD: it is read as plain data, never by calling anything,
and treated like the scalars: dropped by default, kept with
``keep_scalars=True`` as JSON under ``"_metadata"`` (``"model._metadata"``
for a nested one). BUILD on anything else is refused.

Shared storage: tensors that are the same view of the same storage (same
offset, shape, strides, dtype; e.g. tied embeddings) are aliases: the first
name in sorted order is written and each dropped name is recorded in
``__metadata__`` as ``{dropped: kept}``, as the reference's ``save_model``
does. Tensors that view disjoint parts of one storage (a fused projection
split into q, k, v) are each written as a copy of what they view. Views
that overlap or repeat elements write more bytes than the checkpoint
stores: a modest expansion is allowed (at most twice each storage, plus
64 MiB in all), more is refused unless ``allow_expansion=True`` (see
:func:`convert`).

A model directory of ``.bin`` weights, sharded or not (transformers,
diffusers), converts shard for shard with :func:`convert_sharded`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from . import _dtypes, _writer
from ._adapters.numpy import from_array as _neutral_tensor
from ._archive import open_regular
# The reader's names stay private here: convert's public names are its __all__.
from ._checkpoint import (
    Storage as _Storage,
    describe_findings as _describe_findings,
    element_size as _element_size,
    flatten as _flatten,
    map_file as _map_file,
    materialize as _materialize,
    numel as _numel,
    read_tree as _read_tree,
    select_part as _select_part,
)
from ._checks import fs_path
from ._core import SafetensorError
from ._pickle_vm import (
    ALLOWED_GLOBALS,
    STATE_METADATA_ATTRIBUTE,
    ConversionError,
    PendingArray,
    TensorRef,
    UnsafePickleError,
)
from ._terminal import escape_message, escape_name
from .scan import MAX_PICKLE_MEMBER, ScanReport, scan, scan_buffer
from .sharded import MAX_INDEX_SIZE, parse_index, save_sharded

__all__ = [
    "ALLOWED_GLOBALS",
    "ConversionError",
    "ConversionReport",
    "ScanReport",
    "UnsafePickleError",
    "convert",
    "convert_sharded",
    "read_checkpoint",
    "safetensors_name",
    "scan",
]

# MARK: reports -------------------------------------------------------------


@dataclass
class ConversionReport:
    """What :func:`convert` wrote."""

    source_kind: str
    tensors: list[str]
    aliases: dict[str, str] = field(default_factory=dict)  # dropped -> kept
    scalars: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # names of values not written
    metadata: dict[str, str] | None = None
    files: list[str] = field(default_factory=list)  # what was written

    @property
    def module_versions(self) -> list[str]:
        """The skipped names that are a state_dict's ``_metadata`` (torch's
        per-module ``{"version": N}``, which ``load_state_dict`` does not
        need), as opposed to values of the checkpoint's own."""
        return [n for n in self.skipped if _is_module_versions(n)]

    def skipped_summary(self) -> str:
        """What was left out, in words: ``", 1 non-tensor value skipped
        (--keep-scalars keeps them in metadata)"``; a state_dict's
        ``_metadata`` is named as such, not counted as a lost value."""
        versions = len(self.module_versions)
        others = len(self.skipped) - versions
        parts = []
        if others:
            parts.append(f"{others} non-tensor value{'' if others == 1 else 's'} skipped")
        if versions:
            of = f" of {versions} state_dicts" if versions > 1 else ""
            parts.append(f"torch's {STATE_METADATA_ATTRIBUTE} (module versions){of} not kept")
        if not parts:
            return ""
        keeps = "keeps them in metadata" if others else "keeps it"
        return ", " + ", ".join(parts) + f" (--keep-scalars {keeps})"


def _is_module_versions(name: str) -> bool:
    # "_metadata", "model._metadata", and in a sharded report "shard.bin:_metadata"
    return name.rsplit(".", 1)[-1].rsplit(":", 1)[-1] == STATE_METADATA_ATTRIBUTE \
        and not name.endswith("]")


# MARK: reading the source: what scan calls safe ------------------------------


def _refuse_unless_safe(path: str, report: ScanReport) -> None:
    """convert and scan never disagree: whatever scan does not call safe is refused."""
    if report.verdict == "safe":
        return
    reasons = report.reasons
    # Names in the reasons come from the file: escaped, like everything a
    # message quotes from it.
    shown = "; ".join(escape_message(r) for r in reasons[:4]) + (
        f"; and {len(reasons) - 4} more" if len(reasons) > 4 else "")
    if report.verdict == "unsafe":
        bad = [f for f in report.findings if not f.safe and f.kind not in ("error", "unknown")]
        bad.sort(key=lambda f: f.kind != "global")  # the globals first: they say the most
        where = escape_name(bad[0].where or os.path.basename(path))
        found = f"opcode {bad[0].name}" if bad[0].kind == "opcode" else bad[0].name
        raise UnsafePickleError(
            f"{path}: {where} uses {_describe_findings(bad)}; refusing to convert (nothing was "
            f"executed and nothing was written)", found)
    raise ConversionError(f"{path}: cannot be analysed completely, so it is not converted: "
                          f"{shown}")


def _read_source(path: str, mm, buffers, name: str | None):
    """Returns (kind, object tree). The file is scanned first (by content, every member,
    every reading other loaders would make); only what scan calls safe is read."""
    view = memoryview(mm)
    stem = name or os.path.splitext(os.path.basename(path))[0]
    try:
        report = scan_buffer(view, path)
        if report.kind == "safetensors" and report.verdict == "safe":
            raise ConversionError(f"{path}: already a .safetensors file; nothing to convert")
        _refuse_unless_safe(path, report)
        return _read_tree(path, view, report.kind, buffers, stem, MAX_PICKLE_MEMBER)
    except MemoryError:
        raise ConversionError(f"{path}: not enough memory to read it") from None


# MARK: what is written ---------------------------------------------------------


def _view_key(value: Any) -> tuple:
    if isinstance(value, TensorRef):
        return ("view", id(value.storage), value.offset, value.size, value.stride,
                value.dtype or getattr(value.storage, "dtype", None))
    return ("object", id(value))


def _split_aliases(found: dict[str, Any]) -> dict[str, str]:
    """Removes every name that is the same view as another; returns {dropped: kept}."""
    groups: dict[tuple, list[str]] = {}
    for key, value in found.items():
        groups.setdefault(_view_key(value), []).append(key)
    aliases: dict[str, str] = {}
    for names in groups.values():
        if len(names) > 1:
            keep, *dropped = sorted(names)
            for name in dropped:
                aliases[name] = keep
                del found[name]
    return aliases


def _root_buffer(array: np.ndarray) -> Any:
    """The object that owns an array's bytes (bytes, an mmap, a buffer...)."""
    obj: Any = array
    while isinstance(obj, np.ndarray) and obj.base is not None:
        obj = obj.base
    if isinstance(obj, memoryview):
        obj = obj.obj
    return obj


def _buffer_size(obj: Any) -> int:
    try:
        return memoryview(obj).nbytes
    except (TypeError, ValueError):
        return obj.nbytes if isinstance(obj, np.ndarray) else 0


def _source_of(name: str, value: Any) -> tuple[int, int, int, Any]:
    """(source id, bytes the source stores, bytes this tensor writes, source)."""
    if isinstance(value, TensorRef):
        storage = value.storage
        if not isinstance(storage, _Storage) or storage.data is None:
            raise ConversionError(f"tensor {name!r}: its storage is missing")
        tdtype = value.dtype or storage.dtype
        written = _numel(value.size) * _element_size(tdtype)
        return id(storage), memoryview(storage.data).nbytes, written, storage
    array = value.array if isinstance(value, PendingArray) else value
    root = _root_buffer(array)
    return id(root), _buffer_size(root), array.nbytes, root


# A conversion may write each storage up to this many times over (a fused
# qkv and its q, k, v views write it twice) ...
EXPANSION_FACTOR = 2
# ... and, in all, this many bytes beyond that (small views of small storages).
EXPANSION_ALLOWANCE = 64 << 20


def _check_expansion(path: str, found: dict[str, Any], allow_expansion: bool) -> int:
    """Refuses views that would write far more bytes than their sources store.

    Returns the number of bytes the tensors will write. Each distinct
    source (a torch storage, the bytes a pickle holds for an array, the
    mapped file) may be written up to ``EXPANSION_FACTOR`` times over; the
    bytes beyond that, summed over all sources, may not exceed
    ``EXPANSION_ALLOWANCE``. Overlapping views, views that repeat elements
    (stride 0) and one buffer rebuilt into many arrays are what make a small
    file expand into a large output. Nothing has been materialised yet.
    """
    per_source: dict[int, list] = {}
    total = 0
    for name, value in found.items():
        source_id, stored, written, source = _source_of(name, value)
        total += written
        entry = per_source.setdefault(source_id, [stored, 0, [], source])
        entry[1] += written
        entry[2].append(name)
    if allow_expansion:
        return total
    excess = {key: written - EXPANSION_FACTOR * stored
              for key, (stored, written, _, _) in per_source.items()}
    beyond = sum(e for e in excess.values() if e > 0)
    if beyond > EXPANSION_ALLOWANCE:
        stored, written, names, _source = per_source[max(excess, key=excess.__getitem__)]
        shown = ", ".join(repr(n) for n in sorted(names)[:4])
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        raise ConversionError(
            f"{path}: the tensors {shown}{more} share {stored} stored bytes but together "
            f"would write {written} bytes (their views overlap or repeat elements, e.g. "
            f"stride 0); by default a conversion writes at most {EXPANSION_FACTOR}x the "
            f"bytes each storage holds plus {EXPANSION_ALLOWANCE >> 20} MiB in all, and this "
            f"checkpoint goes {beyond} bytes beyond {EXPANSION_FACTOR}x (the limit is "
            f"{EXPANSION_ALLOWANCE} bytes). To write each view as a copy anyway, pass "
            f"allow_expansion=True (CLI: --allow-expansion): the output is then {total} "
            f"bytes of tensor data; nothing was written"
        )
    return total


def read_checkpoint(
    src,
    *,
    buffers: Iterable | None = None,
    name: str | None = None,
    allow_expansion: bool = False,
    select: str | None = None,
):
    """Reads a checkpoint without executing it.

    Returns ``(kind, tensors, aliases, scalars, skipped)``: ``tensors`` maps
    flattened names to NumPy arrays (views of the source where possible),
    ``aliases`` maps each dropped alias to the name kept. The arrays view a
    read-only mapping of ``src``. Views that would write more than the
    expansion limit allows are refused unless ``allow_expansion`` (see
    :func:`convert`). ``select`` reads only one part of the checkpoint (see
    :func:`convert`).
    """
    path = os.fspath(src)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    mm = _map_file(path)
    kind, tree = _read_source(path, mm, buffers, name)
    others: list[str] = []
    if select is not None:
        tree, others = _select_part(path, tree, select)
    found, scalars, skipped = _flatten(tree)
    skipped = others + skipped
    aliases = _split_aliases(found)
    _check_expansion(path, found, allow_expansion)
    tensors: dict[str, np.ndarray] = {}
    for key, value in found.items():
        if isinstance(value, TensorRef):
            array = _materialize(value, key)
        else:
            array = value.array if isinstance(value, PendingArray) else value
        packed = isinstance(array, _dtypes.PackedArray)
        if not packed and _dtypes.code_for_dtype(array.dtype) is None:
            raise ConversionError(
                f"{path}: tensor {key!r} has dtype {array.dtype}, which a safetensors file "
                f"cannot hold; nothing was written"
            )
        tensors[key] = array
    return kind, tensors, aliases, scalars, skipped


def _scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _tensor_bytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in tensors.values())


class _WriteMeter:
    """Reports the bytes this process writes while a writer call runs.

    The core writer releases the GIL and writes with write(2), so a thread
    reading ``/proc/self/io`` sees the output grow. Where that file does
    not exist (not Linux), the only report is the final one.
    """

    _IO = "/proc/self/io"

    def __init__(self, progress: Callable[[int, int], None] | None, done: int, total: int):
        self.progress = progress
        self.done = done
        self.total = total
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._written() if progress is not None else None

    def _written(self) -> int | None:
        try:
            with open(self._IO, "rb") as f:
                for line in f:
                    if line.startswith(b"wchar:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            now = self._written()
            if now is not None and self._start is not None:
                self.progress(min(self.total, self.done + now - self._start), self.total)

    def __enter__(self) -> "_WriteMeter":
        if self.progress is not None and self._start is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _write_file(tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None) -> None:
    """One .safetensors file, written atomically by the neutral writer."""
    neutral = {name: _neutral_tensor(name, array) for name, array in tensors.items()}
    _writer.write(neutral, metadata, fs_path(path))


def _output_metadata(kind, scalars, aliases, keep_scalars, skipped, metadata, found_names):
    out_meta: dict[str, str] = {}
    if kind.startswith("pytorch"):
        out_meta["format"] = "pt"
    if keep_scalars:
        for key, value in scalars.items():
            if key in found_names:
                continue
            out_meta[key] = _scalar_text(value)
    else:
        skipped.extend(scalars)
    out_meta.update(aliases)
    if metadata:
        out_meta.update(metadata)
    return out_meta


def _check_metadata_arg(metadata) -> None:
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise TypeError("metadata must be a dict of str to str")


def convert(
    src,
    dst,
    *,
    metadata: dict[str, str] | None = None,
    keep_scalars: bool = False,
    buffers: Iterable | None = None,
    name: str | None = None,
    max_shard_size: int | str | None = None,
    allow_expansion: bool = False,
    select: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionReport:
    """Converts a checkpoint to a .safetensors file (atomically) without executing it.

    ``metadata`` is added to ``__metadata__`` last (it wins over generated
    entries). ``keep_scalars`` keeps the checkpoint's non-tensor values
    (numbers, strings, a state_dict's ``_metadata``) in ``__metadata__``;
    otherwise they are listed in the report's ``skipped``. ``buffers`` are
    the out-of-band buffers of a protocol 5 pickle. ``name`` names the
    tensor of a single-array source (default: the file's stem).
    ``max_shard_size`` writes a sharded set (see
    :func:`safetensors_c.sharded.save_sharded`). ``select`` converts one
    part of the checkpoint under its own names: ``select="model"`` turns a
    training checkpoint ``{"model": state_dict, "optimizer": ..., "epoch":
    ...}`` into the file ``load_state_dict`` wants (``"fc.weight"``, not
    ``"model.fc.weight"``); the parts left out are listed in ``skipped``.

    Views are written as copies of what they view, so tensors that share a
    storage can write more bytes than the checkpoint stores. By default the
    tensors that view one storage may write up to twice its size
    (``EXPANSION_FACTOR``: a fused qkv saved next to its q, k, v views),
    and the bytes beyond that, summed over the whole checkpoint, may not
    exceed 64 MiB (``EXPANSION_ALLOWANCE``). Anything more (stride-0 or
    broadcast views turning kilobytes into gigabytes, many overlapping
    windows) is refused before any tensor is copied, with a message saying
    how much would be written and the limit; ``allow_expansion=True`` lifts
    the limit, and the output is then the sum of numel x element size over
    the tensors (the message states it), which a crafted file can make far
    larger than itself.

    ``progress(done, total)`` is called with bytes of tensor data written
    (from a helper thread while the writer runs).

    Raises :class:`UnsafePickleError` (naming the global or opcode) for a
    pickle that would do anything but rebuild tensors, :class:`ConversionError`
    for other bad input; nothing is written then.
    """
    _check_metadata_arg(metadata)
    if isinstance(src, (str, bytes, os.PathLike)) and os.path.isdir(src):
        raise ConversionError(
            f"{os.fsdecode(os.fspath(src))}: a directory; convert_sharded(src, dst_directory) "
            f"converts a model directory of .bin weights"
        )
    kind, tensors, aliases, scalars, skipped = read_checkpoint(
        src, buffers=buffers, name=name, allow_expansion=allow_expansion, select=select
    )
    out_meta = _output_metadata(kind, scalars, aliases, keep_scalars, skipped, metadata, tensors)
    total = _tensor_bytes(tensors)
    with _WriteMeter(progress, 0, total):
        if max_shard_size is not None:
            save_sharded(tensors, dst, max_shard_size=max_shard_size,
                         metadata=out_meta or None, progress=False)
        else:
            _write_file(tensors, dst, out_meta or None)
    if progress is not None:
        progress(total, total)
    return ConversionReport(
        source_kind=kind,
        tensors=list(tensors),
        aliases=aliases,
        scalars=scalars if keep_scalars else {},
        skipped=skipped,
        metadata=out_meta or None,
        files=[os.fspath(dst)],
    )


# MARK: sharded .bin checkpoints ---------------------------------------------------

#: Single-file weights a model directory may hold (a variant such as ``.fp16`` included).
_SINGLE_WEIGHTS = re.compile(r"(diffusion_)?pytorch_model(\.[A-Za-z0-9_]+)?\.bin")
#: Files copied next to the converted weights when the output is another directory.
_SIDE_FILE_SUFFIXES = (".json", ".txt", ".md", ".model")


def safetensors_name(bin_name: str) -> str:
    """The safetensors name of a ``.bin`` weights file or index, as transformers names them.

    ``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``,
    ``pytorch_model.bin.index.json`` -> ``model.safetensors.index.json``,
    ``diffusion_pytorch_model.bin`` -> ``diffusion_pytorch_model.safetensors``.
    """
    if ".bin.index" in bin_name:
        stem, _, rest = bin_name.partition(".bin.index")
        tail = ".safetensors.index" + rest
    elif bin_name.endswith(".bin"):
        stem, tail = bin_name[: -len(".bin")], ".safetensors"
    else:
        stem, tail = os.path.splitext(bin_name)[0], ".safetensors"
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model"):]
    return stem + tail


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _read_bin_index(index_path: str) -> tuple[dict[str, str], dict]:
    """(weight_map, metadata) of a ``*.bin.index.json``, checked by the validator
    of every index (:func:`safetensors_c.sharded.parse_index`); its shard names
    must be plain file names in its directory."""
    if not _is_regular(index_path):
        raise ConversionError(f"{index_path}: the index is not a regular file")
    fd, _info = open_regular(index_path)  # fstat of the descriptor read: no FIFO, no device
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_INDEX_SIZE + 1)
    try:
        weight_map, meta = parse_index(raw, index_path)
    except SafetensorError as exc:
        raise ConversionError(str(exc)) from None
    for shard in set(weight_map.values()):
        if (not shard or shard in (".", "..") or "/" in shard or "\\" in shard
                or "\x00" in shard):
            raise ConversionError(
                f"{index_path}: shard name {shard!r} is not a file name in the index's directory"
            )
    return weight_map, meta or {}


def _locate_bin(src: str) -> tuple[str, str | None, str | None]:
    """(directory, index path or None, single weights file name or None)."""
    if os.path.isdir(src):
        names = sorted(os.listdir(src))
        indexes = [n for n in names if ".bin.index" in n and n.endswith(".json")]
        if len(indexes) > 1:
            raise ConversionError(
                f"{src}: several .bin indexes ({', '.join(indexes)}); pass the one to convert"
            )
        if indexes:
            return src, os.path.join(src, indexes[0]), None
        singles = [n for n in names if _SINGLE_WEIGHTS.fullmatch(n)]
        if len(singles) == 1:
            return src, None, singles[0]
        if singles:
            raise ConversionError(
                f"{src}: several weights files ({', '.join(singles)}); convert each with "
                f"convert(FILE, DST)"
            )
        raise ConversionError(
            f"{src}: no *.bin.index.json, pytorch_model.bin or diffusion_pytorch_model.bin "
            f"in this directory"
        )
    if src.endswith(".json"):
        return os.path.dirname(src) or ".", src, None
    raise ConversionError(f"{src}: expected a model directory or a *.bin.index.json")


def convert_sharded(
    src,
    dst,
    *,
    metadata: dict[str, str] | None = None,
    keep_scalars: bool = False,
    allow_expansion: bool = False,
    copy_side_files: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionReport:
    """Converts a model directory of ``.bin`` weights to safetensors, never executing them.

    ``src`` is a directory or its ``*.bin.index.json``. A sharded
    checkpoint (``pytorch_model-0000k-of-0000N.bin`` and
    ``pytorch_model.bin.index.json``, as ``save_pretrained(...,
    safe_serialization=False)`` writes it) becomes
    ``model-0000k-of-0000N.safetensors`` and ``model.safetensors.index.json``
    in the directory ``dst``, shard for shard, one shard in memory at a
    time; a directory holding ``pytorch_model.bin`` or
    ``diffusion_pytorch_model.bin`` becomes ``model.safetensors`` or
    ``diffusion_pytorch_model.safetensors``. Every shard must hold exactly
    the tensors the index assigns to it. The index is written last; when a
    shard fails, the shards written so far are removed again. When
    ``dst`` is another directory, its ``.json``, ``.txt``, ``.md`` and
    ``.model`` files (config, tokenizer) are copied too, so that
    ``from_pretrained(dst)`` works; other files (pickled training
    arguments, code) never are. Other arguments as for :func:`convert`;
    ``progress(done, total)`` counts bytes of tensor data.
    """
    _check_metadata_arg(metadata)
    src_path = os.fsdecode(os.fspath(src))
    dst_dir = os.fsdecode(os.fspath(dst))
    directory, index_path, single = _locate_bin(src_path)
    if os.path.exists(dst_dir) and not os.path.isdir(dst_dir):
        raise ConversionError(f"{dst_dir}: the output of a directory conversion is a directory")
    os.makedirs(dst_dir, exist_ok=True)
    if single is not None:
        target = os.path.join(dst_dir, safetensors_name(single))
        report = convert(os.path.join(directory, single), target, metadata=metadata,
                         keep_scalars=keep_scalars, allow_expansion=allow_expansion,
                         progress=progress)
        report.files = [target] + _copy_side_files(directory, dst_dir, copy_side_files,
                                                   {single, os.path.basename(target)})
        return report

    weight_map, index_meta = _read_bin_index(index_path)
    by_shard: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(tensor)
    _check_shards_present(index_path, directory, by_shard)
    declared = index_meta.get("total_size")
    total = declared if isinstance(declared, int) and declared > 0 else sum(
        os.path.getsize(os.path.join(directory, s)) for s in by_shard
        if _is_regular(os.path.join(directory, s))
    )
    kinds: set[str] = set()
    written: list[str] = []
    out_map: dict[str, str] = {}
    aliases: dict[str, str] = {}
    scalars: dict[str, Any] = {}
    skipped: list[str] = []
    done = 0
    try:
        for shard in sorted(by_shard):
            kind, tensors, shard_aliases, shard_scalars, shard_skipped = _read_shard(
                os.path.join(directory, shard), by_shard[shard], allow_expansion)
            kinds.add(kind)
            shard_meta = _output_metadata(kind, shard_scalars, shard_aliases, keep_scalars,
                                          shard_skipped, metadata, tensors)
            size = _tensor_bytes(tensors)
            target = os.path.join(dst_dir, safetensors_name(shard))
            with _WriteMeter(progress, done, max(total, done + size)):
                _write_file(tensors, target, shard_meta or None)
            written.append(target)
            done += size
            if progress is not None:
                progress(done, max(total, done))
            out_map.update({t: safetensors_name(shard) for t in tensors})
            aliases.update(shard_aliases)
            scalars.update({f"{shard}:{k}": v for k, v in shard_scalars.items()})
            skipped.extend(f"{shard}:{k}" for k in shard_skipped)
            del tensors
    except BaseException:
        # No index was written; the shards this call wrote go too, so that a failed
        # conversion leaves no half of a checkpoint behind.
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    written.append(_write_converted_index(dst_dir, index_path, index_meta, out_map, done))
    skip = {os.path.basename(index_path), *by_shard, *map(os.path.basename, written)}
    written += _copy_side_files(directory, dst_dir, copy_side_files, skip)
    if progress is not None:
        progress(max(total, done), max(total, done))
    return ConversionReport(
        source_kind=("sharded " + "/".join(sorted(kinds))),
        tensors=sorted(out_map),
        aliases=aliases,
        scalars=scalars if keep_scalars else {},
        skipped=skipped,
        metadata=None,
        files=written,
    )


def _check_shards_present(index_path: str, directory: str, by_shard: dict) -> None:
    """Every shard is there, and a .bin, before anything is written."""
    for shard in sorted(by_shard):
        if not _is_regular(os.path.join(directory, shard)):
            raise ConversionError(f"{index_path}: shard {shard!r} is missing or not a regular file")
        if safetensors_name(shard) == shard:
            raise ConversionError(f"{index_path}: shard {shard!r} is not a .bin file")


def _read_shard(shard_path: str, expected_names: list[str], allow_expansion: bool):
    """:func:`read_checkpoint` of one shard, which must hold exactly the tensors the
    index assigns to it (an alias counts as held)."""
    kind, tensors, aliases, scalars, skipped = read_checkpoint(
        shard_path, allow_expansion=allow_expansion)
    present = set(tensors) | set(aliases)
    expected = set(expected_names)
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        detail = []
        if missing:
            detail.append(f"misses {missing[:5]}")
        if extra:
            detail.append(f"holds {extra[:5]} that the index does not assign to it")
        raise ConversionError(
            f"{shard_path}: the shard {' and '.join(detail)}; nothing was converted"
        )
    return kind, tensors, aliases, scalars, skipped


def _write_converted_index(dst_dir: str, index_path: str, index_meta: dict,
                           out_map: dict[str, str], total_size: int) -> str:
    """Writes the safetensors index of a converted .bin index (last: it binds the shards)."""
    out_index_meta = {k: v for k, v in index_meta.items() if k != "total_size"}
    out_index_meta["total_size"] = total_size
    out_index = {"metadata": out_index_meta,
                 "weight_map": {k: out_map[k] for k in sorted(out_map)}}
    index_out = os.path.join(dst_dir, safetensors_name(os.path.basename(index_path)))
    _writer.write_text_atomic(index_out, json.dumps(out_index, indent=2, sort_keys=True) + "\n")
    return index_out


def _copy_side_files(directory: str, dst_dir: str, enabled: bool, skip: set) -> list[str]:
    if not enabled or os.path.realpath(directory) == os.path.realpath(dst_dir):
        return []
    copied = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if (entry in skip or entry.startswith(".") or not entry.endswith(_SIDE_FILE_SUFFIXES)
                or ".bin.index" in entry or not _is_regular(path)):
            continue
        target = os.path.join(dst_dir, entry)
        fd, _info = open_regular(path)  # the file checked is the file copied: no FIFO
        with os.fdopen(fd, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        copied.append(target)
    return copied
