"""The Paddle adapter (framework "paddle"): NumPy arrays from the reader
become ``paddle.Tensor`` values sharing their memory.

Loading goes through DLPack (``paddle.utils.dlpack.from_dlpack``), whose
deleter releases the reader's array when paddle frees the tensor; bfloat16
and the float8 types pass as unsigned integers of their width and are
reinterpreted with ``Tensor.view(dtype)``, which keeps the buffer. Nothing
is copied on the CPU, at any alignment, except a read-only array (a
``bytes`` image, a read-only mapping), which is copied once: paddle tensors
are writable. A ``device`` other than the CPU gets one copy there.

Saving reads each dense, contiguous CPU tensor's own memory
(``data_ptr()``), keeping the tensor alive while it is written; a tensor on
another device is copied to the host once. Paddle has no float8_e8m0fnu,
no float8 FNUZ types and no packed F4/F6: those raise SafetensorError.
"""

from __future__ import annotations

from typing import Any, Optional

try:
    import paddle
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "framework='paddle' needs PaddlePaddle, which is not installed: pip install paddlepaddle"
    ) from exc

import numpy as np

from .. import error_codes
from .._checks import error
from .._writer import Tensor

NAME = "paddle"
LABEL = "Paddle"
# to_array copies read-only arrays itself (once), so load(bytes) need not.
COPIES_READ_ONLY = True


# ---------------------------------------------------------------------------
# MARK: dtypes

# format code -> (paddle dtype name, the NumPy dtype it crosses DLPack as).
# (paddle prints its uint16 as "paddle.bfloat16": names come from here.)
_DTYPES = {
    "BOOL": ("bool", "?"),
    "U8": ("uint8", "<u1"),
    "I8": ("int8", "<i1"),
    "F8_E5M2": ("float8_e5m2", "<u1"),
    "F8_E4M3": ("float8_e4m3fn", "<u1"),
    "I16": ("int16", "<i2"),
    "U16": ("uint16", "<u2"),
    "F16": ("float16", "<f2"),
    "BF16": ("bfloat16", "<i2"),  # paddle views int16 (not uint16) as bfloat16
    "I32": ("int32", "<i4"),
    "U32": ("uint32", "<u4"),
    "F32": ("float32", "<f4"),
    "C64": ("complex64", "<c8"),
    "F64": ("float64", "<f8"),
    "I64": ("int64", "<i8"),
    "U64": ("uint64", "<u8"),
}
_PADDLE_BY_CODE = {
    code: getattr(paddle, name) for code, (name, _) in _DTYPES.items() if hasattr(paddle, name)
}
_CODE_BY_PADDLE = {dtype: code for code, dtype in _PADDLE_BY_CODE.items()}
_CARRIER_BY_CODE = {code: np.dtype(carrier) for code, (_, carrier) in _DTYPES.items()}


def check_code(name: str, code: str, shape: tuple) -> None:
    if code not in _PADDLE_BY_CODE:
        raise error(
            f"tensor {name!r}: dtype {code} has no Paddle equivalent in paddle "
            f"{paddle.__version__}; load it with framework='np' instead",
            error_codes.UNSUPPORTED_DTYPE,
        )


# ---------------------------------------------------------------------------
# MARK: loading

def _device_count(kind: str) -> int:
    if kind == "gpu":
        if not paddle.device.is_compiled_with_cuda():
            return 0
        return paddle.device.cuda.device_count()
    if kind == "xpu":
        if not paddle.device.is_compiled_with_xpu():
            return 0
        return paddle.device.xpu.device_count()
    if kind in paddle.device.get_all_custom_device_type():
        return len([d for d in paddle.device.get_available_custom_device()
                    if d.split(":")[0] == kind])
    return -1  # not a kind of device paddle knows


# Device kinds the reference accepts for every framework; paddle may not
# know them (it refuses them when a tensor is copied there).
_REFERENCE_KINDS = ("cuda", "mps", "npu", "xpu", "xla", "mlu", "musa", "hpu")


def _invalid(device: Any) -> Exception:
    return error(f"device {device!r} is invalid; use e.g. 'cpu', 'gpu' or 'gpu:1'")


class _Placement:
    """A device other than the CPU, as asked for; whether it exists here is
    checked when the first tensor is copied to it (as the reference and
    paddle do), so a handle opened for ``"gpu"`` still reads keys and
    metadata on a machine without one."""

    __slots__ = ("requested", "kind", "index", "_checked")

    def __init__(self, requested: Any, kind: str, index: int) -> None:
        self.requested, self.kind, self.index = requested, kind, index
        self._checked = False

    def device(self) -> str:
        if not self._checked:
            count = _device_count(self.kind)
            if count < 0:
                raise ValueError(
                    f"device {self.requested!r} is not available: paddle "
                    f"{paddle.__version__} has no {self.kind!r} devices; load with device='cpu'"
                )
            if self.index >= count:
                # ValueError, as paddle itself (and so the reference) reports it.
                raise ValueError(
                    f"device {self.requested!r} is not available: this paddle sees {count} "
                    f"{self.kind} device(s); load with device='cpu'"
                )
            self._checked = True
        return f"{self.kind}:{self.index}"

    def __repr__(self) -> str:
        return f"<device {self.requested!r}>"


def placement(device: Any) -> Optional[_Placement]:
    """None for the CPU; otherwise the :class:`_Placement` to copy each
    tensor to. Accepts None and "cpu", "gpu[:N]", "cuda[:N]" (as "gpu:N"),
    "xpu[:N]", a custom device "<type>[:N]", the other names the reference
    accepts ("npu", "mlu", ...), an int N >= 0 (GPU N), and paddle Place
    objects. A device that does not exist here is a ValueError when the
    first tensor is copied to it."""
    if device is None or isinstance(device, paddle.CPUPlace):
        return None
    if isinstance(device, paddle.CUDAPlace):
        device = f"gpu:{device.get_device_id()}"
    if isinstance(device, int):  # bool too: the reference reads True as 1
        if device < 0:
            raise _invalid(device)
        return _Placement(device, "gpu", int(device))
    if not isinstance(device, str):
        raise _invalid(device)
    kind, colon, number = device.strip().lower().partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    if kind == "cpu" and number in ("", "0") and not (colon and not number):
        return None
    known = kind in _REFERENCE_KINDS or _device_count(kind) >= 0
    well_formed = not colon or (number.isdigit() and number.isascii())
    if not known or kind == "cpu" or not well_formed:
        raise _invalid(device)
    return _Placement(device, kind, int(number or 0))


def _c_strides(array: np.ndarray) -> tuple:
    strides, step = [], array.dtype.itemsize
    for dim in reversed(array.shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def to_array(name: str, code: str, array: np.ndarray, placement: Any) -> "paddle.Tensor":
    array = np.asarray(array)
    dtype = _PADDLE_BY_CODE[code]
    if array.size == 0 and code not in ("U16", "U32", "U64"):
        # (paddle has no kernels making empty unsigned 16-64 bit tensors;
        # those come through DLPack below)
        tensor = paddle.empty(list(array.shape), dtype=dtype)
        return tensor if placement is None else tensor.to(placement.device())
    if not array.flags.writeable:
        # paddle tensors are writable: a read-only buffer is never shared.
        array = array.copy()
    elif not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    array = array.view(_CARRIER_BY_CODE[code])
    if array.strides != _c_strides(array):
        # NumPy calls an array with any stride on a dimension of 1 contiguous;
        # paddle does not (and would refuse to save it back): restride the view.
        array = np.lib.stride_tricks.as_strided(array, array.shape, _c_strides(array))
    tensor = paddle.utils.dlpack.from_dlpack(array.__dlpack__())
    if tensor.dtype != dtype:
        tensor = tensor.view(dtype)  # same width: a reinterpretation, no copy
    return tensor if placement is None else tensor.to(placement.device())


def index(index: Any) -> Any:
    """Paddle tensors inside an index become NumPy arrays."""
    if isinstance(index, paddle.Tensor):
        return index.numpy()
    if isinstance(index, tuple):
        return tuple(i.numpy() if isinstance(i, paddle.Tensor) else i for i in index)
    return index


# ---------------------------------------------------------------------------
# MARK: saving

def check_tensors(tensors: Any) -> None:
    """Input checks with the reference's exception types (ValueError)."""
    if not isinstance(tensors, dict):
        raise ValueError(
            f"tensors must be a dict of str to paddle.Tensor, not {type(tensors).__name__}"
        )
    for name, tensor in tensors.items():
        if not isinstance(tensor, paddle.Tensor):
            raise ValueError(
                f"tensor {name!r}: expected a paddle.Tensor, not {type(tensor).__name__}"
            )


class _TensorMemory:
    """The bytes of a paddle tensor as NumPy sees them, holding the tensor
    (the array's base) so that its memory outlives the write."""

    def __init__(self, tensor: "paddle.Tensor", nbytes: int) -> None:
        self.tensor = tensor
        self.__array_interface__ = {
            "version": 3,
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (tensor.data_ptr(), True),
        }


def from_array(name: str, tensor: Any) -> Tensor:
    if not isinstance(tensor, paddle.Tensor):
        raise ValueError(f"tensor {name!r}: expected a paddle.Tensor, not {type(tensor).__name__}")
    if tensor.is_sparse():
        raise ValueError(
            f"tensor {name!r} is a sparse tensor, which cannot be stored; convert it with "
            ".to_dense() first (the file may then be much larger)"
        )
    shape = tuple(int(d) for d in tensor.shape)
    count = 1
    for d in shape:
        count *= d
    if count and not tensor.is_contiguous():  # (an empty tensor has no layout)
        raise ValueError(
            f"tensor {name!r} is not contiguous; call .contiguous() on it before saving "
            "(or, if it is a view of another tensor, save only the full tensor and slice "
            "it after loading)"
        )
    code = _CODE_BY_PADDLE.get(tensor.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a safetensors file; "
            f"supported: {', '.join(_DTYPES[code][0] for code in _PADDLE_BY_CODE)}",
            error_codes.UNSUPPORTED_DTYPE,
        )
    if count == 0:
        return Tensor(code, shape, np.empty(0, np.uint8))
    if not tensor.place.is_cpu_place():
        tensor = tensor.cpu()  # the one copy to the host
    return Tensor(code, shape, np.asarray(_TensorMemory(tensor, count * tensor.element_size())))
