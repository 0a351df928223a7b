"""The framework-neutral writer, and the reference's raw-bytes API.

Every framework module turns its arrays into :class:`Tensor` values
(format dtype code, logical shape, an ndarray holding the bytes) and hands
them to :func:`write`; the C core plans the layout, emits the header and
streams the bytes, with the GIL released.

:func:`serialize`, :func:`serialize_file`, :func:`deserialize` and
:class:`TensorSpec` are the ``safetensors`` package's top-level functions,
with the same meaning.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from . import _core, _dtypes, error_codes
from ._checks import check_metadata, check_tensor_name, error, fs_path

__all__ = [
    "Tensor",
    "write_text_atomic",
    "TensorSpec",
    "deserialize",
    "serialize",
    "serialize_file",
    "write",
]


class Tensor(NamedTuple):
    """One tensor to write: its format dtype code, its logical shape (F4/F6
    count values, not bytes), and an ndarray whose bytes, in C order and
    little-endian, are the tensor's (a non-contiguous array is written in C
    order, one at a time)."""

    code: str
    shape: Tuple[int, ...]
    data: np.ndarray


def write(
    tensors: Mapping[str, Tensor], metadata: Optional[Mapping[str, str]], path: Optional[str]
) -> Optional[bytes]:
    """Writes ``tensors`` to ``path`` atomically (None: returns the bytes).

    Byte-identical to the reference writer for the same tensors. The names
    and metadata are checked here; every framework module calls this.
    """
    metadata = check_metadata(metadata)
    names = list(tensors)
    if "__metadata__" in tensors or not all(type(name) is str for name in names):
        for name in names:
            check_tensor_name(name)  # raises with the reason
    values = list(tensors.values())
    # The core takes any sequence of integers as a shape and checks each.
    codes = [tensor.code for tensor in values]
    shapes = [tensor.shape for tensor in values]
    arrays = [tensor.data for tensor in values]
    return _core.save(names, codes, shapes, arrays, metadata, path)


def write_text_atomic(path: str, text: str) -> None:
    """Writes a small text file (an index) atomically: a temporary file in the
    same directory, flushed to disk, then renamed over ``path``."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# MARK: the reference's raw-bytes API ----------------------------------------

# The dtype names TensorSpec takes (the reference's), and the format's codes.
_CODE_BY_DTYPE_NAME = {
    "bool": "BOOL",
    "int8": "I8",
    "uint8": "U8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2": "F8_E5M2",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4",
    "complex64": "C64",
}


class TensorSpec:
    """One tensor for :func:`serialize` / :func:`serialize_file`, given as raw memory.

    TensorSpec(*, dtype, shape, data_ptr, data_len)

    ``dtype`` is a dtype name as frameworks spell it (``"float32"``,
    ``"bfloat16"``, ``"float8_e4m3fn"``, ...; the format's own codes such as
    ``"F32"`` are accepted too) and is checked here. ``shape`` is the
    logical shape; for ``"float4_e2m1fn_x2"`` (pairs of F4 values) the
    framework's shape is accepted and its last dimension doubled.
    ``data_ptr`` is the address of ``data_len`` bytes that must stay alive
    and unchanged until every call consuming this spec has returned.
    """

    __slots__ = ("dtype", "shape", "data_ptr", "data_len")

    def __init__(self, *, dtype: str, shape, data_ptr: int, data_len: int) -> None:
        if not isinstance(dtype, str):
            raise TypeError(f"dtype must be a str, not {type(dtype).__name__}")
        code = _CODE_BY_DTYPE_NAME.get(dtype)
        if code is None and dtype in _dtypes.SUPPORTED_CODES:
            code = dtype
        if code is None:
            raise error(
                f"dtype {dtype!r} is not one a safetensors file can hold; use one of "
                + ", ".join(_CODE_BY_DTYPE_NAME),
                error_codes.UNSUPPORTED_DTYPE,
            )
        dims = [_non_negative(d, "shape entries") for d in shape]
        if dtype == "float4_e2m1fn_x2":
            if not dims:
                raise error("a float4_e2m1fn_x2 tensor needs at least one dimension")
            dims[-1] *= 2
        self.dtype = code
        self.shape = dims
        self.data_ptr = _non_negative(data_ptr, "data_ptr")
        self.data_len = _non_negative(data_len, "data_len")

    def __repr__(self) -> str:
        return (
            f"TensorSpec(dtype={self.dtype!r}, shape={self.shape!r}, "
            f"data_ptr={self.data_ptr}, data_len={self.data_len})"
        )

    def _as_tensor(self) -> Tensor:
        if self.data_len == 0:
            data = np.empty(0, np.uint8)
        else:
            if self.data_ptr == 0:
                raise error("a TensorSpec with data must have a non-null data_ptr")
            raw = (ctypes.c_uint8 * self.data_len).from_address(self.data_ptr)
            data = np.frombuffer(raw, dtype=np.uint8)
        return Tensor(self.dtype, tuple(self.shape), data)


def _non_negative(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TypeError(f"{what} must be non-negative integers, not {value!r}")
    return int(value)


def _specs(tensor_dict: Any) -> Dict[str, Tensor]:
    if not isinstance(tensor_dict, Mapping):
        raise TypeError(
            f"tensor_dict must be a dict of str to TensorSpec, not {type(tensor_dict).__name__}"
        )
    out = {}
    for name, spec in tensor_dict.items():
        if not isinstance(spec, TensorSpec):
            raise TypeError(
                f"tensor {name!r}: expected a TensorSpec, not {type(spec).__name__}"
            )
        out[name] = spec._as_tensor()
    return out


def serialize(
    tensor_dict: Mapping[str, TensorSpec], metadata: Optional[Dict[str, str]] = None
) -> bytes:
    """The bytes of a .safetensors file holding the tensors of ``tensor_dict``
    (name -> :class:`TensorSpec`). Byte-identical to the reference's output."""
    return write(_specs(tensor_dict), metadata, None)


def serialize_file(
    tensor_dict: Mapping[str, TensorSpec],
    filename,
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes the tensors of ``tensor_dict`` to ``filename`` atomically.

    The bytes are copied from each spec's memory to the file with the GIL
    released, so other Python threads keep running during a large write.
    """
    write(_specs(tensor_dict), metadata, fs_path(filename))


def deserialize(data: bytes) -> List[Tuple[str, Dict[str, Any]]]:
    """The tensors of a file image as ``[(name, {"dtype", "shape", "data"})]``,
    in file order: ``dtype`` is the format's code, ``shape`` a list and
    ``data`` a ``bytearray`` of the tensor's bytes."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
    file = _core.open_buffer(view)
    start = file.data_start
    result = []
    for name in file.offset_keys():
        code, shape, _, begin, end = file.info(name)
        result.append(
            (name, {"dtype": code, "shape": list(shape),
                    "data": bytearray(view[start + begin:start + end])})
        )
    return result
