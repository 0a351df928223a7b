"""The JAX adapter (framework "flax" or "jax"): NumPy arrays from the reader
become ``jax.Array`` values on a JAX device, the CPU by default.

Loading adopts the reader's memory when XLA can: ``jax.device_put`` of a
writable, C-contiguous host array whose data is 64-byte aligned (XLA's CPU
alignment) makes a jax.Array over the same bytes, kept alive by it. Any
other array (misaligned, read-only, strided) is copied once into an aligned
buffer that the jax.Array then adopts. The format does not align tensors, so
whether a tensor of a file is adopted depends on where its bytes fall.

JAX holds the 64-bit dtypes (I64, U64, F64) only with ``jax_enable_x64``;
without it they are refused, never narrowed to 32 bits. F4 tensors become
``float4_e2m1fn`` arrays, one value per byte as JAX holds them, so they are
unpacked (one copy); the file packs two values per byte, the first in the
low nibble (PyTorch's ``float4_e2m1fn_x2`` layout, OCP MX), and saving packs
them back the same way. F6 has no agreed bit order to unpack: refused.
"""

from __future__ import annotations

from typing import Any, Mapping

try:
    import jax
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "framework='flax' (or 'jax') needs JAX, which is not installed: pip install jax"
    ) from exc

import numpy as np

from .. import _dtypes, error_codes
from .._checks import error
from .._writer import Tensor

NAME = "flax"
LABEL = "JAX"
# to_array copies read-only arrays itself (once), so load(bytes) need not.
COPIES_READ_ONLY = True

# XLA's CPU client adopts host memory only at this alignment; below it copies.
ALIGNMENT = 64
_WIDE_CODES = {"I64": "int64", "U64": "uint64", "F64": "float64"}
# The ml_dtypes codes this JAX has (float8_e8m0fnu, for one, is recent).
_ML_CODES = {code: _dtypes.DTYPE_NAMES[code] for code in _dtypes.ML_CODES}
# The dtypes a saved array may have, for the message refusing any other.
_SUPPORTED = ", ".join(_dtypes.DTYPE_NAMES.values())
_MISSING_CODES = frozenset(code for code, name in _ML_CODES.items()
                           if not hasattr(jax.numpy, name))


# ---------------------------------------------------------------------------
# MARK: loading

def placement(device: Any) -> Any:
    """The JAX device to place arrays on: "cpu" (the default) or a jax.Device."""
    if isinstance(device, jax.Device):
        return device
    if device is None or device == "cpu":  # None is the CPU, as in the reference
        return jax.devices("cpu")[0]
    raise error(f"device {device!r} is not supported for JAX arrays; use 'cpu' or a jax.Device")


def _x64_enabled() -> bool:
    # Follows jax.config.update("jax_enable_x64", ...) and the jax.enable_x64 context.
    return jax.dtypes.canonicalize_dtype(np.int64) == np.dtype(np.int64)


_HAS_FLOAT4 = hasattr(jax.numpy, "float4_e2m1fn")


def check_code(name: str, code: str, shape: tuple) -> None:
    if code in _dtypes.PACKED_BITS and not (code == "F4" and _HAS_FLOAT4):
        raise error(
            f"tensor {name!r}: dtype {code} has no JAX equivalent here (the file packs "
            f"its values, and only F4 has a known layout to unpack into JAX's one value "
            f"per byte); load it with framework='np' to get the packed bytes",
            error_codes.UNSUPPORTED_DTYPE,
        )
    if code in _MISSING_CODES:
        raise error(
            f"tensor {name!r}: dtype {code} has no JAX equivalent in jax {jax.__version__} "
            f"(jax.numpy.{_ML_CODES[code]} is newer); load it with framework='np' instead",
            error_codes.UNSUPPORTED_DTYPE,
        )
    if code in _WIDE_CODES and not _x64_enabled():
        raise error(
            f"tensor {name!r}: dtype {code} needs 64-bit types, which JAX has only with "
            f"jax_enable_x64 (without it the values would be cut to 32 bits); call "
            f'jax.config.update("jax_enable_x64", True) first, or load with framework=\'np\'',
            error_codes.UNSUPPORTED_DTYPE,
        )


def _adoptable(array: np.ndarray) -> bool:
    return (
        array.flags.c_contiguous
        and array.flags.writeable
        and array.__array_interface__["data"][0] % ALIGNMENT == 0
    )


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable copy of ``array`` whose data is aligned for XLA."""
    out = _aligned_empty(array.size, array.dtype).reshape(array.shape)
    np.copyto(out, array, casting="no")
    return out


def _unpack_f4(name: str, packed: Any) -> np.ndarray:
    """float4_e2m1fn values (one per byte) from F4 bytes, low nibble first."""
    if not isinstance(packed, _dtypes.PackedArray) or packed._stored_shape is None:
        raise error(
            f"tensor {name!r}: slicing an F4 tensor is not supported for JAX arrays (the "
            f"file packs two values per byte); load it whole with get_tensor and slice "
            f"the jax.Array",
            error_codes.UNSUPPORTED_DTYPE,
        )
    shape = packed.logical_shape
    raw = np.asarray(packed).reshape(-1)
    out = _dtypes.unpack_f4(raw, _aligned_empty(raw.size * 2, np.dtype(np.uint8)))
    return out.view(jax.numpy.float4_e2m1fn).reshape(shape)


def _aligned_empty(count: int, dtype: np.dtype) -> np.ndarray:
    raw = np.empty(count * dtype.itemsize + ALIGNMENT, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGNMENT
    return raw[start:start + count * dtype.itemsize].view(dtype)


def to_array(name: str, code: str, array: np.ndarray, placement: Any) -> jax.Array:
    if code == "F4":
        return jax.device_put(_unpack_f4(name, array), placement)
    array = np.asarray(array)
    if not _adoptable(array):
        # A read-only buffer is never handed to XLA: a consumer of the
        # jax.Array's DLPack export (torch.from_dlpack) could write through it.
        array = aligned_copy(array)
    return jax.device_put(array, placement)


def index(index: Any) -> Any:
    """JAX arrays inside an index become NumPy arrays."""
    if isinstance(index, jax.Array):
        return np.asarray(index)
    if isinstance(index, tuple):
        return tuple(np.asarray(i) if isinstance(i, jax.Array) else i for i in index)
    return index


# ---------------------------------------------------------------------------
# MARK: saving

def check_tensors(tensors: Any) -> None:
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a dict of str to jax.Array, not {type(tensors).__name__}"
        )


def _host_array(name: str, value: Any) -> np.ndarray:
    """The host ndarray holding ``value``'s values (no copy for a CPU jax.Array)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, jax.Array):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise error(
                f"tensor {name!r}: a PRNG key array cannot be stored; save "
                f"jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data",
                error_codes.UNSUPPORTED_DTYPE,
            )
        try:
            if not value.is_fully_addressable:
                raise ValueError(
                    f"tensor {name!r} is sharded across processes and this process holds "
                    "only part of it; gather it first (e.g. jax.experimental.multihost_utils"
                    ".process_allgather) or save each process's shards separately"
                )
            # A CPU array is viewed in place; a device (or sharded) one is
            # copied to the host once.
            return np.asarray(value)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            raise TypeError(
                f"tensor {name!r} is a traced value inside jax.jit/grad/vmap, which has no "
                "data yet; save concrete arrays outside the transformed function"
            ) from None
    if type(value).__module__.startswith("jax.experimental.sparse"):
        raise ValueError(
            f"tensor {name!r} is a sparse {type(value).__name__} array, which cannot be "
            "stored; convert it with .todense() first (the file may then be much larger)"
        )
    raise TypeError(
        f"tensor {name!r}: expected a jax.Array (or a numpy.ndarray), not {type(value).__name__}"
    )


def _pack_f4(name: str, array: np.ndarray) -> Tensor:
    values = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    if values.size % 2:
        raise error(
            f"tensor {name!r}: {values.size} float4_e2m1fn values cannot fill whole bytes "
            f"(F4 packs two per byte); store an even number of values",
            error_codes.UNSUPPORTED_DTYPE,
        )
    return Tensor("F4", tuple(array.shape), _dtypes.pack_f4(values))


def from_array(name: str, value: Any) -> Tensor:
    array = _host_array(name, value)
    if isinstance(array, _dtypes.PackedArray) and array.format_dtype:
        return Tensor(array.format_dtype, array.logical_shape, np.asarray(array).view(np.uint8))
    if _HAS_FLOAT4 and array.dtype == jax.numpy.float4_e2m1fn:
        return _pack_f4(name, array)
    code = _dtypes.code_for_dtype(array.dtype)
    if code is None:
        raise error(
            f"tensor {name!r}: dtype {array.dtype} cannot be stored in a safetensors file; "
            f"supported: {_SUPPORTED}",
            error_codes.UNSUPPORTED_DTYPE,
        )
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return Tensor(code, array.shape, array)
