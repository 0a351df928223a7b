"""Load and save .safetensors files as Paddle tensors.

The same functions as ``safetensors.paddle``: :func:`save`,
:func:`save_file`, :func:`load`, :func:`load_file` (with ``device=``);
plus :func:`save_sharded` and :func:`load_sharded`. ``safe_open(...,
framework="paddle")`` gives paddle tensors too, and so does its
``get_slice``.

Loading on the CPU copies nothing: every tensor shares the reader's memory
through DLPack (with ``backend="mmap"``, the file's private, copy-on-write
mapping: writing to a tensor never changes the file). A ``bytes`` image is
copied once per tensor, since paddle tensors are writable; a ``bytearray``
is used in place. Any other ``device`` ("gpu:0", "cuda:0", an int, a
paddle Place) gets one copy there. Paddle has every dtype of the format
except F8_E8M0, the float8 FNUZ types and the packed F4/F6, which raise
SafetensorError (load them with ``framework="np"``).

Saving streams each tensor's own memory to the file; a tensor on another
device is copied to the host once. Non-contiguous and sparse tensors raise
ValueError, as in the reference.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from . import _frameworks, sharded
from ._background import SaveHandle
from ._adapters.paddle import _CARRIER_BY_CODE, _CODE_BY_PADDLE, _PADDLE_BY_CODE, paddle
from ._open import safe_open
# names the reference's module has too
from ._writer import TensorSpec, deserialize, serialize, serialize_file  # noqa: F401

__all__ = ["save", "save_file", "load", "load_file", "save_sharded", "load_sharded", "safe_open"]

# The reference module's dtype tables: format code -> paddle dtype, and
# paddle dtype -> bytes per element.
_TYPES: Dict[str, Any] = dict(_PADDLE_BY_CODE)
_SIZE: Dict[Any, int] = {
    dtype: _CARRIER_BY_CODE[code].itemsize for dtype, code in _CODE_BY_PADDLE.items()
}


def _getdtype(dtype_str: str) -> Any:
    """The paddle dtype of a format code such as ``"BF16"``."""
    return _TYPES[dtype_str]


def save(tensors: Dict[str, paddle.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors`` (dense and
    contiguous); byte-identical to ``safetensors.paddle.save``."""
    return _frameworks.save("paddle", tensors, metadata)


def save_file(
    tensors: Dict[str, paddle.Tensor],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    *,
    digests: bool = False,
    background: bool = False,
) -> Optional[SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically (a temporary file in the
    same directory, flushed and renamed), straight from their memory. Do not
    modify the tensors while the file is written. ``digests=True`` records
    each tensor's SHA-256 (see :mod:`safetensors_c.integrity`)."""
    return _frameworks.save_file("paddle", tensors, filename, metadata, digests=digests,
                                 background=background)


def load(data: bytes, device: Any = "cpu") -> Dict[str, paddle.Tensor]:
    """Parses a whole file image; returns its tensors on ``device``, in file
    order. Each tensor of a ``bytes`` image is copied once; a ``bytearray``
    is used in place (do not change it afterwards)."""
    return _frameworks.load("paddle", data, device)


def load_file(
    filename: Union[str, os.PathLike],
    device: Any = "cpu",
    *,
    backend: str = "auto",
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, paddle.Tensor]:
    """Every tensor of ``filename`` (a path, URL or binary file), in file
    order, on ``device`` (see the module docstring for what is copied)."""
    return _frameworks.load_file(
        "paddle", filename, device, backend=backend, storage_options=storage_options
    )


save_sharded = _frameworks.bind_framework(sharded.save_sharded, "paddle", __name__)
load_sharded = _frameworks.bind_framework(sharded.load_sharded, "paddle", __name__)
