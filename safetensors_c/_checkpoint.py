"""Reads a checkpoint's records without executing any pickle: the reader under convert.

PyTorch's zip format (``torch.save`` since 1.6), the legacy non-zip torch
format, plain pickles and joblib files, ``.npy`` and ``.npz``. A pickle is
run only on :class:`safetensors_c._pickle_vm.Machine`, which resolves no
global outside its allow-list; torch storages are found in the file and
viewed (zero-copy where the archive stores them uncompressed), never
loaded by torch.

What comes out is an object tree of plain containers, :class:`TensorRef`
views of :class:`Storage` bytes and arrays; :func:`flatten` turns it into
records: dotted names mapped to tensors not read yet, plus the plain
values met on the way. :func:`materialize` reads one tensor. Deciding what
is safe to read (the scan every source passes first) and what gets
written is :mod:`safetensors_c.convert`'s.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from . import _dtypes
from ._archive import ArchiveError, Source, ZipArchive, npy_header
from ._pickle_vm import (
    STATE_METADATA_ATTRIBUTE,
    ConversionError,
    Finding,
    Machine,
    OrderedDictData,
    PendingArray,
    StorageType,
    TensorRef,
    UnsafePickleError,
    run_pickle,
)
from ._terminal import escape_message, escape_name

#: The integer a legacy (non-zip) torch checkpoint's first pickle holds.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_DEPTH = 64
_MAX_NODES = 5_000_000

# torch dtype name -> NumPy dtype of its elements (float4 x2: one byte per element)
_TORCH_NUMPY = {
    "bool": "?", "uint8": "u1", "int8": "i1", "int16": "<i2", "uint16": "<u2",
    "int32": "<i4", "uint32": "<u4", "int64": "<i8", "uint64": "<u8",
    "float16": "<f2", "float32": "<f4", "float64": "<f8",
    "complex64": "<c8", "complex128": "<c16", "float4_e2m1fn_x2": "u1",
}


def torch_numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a torch dtype's elements (ml_dtypes for bfloat16, float8)."""
    if name in _TORCH_NUMPY:
        return np.dtype(_TORCH_NUMPY[name])
    return np.dtype(getattr(_dtypes._ml_dtypes(), name))


# MARK: storages ------------------------------------------------------------


class Storage:
    """A torch storage: its element dtype and, once known, its bytes."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: str, numel: Any) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: Any = None


def map_file(path: str):
    """A read-only mapping of a regular file (FIFOs, devices and sockets are refused
    before anything is read; the descriptor checked is the one mapped)."""
    source = Source(path)
    if source.mapping is None:
        raise ConversionError(f"{path}: the file is empty")
    return source.mapping


# MARK: running pickles -----------------------------------------------------


def run_strict_at(view, pos, label, path, **kwargs):
    """(object, position after STOP) of the pickle at ``pos``, run for conversion.

    A refusal names everything the pickle would do that is not allowed (a
    second pass in scan mode finds them all), not only the first."""
    try:
        return run_pickle(view, pos, label=label, **kwargs)
    except UnsafePickleError as exc:
        found = [f for f in scan_findings(view, pos, label) if not f.safe]
        detail = describe_findings(found) if found else str(exc)
        raise UnsafePickleError(
            f"{path}: {label} uses {detail}; refusing to convert (nothing was executed and "
            f"nothing was written)",
            exc.found,
        ) from None


def run_strict(data, label, path, **kwargs):
    return run_strict_at(memoryview(data).cast("B"), 0, label, path, **kwargs)[0]


def describe_findings(findings: list[Finding]) -> str:
    """The findings in words, escaped (names come from the file), at most eight."""
    names = []
    for f in findings:
        if f.kind == "global":
            names.append(f"global {escape_name(f.name)}")
        elif f.kind == "opcode":
            names.append(f"opcode {f.name} ({escape_message(f.note)})" if f.note
                         else f"opcode {f.name}")
        else:
            names.append(escape_name(f.name))
    names = list(dict.fromkeys(names))
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return shown + " (not on the allow-list)"


def scan_findings(view, pos: int, where: str, **kwargs) -> list[Finding]:
    """Everything the pickle at ``pos`` would import or do; malformed input is a finding."""
    machine = Machine(view, pos, scan=True, label=where, **kwargs)
    try:
        machine.run()
    except ConversionError as exc:
        machine.findings.append(Finding("error", str(exc), machine.pos, False, "malformed"))
    for f in machine.findings:
        f.where = where
    return machine.findings


# MARK: the formats ---------------------------------------------------------


def read_torch_zip(path, archive: ZipArchive, buffers, max_pickle: int):
    """PyTorch's zip format, members found as PyTorch's reader finds them (the archive
    name is the first member's directory; names compared ignoring case), each read
    no further than what data.pkl declares for it (data.pkl itself no further
    than ``max_pickle`` bytes)."""
    archive.check()
    first = archive.members[0].name if archive.members else ""
    prefix = first.split("/", 1)[0] + "/" if "/" in first else ""
    pkl = archive.find_one(prefix + "data.pkl") if prefix else None
    if pkl is None:
        raise ConversionError(f"{path}: not a PyTorch zip checkpoint (no {prefix}data.pkl)")
    order_member = archive.find_one(prefix + "byteorder")
    if order_member is not None:
        order = bytes(archive.read(order_member, 64)).strip()
        if order != b"little":
            raise ConversionError(f"{path}: big-endian PyTorch checkpoints are not supported")
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ConversionError(f"{path}: unsupported persistent id {pid!r:.80}")
        typ, key, _location, numel = pid[1:5]
        if not isinstance(typ, StorageType) or not isinstance(key, str):
            raise ConversionError(f"{path}: unsupported storage reference {pid!r:.80}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise ConversionError(f"{path}: storage {key!r}: bad element count {numel!r:.40}")
        storage = storages.get(key)
        if storage is None:
            member = archive.find_one(prefix + "data/" + key) if "/" not in key else None
            if member is None:
                raise ConversionError(f"{path}: storage {key!r} is missing from the archive")
            nbytes = numel * element_size(typ.name)
            if member.size != nbytes:
                raise ArchiveError(
                    f"{path}: member {member.name!r} holds {member.size} bytes, but data.pkl "
                    f"declares {numel} elements of {typ.name} ({nbytes} bytes)", member.name)
            storage = Storage(key, typ.name, numel)
            # stored members are views of the mapping; deflated ones are inflated up to
            # the declared size and no further
            storage.data = archive.read(member, nbytes, crc=member.method != 0)
            storages[key] = storage
        return storage

    data = archive.read(pkl, max_pickle)
    return run_strict(data, pkl.name, path, persistent_load=persistent_load)


def read_torch_legacy(path, view, pos):
    """The legacy (non-zip) torch format from ``pos``, just after its magic number's
    pickle: protocol, system info, the main pickle, the storage keys, then each
    storage's bytes, every length checked against the file."""
    machine_kwargs = dict(label="legacy PyTorch checkpoint")
    proto, pos = run_pickle(view, pos, **machine_kwargs)
    sys_info, pos = run_pickle(view, pos, **machine_kwargs)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ConversionError(f"{path}: only little-endian legacy PyTorch checkpoints are supported")
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise ConversionError(f"{path}: unsupported persistent id {pid!r:.80}")
        typ, key, _location, numel, view_metadata = pid[1:]
        if not isinstance(typ, StorageType) or not isinstance(key, str):
            raise ConversionError(f"{path}: unsupported storage reference {pid!r:.80}")
        if view_metadata is not None:
            raise ConversionError(f"{path}: storage views (PyTorch < 0.4 files) are not supported")
        return storages.setdefault(key, Storage(key, typ.name, numel))

    obj, pos = run_strict_at(view, pos, "the legacy checkpoint's main pickle", path,
                              persistent_load=persistent_load)
    keys, pos = run_pickle(view, pos, **machine_kwargs)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConversionError(f"{path}: bad storage key list")
    for key in keys:
        if pos + 8 > len(view):
            raise ConversionError(f"{path}: truncated storage {key!r}")
        (numel,) = struct.unpack("<q", view[pos : pos + 8])
        pos += 8
        storage = storages.get(key)
        if storage is None:
            raise ConversionError(f"{path}: storage {key!r} is not used by any tensor")
        nbytes = numel * torch_numpy_dtype(storage.dtype).itemsize
        if numel < 0 or pos + nbytes > len(view):
            raise ConversionError(f"{path}: storage {key!r} runs past the end of the file")
        storage.data = view[pos : pos + nbytes]
        pos += nbytes
    missing = [k for k, s in storages.items() if s.data is None]
    if missing:
        raise ConversionError(f"{path}: storages {missing[:5]} have no data")
    return obj


def read_npz(path, archive: ZipArchive) -> dict:
    """Each member as np.load reads it: by its content, never past its npy header's size."""
    archive.check()
    arrays = {}
    for member in archive.members:
        label = f"{path}: member {member.name!r}"
        header = npy_header(archive.head(member, 65536 + 16), label)
        need = header.data_offset + header.nbytes
        if member.size != need:
            raise ArchiveError(f"{label}: its .npy header declares {need} bytes, the member "
                               f"holds {member.size}", member.name)
        key = member.name[:-4] if member.name.endswith(".npy") else member.name
        if key in arrays:
            raise ArchiveError(f"{label}: two members give the array name {key!r}",
                               member.name)
        arrays[key] = npy_array(archive.read(member, need), label)
    return arrays


def npy_array(data: Any, label: str) -> np.ndarray:
    """The array of a ``.npy`` image (read-only, viewing ``data``); object arrays refused."""
    view = memoryview(data).cast("B")
    header = npy_header(view, label)
    shape, fortran, dtype = header.shape, header.fortran, header.dtype
    if dtype.hasobject:
        raise UnsafePickleError(
            f"{label}: an object array (loading it would need pickle); refused", "object array"
        )
    count = header.count
    start = header.data_offset
    need = header.nbytes
    if len(view) - start != need:
        raise ConversionError(
            f"{label}: the array needs {need} bytes of data, the file has {len(view) - start}"
        )
    flat = np.frombuffer(view[start:], dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C")


def read_tree(path: str, view: memoryview, kind: str, buffers, stem: str,
              max_pickle: int) -> tuple[str, Any]:
    """(kind, object tree) of a checkpoint of the ``kind`` scan found in ``view``.

    A single array (a ``.npy``, a pickle of one array or tensor) is named
    ``stem``. A pickle whose first value is torch's legacy magic number is a
    legacy torch checkpoint; its kind says so."""
    if kind == "pytorch zip":
        return kind, read_torch_zip(path, ZipArchive(view, path), buffers, max_pickle)
    if kind == "npz":
        return kind, read_npz(path, ZipArchive(view, path))
    if kind == "zip":
        raise ConversionError(f"{path}: a zip archive that is neither a PyTorch checkpoint nor .npz")
    if kind == "npy":
        return kind, {stem: npy_array(view, path)}
    if kind == "pytorch tar":
        raise ConversionError(
            f"{path}: a PyTorch checkpoint in the legacy tar format (PyTorch before "
            f"0.1.10); converting it is not supported")
    if kind not in ("pickle", "joblib", "pytorch legacy"):
        raise ConversionError(
            f"{path}: not a PyTorch checkpoint, pickle, joblib, .npy or .npz file "
            f"(found: {kind})")
    first, pos = run_strict_at(view, 0, "pickle", path, buffers=buffers)
    if first == TORCH_LEGACY_MAGIC and type(first) is int:
        return "pytorch legacy", read_torch_legacy(path, view, pos)
    if isinstance(first, (PendingArray, TensorRef)):
        first = {stem: first}
    return kind, first


# MARK: tensors -------------------------------------------------------------


def element_size(tdtype: str) -> int:
    return torch_numpy_dtype(tdtype).itemsize


def numel(shape: tuple) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def materialize(ref: TensorRef, name: str) -> np.ndarray:
    """The tensor ``ref`` views, as an array over its storage's bytes (no copy but
    for float4 pairs); a view reaching past its storage is refused."""
    storage = ref.storage
    if not isinstance(storage, Storage) or storage.data is None:
        raise ConversionError(f"tensor {name!r}: its storage is missing")
    tdtype = ref.dtype or storage.dtype
    dtype = torch_numpy_dtype(tdtype)
    data = memoryview(storage.data).cast("B")
    size, stride, offset = ref.size, ref.stride, ref.offset
    if len(size) != len(stride):
        raise ConversionError(f"tensor {name!r}: size and stride differ in length")
    if 0 in size:
        array = np.empty(size, dtype=dtype)
    else:
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if (last + 1) * dtype.itemsize > data.nbytes:
            raise ConversionError(
                f"tensor {name!r}: its view (offset {offset}, size {list(size)}, stride "
                f"{list(stride)}) reaches past its storage of {data.nbytes} bytes"
            )
        # as_strided goes through the array interface, which cannot name the
        # ml_dtypes types: stride a same-sized integer type and view it back.
        carrier = dtype if dtype.type.__module__ != "ml_dtypes" else np.dtype(f"<u{dtype.itemsize}")
        flat = np.frombuffer(data, dtype=carrier, count=data.nbytes // dtype.itemsize)
        array = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(st * dtype.itemsize for st in stride),
            writeable=False,
        )
        if carrier is not dtype:
            array = array.view(dtype)
    if tdtype == "float4_e2m1fn_x2":
        if not size:
            raise ConversionError(f"tensor {name!r}: a 0-d float4_e2m1fn_x2 tensor")
        array = _dtypes.packed(np.ascontiguousarray(array), "F4", size[:-1] + (2 * size[-1],))
    return array


# MARK: the object tree -----------------------------------------------------


class _Attribute:
    """An attribute restored on a container (a state_dict's ``_metadata``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def flatten(tree: Any):
    """Walks the object tree: (found, scalars, skipped).

    ``found`` maps each flattened name to a :class:`TensorRef` (not read
    yet) or an ndarray. ``scalars`` holds the plain values met on the way,
    and each state_dict's ``_metadata`` as ``"<prefix>._metadata"``.
    """
    found: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    skipped: list[str] = []
    nodes = 0
    pending = [("", tree, 0)]
    while pending:
        prefix, value, depth = pending.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            raise ConversionError("the checkpoint's object tree is too large (shared containers?)")
        if depth > _MAX_DEPTH:
            raise ConversionError(
                f"the checkpoint nests deeper than {_MAX_DEPTH} levels at {prefix!r} "
                f"(a cycle?)"
            )
        if isinstance(value, _Attribute):
            if prefix in found or prefix in scalars:
                skipped.append(prefix)  # a key of the same name wins over the attribute
            else:
                scalars[prefix] = value.value
            continue
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    skipped.append(f"{prefix}[{key!r:.40}]")
                    continue
                items.append((f"{prefix}.{key}" if prefix else str(key), item, depth + 1))
            if isinstance(value, OrderedDictData) and value.state_metadata is not None:
                name = STATE_METADATA_ATTRIBUTE
                name = f"{prefix}.{name}" if prefix else name
                items.append((name, _Attribute(value.state_metadata), depth + 1))
            pending.extend(reversed(items))
            continue
        if isinstance(value, (list, tuple)):
            items = [(f"{prefix}.{i}" if prefix else str(i), item, depth + 1)
                     for i, item in enumerate(value)]
            pending.extend(reversed(items))
            continue
        if isinstance(value, (PendingArray, TensorRef, np.ndarray)):
            if prefix in found or prefix in scalars:
                raise ConversionError(f"two values flatten to the same name {prefix!r}")
            if isinstance(value, PendingArray) and value.array is None:
                raise ConversionError(f"array {prefix!r} was never filled in")
            # The object itself is what a pickle memoizes: the same one twice is an alias.
            found[prefix] = value
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            if prefix in found or prefix in scalars:
                raise ConversionError(f"two values flatten to the same name {prefix!r}")
            scalars[prefix or "value"] = value
            continue
        skipped.append(prefix)
    return found, scalars, skipped




def select_part(path: str, tree: Any, select: str) -> tuple[Any, list[str]]:
    """The part of ``tree`` at the dotted path ``select``; and the names left out."""
    if not isinstance(select, str) or not select:
        raise TypeError("select must be a non-empty str, e.g. 'model' or 'state_dict'")
    node, walked, others = tree, [], []
    for part in select.split("."):
        if isinstance(node, dict):
            key = part if part in node else None
            if key is None and part.isdigit() and int(part) in node:
                key = int(part)  # optimizer states are keyed by parameter index
            if key is None:
                shown = ", ".join(repr(str(k)) for k in list(node)[:10])
                raise ConversionError(
                    f"{path}: no {part!r} in {'.'.join(walked) or 'the checkpoint'} "
                    f"(its keys: {shown})"
                )
            prefix = ".".join(walked + [""])
            others += [f"{prefix}{k}" for k in node if k != key]
            node = node[key]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            prefix = ".".join(walked + [""])
            others += [f"{prefix}{i}" for i in range(len(node)) if i != int(part)]
            node = node[int(part)]
        else:
            raise ConversionError(
                f"{path}: {'.'.join(walked) or 'the checkpoint'} has no part {part!r}"
            )
        walked.append(part)
    return node, others


