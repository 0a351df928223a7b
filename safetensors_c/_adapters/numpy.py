"""The NumPy adapter: the reader's arrays are already NumPy arrays."""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from .. import _dtypes, error_codes
from .._checks import error
from .._writer import Tensor

NAME = "numpy"
LABEL = "NumPy"


def placement(device: Any) -> None:
    if device is not None and device != "cpu":  # None is the CPU, as in the reference
        raise error(f"device {device!r} is not supported for NumPy arrays; use 'cpu'")
    return None


def check_code(name: str, code: str, shape: tuple) -> None:
    """NumPy holds every dtype of the format (F4/F6 as PackedArray)."""


def to_array(name: str, code: str, array: np.ndarray, placement: Any) -> np.ndarray:
    return array


def check_tensors(tensors: Any) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a dict of str to numpy.ndarray, not {type(tensors).__name__}"
        )


# The code of each plain dtype met so far (never a big-endian one: those are
# swapped first): the common case costs one dict lookup. Bounded by the
# number of distinct dtypes that have a code (equal dtypes share one key).
_CODE_SEEN: Dict[np.dtype, str] = {}


def from_array(name: str, array: Any) -> Tensor:
    if type(array) is np.ndarray:
        code = _CODE_SEEN.get(array.dtype)
        if code is not None:
            return Tensor(code, array.shape, array)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"tensor {name!r}: expected a numpy.ndarray, not {type(array).__name__}")
    if isinstance(array, _dtypes.PackedArray) and array.format_dtype:
        return Tensor(array.format_dtype, array.logical_shape, np.asarray(array).view(np.uint8))
    code = _dtypes.code_for_dtype(array.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {array.dtype} cannot be stored in a safetensors "
            f"file; supported: bool, (u)int8-64, float16/32/64, complex64, and "
            f"ml_dtypes bfloat16 and float8 types",
            error_codes.UNSUPPORTED_DTYPE,
        )
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    elif type(array) is np.ndarray:
        _CODE_SEEN[array.dtype] = code
    return Tensor(code, array.shape, array)


def index(index: Any) -> Any:
    return index
