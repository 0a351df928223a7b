"""Load and save .safetensors files as NumPy arrays.

The same functions as ``safetensors.numpy``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`; plus the package's own :func:`save_sharded`,
:func:`load_sharded` and :func:`safe_open_sharded`, whose ``framework=``
defaults to NumPy (the other framework modules bind theirs).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from . import _frameworks
from ._background import SaveHandle
from ._display import TensorDict
from .sharded import load_sharded, safe_open_sharded, save_sharded

__all__ = ["save", "save_file", "load", "load_file", "load_sharded", "safe_open_sharded",
           "save_sharded"]


def save(tensors: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors``.

    Byte-identical to the reference writer's output (with at most one
    metadata entry; we write metadata keys sorted). Non-contiguous and
    big-endian arrays are written in C order, little-endian.
    """
    return _frameworks.save("numpy", tensors, metadata)


def save_file(
    tensors: Dict[str, np.ndarray],
    filename,
    metadata: Optional[Dict[str, str]] = None,
    *,
    digests: bool = False,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically.

    The data streams from the arrays' own memory into a temporary file in
    the same directory, which is flushed to disk and renamed over
    ``filename``: readers see the old file or the new one, never a part.
    ``digests=True`` records each tensor's SHA-256 in the metadata (see
    :mod:`safetensors_c.integrity`), checked by ``safe_open(...,
    verify_digests=True)`` and ``safetensors-c verify``.
    """
    return _frameworks.save_file("numpy", tensors, filename, metadata, digests=digests,
                                 background=background)


def load(data: bytes) -> Dict[str, np.ndarray]:
    """Parses a whole file image; returns its tensors, in file order.

    The arrays are writable. A read-only buffer such as ``bytes`` is copied
    once (arrays must not change an immutable object); a writable one, such
    as a ``bytearray``, is used in place without copying.
    """
    return TensorDict(_frameworks.load("numpy", data))


def load_file(
    filename, *, backend: str = "auto", storage_options: Optional[Dict[str, Any]] = None
) -> Dict[str, np.ndarray]:
    """Opens ``filename`` (a path, URL or binary file) and returns every
    tensor, in file order.

    With ``backend="mmap"`` (the default on local disks) this copies nothing: each array is
    a writable, copy-on-write view into one mapping of the file, read from
    disk only when touched. ``backend="pread"`` reads each tensor into
    memory of its own.
    """
    return TensorDict(
        _frameworks.load_file("numpy", filename, backend=backend, storage_options=storage_options)
    )
