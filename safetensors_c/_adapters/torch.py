"""The PyTorch adapter: NumPy arrays from the reader become torch tensors
sharing their memory (``torch.from_numpy``, reinterpreted for bfloat16, the
float8 types and float4_e2m1fn_x2); saving reads each tensor's own memory.

The shared-storage rules (which tensors alias, which name to keep) live
here too, because saving refuses aliased tensors; the public module
:mod:`safetensors_c.torch` re-exports them under the reference's names.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "framework='pt' needs PyTorch, which is not installed: pip install safetensors_c[torch]"
    ) from exc

import numpy as np

from .. import _dtypes, error_codes
from .._checks import error
from .._writer import Tensor

NAME = "torch"
LABEL = "PyTorch"


# ---------------------------------------------------------------------------
# MARK: dtypes

# format code -> torch dtype; torch versions without a dtype simply lack the
# entry. torch's F4 type holds pairs of values (see _dtypes.f4_pairs_shape).
_TORCH_NAMES = {**_dtypes.DTYPE_NAMES, "F4": "float4_e2m1fn_x2"}
_TORCH_BY_CODE: Dict[str, torch.dtype] = {
    code: getattr(torch, name) for code, name in _TORCH_NAMES.items() if hasattr(torch, name)
}
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
        raise error(
            f"tensor {name!r}: F4 tensor of shape {list(shape)} cannot be a torch tensor: "
            f"torch.float4_e2m1fn_x2 packs pairs of values along the last dimension, "
            f"which must be even; load it with framework='np' instead",
            error_codes.UNSUPPORTED_DTYPE,
        )


def _torch_dtype(name: str, code: str) -> torch.dtype:
    dtype = _TORCH_BY_CODE.get(code)
    if dtype is None:
        raise error(
            f"tensor {name!r}: dtype {code} has no torch equivalent in torch "
            f"{torch.__version__}; load it with framework='np' (as a PackedArray) instead",
            error_codes.UNSUPPORTED_DTYPE,
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


# Device kinds the reference accepts that torch knows only once the vendor's
# plugin (torch_npu, torch_mlu, torch_musa) is imported.
_PLUGIN_KINDS = ("npu", "mlu", "musa")


def _invalid(device: Any) -> Exception:
    return error(f"device {device!r} is invalid; use e.g. 'cpu', 'cuda' or 'cuda:1'")


class _Placement:
    """A device other than the CPU, as asked for; whether it exists here is
    checked when the first tensor moves to it (as the reference and torch
    do), so a handle opened for ``"cuda"`` on a machine without a GPU still
    reads keys and metadata."""

    __slots__ = ("requested", "_device")

    def __init__(self, requested: Any) -> None:
        self.requested = requested
        self._device: Optional[torch.device] = None

    def device(self) -> torch.device:
        if self._device is None:
            self._device = _available(self.requested)
        return self._device

    def __repr__(self) -> str:
        return f"<device {self.requested!r}>"


def _resolve_device(device: Any) -> Optional[_Placement]:
    """None for the CPU; otherwise the :class:`_Placement` tensors move to.

    Accepts what the reference accepts (None and "cpu", "cuda", "cuda:N",
    "mps", "xpu", "npu", "mlu", "musa", "hpu", "xla" with an optional ":N",
    an int N >= 0 for accelerator N) and torch.device objects and the other
    names torch parses ("cpu:0"). A name neither knows is a SafetensorError
    (a ValueError) here; a device that does not exist on this machine is a
    RuntimeError when the first tensor is moved to it.
    """
    if device is None:
        return None
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, int):  # bool too: the reference reads True as 1
        if device < 0:
            raise _invalid(device)
        return _Placement(int(device))
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            kind, colon, number = device.partition(":")
            if kind in _PLUGIN_KINDS and (not colon or (number.isdigit() and number.isascii())):
                return _Placement(device)
            raise _invalid(device) from None
    else:
        raise _invalid(device)
    if dev.type == "cpu":
        return None
    if dev.type == "meta":
        raise error(f"device {device!r} is invalid: meta tensors hold no data")
    return _Placement(device)


def _available(device: Any) -> torch.device:
    """The torch device for ``device``, or RuntimeError if it is not here."""
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except Exception as exc:  # an int with no accelerator, a plugin not loaded
        raise RuntimeError(
            f"device {device!r} is not available: {str(exc).rstrip('.')}; load with device='cpu'"
        ) from exc
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
    except Exception as exc:  # any other backend (xpu, hpu, xla, ...) torch may know
        raise RuntimeError(f"device {device!r} is not available: {exc}") from None
    return dev


def placement(device: Any) -> Optional[_Placement]:
    return _resolve_device(device)


def check_code(name: str, code: str, shape: Tuple[int, ...]) -> None:
    _torch_dtype(name, code)
    if code == "F4":
        _check_f4_shape(name, shape)


def to_array(name: str, code: str, array: np.ndarray, placement: Any) -> torch.Tensor:
    tensor = _from_numpy(array, _torch_dtype(name, code))
    return tensor if placement is None else tensor.to(placement.device())


def index(index: Any) -> Any:
    """Torch tensors inside an index become NumPy arrays."""
    if isinstance(index, torch.Tensor):
        return index.numpy()
    if isinstance(index, tuple):
        return tuple(i.numpy() if isinstance(i, torch.Tensor) else i for i in index)
    return index


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

def check_tensors(tensors) -> None:
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
    if not _may_share(tensors.values()):
        return
    failing = [names for names in _find_shared_tensors(tensors) if len(names) > 1]
    if failing:
        raise RuntimeError(
            f"these tensors share memory, so they would be stored twice and load back as "
            f"separate copies: {failing}; save the model with save_model(), which stores "
            "shared weights once"
        )


def _may_share(tensors) -> bool:
    """False when no two of the tensors can share memory, seen in one pass:
    each storage that has memory starts at an address of its own. (True
    sends the caller to :func:`_find_shared_tensors`, which tells.)"""
    starts = set()
    count = 0
    try:
        for tensor in tensors:
            start = tensor.untyped_storage().data_ptr()
            if start:
                starts.add(start)
                count += 1
    except Exception:  # a tensor without storage: the general rule
        return True
    return len(starts) != count


# dtypes whose CPU tensors .numpy() hands out as an array of the same bytes.
_NUMPY_SHARES = frozenset({torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                           torch.int64, torch.uint16, torch.uint32, torch.uint64,
                           torch.float16, torch.float32, torch.float64, torch.complex64})


def _bytes_of(tensor: torch.Tensor) -> np.ndarray:
    """A flat uint8 NumPy view of a contiguous CPU tensor's bytes (no copy)."""
    if tensor.nelement() == 0:
        return np.empty(0, np.uint8)
    if tensor.dtype in _NUMPY_SHARES:  # NumPy's views cost less than torch's
        shared = (tensor.detach() if tensor.requires_grad else tensor).numpy()
        return shared.reshape(-1).view(np.uint8)
    flat = tensor.detach().reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat.numpy()


def from_array(name: str, tensor: Any) -> Tensor:
    """The bytes of one contiguous, dense CPU-or-device tensor, for the writer."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor {name!r}: expected a torch.Tensor, not {type(tensor).__name__}")
    if not tensor.is_contiguous():
        raise ValueError(
            f"tensor {name!r} is not contiguous; call .contiguous() on it before saving "
            "(or, if it is a view of another tensor, save only the full tensor and slice "
            "it after loading)"
        )
    code = _CODE_BY_TORCH.get(tensor.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a safetensors "
            f"file; supported: {', '.join(str(d) for d in _TORCH_BY_CODE.values())}",
            error_codes.UNSUPPORTED_DTYPE,
        )
    shape = tuple(tensor.shape)  # torch.Size holds ints
    if code == "F4":
        if not shape:
            raise error(
                f"tensor {name!r}: a 0-d float4_e2m1fn_x2 tensor has no logical shape "
                "(each element is a pair of values); give it at least one dimension"
            )
        shape = _dtypes.f4_values_shape(shape)
    if not tensor.is_cpu:
        tensor = tensor.to("cpu")
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    return Tensor(code, shape, _bytes_of(tensor))
