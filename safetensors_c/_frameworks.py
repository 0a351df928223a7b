"""The framework registry, and the generic load/save every framework module uses.

Floor 3 of the package. ``adapter_for("jax")`` loads
``safetensors_c._adapters.flax`` on first use, so importing safetensors_c
imports no framework. Adding a framework is one adapter module and one
entry in ``_ADAPTERS``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Dict, Mapping, Optional

from . import _writer
from ._checks import SafetensorError, check_tensor_name, error, fs_path
from ._digests import add_digests
from ._reader import as_source, open_source

__all__ = ["FRAMEWORKS", "adapter_for", "load", "load_file", "save", "save_file", "to_neutral"]

# Every name safe_open(framework=...) accepts -> its adapter module.
_ADAPTERS = {
    "np": "numpy",
    "numpy": "numpy",
    "pt": "torch",
    "torch": "torch",
    "pytorch": "torch",
    "flax": "flax",
    "jax": "flax",
    "tf": "tensorflow",
    "tensorflow": "tensorflow",
    "paddle": "paddle",
    "mlx": "mlx",
}
FRAMEWORKS = tuple(_ADAPTERS)


def adapter_for(framework: Any) -> ModuleType:
    """The adapter module for a framework name (``"np"``, ``"pt"``, ``"jax"``, ...)."""
    if not isinstance(framework, str):  # a TypeError, as in the reference
        raise TypeError(
            f"framework must be a str such as 'pt' or 'np', not {type(framework).__name__}"
        )
    module = _ADAPTERS.get(framework)
    if module is None:
        raise error(
            f"framework {framework!r} is not supported; use one of "
            + ", ".join(repr(f) for f in FRAMEWORKS)
        )
    return importlib.import_module(f"{__package__}._adapters.{module}")


# MARK: saving ----------------------------------------------------------------


def to_neutral(adapter: ModuleType, tensors: Any) -> Dict[str, _writer.Tensor]:
    """The writer's tensors for a dict of framework arrays, every input checked."""
    adapter.check_tensors(tensors)
    out: Dict[str, _writer.Tensor] = {}
    for name, value in tensors.items():
        check_tensor_name(name)
        if name in out:  # a Mapping whose items() repeats a name
            raise error(f"tensor {name!r}: two tensors have the same name")
        out[name] = adapter.from_array(name, value)
    return out


def save(framework: str, tensors: Any, metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """The bytes of a file holding ``tensors`` (arrays of ``framework``)."""
    return _writer.write(to_neutral(adapter_for(framework), tensors), metadata, None)


def save_file(
    framework: str,
    tensors: Any,
    filename: Any,
    metadata: Optional[Mapping[str, str]] = None,
    *,
    digests: bool = False,
) -> None:
    """Writes ``tensors`` to ``filename`` atomically (see ``safetensors_c.save_file``)."""
    neutral = to_neutral(adapter_for(framework), tensors)
    path = fs_path(filename)
    if digests:
        metadata = add_digests(neutral, metadata)  # code, shape and bytes of each
    _writer.write(neutral, metadata, path)


# MARK: loading ---------------------------------------------------------------


def tensors_of(adapter: ModuleType, placement: Any, reader: Any) -> Dict[str, Any]:
    """Every tensor of an open reader, in file order, as the adapter's arrays.
    Every dtype is checked against the framework before any tensor is read."""
    names = reader.offset_keys()
    codes = []
    for name in names:
        code, shape = reader.info(name)[:2]
        adapter.check_code(name, code, shape)
        codes.append(code)
    arrays = reader.tensors()
    return {
        name: adapter.to_array(name, code, arrays[name], placement)
        for name, code in zip(names, codes)
    }


def load_reader(framework: str, reader: Any, device: Any = "cpu") -> Dict[str, Any]:
    """Every tensor of an open reader, in file order, as ``framework`` arrays."""
    adapter = adapter_for(framework)
    return tensors_of(adapter, adapter.placement(device), reader)


def load(framework: str, data: Any, device: Any = "cpu") -> Dict[str, Any]:
    """The tensors of a whole file image, in file order.

    A writable buffer (``bytearray``) is used in place; an immutable
    ``bytes`` is copied once so that the arrays can be writable (unless the
    adapter copies read-only arrays itself: ``COPIES_READ_ONLY``).
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"data must be bytes-like, not {type(data).__name__}") from None
    if view.readonly and not getattr(adapter_for(framework), "COPIES_READ_ONLY", False):
        data = bytearray(view)
    return load_reader(framework, open_source(data), device)


def load_file(
    framework: str,
    filename: Any,
    device: Any = "cpu",
    *,
    backend: str = "mmap",
    storage_options: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Every tensor of ``filename`` (a path, URL or binary file), in file order.

    A directory, an index ``.json`` or a pickle/ZIP checkpoint raises the
    usual error (IsADirectoryError; SafetensorError ``STC_ERR_NOT_SAFETENSORS``)
    with a message naming what to call instead."""
    adapter = adapter_for(framework)
    try:
        reader = open_source(as_source(filename), backend=backend,
                             storage_options=storage_options)
    except IsADirectoryError as exc:
        raise _directory_error(exc, adapter) from None
    except SafetensorError as exc:
        redirected = _not_safetensors_error(exc, filename, adapter)
        if redirected is None:
            raise
        raise redirected from None
    return tensors_of(adapter, adapter.placement(device), reader)


# MARK: what to call instead ----------------------------------------------------


def _public_module(adapter: ModuleType) -> str:
    return "safetensors_c" if adapter.NAME == "numpy" else f"safetensors_c.{adapter.NAME}"


def _directory_error(exc: IsADirectoryError, adapter: ModuleType) -> IsADirectoryError:
    """The same IsADirectoryError, saying how to load what a directory holds."""
    path = exc.filename
    load_sharded = f"{_public_module(adapter)}.load_sharded({path!r})"
    try:
        names = os.listdir(path) if isinstance(path, (str, bytes)) else []
    except OSError:
        names = []
    names = [os.fsdecode(n) for n in names]
    if any(n.endswith(".safetensors.index.json") or n.endswith(".safetensors") for n in names):
        hint = f"it is a sharded checkpoint: load it with {load_sharded}"
    elif any(n.endswith((".bin", ".pt", ".pth", ".bin.index.json")) for n in names):
        hint = ("it holds PyTorch checkpoint files: convert them with "
                "`safetensors-c convert DIR OUT_DIR` (which runs none of their code)")
    else:
        hint = (f"for a sharded checkpoint call {load_sharded}; a directory of .bin files "
                f"converts with `safetensors-c convert`")
    return IsADirectoryError(exc.errno, f"{exc.strerror}, not a file; {hint}", path)


def _not_safetensors_error(exc: SafetensorError, filename: Any,
                           adapter: ModuleType) -> Optional[SafetensorError]:
    """A SafetensorError for an index or a pickle that says what to call
    instead (same code), or None for any other error."""
    if getattr(exc, "code", None) != "STC_ERR_NOT_SAFETENSORS":
        return None
    text = str(exc)
    shown = repr(os.fsdecode(filename)) if isinstance(filename, (str, bytes, os.PathLike)) \
        else "FILE"
    if "JSON text" in text:
        hint = (f"an index loads with {_public_module(adapter)}.load_sharded({shown}) "
                f"(or its directory)")
    elif "pickle" in text or "ZIP archive" in text:
        hint = (f"convert it first with `safetensors-c convert {shown} OUT.safetensors` "
                f"(or safetensors_c.convert.convert), which reads it without running its code")
    else:
        return None
    redirected = error(f"{text}; {hint}", "STC_ERR_NOT_SAFETENSORS")
    for key, value in vars(exc).items():  # where it happened, as the core said
        setattr(redirected, key, value) if key != "code" else None
    return redirected
