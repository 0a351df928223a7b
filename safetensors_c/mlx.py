"""Load and save .safetensors files as MLX arrays (``mlx.core.array``).

The same functions as ``safetensors.mlx``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`; plus :func:`save_sharded` and
:func:`load_sharded`. ``safe_open(..., framework="mlx")`` gives MLX arrays
too.

MLX cannot adopt host memory on the CPU, so loading copies each tensor
exactly once into MLX's memory. Every MLX dtype round-trips, float64 and
bfloat16 included; float8 and F4/F6 tensors, which MLX has no type for,
raise SafetensorError. Saving reads each array's memory in place, in C order
even for transposed or sliced views. NumPy arrays are accepted too.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from . import _frameworks, sharded
from ._background import SaveHandle
from ._adapters.mlx import mx

__all__ = ["save", "save_file", "load", "load_file", "save_sharded", "load_sharded"]


def save(tensors: Dict[str, mx.array], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors``; byte-identical to
    ``safetensors.mlx.save`` for the same arrays."""
    return _frameworks.save("mlx", tensors, metadata)


def save_file(
    tensors: Dict[str, mx.array],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    *,
    digests: bool = False,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically (a temporary file in the
    same directory, flushed and renamed). ``digests=True`` records each
    tensor's SHA-256 (see :mod:`safetensors_c.integrity`)."""
    return _frameworks.save_file("mlx", tensors, filename, metadata, digests=digests,
                                 background=background)


def load(data: bytes) -> Dict[str, mx.array]:
    """Parses a whole file image; returns its tensors as MLX arrays, in file
    order (each copied once into MLX's memory)."""
    return _frameworks.load("mlx", data)


def load_file(
    filename: Union[str, os.PathLike],
    *,
    backend: str = "auto",
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, mx.array]:
    """Every tensor of ``filename`` (a path, URL or binary file), in file
    order, as MLX arrays (each copied once from the file's mapping)."""
    return _frameworks.load_file(
        "mlx", filename, backend=backend, storage_options=storage_options
    )


save_sharded = _frameworks.bind_framework(sharded.save_sharded, "mlx", __name__)
load_sharded = _frameworks.bind_framework(sharded.load_sharded, "mlx", __name__)
