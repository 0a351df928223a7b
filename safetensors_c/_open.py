"""``safe_open``: lazy, zero-copy access to the tensors of one file, for
every framework.

One class serves every framework: a neutral reader plus the framework's
adapter, which turns each tensor the reader hands out into the framework's
array.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from . import _display, error_codes
from ._checks import error
from ._digests import verifying
from ._frameworks import adapter_for, tensors_of
from ._reader import TensorSlice, as_source, open_file_object, open_source

__all__ = ["FrameworkSlice", "safe_open", "_safe_open_handle"]


class safe_open:
    """Opens a .safetensors file for lazy, zero-copy reading.

    safe_open(filename, framework="np", device="cpu", *, backend="auto",
              max_header_size=None, verify_digests=False, allow_bytes_only=False,
              storage_options=None)

    ``filename`` is a path, a URL (``https://``, ``s3://``, any protocol
    fsspec knows; ``storage_options`` go to fsspec) or an open binary file.
    ``framework`` is one of "np"/"numpy", "pt"/"torch", "flax"/"jax",
    "tf"/"tensorflow", "paddle", "mlx"; ``device`` is the framework's.

    The header is parsed and fully validated here; no tensor is read until
    asked for. With ``backend="mmap"`` (what the default, ``"auto"``, picks on
    local disks and tmpfs) the first access of a
    tensor is a view into one private, copy-on-write mapping of the file:
    writable, and writing never changes the file; a later access of the
    same tensor reads it afresh from the file, so arrays of one handle never
    alias each other. ``backend="pread"`` reads tensors into
    memory of their own instead, for untrusted or network file systems;
    ``"auto"`` picks it on network and FUSE file systems (NFS, SMB, Lustre,
    FUSE, ...), found with ``fstatfs`` on the opened file, and the
    environment variable ``SAFETENSORS_C_BACKEND`` changes what ``"auto"``
    means for the process (never an explicit backend).
    Arrays stay valid after :meth:`close` and after the ``with`` block.

    ``verify_digests=True`` checks the tensors against the SHA-256 digests
    recorded by ``save_file(..., digests=True)`` (scheme
    ``"sha256-record-v2"``: name, dtype, shape and bytes of each tensor, and
    the metadata), raising SafetensorError naming what does not match (code
    ``STC_ERR_DIGEST_MISMATCH``). Every tensor is hashed when it is handed
    out (``get_tensor``, ``get_tensors``, ``get_slice``, which then reads its
    whole tensor), so a source that changes after opening cannot hand out
    bytes that were not verified. A mapped file is also hashed in full here,
    and fails here if it does not match; for any other source (a URL, a file
    object, ``backend="pread"``), which would be read twice, only the
    metadata and the list of digests are checked here. A file with only the
    older bytes-only digests (``"sha256-bytes-v1"``) is refused
    (``STC_ERR_WEAK_DIGESTS``) unless ``allow_bytes_only=True``; one with no
    digests raises ``STC_ERR_NO_DIGESTS``.
    """

    def __init__(
        self,
        filename,
        framework: str = "np",
        device: Any = "cpu",
        *,
        backend: str = "auto",
        max_header_size: Optional[int] = None,
        verify_digests: bool = False,
        allow_bytes_only: bool = False,
        storage_options: Optional[Dict[str, Any]] = None,
    ) -> None:
        self._file = None
        self._set_framework(framework, device, backend)
        self._file = open_source(
            as_source(filename),
            backend=backend,
            max_header_size=max_header_size,
            storage_options=storage_options,
        )
        if verify_digests:
            self._file = verifying(self._file, allow_bytes_only=allow_bytes_only)

    @classmethod
    def _from_reader(cls, reader, framework: str = "np", device: Any = "cpu",
                     backend: str = "auto") -> "safe_open":
        self = cls.__new__(cls)
        self._file = None
        self._set_framework(framework, device, backend)
        self._file = reader
        return self

    def _set_framework(self, framework: str, device: Any, backend: str) -> None:
        """The adapter and its placement, checked before any file is opened."""
        self._adapter = adapter_for(framework)
        self._placement = self._adapter.placement(device)
        self._backend = backend

    # -- lifetime -------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the handle is closed, as for a Python file object."""
        return self._file is None

    @property
    def reader(self):
        """The framework-neutral reader behind this handle: the C core's
        file object for paths and descriptors, a byte-source reader for URLs
        and other file objects (the same methods: ``keys``, ``offset_keys``,
        ``info``, ``tensor`` returning NumPy arrays, ``filename``, ...). For
        code that works below the frameworks, such as ``load_into``, the
        CLI and statistics. A SafetensorError (``STC_ERR_CLOSED``) once the
        handle is closed."""
        file = self._file
        if file is None:
            raise error(
                "this safe_open handle is closed; arrays it returned stay valid, "
                "but open the file again to read more",
                error_codes.CLOSED,
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

    def keys(self) -> List[str]:
        """Tensor names, sorted."""
        return self.reader.keys()

    def offset_keys(self) -> List[str]:
        """Tensor names in the order their data appears in the file."""
        return self.reader.offset_keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        """The file's ``__metadata__``, or None if it has none."""
        return self.reader.metadata()

    # -- tensors --------------------------------------------------------

    def get_tensor(self, name: str):
        """The tensor ``name`` as an array of the handle's framework."""
        file = self.reader
        code, shape = file.info(name)[:2]
        self._adapter.check_code(name, code, shape)
        return self._adapter.to_array(name, code, file.tensor(name), self._placement)

    def get_tensors(self) -> Dict[str, Any]:
        """Every tensor, in file order."""
        return tensors_of(self._adapter, self._placement, self.reader)

    def get_slice(self, name: str):
        """A lazy slice object: index it to read only the part you need."""
        file = self.reader
        info = file.info(name)
        if self._adapter.NAME == "numpy":
            return TensorSlice(file, name, info)
        self._adapter.check_code(name, info[0], info[1])
        return FrameworkSlice(file, name, info, self._adapter, self._placement)

    def __getitem__(self, name: str):
        """``f[name]`` is ``f.get_tensor(name)`` (and tab-completes in IPython)."""
        return self.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self.reader

    def __len__(self) -> int:
        return len(self.reader)

    def __repr__(self) -> str:
        if self._file is None:
            return "<safetensors_c.safe_open (closed)>"
        return (
            f"<safetensors_c.safe_open {self._file.filename!r}: {len(self._file)} tensors, "
            f"framework={self._adapter.NAME!r}, "
            f"backend={getattr(self._file, 'backend', self._backend)!r}>"
        )

    def _repr_html_(self) -> str:
        return _display.safe_open_html(self)

    def _ipython_key_completions_(self) -> List[str]:
        return self.keys()


class FrameworkSlice(TensorSlice):
    """A lazy tensor slice whose results are arrays of a framework.

    Indices are NumPy's (a framework's own index tensors are accepted where
    the adapter converts them); ``get_shape()`` gives the logical shape.
    """

    __slots__ = ("_adapter", "_placement")

    def __init__(self, file, name, info, adapter, placement) -> None:
        super().__init__(file, name, info)
        self._adapter = adapter
        self._placement = placement

    def __getitem__(self, index: Any):
        result = np.asarray(super().__getitem__(self._adapter.index(index)))
        return self._adapter.to_array(self._name, self._code, result, self._placement)


def _safe_open_handle(file, framework: str = "np", device: Any = "cpu", *,
                      backend: str = "auto", max_header_size: Optional[int] = None) -> safe_open:
    """``safe_open`` over an already open binary file object.

    A file object backed by a descriptor (``open(path, "rb")``) is mapped or
    read with pread through it; any other (``io.BytesIO``, an fsspec file)
    is read with ``seek``/``read``: the header, then only the tensors asked for.
    """
    reader = open_file_object(file, backend=backend, max_header_size=max_header_size)
    return safe_open._from_reader(reader, framework, device, backend)
