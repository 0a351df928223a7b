"""The mapping between the format's dtype codes and NumPy dtypes.

Whole-byte dtypes map to NumPy dtypes (little-endian), the low-precision
float types to ``ml_dtypes`` (imported only when such a tensor is met). The
packed sub-byte dtypes (F4, F6_E2M3, F6_E3M2) have no NumPy equivalent: they
load as :class:`PackedArray`, a ``uint8`` array of their raw bytes that
remembers its format dtype and logical shape, so that saving it back
restores both.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core

__all__ = [
    "DTYPE_NAMES",
    "PackedArray",
    "SUPPORTED_CODES",
    "array_from_bytes",
    "code_for_dtype",
    "f4_pairs_shape",
    "f4_values_shape",
    "numpy_dtype",
    "pack_f4",
    "packed",
    "packed_numpy_shape",
    "unpack_f4",
]

# MARK: the names ------------------------------------------------------------

# code -> the framework-neutral name of its element type, as NumPy, ml_dtypes,
# torch, JAX and TensorFlow all spell it (F4: one value a byte; torch's own
# type packs pairs, see f4_pairs_shape), in the writer's rank order. F6 has no
# such name anywhere. The table is the core's (it resolves dtypes itself).
DTYPE_NAMES = _core.dtype_names()

# packed code -> bits per value
PACKED_BITS = {code: bits for code, bits in _core.dtypes() if bits % 8}

# The codes whose NumPy dtype comes from ml_dtypes, by its DTYPE_NAMES name.
ML_CODES = ("BF16", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ")

SUPPORTED_CODES = tuple(code for code, _ in _core.dtypes())

# (kind, itemsize) -> code, for NumPy's own dtypes
_CODE_BY_KIND = {
    (np.dtype(name).kind, np.dtype(name).itemsize): code
    for code, name in DTYPE_NAMES.items() if code not in ML_CODES and code not in PACKED_BITS
}
_CODE_BY_ML_NAME = {DTYPE_NAMES[code]: code for code in ML_CODES}


def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes is a dependency
        raise ImportError(
            "BF16 and F8 tensors need the ml_dtypes package: pip install ml_dtypes"
        ) from exc
    return ml_dtypes


def numpy_dtype(code: str) -> np.dtype:
    """The NumPy dtype a tensor of this format dtype loads as."""
    if code in PACKED_BITS:
        return np.dtype(np.uint8)
    if code in ML_CODES:
        return np.dtype(getattr(_ml_dtypes(), DTYPE_NAMES[code]))
    if code in DTYPE_NAMES:
        return np.dtype(DTYPE_NAMES[code]).newbyteorder("<")
    raise ValueError(f"unknown safetensors dtype code {code!r}")


def code_for_dtype(dtype: np.dtype) -> str | None:
    """The format's code for a NumPy dtype, or None if the format has none."""
    if dtype.type.__module__ == "ml_dtypes":
        return _CODE_BY_ML_NAME.get(dtype.name)
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    return _CODE_BY_KIND.get((dtype.kind, dtype.itemsize))


# The ndarray subclass the core hands packed tensors out as: ``uint8`` bytes
# that remember ``format_dtype`` and the logical shape (``logical_shape``);
# the core owns the type so that it needs nothing from the package.
PackedArray = _core.PackedArray


def packed(raw: np.ndarray, dtype: str, shape=None) -> PackedArray:
    """Marks ``uint8`` bytes as a packed F4/F6 tensor of a logical shape.

    Without ``shape`` the last dimension is read as bytes: ``raw`` of shape
    (..., k) is an F4 tensor of shape (..., 2k), or an F6 one of (..., 4k/3).
    """
    if dtype not in PACKED_BITS:
        raise ValueError(f"packed dtypes are {sorted(PACKED_BITS)}, not {dtype!r}")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise TypeError(f"packed tensors are uint8 bytes, not {raw.dtype}")
    out = _view_packed(raw, dtype)
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        count = 1
        for d in shape:
            count *= d
        if count * PACKED_BITS[dtype] != raw.size * 8:
            raise ValueError(
                f"{dtype} tensor of shape {shape} needs {count * PACKED_BITS[dtype] / 8:g} "
                f"bytes, but {raw.size} were given"
            )
        out._stored_shape = shape
    else:
        out.logical_shape  # raises if it cannot be derived
    return out


def _view_packed(array: np.ndarray, code: str, shape=None) -> PackedArray:
    """A PackedArray view of uint8 bytes, marked with its format dtype."""
    out = array.view(PackedArray)
    out.format_dtype = code
    out._stored_shape = tuple(shape) if shape is not None else None
    return out


# MARK: the packed rules ------------------------------------------------------
#
# F4 packs two values a byte, the first in the low nibble (the OCP MX layout,
# and torch's float4_e2m1fn_x2). F6 packs four values in three bytes, value i
# of a group in bits 6i..6i+5 of the group's little-endian 24-bit word (the
# order the core's statistics decode). The NumPy shape of a packed tensor is
# its bytes: the last dimension divided into whole groups when it fills them,
# otherwise one flat run of bytes.



def _group(code: str) -> tuple:
    """(values, bytes) of one whole group: lcm(bits, 8) bits (as the core)."""
    bits = PACKED_BITS[code]
    common = math.gcd(bits, 8)
    return 8 // common, bits // common


def packed_numpy_shape(code: str, shape: tuple, nbytes: int) -> tuple:
    """The uint8 shape a packed tensor of logical ``shape`` loads as."""
    values, group_bytes = _group(code)
    shape = tuple(shape)
    if shape and shape[-1] % values == 0:
        return shape[:-1] + (shape[-1] // values * group_bytes,)
    return (nbytes,)


def f4_pairs_shape(shape: tuple) -> tuple:
    """The shape of an F4 tensor counted in pairs of values (the last
    dimension halved), as torch's ``float4_e2m1fn_x2`` counts it; the last
    dimension must be even (callers check and say what to do)."""
    shape = tuple(shape)
    return shape[:-1] + (shape[-1] // 2,)


def f4_values_shape(pairs_shape: tuple) -> tuple:
    """The logical shape (in values) of an F4 tensor whose shape counts pairs."""
    pairs_shape = tuple(pairs_shape)
    return pairs_shape[:-1] + (pairs_shape[-1] * 2,)


def unpack_f4(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The 4-bit codes of F4 bytes, one a byte, the low nibble of each byte
    first: a 1-D uint8 array of twice ``raw.size`` (``out`` if given)."""
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if out is None:
        out = np.empty(raw.size * 2, np.uint8)
    np.bitwise_and(raw, 0x0F, out=out[0::2])
    np.right_shift(raw, 4, out=out[1::2])
    return out


def pack_f4(codes: np.ndarray) -> np.ndarray:
    """F4 bytes from 4-bit codes one a byte (an even number of them; callers
    check and say what to do), the first of each pair in the low nibble."""
    codes = np.ascontiguousarray(codes).reshape(-1).view(np.uint8)
    return (codes[0::2] & 0x0F) | (codes[1::2] << 4)


# MARK: the array factory -----------------------------------------------------


def array_from_bytes(code: str, shape: tuple, buffer) -> np.ndarray:
    """The NumPy array of a tensor over its raw bytes (no copy): its NumPy
    dtype and shape, a :class:`PackedArray` of the logical ``shape`` for F4
    and F6. ``buffer`` is any buffer of exactly the tensor's bytes (a
    read-only one gives a read-only array)."""
    raw = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) \
        else buffer.reshape(-1).view(np.uint8)
    shape = tuple(int(d) for d in shape)
    if code in PACKED_BITS:
        return _view_packed(raw.reshape(packed_numpy_shape(code, shape, raw.size)), code, shape)
    return raw.view(numpy_dtype(code)).reshape(shape)
