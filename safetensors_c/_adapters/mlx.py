"""The MLX adapter: NumPy arrays from the reader become ``mlx.core.array``.

MLX cannot adopt host memory on the CPU (``mx.from_dlpack(..., copy=False)``
refuses it), so every tensor is copied exactly once: its bytes, viewed as
unsigned integers of the same width, go into ``mx.array`` and the result is
reinterpreted (``.view``, no copy) as the tensor's dtype. That keeps float64
as float64 (``mx.array`` alone narrows it to float32) and needs no NumPy
dtype MLX does not know.

MLX has no float8 or packed F4/F6 types: such tensors are refused. Saving
views each array's memory through NumPy (no copy, strides kept), so the
writer stores its values in C order even when the array is a transposed view.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

try:
    import mlx.core as mx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "framework='mlx' needs MLX, which is not installed: pip install mlx "
        "(on Linux: pip install 'mlx[cpu]')"
    ) from exc

import numpy as np

from .. import _dtypes, error_codes
from .._checks import error
from .._writer import Tensor

NAME = "mlx"
LABEL = "MLX"
# to_array copies read-only arrays itself (once), so load(bytes) need not.
COPIES_READ_ONLY = True

# format code -> MLX dtype
_MLX_BY_CODE: Dict[str, Any] = {
    "BOOL": mx.bool_,
    "U8": mx.uint8,
    "I8": mx.int8,
    "I16": mx.int16,
    "U16": mx.uint16,
    "F16": mx.float16,
    "BF16": mx.bfloat16,
    "I32": mx.int32,
    "U32": mx.uint32,
    "F32": mx.float32,
    "C64": mx.complex64,
    "F64": mx.float64,
    "I64": mx.int64,
    "U64": mx.uint64,
}
_CODE_BY_MLX = {dtype: code for code, dtype in _MLX_BY_CODE.items()}

# itemsize -> the unsigned integer types of that width, in NumPy and in MLX
_RAW_NUMPY = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32),
              8: np.dtype(np.uint64)}
_RAW_MLX = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}


# ---------------------------------------------------------------------------
# MARK: loading

def placement(device: Any) -> None:
    if isinstance(device, mx.Device):
        device = device.type
    if device is None or device == "cpu" or (
        isinstance(device, mx.DeviceType) and device == mx.DeviceType.cpu
    ):
        return None  # None (as in the reference), "cpu", mx.cpu or mx.Device(mx.cpu)
    raise error(f"device {device!r} is not supported for MLX arrays; use 'cpu'")


def check_code(name: str, code: str, shape: tuple) -> None:
    if code not in _MLX_BY_CODE:
        raise error(
            f"tensor {name!r}: dtype {code} has no MLX equivalent in mlx {mx.__version__}; "
            f"load it with framework='np' instead",
            error_codes.UNSUPPORTED_DTYPE,
        )


def to_array(name: str, code: str, array: np.ndarray, placement: Any) -> mx.array:
    dtype = _MLX_BY_CODE[code]
    array = np.asarray(array)
    if any(s < 0 for s in array.strides):
        # mx.array takes strided input but not negative strides (a reversed
        # slice); only such slices are copied here, and MLX then copies the
        # compact result.
        array = np.ascontiguousarray(array)
    itemsize = array.dtype.itemsize
    raw = mx.array(array.view(_RAW_NUMPY[itemsize]))  # the one copy
    if dtype == _RAW_MLX[itemsize]:
        return raw
    # The view is evaluated here (it copies nothing): a lazy MLX array is tied
    # to the stream of the thread that made it, and sharded checkpoints load
    # on worker threads.
    out = raw.view(dtype)
    mx.eval(out)
    return out


def index(index: Any) -> Any:
    """MLX arrays inside an index become NumPy arrays."""
    if isinstance(index, mx.array):
        return np.asarray(index)
    if isinstance(index, tuple):
        return tuple(np.asarray(i) if isinstance(i, mx.array) else i for i in index)
    return index


# ---------------------------------------------------------------------------
# MARK: saving

def check_tensors(tensors: Any) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a dict of str to mlx.core.array, not {type(tensors).__name__}"
        )


def _numpy_tensor(name: str, array: np.ndarray) -> Tensor:
    if isinstance(array, _dtypes.PackedArray) and array.format_dtype:
        return Tensor(array.format_dtype, array.logical_shape, np.asarray(array).view(np.uint8))
    code = _dtypes.code_for_dtype(array.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {array.dtype} cannot be stored in a safetensors file",
            error_codes.UNSUPPORTED_DTYPE,
        )
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return Tensor(code, array.shape, array)


def from_array(name: str, value: Any) -> Tensor:
    if isinstance(value, (np.ndarray, np.generic)):
        return _numpy_tensor(name, np.asarray(value))
    if not isinstance(value, mx.array):
        raise TypeError(
            f"tensor {name!r}: expected an mlx.core.array (or a numpy.ndarray), "
            f"not {type(value).__name__}"
        )
    code = _CODE_BY_MLX.get(value.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {value.dtype} cannot be stored in a safetensors file; "
            f"supported: {', '.join(str(d) for d in _MLX_BY_CODE.values())}",
            error_codes.UNSUPPORTED_DTYPE,
        )
    itemsize = value.itemsize
    if value.dtype != _RAW_MLX[itemsize]:
        value = value.view(_RAW_MLX[itemsize])
    # NumPy's view of MLX memory (the array is evaluated first), strides kept;
    # the writer reads it in C order.
    array = np.asarray(value)
    return Tensor(code, tuple(int(d) for d in value.shape), array)
