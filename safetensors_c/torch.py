"""Load and save .safetensors files as PyTorch tensors.

The same functions as ``safetensors.torch``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`, :func:`save_model`, :func:`load_model`;
plus :func:`save_sharded` and :func:`load_sharded` for checkpoints split
into several files (see :mod:`safetensors_c.sharded`).

Loading is zero-copy on the CPU: every tensor shares the memory of the
file's private, copy-on-write mapping (writing to a tensor never changes the
file). Saving streams each tensor's own memory to the file without copying
it first. Shared, non-contiguous and sparse tensors are refused exactly as
``safetensors.torch`` refuses them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "safetensors_c.torch needs PyTorch, which is not installed: "
        "pip install safetensors_c[torch]"
    ) from exc

import numpy as np

from . import _core
from ._core import SafetensorError
from ._open import TensorSlice, safe_open
from .numpy import check_metadata, check_tensor_name

__all__ = [
    "save",
    "save_file",
    "load",
    "load_file",
    "save_model",
    "load_model",
    "save_sharded",
    "load_sharded",
]


# ---------------------------------------------------------------------------
# MARK: dtypes

# format code -> torch dtype; torch versions without a dtype simply lack the entry.
_TORCH_BY_CODE: Dict[str, torch.dtype] = {}
for _code, _name in (
    ("BOOL", "bool"),
    ("F4", "float4_e2m1fn_x2"),
    ("U8", "uint8"),
    ("I8", "int8"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E8M0", "float8_e8m0fnu"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("I16", "int16"),
    ("U16", "uint16"),
    ("F16", "float16"),
    ("BF16", "bfloat16"),
    ("I32", "int32"),
    ("U32", "uint32"),
    ("F32", "float32"),
    ("C64", "complex64"),
    ("F64", "float64"),
    ("I64", "int64"),
    ("U64", "uint64"),
):
    if hasattr(torch, _name):
        _TORCH_BY_CODE[_code] = getattr(torch, _name)
_CODE_BY_TORCH: Dict[torch.dtype, str] = {dt: code for code, dt in _TORCH_BY_CODE.items()}

# The NumPy dtype of the same width that torch.from_numpy understands, by
# itemsize: ml_dtypes arrays (bfloat16, float8) are reinterpreted through it.
_RAW_NUMPY = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32),
              8: np.dtype(np.uint64)}
# NumPy dtypes torch.from_numpy takes as they are.
_FROM_NUMPY_DTYPES = frozenset(
    np.dtype(t) for t in ("?", "<u1", "<i1", "<i2", "<u2", "<f2", "<i4", "<u4", "<f4", "<c8",
                          "<f8", "<i8", "<u8")
)


# ---------------------------------------------------------------------------
# MARK: loading

def _check_f4_shape(name: str, shape: Tuple[int, ...]) -> None:
    if not shape or shape[-1] % 2:
        raise SafetensorError(
            f"tensor {name!r}: F4 tensor of shape {list(shape)} cannot be a torch tensor: "
            f"torch.float4_e2m1fn_x2 packs pairs of values along the last dimension, "
            f"which must be even; load it with framework='np' instead"
        )


def _torch_dtype(name: str, code: str) -> torch.dtype:
    dtype = _TORCH_BY_CODE.get(code)
    if dtype is None:
        raise SafetensorError(
            f"tensor {name!r}: dtype {code} has no torch equivalent in torch "
            f"{torch.__version__}; load it with framework='np' (as a PackedArray) instead"
        )
    return dtype


def _from_numpy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch tensor sharing ``array``'s memory, reinterpreted as ``dtype``."""
    array = array.view(np.ndarray)  # drops PackedArray
    if array.dtype not in _FROM_NUMPY_DTYPES:
        array = array.view(_RAW_NUMPY[array.dtype.itemsize])
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)  # torch has no negative strides
    if not array.flags.writeable:
        # A read-only mapping (the strict-overcommit fallback): torch has no
        # read-only tensors, and a write through a shared view would kill the
        # process with SIGSEGV. Such tensors are private copies instead.
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor if tensor.dtype == dtype else tensor.view(dtype)


def _tensor_from_file(file, name: str) -> torch.Tensor:
    """The tensor ``name`` of a core file object, as a zero-copy torch tensor."""
    code, shape = file.info(name)[:2]
    dtype = _torch_dtype(name, code)
    if code == "F4":
        _check_f4_shape(name, shape)
    return _from_numpy(file.tensor(name), dtype)


def _tensors_from_file(file) -> Dict[str, torch.Tensor]:
    result = {}
    for name in file.offset_keys():
        result[name] = _tensor_from_file(file, name)
    return result


def _resolve_device(device: Any) -> Optional[torch.device]:
    """None for the CPU; otherwise the torch device to move tensors to.

    Accepts what the reference accepts ("cpu", "cuda", "cuda:N", "mps", an
    int N for accelerator N, ...) and torch.device objects. A name torch does
    not know is a SafetensorError; a device that does not exist here is a
    RuntimeError (as torch, and so the reference, reports it).
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, bool) or not isinstance(device, (str, int)):
        raise SafetensorError(f"device {device!r} is invalid; use e.g. 'cpu', 'cuda' or 'cuda:1'")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise SafetensorError(
                f"device {device!r} is invalid; use e.g. 'cpu', 'cuda' or 'cuda:1'"
            ) from None
    if dev.type == "cpu":
        return None
    if dev.type == "meta":
        raise SafetensorError(f"device {device!r} is invalid: meta tensors hold no data")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeError(
                f"device {device!r} is not available: this PyTorch has no usable CUDA "
                f"(built without it, or no GPU visible); load with device='cpu'"
            )
        if dev.index is not None and dev.index >= count:
            raise RuntimeError(
                f"device {device!r} is not available: only {count} CUDA device(s) visible"
            )
        return dev
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError(
                f"device {device!r} is not available: this PyTorch has no usable MPS "
                f"backend; load with device='cpu'"
            )
        return dev
    try:
        torch.empty(0, device=dev)
    except Exception as exc:  # any other backend (xpu, npu, ...) torch may know
        raise RuntimeError(f"device {device!r} is not available: {exc}") from None
    return dev


class _TorchSafeOpen(safe_open):
    """``safe_open(..., framework="pt")``: the same handle, giving torch tensors."""

    def __init__(
        self,
        filename,
        framework: str = "pt",
        device: Any = "cpu",
        *,
        backend: str = "mmap",
        max_header_size: Optional[int] = None,
        verify_digests: bool = False,
    ) -> None:
        self._device = _resolve_device(device)
        super().__init__(
            filename,
            framework,
            "cpu",
            backend=backend,
            max_header_size=max_header_size,
            verify_digests=verify_digests,
        )

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self._device is None else tensor.to(self._device)

    def get_tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name``, sharing the file's mapping on the CPU."""
        return self._place(_tensor_from_file(self._handle(), name))

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        """Every tensor, in file order."""
        file = self._handle()
        return {name: self._place(_tensor_from_file(file, name)) for name in file.offset_keys()}

    def get_slice(self, name: str) -> "TorchTensorSlice":
        file = self._handle()
        info = file.info(name)
        dtype = _torch_dtype(name, info[0])
        if info[0] == "F4":
            _check_f4_shape(name, info[1])
        return TorchTensorSlice(file, name, info, dtype, self._device)


class TorchTensorSlice(TensorSlice):
    """A lazy tensor slice whose results are torch tensors.

    Indices are NumPy/torch basic or advanced indices over the torch shape
    (for F4, the last dimension counts pairs); ``get_shape()`` gives the
    logical shape, as the reference does.
    """

    __slots__ = ("_torch_dtype", "_device")

    def __init__(self, file, name, info, dtype, device) -> None:
        super().__init__(file, name, info)
        self._torch_dtype = dtype
        self._device = device

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        elif isinstance(index, tuple):
            index = tuple(i.numpy() if isinstance(i, torch.Tensor) else i for i in index)
        result = np.asarray(super().__getitem__(index))
        tensor = _from_numpy(result, self._torch_dtype)
        return tensor if self._device is None else tensor.to(self._device)


def load_file(
    filename: Union[str, os.PathLike],
    device: Union[str, int] = "cpu",
    *,
    backend: str = "mmap",
) -> Dict[str, torch.Tensor]:
    """Every tensor of ``filename``, in file order, as torch tensors.

    On the CPU with ``backend="mmap"`` nothing is copied: the tensors share one
    private, copy-on-write mapping of the file; writing to them never changes
    the file. (Where the system refuses a writable mapping, see the README's
    "strict overcommit", the mapping is read-only and each tensor is a private
    copy instead, since torch has no read-only tensors.) Any other ``device``
    gets a copy there.
    """
    with _TorchSafeOpen(filename, "pt", device, backend=backend) as f:
        return f.get_tensors()


def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Parses a whole file image; returns its tensors (CPU), in file order.

    An immutable ``bytes`` is copied once so the tensors can be writable; a
    ``bytearray`` is used in place.
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
    if view.readonly:
        data = bytearray(view)
    return _tensors_from_file(_core.open_buffer(data))


# ---------------------------------------------------------------------------
# MARK: shared tensors (the reference's rules, so that the same inputs are
# refused, and save_model/load_model drop and restore the same names)

def _storage_ptr(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except Exception:
        return 0  # meta and other storage-less tensors


def _storage_size(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().nbytes()
    except Exception:
        return tensor.nelement() * tensor.element_size()


def _end_ptr(tensor: torch.Tensor) -> int:
    if tensor.nelement():
        return tensor.view(-1)[-1].data_ptr() + tensor.element_size()
    return tensor.data_ptr()


def _filter_shared_not_shared(groups: List[Set[str]], state_dict) -> List[Set[str]]:
    """Splits same-storage groups into runs whose byte ranges really overlap."""
    filtered: List[Set[str]] = []
    for shared in groups:
        if len(shared) < 2:
            filtered.append(shared)
            continue
        areas = sorted(
            (state_dict[name].data_ptr(), _end_ptr(state_dict[name]), name) for name in shared
        )
        _, last_stop, last_name = areas[0]
        filtered.append({last_name})
        for start, stop, name in areas[1:]:
            if start >= last_stop:
                filtered.append({name})
            else:
                filtered[-1].add(name)
            last_stop = stop
    return filtered


def _find_shared_tensors(state_dict: Mapping[str, torch.Tensor]) -> List[Set[str]]:
    groups: Dict[Any, Set[str]] = defaultdict(set)
    for name, tensor in state_dict.items():
        if (
            tensor.device != torch.device("meta")
            and _storage_ptr(tensor) != 0
            and _storage_size(tensor) != 0
        ):
            groups[(tensor.device, _storage_ptr(tensor), _storage_size(tensor))].add(name)
    return _filter_shared_not_shared(list(sorted(groups.values())), state_dict)


def _is_complete(tensor: torch.Tensor) -> bool:
    nbytes = tensor.nelement() * tensor.element_size()
    return tensor.data_ptr() == _storage_ptr(tensor) and nbytes == _storage_size(tensor)


def _remove_duplicate_names(
    state_dict: Mapping[str, torch.Tensor],
    *,
    preferred_names: Optional[List[str]] = None,
    discard_names: Optional[List[str]] = None,
) -> Dict[str, List[str]]:
    """For each group of shared tensors: the name to keep -> the names to drop."""
    preferred = set(preferred_names or [])
    discard = set(discard_names or [])
    to_remove: Dict[str, List[str]] = defaultdict(list)
    for shared in _find_shared_tensors(state_dict):
        complete = {name for name in shared if _is_complete(state_dict[name])}
        if not complete:
            raise RuntimeError(
                f"these tensors share storage, but none of them covers all of it: {shared}; "
                "refusing to save or load them, since the file could hold much more than the "
                "model needs"
            )
        keep = sorted(complete)[0]
        kept_not_discarded = complete.difference(discard)
        if kept_not_discarded:
            keep = sorted(kept_not_discarded)[0]
        if preferred:
            chosen = preferred.intersection(complete)
            if chosen:
                keep = sorted(chosen)[0]
        for name in sorted(shared):
            if name != keep:
                to_remove[keep].append(name)
    return to_remove


# ---------------------------------------------------------------------------
# MARK: saving

def _evaluate_tensors_for_save(tensors) -> None:
    """Input checks, in the reference's order and with its exception types."""
    if not isinstance(tensors, dict):
        raise ValueError(
            f"tensors must be a dict of str to torch.Tensor, not {type(tensors).__name__}"
        )
    sparse = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"tensor {name!r}: expected a torch.Tensor, not {type(tensor).__name__}"
            )
        if tensor.layout != torch.strided:
            sparse.append(name)
    if sparse:
        raise ValueError(
            f"sparse tensors cannot be stored: {sparse}; convert them with .to_dense() first "
            "(the file may then be much larger)"
        )
    failing = [names for names in _find_shared_tensors(tensors) if len(names) > 1]
    if failing:
        raise RuntimeError(
            f"these tensors share memory, so they would be stored twice and load back as "
            f"separate copies: {failing}; save the model with save_model(), which stores "
            "shared weights once"
        )


def _bytes_of(tensor: torch.Tensor) -> np.ndarray:
    """A flat uint8 NumPy view of a contiguous CPU tensor's bytes (no copy)."""
    if tensor.nelement() == 0:
        return np.empty(0, np.uint8)
    flat = tensor.detach().reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat.numpy()


def _prepare(tensors, metadata):
    """names, codes, logical shapes, byte arrays and metadata for the core writer."""
    _evaluate_tensors_for_save(tensors)
    metadata = check_metadata(metadata)
    names, codes, shapes, arrays = [], [], [], []
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise ValueError(
                f"tensor {name!r} is not contiguous; call .contiguous() on it before saving "
                "(or, if it is a view of another tensor, save only the full tensor and slice "
                "it after loading)"
            )
        check_tensor_name(name)
        code = _CODE_BY_TORCH.get(tensor.dtype)
        if code is None:
            raise SafetensorError(
                f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a safetensors "
                f"file; supported: {', '.join(str(d) for d in _TORCH_BY_CODE.values())}"
            )
        shape = tuple(int(d) for d in tensor.shape)
        if code == "F4":
            if not shape:
                raise SafetensorError(
                    f"tensor {name!r}: a 0-d float4_e2m1fn_x2 tensor has no logical shape "
                    "(each element is a pair of values); give it at least one dimension"
                )
            shape = shape[:-1] + (shape[-1] * 2,)
        if tensor.device.type != "cpu":
            tensor = tensor.to("cpu")
        if tensor.is_conj() or tensor.is_neg():
            tensor = tensor.resolve_conj().resolve_neg()
        names.append(name)
        codes.append(code)
        shapes.append(shape)
        arrays.append(_bytes_of(tensor))
    return names, codes, shapes, arrays, metadata


def save(
    tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None
) -> bytes:
    """The bytes of a .safetensors file holding ``tensors`` (contiguous, dense,
    not sharing memory). Byte-identical to ``safetensors.torch.save``."""
    names, codes, shapes, arrays, metadata = _prepare(tensors, metadata)
    return _core.save(names, codes, shapes, arrays, metadata, None)


def save_file(
    tensors: Dict[str, torch.Tensor],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes ``tensors`` to ``filename`` atomically, straight from their memory.

    Tensors on other devices are first copied to the CPU. Do not modify the
    tensors while the file is written.
    """
    names, codes, shapes, arrays, metadata = _prepare(tensors, metadata)
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f"filename must be a str or os.PathLike, not {type(filename).__name__}")
    path = os.fspath(filename)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    _core.save(names, codes, shapes, arrays, metadata, path)


def save_model(
    model: "torch.nn.Module",
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    force_contiguous: bool = True,
) -> None:
    """Saves ``model.state_dict()``, dropping the extra names of shared tensors
    (tied weights). Each dropped name is recorded in the metadata as
    ``{dropped: kept}`` unless the caller's metadata already has that key."""
    state_dict = model.state_dict()
    metadata = None if metadata is None else dict(metadata)
    for kept, dropped_group in _remove_duplicate_names(state_dict).items():
        for dropped in dropped_group:
            if metadata is None:
                metadata = {}
            if dropped not in metadata:
                metadata[dropped] = kept
            del state_dict[dropped]
    if force_contiguous:
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        save_file(state_dict, filename, metadata=metadata)
    except ValueError as e:
        if isinstance(e, SafetensorError):
            raise
        raise ValueError(
            f"{e} (save_model(..., force_contiguous=True) makes every tensor contiguous first)"
        ) from None


def load_model(
    model: "torch.nn.Module",
    filename: Union[str, os.PathLike],
    strict: bool = True,
    device: Union[str, int] = "cpu",
    *,
    backend: str = "mmap",
) -> Tuple[Set[str], List[str]]:
    """Loads ``filename`` into ``model``, restoring tied weights the file
    stores once. Returns ``(missing, unexpected)``; with ``strict`` either one
    non-empty raises RuntimeError, as ``torch.nn.Module.load_state_dict`` does."""
    state_dict = load_file(filename, device=device, backend=backend)
    model_state_dict = model.state_dict()
    to_removes = _remove_duplicate_names(model_state_dict, preferred_names=list(state_dict))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = set(missing)
    for group in to_removes.values():
        for name in group:
            if name not in missing:
                unexpected.append(name)
            else:
                missing.remove(name)
    if strict and (missing or unexpected):
        problems = []
        if missing:
            problems.append(f"missing from the file: {sorted(missing)}")
        if unexpected:
            problems.append(f"not in the model: {sorted(unexpected)}")
        raise RuntimeError(
            f"{filename}: the tensors do not match {model.__class__.__name__}'s state dict; "
            + "; ".join(problems)
        )
    return missing, unexpected


# ---------------------------------------------------------------------------
# MARK: sharded checkpoints

def save_sharded(
    tensors: Dict[str, torch.Tensor],
    directory: Union[str, os.PathLike],
    max_shard_size: Union[int, str] = "5GB",
    prefix: str = "model",
    metadata: Optional[Dict[str, str]] = None,
    *,
    progress: bool = True,
) -> Dict[str, Any]:
    """:func:`safetensors_c.sharded.save_sharded` for torch tensors."""
    from .sharded import save_sharded as _save_sharded

    return _save_sharded(
        tensors, directory, max_shard_size, prefix, metadata, framework="pt", progress=progress
    )


def load_sharded(
    path: Union[str, os.PathLike],
    device: Union[str, int] = "cpu",
    *,
    prefix: str = "model",
    backend: str = "mmap",
    progress: bool = True,
) -> Dict[str, torch.Tensor]:
    """:func:`safetensors_c.sharded.load_sharded` giving torch tensors."""
    from .sharded import load_sharded as _load_sharded

    return _load_sharded(
        path, framework="pt", device=device, prefix=prefix, backend=backend, progress=progress
    )
