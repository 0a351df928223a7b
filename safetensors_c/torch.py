"""Load and save .safetensors files as PyTorch tensors.

The same functions as ``safetensors.torch``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`, :func:`save_model`, :func:`load_model`,
:func:`storage_ptr`, :func:`storage_size`, ``serialize``/``deserialize``,
and the shared-tensor helpers that transformers, accelerate and peft import
(``_find_shared_tensors``, ``_remove_duplicate_names``, ...); plus
:func:`save_sharded` and :func:`load_sharded` for checkpoints split into
several files.

Loading is zero-copy on the CPU: every tensor shares the memory of the
file's private, copy-on-write mapping (writing to a tensor never changes the
file). Saving streams each tensor's own memory to the file without copying
it first. Shared, non-contiguous and sparse tensors are refused exactly as
``safetensors.torch`` refuses them.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple, Union

try:
    import torch
    import torch.autograd.graph
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "safetensors_c.torch needs PyTorch, which is not installed: "
        "pip install safetensors_c[torch]"
    ) from exc

from . import _dtypes, _frameworks, _into, distributed, sharded
# The shared-tensor helpers keep the reference module's names: transformers,
# accelerate and peft import them from here.
from ._adapters.torch import (  # noqa: F401 - re-exported
    _CODE_BY_TORCH,
    _TORCH_BY_CODE,
    _end_ptr,
    _filter_shared_not_shared,
    _find_shared_tensors,
    _is_complete,
    _remove_duplicate_names,
    _resolve_device,
    _storage_ptr,
    _storage_size,
)
from ._adapters.torch import check_code as _check_code
from ._background import SaveHandle
from ._adapters.torch import to_array as _to_array
from ._core import SafetensorError
from ._open import safe_open
from ._reader import open_source
from ._terminal import escape_name
from ._writer import TensorSpec, deserialize, serialize, serialize_file

__all__ = [
    "save",
    "save_file",
    "load",
    "load_file",
    "save_model",
    "load_model",
    "load_into",
    "save_sharded",
    "load_sharded",
    "safe_open",
    "serialize",
    "serialize_file",
    "deserialize",
    "storage_ptr",
    "storage_size",
    "TensorSpec",
]

# The reference module's dtype tables: format code -> torch dtype, and
# torch dtype -> bytes per element.
_TYPES: Dict[str, torch.dtype] = dict(_TORCH_BY_CODE)
_SIZE: Dict[torch.dtype, int] = {dtype: dtype.itemsize for dtype in _CODE_BY_TORCH}


def _getdtype(dtype_str: str) -> torch.dtype:
    """The torch dtype of a format code such as ``"BF16"``."""
    return _TYPES[dtype_str]


def storage_ptr(tensor: torch.Tensor) -> int:
    """The address of the storage behind ``tensor`` (0 for tensors without one)."""
    return _storage_ptr(tensor)


def storage_size(tensor: torch.Tensor) -> int:
    """The size in bytes of the storage behind ``tensor``."""
    return _storage_size(tensor)


# ---------------------------------------------------------------------------
# MARK: files

def save(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors`` (contiguous, dense,
    not sharing memory). Byte-identical to ``safetensors.torch.save``."""
    return _frameworks.save("torch", tensors, metadata)


def save_file(
    tensors: Dict[str, torch.Tensor],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    *,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically, straight from their memory.

    Tensors on other devices are first copied to the CPU. Do not modify the
    tensors while the file is written. With ``background=True`` the tensors
    are snapshotted first and the file is written on a background thread;
    the returned handle's ``wait()`` tells when it is on disk.
    """
    return _frameworks.save_file("torch", tensors, filename, metadata, background=background)


def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Parses a whole file image; returns its tensors (CPU), in file order.

    An immutable ``bytes`` is copied once so the tensors can be writable; a
    ``bytearray`` is used in place.
    """
    return _frameworks.load("torch", data)


def load_file(
    filename: Union[str, os.PathLike],
    device: Union[str, int] = "cpu",
    *,
    backend: str = "auto",
    storage_options: Optional[Dict[str, Any]] = None,
    process_group: Any = None,
    plan: Optional[Any] = None,
    max_workers: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Every tensor of ``filename``, in file order, as torch tensors.

    On the CPU with ``backend="mmap"`` nothing is copied: the tensors share one
    private, copy-on-write mapping of the file; writing to them never changes
    the file. (Where the system refuses a writable mapping, see the README's
    "strict overcommit", the mapping is read-only and each tensor is a private
    copy instead, since torch has no read-only tensors.) Any other ``device``
    gets a copy there.

    With ``process_group`` (a torch.distributed group, every rank calling
    this together), each rank reads ~1/N of the file from storage and the
    ranks exchange the rest, so every rank gets every tensor (in memory of
    its own); with ``plan`` (tensor name -> dimension), only its
    tensor-parallel part of the planned tensors. See
    :mod:`safetensors_c.distributed`.
    """
    if process_group is not None:
        return distributed.load_file(filename, process_group, framework="pt", device=device,
                                     plan=plan, max_workers=max_workers)
    if plan is not None:
        raise ValueError("plan= splits tensors between ranks: it needs process_group=")
    return _frameworks.load_file(
        "torch", filename, device, backend=backend, storage_options=storage_options
    )


def _is_checkpoint_directory(filename: Any) -> bool:
    if not isinstance(filename, (str, os.PathLike)):
        return False
    path = os.fspath(filename)
    return os.path.isdir(path) or str(path).endswith(sharded.INDEX_SUFFIX)


# ---------------------------------------------------------------------------
# MARK: models

def save_model(
    model: "torch.nn.Module",
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    force_contiguous: bool = True,
    *,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Saves ``model.state_dict()``, dropping the extra names of shared tensors
    (tied weights). Each dropped name is recorded in the metadata as
    ``{dropped: kept}`` unless the caller's metadata already has that key."""
    # The model's own tensors when state_dict() would only hand out detached
    # views of them (no hooks, no extra state): the same bytes, in the same
    # order, without a new tensor object per value.
    state_dict = _live_state(model)
    if state_dict is None:
        state_dict = model.state_dict()
    metadata = None if metadata is None else dict(metadata)
    for kept, dropped_group in _shared_names(state_dict, []).items():
        for dropped in dropped_group:
            if metadata is None:
                metadata = {}
            if dropped not in metadata:
                metadata[dropped] = kept
            del state_dict[dropped]
    if force_contiguous and not all(v.is_contiguous() for v in state_dict.values()):
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        return save_file(state_dict, filename, metadata=metadata, background=background)
    except ValueError as e:
        if isinstance(e, SafetensorError):
            raise
        raise ValueError(
            f"{e} (save_model(..., force_contiguous=True) makes every tensor contiguous first)"
        ) from None


def _destination(name: str, tensor: "torch.Tensor") -> "_into.Destination":
    """The raw bytes of a CPU tensor, with the code and logical shape a file
    must hold to fill it."""
    code = _CODE_BY_TORCH.get(tensor.dtype)
    if code is None:
        raise TypeError(f"tensor {name!r}: dtype {tensor.dtype} has no safetensors equivalent")
    shape = tuple(tensor.shape)
    if code == "F4":  # torch counts pairs of values
        shape = _dtypes.f4_values_shape(shape)
    flat = tensor.detach().reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    return _into.Destination(raw.numpy(), code, shape)


def _fillable(tensor: "torch.Tensor") -> bool:
    """Whether the C core can write a file's bytes straight into the
    tensor's memory: dense, contiguous and in CPU memory. (Whether the
    bytes fit, dtype and shape, is the file's side of the check.)"""
    return tensor.layout == torch.strided and tensor.is_cpu and tensor.is_contiguous()


def _check_into(name: str, tensor: Any) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor {name!r} must be a torch.Tensor, not {type(tensor).__name__}")
    if not _fillable(tensor):
        if not tensor.is_cpu:
            raise ValueError(
                f"tensor {name!r} is on {tensor.device}; load_into fills CPU tensors (load_file "
                "with device=... moves tensors to other devices)"
            )
        if tensor.layout != torch.strided:
            raise ValueError(f"tensor {name!r} is {tensor.layout}; load_into needs dense tensors")
        raise ValueError(f"tensor {name!r} is not contiguous; load_into needs contiguous tensors")
    if _is_frozen_inference(tensor):
        raise RuntimeError(_INFERENCE_REFUSED.format(name=escape_name(name)))


# torch refuses in-place writes into an inference tensor outside
# inference_mode (it has no version counter to move); so do we, before any
# byte is written.
_INFERENCE_REFUSED = ("tensor {name}: it was created under torch.inference_mode() and cannot "
                      "be written outside it (an inference tensor has no version counter); "
                      "load inside torch.inference_mode(), or create the tensor outside it")


def _is_frozen_inference(tensor: "torch.Tensor") -> bool:
    return tensor.is_inference() and not torch.is_inference_mode_enabled()


def _path(filename: Any) -> Any:
    """A ``bytes`` filename is a path, as for :func:`load_file` and
    :func:`safe_open` (``load`` takes a file's bytes); anything else as given."""
    return os.fsdecode(filename) if isinstance(filename, bytes) else filename


def load_into(
    tensors: Mapping[str, torch.Tensor],
    filename: Union[str, os.PathLike],
    *,
    backend: str = "auto",
    max_workers: Optional[int] = None,
    drop_cache: bool = False,
) -> None:
    """Reads each named tensor of ``filename`` straight into the given,
    preallocated CPU tensor (name -> tensor), in parallel over at most
    ``max_workers`` threads (default: the number of CPUs) with the GIL
    released. The file's dtype and shape must equal each tensor's: every
    name, dtype and shape is checked before any byte is written (a
    SafetensorError names the first mismatch). Tensors of the file not in
    ``tensors`` are not read. With ``drop_cache=True`` each tensor's pages
    leave the page cache once copied (see :func:`load_model`)."""
    reader = open_source(_path(filename), backend=backend)
    destinations = {}
    for name, tensor in tensors.items():
        _check_into(name, tensor)
        destinations[name] = _destination(name, tensor)
    targets = _into.check_destinations(reader, destinations)
    workers = _into.check_workers(max_workers)
    with _written_in_place(list(tensors.values())):
        _into.fill(reader, targets, max_workers=workers, drop_cache=drop_cache)


class _written_in_place:
    """Tells autograd that the tensors were modified in place once the block
    ends (even by an error: some may hold part of the data then).

    The C core writes into the tensors' memory behind torch's back, so their
    version counters would not move, and a graph that saved one of them
    before the load would differentiate with the new values silently; with
    the counter moved, backward fails ("modified by an inplace operation")
    exactly as after ``copy_``. One call for all tensors: bumping a counter
    costs no pass over the data."""

    def __init__(self, tensors: List["torch.Tensor"]) -> None:
        self.tensors = tensors

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: Any) -> None:
        if self.tensors:
            torch.autograd.graph.increment_version(self.tensors)


def _has_load_hooks(model: "torch.nn.Module") -> bool:
    """Whether loading must go through load_state_dict to keep its semantics."""
    if type(model).load_state_dict is not torch.nn.Module.load_state_dict:
        return True
    for module in model.modules():
        if type(module)._load_from_state_dict is not torch.nn.Module._load_from_state_dict:
            return True
        if getattr(module, "_load_state_dict_pre_hooks", None) or getattr(
            module, "_load_state_dict_post_hooks", None
        ):
            return True
    return False


def _live_state(model: "torch.nn.Module") -> Optional[Dict[str, "torch.Tensor"]]:
    """The model's parameters and persistent buffers under their state-dict
    names, when ``model.state_dict()`` would hand out exactly these (as
    detached views): no module overrides ``state_dict``,
    ``_save_to_state_dict`` or ``get_extra_state``, nor has a state-dict
    hook. Else None, and the caller asks ``state_dict()`` itself. Walks the
    modules as ``state_dict`` does (a shared submodule under each of its
    names), without making a detached tensor per value."""
    base = torch.nn.Module
    state: Dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        if (cls.state_dict is not base.state_dict
                or cls._save_to_state_dict is not base._save_to_state_dict
                or cls.get_extra_state is not base.get_extra_state
                or module._state_dict_hooks or module._state_dict_pre_hooks):
            return None
        dot = prefix + "." if prefix else ""
        for name, value in module._parameters.items():
            if value is not None:
                state[dot + name] = value
        transient = module._non_persistent_buffers_set
        for name, value in module._buffers.items():
            if value is not None and name not in transient:
                state[dot + name] = value
    return state


def _state_is_live(model: "torch.nn.Module", model_state: Mapping[str, Any]) -> bool:
    """Whether every value of ``model.state_dict()`` is the model's own
    parameter or buffer (same memory, shape, strides and dtype), so that
    writing into it loads the model. A state-dict hook or an overridden
    ``state_dict`` may hand out copies (or extra state that is no tensor):
    writing into those would change nothing, so such a model is loaded
    through ``load_state_dict``."""
    live = dict(model.named_parameters(remove_duplicate=False))
    live.update(model.named_buffers(remove_duplicate=False))
    for name, value in model_state.items():
        own = live.get(name)
        if (own is None or not isinstance(value, torch.Tensor) or value.is_meta != own.is_meta
                or value.dtype != own.dtype or value.layout != own.layout
                or value.shape != own.shape):
            return False
        if value.layout == torch.strided and not value.is_meta and (
                value.data_ptr() != own.data_ptr() or value.stride() != own.stride()):
            return False
    return True


def _quoted(names) -> str:
    """Names as torch's messages quote them, each escaped (a name from a
    file may hold control characters)."""
    return ", ".join(f'"{escape_name(k)}"' for k in sorted(names))


def _size_mismatch(model, problems: List[str]) -> RuntimeError:
    return RuntimeError(
        f"Error(s) in loading state_dict for {model.__class__.__name__}:\n\t"
        + "\n\t".join(problems)
    )


def _shown_path(filename: Any) -> str:
    """A path as messages show it: as it is when printable, else its repr
    (the C core's rule)."""
    text = os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else None
    if text is None:
        return repr(filename)
    return text if text.isprintable() else repr(text)


def _raise_if_strict(model, filename, strict: bool, missing: Set[str],
                     unexpected: List[str]) -> None:
    if not strict or not (missing or unexpected):
        return
    # torch's own wording, which users and tools search for.
    problems = []
    if missing:
        problems.append(f"Missing key(s) in state_dict: {_quoted(missing)}.")
    if unexpected:
        problems.append(f"Unexpected key(s) in state_dict: {_quoted(unexpected)}.")
    raise RuntimeError(
        f"Error(s) in loading state_dict for {model.__class__.__name__} from "
        f"{_shown_path(filename)}:\n\t"
        + "\n\t".join(problems)
    )


def _shared_names(state: Mapping[str, "torch.Tensor"],
                  preferred_names: List[str]) -> Dict[str, List[str]]:
    """``_remove_duplicate_names(state, preferred_names=...)`` for a model
    of many tensors: when every tensor has a storage of its own and covers
    all of it (the usual case, seen in a few passes over the values) there
    is nothing to drop; otherwise only the tensors it can act on go through
    it: those that share a storage with another and those that do not cover
    their own (which it refuses). Every other tensor is a group of one that
    it keeps as it is. Values that are no tensor (a module's extra state)
    share nothing."""
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    tensors = list(state.values())
    try:
        storages = [t.untyped_storage() for t in tensors]
    except Exception:  # a tensor without storage: the general rule
        return _remove_duplicate_names(state, preferred_names=preferred_names)
    ptrs = [s.data_ptr() for s in storages]
    sizes = [s.nbytes() for s in storages]
    if (0 not in ptrs and 0 not in sizes and len(set(ptrs)) == len(ptrs)
            and ptrs == [t.data_ptr() for t in tensors]
            and sizes == [t.nbytes for t in tensors]):
        return {}
    first: Dict[int, str] = {}
    suspects: Dict[str, torch.Tensor] = {}
    for (name, tensor), storage, size in zip(state.items(), ptrs, sizes):
        if not storage or not size:
            continue  # no memory of its own (meta, empty): never grouped
        other = first.setdefault(storage, name)
        if other != name:
            suspects[other] = state[other]
            suspects[name] = tensor
        elif tensor.data_ptr() != storage or tensor.nbytes != size:
            suspects[name] = tensor
    if not suspects:
        return {}
    return _remove_duplicate_names(suspects, preferred_names=preferred_names)


def _add_identity_ties(model: "torch.nn.Module", to_removes: Dict[str, List[str]],
                       in_file: Set[str]) -> None:
    """Ties that storage addresses cannot show (a model on the meta device):
    one Parameter object under several names (every parameter and buffer,
    as named_parameters and named_buffers list them without removing
    duplicates)."""
    named = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        named.extend((dot + k, v) for k, v in module._parameters.items() if v is not None)
        named.extend((dot + k, v) for k, v in module._buffers.items() if v is not None)
    if len({id(value) for _, value in named}) == len(named):
        return
    known = set(to_removes) | {n for names in to_removes.values() for n in names}
    groups: Dict[int, List[str]] = {}
    for name, value in named:
        groups.setdefault(id(value), []).append(name)
    for names in groups.values():
        if len(names) < 2 or known.intersection(names):
            continue
        present = sorted(n for n in names if n in in_file)
        keep = present[0] if present else sorted(names)[0]
        to_removes[keep] = sorted(n for n in names if n != keep)


def _retie(model: "torch.nn.Module", to_removes: Mapping[str, List[str]],
           in_file: Set[str]) -> None:
    """After assign=True replaced the kept tensor of each tied group, points
    the names the file did not hold at it again."""
    for keep, names in to_removes.items():
        if keep not in in_file:
            continue
        owner, _, leaf = keep.rpartition(".")
        source = model.get_submodule(owner)
        value = source._parameters.get(leaf)
        kind = "_parameters" if value is not None else "_buffers"
        if value is None:
            value = source._buffers.get(leaf)
        for name in names:
            if name in in_file:
                continue
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if attr in getattr(module, kind):
                getattr(module, kind)[attr] = value


def _readers(filename: Any, backend: str) -> List[Any]:
    """One reader per file: the shards of a checkpoint directory or index,
    else the file itself."""
    if not _is_checkpoint_directory(filename):
        return [open_source(filename, backend=backend)]
    with sharded.safe_open_sharded(filename, "pt", backend=backend) as f:
        return [shard.reader for shard in f.shards.values()]


def _table(reader: Any) -> List[Tuple[str, str, Tuple[int, ...]]]:
    """(name, dtype code, shape) of every tensor of ``reader``, in data order."""
    if hasattr(reader, "table"):
        return [row[:3] for row in reader.table()]
    return [(name,) + tuple(reader.info(name)[:2]) for name in reader.offset_keys()]


class _Plan(NamedTuple):
    """What a load will do, worked out before anything is written."""

    missing: Set[str]  # names of the model the file lacks
    unexpected: List[str]  # names of the file the model lacks (or holds twice)
    ties: Dict[str, List[str]]  # kept name -> the names tied to it
    in_file: Set[str]
    direct: List[Tuple[Any, List[str]]]  # (reader, names copied by the core into the model)
    cast: List[Tuple[Any, str]]  # (reader, name) copied through torch (dtype, device, strides)
    on_meta: List[str]  # names skipped: the model's tensor is on the meta device
    problems: List[str]  # size mismatches and tensors that cannot be written


def _plan(model: "torch.nn.Module", readers: List[Any], state: Mapping[str, "torch.Tensor"],
          hooks: bool, through_torch: bool) -> _Plan:
    """Names (missing, unexpected), ties and where each tensor goes, checked
    against the model: shapes (except where the model's own hooks may reshape
    what they are given) and, for copies, whether the tensor can be written."""
    file_names = [name for reader in readers for name in reader.offset_keys()]
    in_file = set(file_names)
    ties = _shared_names(state, file_names)
    _add_identity_ties(model, ties, in_file)
    dropped = {name for group in ties.values() for name in group}
    missing = {name for name in state if name not in in_file}
    unexpected = [name for name in file_names if name not in state]
    # A tied name absent from the file is filled through the name it shares
    # memory with; present in the file, it is one tensor too many.
    for name in sorted(dropped):
        if name in missing:
            missing.remove(name)
        else:
            unexpected.append(name)

    direct: List[Tuple[Any, List[str]]] = []
    cast: List[Tuple[Any, str]] = []
    on_meta: List[str] = []
    problems: List[str] = []
    frozen = not torch.is_inference_mode_enabled()
    for reader in readers:
        rows = [row for row in _table(reader) if row[0] in state and row[0] not in dropped]
        targets = [state[row[0]] for row in rows]
        # The usual case in one pass: the model's tensor has the file's shape
        # and dtype and can be written in place. Every other tensor is looked
        # at one by one below.
        usual = [
            code != "F4" and target.shape == shape and not through_torch
            and not target.is_meta and target.layout == torch.strided and target.is_cpu
            and _CODE_BY_TORCH.get(target.dtype) == code and target.is_contiguous()
            and not (frozen and target.is_inference())
            for (_, code, shape), target in zip(rows, targets)
        ]
        names: List[str] = []
        for (name, code, shape), target, is_usual in zip(rows, targets, usual):
            if is_usual:
                names.append(name)
                continue
            torch_shape = tuple(shape)
            if code == "F4":  # torch counts pairs of values
                torch_shape = _dtypes.f4_pairs_shape(torch_shape)
            if target.shape != torch_shape:
                if not hooks:
                    problems.append(
                        f"size mismatch for {escape_name(name)}: the file holds shape "
                        f"{list(torch_shape)}, the model's tensor has shape {list(target.shape)}."
                    )
                continue
            if through_torch:
                continue
            if target.is_meta:
                on_meta.append(name)
            elif _is_frozen_inference(target):
                problems.append(_INFERENCE_REFUSED.format(name=escape_name(name)) + ".")
            elif target.layout != torch.strided:
                # copy_ would fail only once the other tensors are written.
                problems.append(f"cannot copy into {escape_name(name)}: the model's tensor is "
                                f"{target.layout}, not dense; make it a dense tensor first.")
            elif _CODE_BY_TORCH.get(target.dtype) == code and _fillable(target):
                names.append(name)
            else:
                _check_code(name, code, tuple(shape))
                cast.append((reader, name))
        direct.append((reader, names))
    return _Plan(missing, unexpected, ties, in_file, direct, cast, on_meta, problems)


def _load_through_torch(model: "torch.nn.Module", readers: List[Any], plan: _Plan,
                        device: Any, backend: str, assign: bool) -> None:
    """The file's tensors as a state dict, handed to ``model.load_state_dict``
    (names already checked: strict=False)."""
    state = {}
    for reader in readers:
        handle = safe_open._from_reader(reader, "pt", device, backend)
        for name in reader.offset_keys():
            state[name] = handle.get_tensor(name)
    model.load_state_dict(state, strict=False, assign=assign)
    if assign:
        _retie(model, plan.ties, plan.in_file)


def _held_memory(names: List[str], tensors: List["torch.Tensor"]
                 ) -> Tuple[List[Any], List[int], List[int]]:
    """(storages, addresses, lengths) of the tensors' bytes, each storage
    held by the caller while the core writes without the GIL: another thread
    may swap a tensor's storage meanwhile (``t.data = ...``, ``t.set_()``)
    and drop the old one's last reference. Each address is checked to lie in
    the storage held for it (a swap between reading the two is refused)."""
    storages, addresses, lengths = [], [], []
    for name, tensor in zip(names, tensors):
        storage = tensor.untyped_storage()
        address, length = tensor.data_ptr(), tensor.nbytes
        start = storage.data_ptr()
        if length and not (start <= address and address + length <= start + storage.nbytes()):
            raise RuntimeError(f"tensor {escape_name(name)}: its storage changed while loading")
        storages.append(storage)
        addresses.append(address)
        lengths.append(length)
    return storages, addresses, lengths


def _copy_direct(state: Mapping[str, "torch.Tensor"], plan: _Plan, workers: int,
                 drop_cache: bool) -> None:
    """The planned tensors, straight from the files into the model's memory:
    one batch of the core per file (each with every thread: a large shard is
    cut into chunks), then the casts through torch."""
    written = [state[name] for _, names in plan.direct for name in names]
    with _written_in_place(written):
        for reader, names in plan.direct:
            if not names:
                continue
            tensors = [state[name] for name in names]
            if hasattr(reader, "read_batch"):
                # The core writes without the GIL: another thread may swap a
                # tensor's storage meanwhile (``t.data = ...``, ``t.set_()``)
                # and drop the old one's last reference. Holding each storage
                # keeps every address valid until the batch returns.
                storages, addresses, lengths = _held_memory(names, tensors)
                _into.copy_batch(reader, names, addresses, lengths,
                                 max_workers=workers, drop_cache=drop_cache)
                del storages
            else:  # a byte source: read through Python, tensor by tensor
                targets = _into.check_destinations(
                    reader, {name: _destination(name, t) for name, t in zip(names, tensors)})
                _into.fill(reader, targets, max_workers=workers)
    if plan.cast:
        with torch.no_grad():
            for reader, name in plan.cast:
                code = reader.info(name)[0]
                state[name].copy_(_to_array(name, code, reader.tensor(name), None))


def load_model(
    model: "torch.nn.Module",
    filename: Union[str, os.PathLike],
    strict: bool = True,
    device: Union[str, int] = "cpu",
    *,
    assign: bool = False,
    backend: Optional[str] = None,
    max_workers: Optional[int] = None,
    drop_cache: bool = False,
) -> Tuple[Set[str], List[str]]:
    """Loads ``filename`` (a file, or a sharded checkpoint's directory or
    index) into ``model`` and returns ``(missing, unexpected)``.

    On the CPU, every tensor is read straight into the model's own
    parameter or buffer (no intermediate state dict), in one call of the C
    core that copies them all on at most ``max_workers`` threads (default:
    the number of CPUs) with the GIL released; shapes are all checked first.
    A parameter whose dtype differs from the file's is cast on copy, as
    ``load_state_dict`` does. With ``assign=True`` nothing is copied:
    parameters and buffers become views of the file's mapping (and take the
    file's dtypes), which suits a model built on the ``meta`` device.

    Tied weights that the file stores once (see :func:`save_model`) are
    restored. With ``strict``, names missing from the file or unknown to the
    model raise RuntimeError ("Missing key(s) in state_dict" / "Unexpected
    key(s) in state_dict") before any tensor is written or assigned, on
    every path (``assign=True``, sharded checkpoints and models with loading
    hooks included: the hooks do not run then); a shape mismatch raises
    RuntimeError ("size mismatch for ...") whatever ``strict`` is, also
    before any write (except for models with their own hooks, which may
    reshape what they are given). Other devices, and models with their own
    loading hooks, are loaded through ``model.load_state_dict``.

    Every write into a parameter or buffer moves its autograd version
    counter, as ``copy_`` does: a graph that saved a tensor before the load
    fails on backward ("modified by an inplace operation"). Tensors on the
    ``meta`` device hold no data, so copying into them does nothing: they
    are skipped with a UserWarning (as ``load_state_dict`` warns) that says
    to pass ``assign=True``.

    Everything that can be checked is checked before the first write; a
    read that fails midway (the file cut short or replaced under the load)
    is not. Its error is raised once the running reads have stopped, and the
    model is then partly loaded: the tensors written so far hold the file's
    bytes (their version counters moved), the others their old values. Load
    again or discard the model. A model whose ``state_dict()`` hands out
    copies (a state-dict hook, an overridden ``state_dict``) is loaded
    through ``load_state_dict``, so the copies are never what is written.

    ``backend`` defaults to ``"pread"`` when tensors are copied into the
    model (reading from the page cache straight into the parameters beats
    faulting a mapping in page by page, warm and cold), and to ``"auto"``
    for ``assign=True`` and for ``load_state_dict``, which keep or copy
    views of the file. Either can be asked for explicitly.

    ``drop_cache=True`` drops each tensor's pages from the page cache once
    it is copied into the model, so that loading a checkpoint larger than
    the free memory does not push the rest of the machine's working set out
    of the cache (the bytes are then read with pread even with
    ``backend="mmap"``). It applies to the tensors the core copies; those
    cast or moved through torch (another dtype or device, loading hooks) are
    not dropped, and ``assign=True``, whose tensors are the cached pages,
    refuses it (ValueError).
    """
    if drop_cache and assign:
        raise ValueError("drop_cache=True drops the pages of copied tensors, and assign=True "
                         "copies nothing: its tensors are views of the cached file")
    filename = _path(filename)
    through_torch = assign or _resolve_device(device) is not None
    hooks = _has_load_hooks(model)
    through_torch = through_torch or hooks
    state = None if through_torch else _live_state(model)
    if state is None:
        state = model.state_dict()
        through_torch = through_torch or not _state_is_live(model, state)
    if backend is None:
        backend = "auto" if through_torch else "pread"
    readers = _readers(filename, backend)
    plan = _plan(model, readers, state, hooks, through_torch)
    if plan.problems:
        raise _size_mismatch(model, plan.problems)
    _raise_if_strict(model, filename, strict, plan.missing, plan.unexpected)
    if through_torch:
        _load_through_torch(model, readers, plan, device, backend, assign)
        return plan.missing, plan.unexpected
    if plan.on_meta:
        _warn_meta(plan.on_meta)
    _copy_direct(state, plan, _into.check_workers(max_workers), drop_cache)
    return plan.missing, plan.unexpected


def _warn_meta(names: List[str]) -> None:
    """torch's load_state_dict warns when it copies into meta tensors (which
    hold no data, so the copy does nothing); so does load_model, once."""
    shown = ", ".join(f'"{n}"' for n in names[:5]) + (", ..." if len(names) > 5 else "")
    warnings.warn(
        f"load_model: {len(names)} tensor(s) of the model are on the meta device ({shown}); "
        "copying into a meta tensor does nothing, so they still hold no data. Pass "
        "assign=True to replace them with the file's tensors.",
        UserWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints

save_sharded = _frameworks.bind_framework(sharded.save_sharded, "pt", __name__)
load_sharded = _frameworks.bind_framework(sharded.load_sharded, "pt", __name__)


# ---------------------------------------------------------------------------
# MARK: client-facing extras
# Names that programs import from ``safetensors.torch`` beyond its documented API, found by
# reading the clients' sources (docs/compat.md lists which client uses which).


def _to_ndarray(tensor: torch.Tensor) -> Tuple[Any, torch.Tensor]:
    """A tensor's bytes as a NumPy ``uint8`` array, and the tensor they belong to.

    diffusers builds the bodies of its remote VAE requests with
    ``safetensors.torch._to_ndarray(t)[0].tobytes()``. The bytes are the tensor's elements in
    C order, little-endian, as a .safetensors file holds them. A tensor on another device is
    copied to the CPU and a non-contiguous one to C order first (the reference instead reads
    ``numel * itemsize`` bytes from the data pointer, which for a non-contiguous tensor are not
    its elements). The array shares the memory of the returned tensor.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise ValueError(f"a {tensor.layout} tensor has no flat bytes; call .to_dense() first")
    tensor = tensor.detach().to("cpu").contiguous()
    data = tensor.reshape(-1).view(torch.uint8)
    if sys.byteorder == "big" and tensor.element_size() > 1:
        data = data.view(-1, tensor.element_size()).flip(1).reshape(-1)
    return data.numpy(), tensor
