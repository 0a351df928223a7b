"""The mapping between the format's dtype codes and NumPy dtypes.

Whole-byte dtypes map to NumPy dtypes (little-endian), the low-precision
float types to ``ml_dtypes`` (imported only when such a tensor is met). The
packed sub-byte dtypes (F4, F6_E2M3, F6_E3M2) have no NumPy equivalent: they
load as :class:`PackedArray`, a ``uint8`` array of their raw bytes that
remembers its format dtype and logical shape, so that saving it back
restores both.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PackedArray", "packed", "numpy_dtype", "code_for_dtype", "SUPPORTED_CODES"]

# code -> NumPy dtype string
_NUMPY_DTYPES = {
    "BOOL": "?",
    "U8": "<u1",
    "I8": "<i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "C64": "<c8",
    "F64": "<f8",
    "I64": "<i8",
    "U64": "<u8",
}

# code -> ml_dtypes attribute name
_ML_DTYPES = {
    "BF16": "bfloat16",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}

# packed code -> bits per value
PACKED_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

SUPPORTED_CODES = tuple(_NUMPY_DTYPES) + tuple(_ML_DTYPES) + tuple(PACKED_BITS)

# (kind, itemsize) -> code, for NumPy's own dtypes
_CODE_BY_KIND = {
    ("b", 1): "BOOL",
    ("u", 1): "U8",
    ("i", 1): "I8",
    ("u", 2): "U16",
    ("i", 2): "I16",
    ("f", 2): "F16",
    ("u", 4): "U32",
    ("i", 4): "I32",
    ("f", 4): "F32",
    ("c", 8): "C64",
    ("u", 8): "U64",
    ("i", 8): "I64",
    ("f", 8): "F64",
}
_CODE_BY_ML_NAME = {name: code for code, name in _ML_DTYPES.items()}


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
    if code in _NUMPY_DTYPES:
        return np.dtype(_NUMPY_DTYPES[code])
    if code in _ML_DTYPES:
        return np.dtype(getattr(_ml_dtypes(), _ML_DTYPES[code]))
    if code in PACKED_BITS:
        return np.dtype(np.uint8)
    raise ValueError(f"unknown safetensors dtype code {code!r}")


def code_for_dtype(dtype: np.dtype) -> str | None:
    """The format's code for a NumPy dtype, or None if the format has none."""
    if dtype.type.__module__ == "ml_dtypes":
        return _CODE_BY_ML_NAME.get(dtype.name)
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    return _CODE_BY_KIND.get((dtype.kind, dtype.itemsize))


class PackedArray(np.ndarray):
    """The raw bytes (``uint8``) of a packed sub-byte tensor: F4 or F6.

    ``format_dtype`` is the format's code and ``logical_shape`` the shape in
    values (F4 packs two values per byte, F6 four values per three bytes).
    Saving a PackedArray writes it with that dtype and shape.
    """

    format_dtype: str | None
    _stored_shape: tuple[int, ...] | None

    def __array_finalize__(self, obj):
        self.format_dtype = getattr(obj, "format_dtype", None)
        stored = getattr(obj, "_stored_shape", None)
        # A view of another shape no longer has that logical shape.
        if stored is not None and getattr(obj, "shape", None) != self.shape:
            stored = None
        self._stored_shape = stored

    @property
    def logical_shape(self) -> tuple[int, ...]:
        if self._stored_shape is not None:
            return self._stored_shape
        if self.format_dtype not in PACKED_BITS:
            raise ValueError("this PackedArray has no format dtype")
        bits = PACKED_BITS[self.format_dtype]
        if self.ndim == 0 or (self.shape[-1] * 8) % bits != 0:
            raise ValueError(
                f"cannot tell the logical shape of a {self.format_dtype} array of "
                f"shape {self.shape}; use safetensors_c.packed(raw, dtype, shape)"
            )
        return tuple(self.shape[:-1]) + (self.shape[-1] * 8 // bits,)


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


def _wrap_packed(array: np.ndarray, code: str, shape: tuple[int, ...]) -> PackedArray:
    """Hook for the C loader: marks a loaded packed tensor."""
    return _view_packed(array, code, shape)
