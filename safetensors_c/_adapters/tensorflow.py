"""The TensorFlow adapter (framework "tf" or "tensorflow"): NumPy arrays from
the reader become eager ``tf.Tensor`` values on the CPU.

Loading adopts the reader's memory through DLPack when TensorFlow can use
it: a writable, C-contiguous array whose data is 64-byte aligned (TF's
kernels check ``EIGEN_MAX_ALIGN_BYTES`` alignment and abort the process on
anything less). bfloat16 goes through DLPack as uint16 and is reinterpreted
with ``tf.bitcast``, which keeps the buffer. Everything else is copied once
into TF's own memory: misaligned or read-only arrays, and the float8 types,
which TF's DLPack and bitcast do not handle. The format does not align
tensors, so whether a tensor of a file is adopted depends on where its
bytes fall (``8 + N`` and the offsets of the tensors before it).

F4 tensors become ``float4_e2m1fn`` tensors, which hold one value per
byte: they are unpacked (the file packs two values per byte, the first in
the low nibble, as PyTorch's ``float4_e2m1fn_x2``), then copied into TF
(which has no DLPack or bitcast for float4); saving packs them back.

Saving reads each CPU tensor's own memory through DLPack (float8 through
``.numpy()``, one copy); a tensor on another device is copied to the host
once. F6 and F8_E8M0 have no TF equivalent.
"""

from __future__ import annotations

from typing import Any, Mapping

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "framework='tf' (or 'tensorflow') needs TensorFlow, which is not installed: "
        "pip install tensorflow-cpu (or tensorflow)"
    ) from exc

import numpy as np

from .. import _dtypes, error_codes
from .._checks import error
from .._writer import Tensor

NAME = "tensorflow"
LABEL = "TensorFlow"
# to_array copies read-only arrays itself (once), so load(bytes) need not.
COPIES_READ_ONLY = True

# TF's CPU kernels require tensor data aligned to this (EIGEN_MAX_ALIGN_BYTES);
# a DLPack import of a less aligned buffer aborts the process at the first op.
ALIGNMENT = 64


# ---------------------------------------------------------------------------
# MARK: dtypes

# format code -> TF dtype; a TF build without a dtype simply lacks it. F4 is
# one value per byte in TF, two in the file.
_TF_BY_CODE = {}
for _code, _name in _dtypes.DTYPE_NAMES.items():
    try:
        _TF_BY_CODE[_code] = tf.dtypes.as_dtype(_name)
    except TypeError:  # a type this TF lacks (float8_e8m0fnu; float8 in older TF)
        pass
_CODE_BY_TF = {dtype: code for code, dtype in _TF_BY_CODE.items()}

# Codes whose NumPy arrays TF imports through DLPack as they are.
_DLPACK_CODES = frozenset(
    ("BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")
)


def check_code(name: str, code: str, shape: tuple) -> None:
    if code not in _TF_BY_CODE:
        raise error(
            f"tensor {name!r}: dtype {code} cannot be a TensorFlow tensor (TensorFlow "
            f"{tf.__version__} has no such dtype); load it with framework='np' instead",
            error_codes.UNSUPPORTED_DTYPE,
        )


# ---------------------------------------------------------------------------
# MARK: loading

def placement(device: Any) -> Any:
    """None for the CPU; otherwise the name of an existing TF device
    ("/GPU:0", "gpu:1", "cuda:0", ...) to copy each tensor to. None is
    the CPU, as in the reference."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise error(f"device {device!r} is invalid; use 'cpu' or a TensorFlow device name "
                    f"such as '/GPU:0'")
    if isinstance(device, int):
        device = f"GPU:{device}"
    spec = device.strip().lstrip("/")
    kind, colon, number = spec.partition(":")
    if colon and not number:  # "cuda:"
        raise error(f"device {device!r} is invalid; use 'cpu' or a TensorFlow device name "
                    f"such as '/GPU:0'")
    kind = {"cuda": "gpu"}.get(kind.lower(), kind.lower())
    if kind == "device" and number:  # "/device:GPU:0"
        kind, _, number = number.partition(":")
        kind = kind.lower()
    if kind == "cpu" and number in ("", "0"):
        return None
    if kind not in ("cpu", "gpu", "tpu") or (number and not number.isdigit()):
        raise error(f"device {device!r} is invalid; use 'cpu' or a TensorFlow device name "
                    f"such as '/GPU:0'")
    name = f"/{kind.upper()}:{number or 0}"
    known = {d.name.split("device:")[-1].upper() for d in tf.config.list_logical_devices()}
    if name[1:] not in known:
        raise RuntimeError(
            f"device {device!r} is not available: TensorFlow sees "
            f"{', '.join(sorted(known)) or 'no device'}; load with device='cpu'"
        )
    return name


def _adoptable(array: np.ndarray) -> bool:
    return (
        array.size > 0
        and array.flags.c_contiguous
        and array.flags.writeable
        and array.__array_interface__["data"][0] % ALIGNMENT == 0
    )


def _unpack_f4(name: str, packed: Any) -> np.ndarray:
    """float4_e2m1fn values (one per byte) from F4 bytes, the first value of
    each byte in its low nibble (PyTorch's float4_e2m1fn_x2 layout)."""
    if not isinstance(packed, _dtypes.PackedArray) or packed._stored_shape is None:
        raise error(
            f"tensor {name!r}: slicing an F4 tensor is not supported for TensorFlow (the "
            f"file packs two values per byte); load it whole with get_tensor and slice "
            f"the tf.Tensor",
            error_codes.UNSUPPORTED_DTYPE,
        )
    out = _dtypes.unpack_f4(packed)
    return out.view(_TF_BY_CODE["F4"].as_numpy_dtype).reshape(packed.logical_shape)


def _pack_f4(name: str, values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    if values.size % 2:
        raise error(
            f"tensor {name!r}: {values.size} float4_e2m1fn values cannot fill whole bytes "
            f"(F4 packs two per byte); store an even number of values",
            error_codes.UNSUPPORTED_DTYPE,
        )
    return _dtypes.pack_f4(values)


def to_array(name: str, code: str, array: np.ndarray, placement: Any) -> tf.Tensor:
    if code == "F4":
        # unpacked (a copy), then into TF's memory (a second: TF has no
        # DLPack or bitcast for float4)
        array = _unpack_f4(name, array)
    array = np.asarray(array)
    if code in ("BF16", *_DLPACK_CODES) and _adoptable(array):
        # The tensor holds the DLPack capsule, which holds the array and so
        # the reader's mapping: nothing is copied.
        if code == "BF16":
            tensor = tf.bitcast(tf.experimental.dlpack.from_dlpack(
                array.view(np.uint16).__dlpack__()), tf.bfloat16)
        else:
            tensor = tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    else:
        # TF copies into its own aligned buffer; a read-only buffer is thus
        # never shared with a framework that could write through it.
        tensor = tf.convert_to_tensor(array, dtype=_TF_BY_CODE[code])
    if placement is not None:
        with tf.device(placement):
            tensor = tf.identity(tensor)
    return tensor


def index(index: Any) -> Any:
    """TF tensors inside an index become NumPy arrays."""
    if isinstance(index, tf.Tensor):
        return index.numpy()
    if isinstance(index, tuple):
        return tuple(i.numpy() if isinstance(i, tf.Tensor) else i for i in index)
    return index


# ---------------------------------------------------------------------------
# MARK: saving

def check_tensors(tensors: Any) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a dict of str to tf.Tensor, not {type(tensors).__name__}"
        )


def _eager_tensor(name: str, value: Any) -> tf.Tensor:
    """``value`` as an eager tf.Tensor (a variable's current value)."""
    if not isinstance(value, (tf.Tensor, tf.Variable)) and isinstance(
        getattr(value, "value", None), tf.Variable
    ):
        value = value.value  # a Keras 3 variable (TF backend) wraps a tf.Variable
    if isinstance(value, tf.Variable):
        value = value.value()
    if isinstance(value, tf.SparseTensor):
        raise ValueError(
            f"tensor {name!r} is a tf.SparseTensor, which cannot be stored; convert it "
            "with tf.sparse.to_dense() first (the file may then be much larger)"
        )
    if isinstance(value, tf.RaggedTensor):
        raise ValueError(
            f"tensor {name!r} is a tf.RaggedTensor, whose rows differ in length; convert "
            "it with .to_tensor() (padding) or store .flat_values and .row_splits separately"
        )
    if not isinstance(value, tf.Tensor):
        raise TypeError(
            f"tensor {name!r}: expected a tf.Tensor or a variable, not {type(value).__name__}"
        )
    if tf.is_symbolic_tensor(value):
        raise TypeError(
            f"tensor {name!r} is a symbolic tensor (inside tf.function or a Keras graph), "
            "which has no values yet; save concrete tensors in eager mode"
        )
    return value


def from_array(name: str, value: Any) -> Tensor:
    tensor = _eager_tensor(name, value)
    code = _CODE_BY_TF.get(tensor.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {tensor.dtype.name} cannot be stored in a safetensors "
            f"file; supported: {', '.join(d.name for d in _TF_BY_CODE.values())}",
            error_codes.UNSUPPORTED_DTYPE,
        )
    shape = tuple(int(d) for d in tensor.shape)
    if "CPU" not in tensor.device.upper():
        with tf.device("/CPU:0"):
            tensor = tf.identity(tensor)  # the one copy to the host
    if code == "F4":
        return Tensor(code, shape, _pack_f4(name, tensor.numpy()))
    if code == "BF16":
        data = np.from_dlpack(tf.bitcast(tensor, tf.uint16))
    elif code in _DLPACK_CODES:
        data = np.from_dlpack(tensor)  # a read-only view of the tensor's memory
    else:
        data = np.asarray(tensor.numpy())  # float8: TF's DLPack cannot export it
    return Tensor(code, shape, data)
