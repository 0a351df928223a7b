"""Load and save .safetensors files as NumPy arrays.

The same functions as ``safetensors.numpy``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import numpy as np

from . import _core, _dtypes
from ._core import SafetensorError
from ._display import TensorDict
from ._open import open_file

__all__ = ["save", "save_file", "load", "load_file"]


def check_metadata(metadata) -> Optional[Dict[str, str]]:
    """Metadata to save, checked (a dict of str to str, or None) and copied."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata must be a dict of str to str or None, not {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata must map str to str; got {type(key).__name__} -> "
                f"{type(value).__name__} for key {key!r}"
            )
    return dict(metadata)


def check_tensor_name(name) -> None:
    """Raises unless ``name`` can name a tensor in a file."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, not {type(name).__name__}: {name!r}")
    if name == "__metadata__":
        raise ValueError('"__metadata__" is reserved for metadata and cannot name a tensor')


def _prepare(tensors: Mapping[str, np.ndarray], metadata: Optional[Dict[str, str]]):
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors must be a dict of str to numpy.ndarray, not {type(tensors).__name__}"
        )
    metadata = check_metadata(metadata)
    names, codes, shapes, arrays = [], [], [], []
    for name, array in tensors.items():
        check_tensor_name(name)
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"tensor {name!r}: expected a numpy.ndarray, not {type(array).__name__}"
            )
        if isinstance(array, _dtypes.PackedArray) and array.format_dtype:
            code = array.format_dtype
            shape = array.logical_shape
            array = np.asarray(array).view(np.uint8)
        else:
            code = _dtypes.code_for_dtype(array.dtype)
            if code is None:
                raise SafetensorError(
                    f"tensor {name!r}: dtype {array.dtype} cannot be stored in a safetensors "
                    f"file; supported: bool, (u)int8-64, float16/32/64, complex64, and "
                    f"ml_dtypes bfloat16 and float8 types"
                )
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            shape = array.shape
        names.append(name)
        codes.append(code)
        shapes.append(tuple(int(d) for d in shape))
        arrays.append(array)
    return names, codes, shapes, arrays, metadata


def save(tensors: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors``.

    Byte-identical to the reference writer's output (with at most one
    metadata entry; we write metadata keys sorted). Non-contiguous and
    big-endian arrays are written in C order, little-endian.
    """
    names, codes, shapes, arrays, metadata = _prepare(tensors, metadata)
    return _core.save(names, codes, shapes, arrays, metadata, None)


def save_file(
    tensors: Dict[str, np.ndarray],
    filename,
    metadata: Optional[Dict[str, str]] = None,
    *,
    digests: bool = False,
) -> None:
    """Writes ``tensors`` to ``filename`` atomically.

    The data streams from the arrays' own memory into a temporary file in
    the same directory, which is flushed to disk and renamed over
    ``filename``: readers see the old file or the new one, never a part.
    ``digests=True`` records each tensor's SHA-256 in the metadata (see
    :mod:`safetensors_c.integrity`), checked by ``safe_open(...,
    verify_digests=True)`` and ``safetensors-c verify``.
    """
    names, codes, shapes, arrays, metadata = _prepare(tensors, metadata)
    if digests:
        from .integrity import add_digests

        metadata = add_digests(dict(zip(names, arrays)), metadata)
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f"filename must be a str or os.PathLike, not {type(filename).__name__}")
    path = os.fspath(filename)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    _core.save(names, codes, shapes, arrays, metadata, path)


def load(data: bytes) -> Dict[str, np.ndarray]:
    """Parses a whole file image; returns its tensors, in file order.

    The arrays are writable. A read-only buffer such as ``bytes`` is copied
    once (arrays must not change an immutable object); a writable one, such
    as a ``bytearray``, is used in place without copying.
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
    if view.readonly:
        data = bytearray(view)
    return TensorDict(_core.open_buffer(data).tensors())


def load_file(filename, *, backend: str = "mmap") -> Dict[str, np.ndarray]:
    """Opens ``filename`` and returns every tensor, in file order.

    With ``backend="mmap"`` (the default) this copies nothing: each array is
    a writable, copy-on-write view into one mapping of the file, read from
    disk only when touched. ``backend="pread"`` reads each tensor into
    memory of its own.
    """
    return TensorDict(open_file(filename, backend).tensors())


from .sharded import load_sharded, safe_open_sharded, save_sharded  # noqa: E402
