"""Load and save .safetensors files as TensorFlow tensors.

The same functions as ``safetensors.tensorflow``: :func:`save`,
:func:`save_file`, :func:`load`, :func:`load_file`; plus
:func:`save_sharded` and :func:`load_sharded`. ``safe_open(...,
framework="tf")`` (or ``"tensorflow"``) gives TF tensors too.

Loading gives eager CPU tensors. A tensor whose bytes are 64-byte aligned
in memory (TF's requirement) is adopted through DLPack without copying:
with the mmap backend it then reads the file's private,
copy-on-write mapping. Any other tensor, and every float8 tensor, is copied
once. F4 tensors load as ``float4_e2m1fn`` (one value per byte, unpacked
from the file's two per byte, first value in the low nibble as PyTorch's
``float4_e2m1fn_x2``; copied twice: unpacked, then into TF) and save back
packed. TF has every other dtype of the format except F8_E8M0 and F6, which
raise SafetensorError (load them with ``framework="np"``).

Saving reads each CPU tensor's memory in place (float8 tensors and tensors
on other devices are copied to the host once). ``tf.Variable`` values are
accepted; sparse and ragged tensors are refused with ValueError. Unlike the
reference, the dict passed in is never modified.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from . import _frameworks, sharded
from ._background import SaveHandle
from ._adapters.tensorflow import tf
from ._open import safe_open

__all__ = ["save", "save_file", "load", "load_file", "save_sharded", "load_sharded", "safe_open"]


def save(tensors: Dict[str, tf.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors``; byte-identical to
    ``safetensors.tensorflow.save`` for the same tensors."""
    return _frameworks.save("tensorflow", tensors, metadata)


def save_file(
    tensors: Dict[str, tf.Tensor],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    *,
    digests: bool = False,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically (a temporary file in the
    same directory, flushed and renamed). ``digests=True`` records each
    tensor's SHA-256 (see :mod:`safetensors_c.integrity`)."""
    return _frameworks.save_file("tensorflow", tensors, filename, metadata, digests=digests,
                                 background=background)


def load(data: bytes) -> Dict[str, tf.Tensor]:
    """Parses a whole file image; returns its tensors as CPU tf.Tensors, in
    file order. Each tensor of a ``bytes`` image is copied once; a
    ``bytearray`` is used in place where a tensor is aligned (do not change
    it afterwards)."""
    return _frameworks.load("tensorflow", data)


def load_file(
    filename: Union[str, os.PathLike],
    *,
    backend: str = "auto",
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, tf.Tensor]:
    """Every tensor of ``filename`` (a path, URL or binary file), in file
    order, as CPU tf.Tensors (see the module docstring for when they share
    the file's mapping)."""
    return _frameworks.load_file(
        "tensorflow", filename, backend=backend, storage_options=storage_options
    )


save_sharded = _frameworks.bind_framework(sharded.save_sharded, "tensorflow", __name__)
load_sharded = _frameworks.bind_framework(sharded.load_sharded, "tensorflow", __name__)
