"""Argument checks shared by every reader, writer and framework module.

It knows the format's rules for names and metadata, the backends, paths
and sizes, and nothing of any framework.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Union

from . import _core, error_codes
from ._core import SafetensorError

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "check_backend",
    "check_metadata",
    "check_tensor_name",
    "did_you_mean",
    "error",
    "fs_path",
    "parse_size",
]

BACKENDS = ("auto", "mmap", "pread")

# Overrides ``backend="auto"`` (never an explicit "mmap" or "pread").
BACKEND_ENV = "SAFETENSORS_C_BACKEND"


def error(message: str, code: str = error_codes.INVALID_ARGUMENT) -> SafetensorError:
    """A SafetensorError carrying a stable ``code``, like the C core's."""
    exc = SafetensorError(message)
    exc.code = code
    return exc


def did_you_mean(name: Any, candidates: Any) -> str:
    """``"; did you mean 'a' or 'b'?"`` naming up to 3 of ``candidates``
    closest to ``name`` (a bounded edit distance, computed in C), or ``""``.
    For error messages only: it reads every candidate."""
    if not isinstance(name, str):
        return ""
    close = _core.close_names(name, list(candidates))
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {listed}?"


def check_metadata(metadata: Any) -> Optional[Dict[str, str]]:
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


def check_tensor_name(name: Any) -> None:
    """Raises unless ``name`` can name a tensor in a file."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, not {type(name).__name__}: {name!r}")
    if name == "__metadata__":
        raise ValueError('"__metadata__" is reserved for metadata and cannot name a tensor')


def check_backend(backend: Any) -> str:
    """The backend to open files with: ``backend`` checked, and ``"auto"``
    replaced by the value of ``SAFETENSORS_C_BACKEND`` when that is set.
    A remaining ``"auto"`` is resolved per file by the core, from the file
    system the file is on (pread on network and FUSE file systems, else mmap).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise error(
            f"backend {backend!r} is not supported; use one of "
            + ", ".join(repr(b) for b in BACKENDS)
        )
    if backend != "auto":
        return backend
    value = os.environ.get(BACKEND_ENV, "")
    if value == "":
        return "auto"
    if value not in BACKENDS:
        raise error(
            f"the environment variable {BACKEND_ENV}={value!r} is not a backend; set it to "
            + ", ".join(repr(b) for b in BACKENDS)
            + " or unset it"
        )
    return value


def fs_path(filename: Any, what: str = "filename") -> str:
    """``filename`` (str, bytes or os.PathLike) as a str path."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, not {type(filename).__name__}")
    path = os.fspath(filename)
    return path if isinstance(path, str) else os.fsdecode(path)


# MARK: sizes ---------------------------------------------------------------

_BINARY_UNITS = (("PIB", 2**50), ("TIB", 2**40), ("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10))
_DECIMAL_UNITS = (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def parse_size(size: Union[int, str], what: str = "max_shard_size") -> int:
    """Bytes in a size such as ``"5GB"`` (10^9), ``"10KiB"`` (2^10) or an int.

    The rules of ``transformers.utils.hub.convert_file_size_to_int``: the
    unit is case-insensitive, except that a lower-case ``b`` after a decimal
    unit means bits (``"8Mb"`` is 1,000,000 bytes).
    """
    if isinstance(size, bool):
        raise TypeError(f"{what} must be an int or a string like '5GB', not bool")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"{what} must be positive, not {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"{what} must be an int or a string like '5GB', not {type(size).__name__}")
    upper = size.upper()
    value = None
    for unit, multiplier in _BINARY_UNITS:
        if upper.endswith(unit):
            value = _parse_count(size, size[: -len(unit)], what) * multiplier
            break
    else:
        for unit, multiplier in _DECIMAL_UNITS:
            if upper.endswith(unit):
                value = _parse_count(size, size[: -len(unit)], what) * multiplier
                if size.endswith("b"):
                    value //= 8
                break
    if value is None:
        raise ValueError(
            f"{what} {size!r} is not a valid size: use an integer number of bytes or "
            "an integer followed by a unit, e.g. '5GB' (10^9 bytes) or '500MiB' (2^20 bytes)"
        )
    if value <= 0:
        raise ValueError(f"{what} must be positive, not {size!r}")
    return value


def _parse_count(size: str, digits: str, what: str) -> int:
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(
            f"{what} {size!r} is not a valid size: the number before the unit must "
            "be a whole number, e.g. '5GB' or '500MiB'"
        )
    return int(digits)
