"""The compatibility switch: ``import safetensors`` resolves to safetensors_c.

Programs written for the reference ``safetensors`` package (transformers, diffusers, accelerate,
peft, huggingface_hub, sentence-transformers, ...) run on safetensors_c unmodified::

    import safetensors_c.compat
    safetensors_c.compat.install()      # before the clients are imported
    import transformers                 # its `from safetensors import safe_open` is safetensors_c's

or, for every Python process of an environment, ``SAFETENSORS_C_COMPAT=1`` (read at start-up by
the ``safetensors_c_compat.pth`` hook that installing safetensors_c puts in site-packages).
``uninstall()`` and ``SAFETENSORS_C_COMPAT=0`` (or leaving it unset) give the real package back.

What the switch hands out:

- ``safetensors``: a module of its own, named ``safetensors``, whose attributes are
  safetensors_c's (looked up on safetensors_c, so ``safetensors.safe_open is
  safetensors_c.safe_open``), except ``__version__``, which is :data:`REFERENCE_VERSION`: the
  reference release whose API and format safetensors_c implements. Clients compare it to pick
  the API they call (huggingface_hub passes ``device=`` to ``load_model`` only from 0.4.3 on);
  safetensors_c's own version is ``__safetensors_c_version__``.
- ``safetensors.<framework>`` for each framework module of safetensors_c (listed below, from
  the framework registry): the safetensors_c module of the same name, the very same object.
- ``safetensors._safetensors_rust``: a module of the names the reference's compiled core exports.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
import warnings
from typing import Any

import safetensors_c
from safetensors_c._frameworks import PUBLIC_MODULES

__all__ = ["REFERENCE_VERSION", "CompatWarning", "active", "install", "is_alias", "uninstall"]

#: The reference release whose API and file format safetensors_c implements; what the alias
#: reports as ``safetensors.__version__``.
REFERENCE_VERSION = "0.8.0"

_TOP = "safetensors"
_RUST = "safetensors._safetensors_rust"

#: ``safetensors.<name>`` -> the safetensors_c module that stands in for it: one per framework
#: module in the registry.
_SUBMODULES = {f"{_TOP}.{name}": f"safetensors_c.{name}" for name in PUBLIC_MODULES}

if __doc__:  # None under python -OO
    __doc__ += "\nThe framework submodules: " + ", ".join(f"``{n}``" for n in _SUBMODULES) + ".\n"

#: The names the reference's top-level module (and its compiled core) exports.
_REFERENCE_NAMES = (
    "SafetensorError",
    "TensorSpec",
    "__version__",
    "_safe_open_handle",
    "deserialize",
    "safe_open",
    "serialize",
    "serialize_file",
)


class CompatWarning(UserWarning):
    """The switch was turned while the real package was in use."""


def _covered(name: str) -> bool:
    return name == _TOP or name.startswith(_TOP + ".")


# -- the modules the switch hands out -----------------------------------------------------------


def _forwarding_module(name: str, doc: str, exported: tuple[str, ...]) -> types.ModuleType:
    """A module named ``name`` whose attributes are safetensors_c's, with the reference's version."""
    module = types.ModuleType(name, doc)

    def __getattr__(attr: str) -> Any:
        try:
            return getattr(safetensors_c, attr)
        except AttributeError:
            raise AttributeError(
                f"module {name!r} (safetensors_c's compatibility alias) has no attribute {attr!r}"
            ) from None

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(dir(safetensors_c)))

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    module.__version__ = REFERENCE_VERSION
    module.__safetensors_c_version__ = safetensors_c.__version__
    module.__all__ = [n for n in exported if n != "__version__"]
    return module


def _top_module() -> types.ModuleType:
    return _forwarding_module(
        _TOP,
        "safetensors_c standing in for the reference safetensors package "
        "(see safetensors_c.compat).",
        _REFERENCE_NAMES,
    )


def _rust_module() -> types.ModuleType:
    return _forwarding_module(
        _RUST,
        "safetensors_c standing in for the reference package's compiled core "
        "(see safetensors_c.compat).",
        _REFERENCE_NAMES,
    )


# -- the finder ---------------------------------------------------------------------------------


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``safetensors`` and its submodules to safetensors_c (first on ``sys.meta_path``)."""

    def __init__(self) -> None:
        # Modules handed out, so is_alias() can recognise them and uninstall() find them.
        self.handed_out: dict[str, types.ModuleType] = {}
        # The import machinery sets ``__spec__`` on the module a loader creates; a safetensors_c
        # module handed out under a ``safetensors.*`` name gets its own spec back in exec_module.
        self._own_specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname == _TOP:
            return importlib.machinery.ModuleSpec(
                fullname, self, origin=safetensors_c.__file__, is_package=True
            )
        if fullname == _RUST:
            return importlib.machinery.ModuleSpec(fullname, self, origin=safetensors_c.__file__)
        stand_in = _SUBMODULES.get(fullname)
        if stand_in is None:
            # Another safetensors.X: the alias package has no such module (its __path__ is
            # empty, so the other finders find none either): ModuleNotFoundError, as with the
            # reference.
            return None
        own = importlib.util.find_spec(stand_in)
        if own is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=own.origin)

    def create_module(self, spec) -> types.ModuleType:
        if spec.name == _TOP:
            module = _top_module()
        elif spec.name == _RUST:
            module = _rust_module()
        else:
            module = importlib.import_module(_SUBMODULES[spec.name])
            self._own_specs[spec.name] = module.__spec__
        self.handed_out[spec.name] = module
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__spec__.name
        if name == _TOP:
            module.__path__ = []  # a package: its submodules come from this finder only
        own = self._own_specs.pop(name, None)
        if own is not None:
            module.__spec__ = own

    def is_alias(self, module: object) -> bool:
        return any(module is handed for handed in self.handed_out.values())


_FINDER = _AliasFinder()
_LOCK = threading.RLock()
# Real safetensors modules that were in sys.modules when install() ran, for uninstall().
_set_aside: dict[str, types.ModuleType] = {}


def _remove_finders() -> None:
    """Takes the switch's finder, and the start-up hook's lazy trigger, off ``sys.meta_path``."""
    sys.meta_path[:] = [
        f for f in sys.meta_path
        if f is not _FINDER and not getattr(f, "safetensors_c_trigger", False)
    ]


# -- the switch ---------------------------------------------------------------------------------


def install() -> None:
    """Makes ``import safetensors`` (and its submodules) resolve to safetensors_c.

    Call it before the programs that use safetensors are imported: a module that already did
    ``from safetensors import safe_open`` keeps the function it bound. Real safetensors modules
    already in ``sys.modules`` are set aside (``uninstall()`` puts them back) and replaced by
    their aliases, with a :class:`CompatWarning`. Calling it again does nothing.
    """
    with _LOCK:
        if _FINDER in sys.meta_path:
            return
        _remove_finders()
        real = sorted(
            name for name, module in sys.modules.items()
            if _covered(name) and module is not None and not _FINDER.is_alias(module)
        )
        for name in real:
            _set_aside[name] = sys.modules.pop(name)
        sys.meta_path.insert(0, _FINDER)
        if real:
            warnings.warn(
                "safetensors_c.compat.install(): the real safetensors package was already "
                f"imported ({', '.join(real)}); those names now resolve to safetensors_c, but "
                "modules that imported names from the real package keep them. Install the "
                "switch before importing its users.",
                CompatWarning,
                stacklevel=2,
            )
            for name in real:
                if name == _TOP or name == _RUST or name in _SUBMODULES:
                    try:
                        importlib.import_module(name)
                    except ImportError:
                        pass  # no safetensors_c module of that name: left unimported


def uninstall() -> None:
    """Gives ``import safetensors`` back to the real package.

    Every alias in ``sys.modules`` is replaced by the real module: the one set aside by
    ``install()``, or else the real module imported now (when the real package is installed).
    Names other modules already bound from the aliases stay bound to safetensors_c's objects.
    """
    with _LOCK:
        _remove_finders()
        aliased = sorted(
            (name for name, module in sys.modules.items()
             if _covered(name) and _FINDER.is_alias(module)),
            key=lambda n: n.count("."),
        )
        for name in aliased:
            del sys.modules[name]
        sys.modules.update(_set_aside)
        _set_aside.clear()
        _FINDER.handed_out.clear()
        for name in aliased:
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # the real package (or that part of it) is not installed


def active() -> bool:
    """True while ``import safetensors`` resolves to safetensors_c in this process.

    Also true before the first such import in a process started with SAFETENSORS_C_COMPAT=1,
    whose start-up hook switches on that import.
    """
    return any(
        f is _FINDER or getattr(f, "safetensors_c_trigger", False) for f in sys.meta_path
    )


def is_alias(module: object) -> bool:
    """True if ``module`` is what the switch handed out for a ``safetensors*`` import."""
    return _FINDER.is_alias(module)
