"""The framework registry, and the generic load/save every framework module uses.

``adapter_for("jax")`` loads ``safetensors_c._adapters.flax`` on first
use, so importing safetensors_c imports no framework. Adding a framework is
one adapter module, one entry in ``_ADAPTERS`` and its public module (whose
sharded functions come from :func:`bind_framework`); the compatibility
switch and the lists of framework names are derived from ``_ADAPTERS``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import os
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from . import _background, _writer, error_codes
from ._checks import SafetensorError, check_tensor_name, error, fs_path
from ._digests import add_digests
from ._reader import as_source, open_source

__all__ = ["FRAMEWORKS", "PUBLIC_MODULES", "adapter_for", "bind_framework", "framework_names",
           "load", "load_file", "save", "save_file", "to_neutral"]

# Every name safe_open(framework=...) accepts -> its adapter module, which is
# also the name of the framework's public module (safetensors_c.<module>).
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
#: The public framework modules, ``safetensors_c.<name>``, in registry order.
PUBLIC_MODULES: Tuple[str, ...] = tuple(dict.fromkeys(_ADAPTERS.values()))


def framework_names() -> str:
    """The accepted names, grouped by framework, for docstrings and messages:
    ``"np"/"numpy", "pt"/"torch"/"pytorch", ...``."""
    groups: Dict[str, list] = {}
    for name, module in _ADAPTERS.items():
        groups.setdefault(module, []).append(f'"{name}"')
    return ", ".join("/".join(names) for names in groups.values())


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


# MARK: public functions with the framework bound --------------------------


def bind_framework(function: Callable[..., Any], framework: str, module: str) -> Callable[..., Any]:
    """``function`` (a framework-neutral function with a ``framework=``
    parameter, e.g. ``sharded.load_sharded``) as the public function of the
    framework module ``module``: the same parameters and defaults but
    ``framework``, which is ``framework``. ``help()`` shows that signature
    and ``function``'s own docstring under a line naming the framework."""
    neutral = inspect.signature(function)
    if "framework" not in neutral.parameters:
        raise TypeError(f"{function.__qualname__} has no framework= parameter to bind")
    signature = neutral.replace(
        parameters=[p for p in neutral.parameters.values() if p.name != "framework"]
    )

    def bound(*args: Any, **kwargs: Any) -> Any:
        # By name: the neutral function may take `framework` positionally.
        arguments = signature.bind(*args, **kwargs).arguments
        return function(framework=framework, **arguments)

    bound.__name__ = bound.__qualname__ = function.__name__
    bound.__module__ = module
    bound.__signature__ = signature  # type: ignore[attr-defined]
    bound.__doc__ = (
        f"{function.__name__} for {adapter_for(framework).LABEL} arrays: "
        f":func:`{function.__module__}.{function.__name__}` with "
        f"``framework={framework!r}``.\n\n{inspect.getdoc(function) or ''}"
    )
    return bound


# MARK: saving ----------------------------------------------------------------


def to_neutral(adapter: ModuleType, tensors: Any) -> Dict[str, _writer.Tensor]:
    """The writer's tensors for a dict of framework arrays, every input checked."""
    from_array = adapter.from_array
    out: Dict[str, _writer.Tensor] = {}
    with _collector_paused():
        adapter.check_tensors(tensors)
        for name, value in tensors.items():
            if type(name) is not str or name == "__metadata__":
                check_tensor_name(name)  # raises with the reason
            if name in out:  # a Mapping whose items() repeats a name
                raise error(f"tensor {name!r}: two tensors have the same name")
            out[name] = from_array(name, value)
    return out


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, and back on after it
    on every path (only if it was on before). The loop above makes a few
    small objects per tensor and no cycle, yet with 100,000 tensors their
    count alone starts full collections of the whole heap (a tenth of a
    second each with torch imported). The collector's switch is global: a
    thread that turns it off while this block runs finds it on again after;
    reference counting frees everything as usual meanwhile."""
    was_on = gc.isenabled()
    if was_on:
        gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


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
    background: bool = False,
) -> Optional[_background.SaveHandle]:
    """Writes ``tensors`` to ``filename`` atomically (see ``safetensors_c.save_file``).
    With ``background=True`` the tensors are snapshotted, the file is written
    on a background thread and the returned handle tells when it is done."""
    neutral = to_neutral(adapter_for(framework), tensors)
    path = fs_path(filename)
    if background:
        return _background.save(neutral, metadata, path, digests=digests)
    if digests:
        metadata = add_digests(neutral, metadata)  # code, shape and bytes of each
    _background.wait_for_pending(path)  # saves to one path land in call order
    _writer.write(neutral, metadata, path)
    return None


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
    backend: str = "auto",
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
    if getattr(exc, "code", None) != error_codes.NOT_SAFETENSORS:
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
    redirected = error(f"{text}; {hint}", error_codes.NOT_SAFETENSORS)
    for key, value in vars(exc).items():  # where it happened, as the core said
        setattr(redirected, key, value) if key != "code" else None
    return redirected
