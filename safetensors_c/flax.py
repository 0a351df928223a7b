"""Load and save .safetensors files as JAX arrays (for Flax and plain JAX).

The same functions as ``safetensors.flax``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`; plus :func:`save_sharded` and
:func:`load_sharded`. ``safe_open(..., framework="flax")`` (or ``"jax"``)
gives JAX arrays too.

Loading places arrays on the CPU. A tensor whose bytes are 64-byte aligned
in memory (XLA's requirement) is adopted without copying: with the mmap
backend the jax.Array then reads the file's private,
copy-on-write mapping. Any other tensor is copied once. The 64-bit dtypes
(I64, U64, F64) load only with ``jax_enable_x64`` on; without it they raise
SafetensorError rather than being cut to 32 bits. F4 tensors load as
``float4_e2m1fn`` arrays (unpacked, low nibble first, as PyTorch's
``float4_e2m1fn_x2`` stores them) and save back packed; F6 is refused.

Saving reads each CPU array's memory in place (an array on another device
is copied to the host once). NumPy arrays are accepted too, e.g. the output
of ``jax.device_get``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from . import _frameworks, sharded
from ._background import SaveHandle
from ._adapters.flax import jax

__all__ = ["save", "save_file", "load", "load_file", "save_sharded", "load_sharded"]

Array = jax.Array


def save(tensors: Dict[str, Array], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors``; byte-identical to
    ``safetensors.flax.save`` for the same arrays."""
    return _frameworks.save("flax", tensors, metadata)


def save_file(
    tensors: Dict[str, Array],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    *,
    digests: bool = False,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically (a temporary file in the
    same directory, flushed and renamed). ``digests=True`` records each
    tensor's SHA-256 (see :mod:`safetensors_c.integrity`)."""
    return _frameworks.save_file("flax", tensors, filename, metadata, digests=digests,
                                 background=background)


def load(data: bytes) -> Dict[str, Array]:
    """Parses a whole file image; returns its tensors as CPU jax.Arrays, in
    file order. ``bytes`` is copied once; a ``bytearray`` is used in place
    (aligned tensors then share its memory: do not change it afterwards)."""
    return _frameworks.load("flax", data)


def load_file(
    filename: Union[str, os.PathLike],
    *,
    backend: str = "auto",
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, Array]:
    """Every tensor of ``filename`` (a path, URL or binary file), in file
    order, as CPU jax.Arrays (see the module docstring for when they share
    the file's mapping)."""
    return _frameworks.load_file(
        "flax", filename, backend=backend, storage_options=storage_options
    )


save_sharded = _frameworks.bind_framework(sharded.save_sharded, "flax", __name__)
load_sharded = _frameworks.bind_framework(sharded.load_sharded, "flax", __name__)
