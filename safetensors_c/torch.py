"""Load and save .safetensors files as PyTorch tensors.

The same functions as ``safetensors.torch``: :func:`save`, :func:`save_file`,
:func:`load`, :func:`load_file`, :func:`save_model`, :func:`load_model`,
:func:`storage_ptr`, :func:`storage_size`, ``serialize``/``deserialize``,
and the shared-tensor helpers that transformers, accelerate and peft import
(``_find_shared_tensors``, ``_remove_duplicate_names``, ...); plus
:func:`save_sharded` and :func:`load_sharded` for checkpoints split into
several files.

Loading is zero-copy on the CPU: every tensor shares the memory of the
file's private, copy-on-write mapping (writing to a tensor never changes the
file). Saving streams each tensor's own memory to the file without copying
it first. Shared, non-contiguous and sparse tensors are refused exactly as
``safetensors.torch`` refuses them.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Set, Tuple, Union

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "safetensors_c.torch needs PyTorch, which is not installed: "
        "pip install safetensors_c[torch]"
    ) from exc

from . import _frameworks, sharded
from ._adapters.torch import (
    _CODE_BY_TORCH,
    _TORCH_BY_CODE,
    _end_ptr,
    _filter_shared_not_shared,
    _find_shared_tensors,
    _is_complete,
    _remove_duplicate_names,
    _storage_ptr,
    _storage_size,
)
from ._core import SafetensorError
from ._open import safe_open
from ._writer import TensorSpec, deserialize, serialize, serialize_file

__all__ = [
    "save",
    "save_file",
    "load",
    "load_file",
    "save_model",
    "load_model",
    "save_sharded",
    "load_sharded",
    "safe_open",
    "serialize",
    "serialize_file",
    "deserialize",
    "storage_ptr",
    "storage_size",
    "TensorSpec",
]

# The reference module's dtype tables: format code -> torch dtype, and
# torch dtype -> bytes per element.
_TYPES: Dict[str, torch.dtype] = dict(_TORCH_BY_CODE)
_SIZE: Dict[torch.dtype, int] = {dtype: dtype.itemsize for dtype in _CODE_BY_TORCH}


def _getdtype(dtype_str: str) -> torch.dtype:
    """The torch dtype of a format code such as ``"BF16"``."""
    return _TYPES[dtype_str]


def storage_ptr(tensor: torch.Tensor) -> int:
    """The address of the storage behind ``tensor`` (0 for tensors without one)."""
    return _storage_ptr(tensor)


def storage_size(tensor: torch.Tensor) -> int:
    """The size in bytes of the storage behind ``tensor``."""
    return _storage_size(tensor)


# ---------------------------------------------------------------------------
# MARK: files

def save(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a .safetensors file holding ``tensors`` (contiguous, dense,
    not sharing memory). Byte-identical to ``safetensors.torch.save``."""
    return _frameworks.save("torch", tensors, metadata)


def save_file(
    tensors: Dict[str, torch.Tensor],
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes ``tensors`` to ``filename`` atomically, straight from their memory.

    Tensors on other devices are first copied to the CPU. Do not modify the
    tensors while the file is written.
    """
    _frameworks.save_file("torch", tensors, filename, metadata)


def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Parses a whole file image; returns its tensors (CPU), in file order.

    An immutable ``bytes`` is copied once so the tensors can be writable; a
    ``bytearray`` is used in place.
    """
    return _frameworks.load("torch", data)


def load_file(
    filename: Union[str, os.PathLike],
    device: Union[str, int] = "cpu",
    *,
    backend: str = "mmap",
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, torch.Tensor]:
    """Every tensor of ``filename``, in file order, as torch tensors.

    On the CPU with ``backend="mmap"`` nothing is copied: the tensors share one
    private, copy-on-write mapping of the file; writing to them never changes
    the file. (Where the system refuses a writable mapping, see the README's
    "strict overcommit", the mapping is read-only and each tensor is a private
    copy instead, since torch has no read-only tensors.) Any other ``device``
    gets a copy there.
    """
    return _frameworks.load_file(
        "torch", filename, device, backend=backend, storage_options=storage_options
    )


def _is_checkpoint_directory(filename: Any) -> bool:
    if not isinstance(filename, (str, os.PathLike)):
        return False
    path = os.fspath(filename)
    return os.path.isdir(path) or str(path).endswith(sharded.INDEX_SUFFIX)


# ---------------------------------------------------------------------------
# MARK: models

def save_model(
    model: "torch.nn.Module",
    filename: Union[str, os.PathLike],
    metadata: Optional[Dict[str, str]] = None,
    force_contiguous: bool = True,
) -> None:
    """Saves ``model.state_dict()``, dropping the extra names of shared tensors
    (tied weights). Each dropped name is recorded in the metadata as
    ``{dropped: kept}`` unless the caller's metadata already has that key."""
    state_dict = model.state_dict()
    metadata = None if metadata is None else dict(metadata)
    for kept, dropped_group in _remove_duplicate_names(state_dict).items():
        for dropped in dropped_group:
            if metadata is None:
                metadata = {}
            if dropped not in metadata:
                metadata[dropped] = kept
            del state_dict[dropped]
    if force_contiguous:
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        save_file(state_dict, filename, metadata=metadata)
    except ValueError as e:
        if isinstance(e, SafetensorError):
            raise
        raise ValueError(
            f"{e} (save_model(..., force_contiguous=True) makes every tensor contiguous first)"
        ) from None


def load_model(
    model: "torch.nn.Module",
    filename: Union[str, os.PathLike],
    strict: bool = True,
    device: Union[str, int] = "cpu",
    *,
    backend: str = "mmap",
) -> Tuple[Set[str], List[str]]:
    """Loads ``filename`` (a file, or a sharded checkpoint's directory or
    index) into ``model``, restoring tied weights the file stores once. Returns ``(missing, unexpected)``; with ``strict`` either one
    non-empty raises RuntimeError, as ``torch.nn.Module.load_state_dict`` does."""
    if _is_checkpoint_directory(filename):
        state_dict = load_sharded(filename, device, backend=backend, progress=False)
    else:
        state_dict = load_file(filename, device=device, backend=backend)
    model_state_dict = model.state_dict()
    to_removes = _remove_duplicate_names(model_state_dict, preferred_names=list(state_dict))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = set(missing)
    for group in to_removes.values():
        for name in group:
            if name not in missing:
                unexpected.append(name)
            else:
                missing.remove(name)
    if strict and (missing or unexpected):
        # torch's own wording, which users and tools search for.
        problems = []
        if missing:
            problems.append("Missing key(s) in state_dict: "
                            + ", ".join(f'"{k}"' for k in sorted(missing)) + ".")
        if unexpected:
            problems.append("Unexpected key(s) in state_dict: "
                            + ", ".join(f'"{k}"' for k in sorted(unexpected)) + ".")
        raise RuntimeError(
            f"Error(s) in loading state_dict for {model.__class__.__name__} from {filename}:\n\t"
            + "\n\t".join(problems)
        )
    return missing, unexpected



# ---------------------------------------------------------------------------
# MARK: sharded checkpoints

def save_sharded(
    tensors: Dict[str, torch.Tensor],
    directory: Union[str, os.PathLike],
    max_shard_size: Union[int, str] = "5GB",
    prefix: str = "model",
    metadata: Optional[Dict[str, str]] = None,
    *,
    progress: bool = True,
) -> Dict[str, Any]:
    """:func:`safetensors_c.sharded.save_sharded` for torch tensors."""
    return sharded.save_sharded(
        tensors, directory, max_shard_size, prefix, metadata, framework="pt", progress=progress
    )


def load_sharded(
    path: Union[str, os.PathLike],
    device: Union[str, int] = "cpu",
    *,
    prefix: str = "model",
    backend: str = "mmap",
    progress: bool = True,
) -> Dict[str, torch.Tensor]:
    """:func:`safetensors_c.sharded.load_sharded` giving torch tensors."""
    return sharded.load_sharded(
        path, framework="pt", device=device, prefix=prefix, backend=backend, progress=progress
    )
