"""``safe_open``: lazy, zero-copy access to the tensors of one file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _core, _dtypes
from ._core import SafetensorError

__all__ = ["safe_open", "TensorSlice"]

_FRAMEWORKS = ("np", "numpy", "pt", "torch")
_TORCH_FRAMEWORKS = ("pt", "torch")
_BACKENDS = ("mmap", "pread")


def _check_framework(framework: Any) -> None:
    if framework not in _FRAMEWORKS:
        raise SafetensorError(
            f"framework {framework!r} is not supported; use one of "
            + ", ".join(repr(f) for f in _FRAMEWORKS)
        )


def _check_device(device: Any) -> None:
    if device != "cpu":
        raise SafetensorError(f"device {device!r} is not supported for NumPy arrays; use 'cpu'")


def _check_backend(backend: Any) -> None:
    if backend not in _BACKENDS:
        raise SafetensorError(
            f"backend {backend!r} is not supported; use one of "
            + ", ".join(repr(b) for b in _BACKENDS)
        )


def open_file(filename, backend: str = "mmap", max_header_size: int | None = None):
    """Opens and validates a file; returns the core's owner object."""
    _check_backend(backend)
    if not isinstance(filename, (str, bytes, os.PathLike)):
        raise TypeError(
            f"filename must be a str or os.PathLike, not {type(filename).__name__}"
        )
    return _core.open(os.fspath(filename), backend, max_header_size or 0)


class safe_open:
    """Opens a .safetensors file for lazy, zero-copy reading.

    safe_open(filename, framework="np", device="cpu", *, backend="mmap",
              max_header_size=None, verify_digests=False)

    ``framework`` is "np"/"numpy" for NumPy arrays or "pt"/"torch" for torch
    tensors (see :mod:`safetensors_c.torch`).

    The header is parsed and fully validated here; no tensor is read until
    asked for. With ``backend="mmap"`` (the default) every tensor is a view
    into one private, copy-on-write mapping of the file: writable, and
    writing never changes the file. ``backend="pread"`` reads tensors into
    memory of their own instead, for untrusted or network file systems.
    Arrays stay valid after :meth:`close` and after the ``with`` block.

    ``verify_digests=True`` checks every tensor against the SHA-256 digests
    recorded by ``save_file(..., digests=True)`` before returning, and raises
    SafetensorError naming the tensors that changed.
    """

    def __new__(cls, filename=None, framework="np", *args, **kwargs):
        # framework="pt" gives the torch flavour (safetensors_c.torch), chosen
        # once here so that NumPy handles pay nothing per call.
        if cls is safe_open and framework in _TORCH_FRAMEWORKS:
            from .torch import _TorchSafeOpen as cls
        return super().__new__(cls)

    def __init__(
        self,
        filename,
        framework: str = "np",
        device: str = "cpu",
        *,
        backend: str = "mmap",
        max_header_size: int | None = None,
        verify_digests: bool = False,
    ) -> None:
        _check_framework(framework)
        _check_device(device)
        self._file = None
        self._file = open_file(filename, backend, max_header_size)
        self._backend = backend
        if verify_digests:
            from .integrity import check_digests

            check_digests(self._file)

    # -- lifetime -------------------------------------------------------

    def _handle(self):
        file = self._file
        if file is None:
            raise SafetensorError(
                "this safe_open handle is closed; arrays it returned stay valid, "
                "but open the file again to read more"
            )
        return file

    def close(self) -> None:
        """Releases the handle. Arrays already returned stay valid."""
        self._file = None

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the header -----------------------------------------------------

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return self._handle().keys()

    def offset_keys(self) -> list[str]:
        """Tensor names in the order their data appears in the file."""
        return self._handle().offset_keys()

    def metadata(self) -> dict[str, str] | None:
        """The file's ``__metadata__``, or None if it has none."""
        return self._handle().metadata()

    # -- tensors --------------------------------------------------------

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a NumPy array."""
        return self._handle().tensor(name)

    def get_tensors(self) -> dict[str, np.ndarray]:
        """Every tensor, in file order."""
        return self._handle().tensors()

    def get_slice(self, name: str) -> "TensorSlice":
        """A lazy slice object: index it to read only the part you need."""
        file = self._handle()
        return TensorSlice(file, name, file.info(name))

    def __getitem__(self, name: str):
        """``f[name]`` is ``f.get_tensor(name)`` (and tab-completes in IPython)."""
        return self.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self._handle()

    def __len__(self) -> int:
        return len(self._handle())

    def __repr__(self) -> str:
        if self._file is None:
            return "<safetensors_c.safe_open (closed)>"
        return (
            f"<safetensors_c.safe_open {self._file.filename!r}: {len(self._file)} tensors, "
            f"backend={self._backend!r}>"
        )

    def _repr_html_(self) -> str:
        from ._display import safe_open_html

        return safe_open_html(self)

    def _ipython_key_completions_(self) -> list[str]:
        return self.keys()


def _is_basic_index(item: Any) -> bool:
    """True for the index items NumPy resolves to a view without reading data.

    Only plain integers qualify as integers: NumPy treats arrays (even 0-d
    ones) and booleans as advanced indices, which copy."""
    if item is None or item is Ellipsis or isinstance(item, slice):
        return True
    return isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))


class TensorSlice:
    """One tensor of an open file, read lazily through indexing.

    ``f.get_slice(name)[index]`` gives the same values, shape and errors as
    ``f.get_tensor(name)[index]`` for any NumPy index. With a mapped file the
    result is a zero-copy view; with ``backend="pread"`` only the bytes the
    index selects are read (one read per contiguous run).
    """

    __slots__ = ("_file", "_name", "_code", "_shape", "_numpy_shape", "_begin", "_end")

    def __init__(self, file, name: str, info: tuple) -> None:
        self._file = file
        self._name = name
        self._code, self._shape, self._numpy_shape, self._begin, self._end = info

    def get_shape(self) -> list[int]:
        """The logical shape (for F4/F6, in values, not bytes)."""
        return list(self._shape)

    def get_dtype(self) -> str:
        """The format's dtype code, e.g. ``"F32"``."""
        return self._code

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index: Any):
        file = self._file
        if file.mapped or file.filename is None:
            return file.tensor(self._name)[index]
        items = index if isinstance(index, tuple) else (index,)
        if not all(_is_basic_index(item) for item in items):
            # Advanced indexing selects arbitrary elements: read the tensor.
            return file.tensor(self._name)[index]
        return self._read_basic(file, items)

    def _read_basic(self, file, items: tuple):
        dtype = _dtypes.numpy_dtype(self._code)
        shape = self._numpy_shape
        strides = []
        step = dtype.itemsize
        for d in reversed(shape):
            strides.append(step)
            step *= d
        strides.reverse()
        # A stand-in with the tensor's real shape and strides over a single
        # element: NumPy computes the view (and raises the same errors as on
        # the real array) without touching memory; the view's offset and
        # strides then say which bytes to read.
        anchor = np.zeros(1, dtype=dtype)
        stand_in = np.lib.stride_tricks.as_strided(
            anchor, shape=shape, strides=tuple(strides), writeable=False
        )
        has_ellipsis = any(item is Ellipsis for item in items)
        view = stand_in[items if has_ellipsis else items + (Ellipsis,)]
        if view.size == 0:
            result = np.empty(view.shape, dtype=dtype)
        else:
            offset = view.__array_interface__["data"][0] - anchor.__array_interface__["data"][0]
            result = file.read_view(self._name, offset, view.shape, view.strides)
        if not has_ellipsis and view.ndim == 0:
            return result[()]
        if self._code in _dtypes.PACKED_BITS:
            # Match what indexing the mapped PackedArray gives.
            return _dtypes._view_packed(result, self._code)
        return result

    def __repr__(self) -> str:
        return f"<safetensors_c.TensorSlice {self._name!r}: {self._code} {list(self._shape)}>"

    def _repr_html_(self) -> str:
        from ._display import slice_html

        return slice_html(self)
