"""The competitors: file formats, their writers, and the ways to load them.

Every competitor reads the file its own library wrote (its "native" file)
from the same tensors. Optional libraries (torch, the reference
``safetensors``) are imported only inside the functions that use them.

Actions, i.e. what one timed run of a row does:
  load     return every tensor; then the reader touches every byte
  keys     open the file and list its tensor names; nothing to read
  slice    open the file and take rows [0, rows/8) of the largest tensor;
           then the reader touches the slice's bytes
  memory   (limit) nothing to load: the reader runs over the arrays in memory
  seqread  (limit) a plain sequential read() of the safetensors file
  save     write the tensors (to a file, or to bytes)
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

ALL_KINDS = ("llm", "llm_bf16", "small", "wide", "big")
NOT_BIG = ("llm", "llm_bf16", "small", "wide")
SLICEABLE = ("llm", "llm_bf16", "big")

# -- formats: the native file of each library --------------------------------


@dataclass(frozen=True)
class Format:
    key: str
    suffix: str
    needs: Optional[str]  # an optional module the format requires
    kinds: tuple  # checkpoint kinds this format's file is written for


FORMATS = {
    f.key: f
    for f in (
        Format("stc", ".safetensors", None, ALL_KINDS),
        Format("ref", ".ref.safetensors", "safetensors", ALL_KINDS),
        Format("pickle", ".pkl", None, NOT_BIG),
        Format("torch", ".pt", "torch", ALL_KINDS),
        Format("npz", ".npz", None, NOT_BIG),
        Format("npy", ".npy", None, ("big",)),
    )
}


def to_torch(tensors: dict) -> dict:
    """The same tensors as torch tensors sharing memory (bfloat16 kept)."""
    import torch

    out = {}
    for name, array in tensors.items():
        if array.dtype.name == "bfloat16":
            out[name] = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            out[name] = torch.from_numpy(array)
    return out


def _plain_write(tensors: dict, path: str, header: bytes, fsync: bool) -> None:
    with open(path, "wb", buffering=0) as f:
        f.write(header)
        for array in tensors.values():
            f.write(array.reshape(-1).view(np.uint8))
        if fsync:
            os.fsync(f.fileno())


def _header_of(path: str) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n.to_bytes(8, "little") + f.read(n)


# -- writers -----------------------------------------------------------------


@dataclass(frozen=True)
class Writer:
    key: str
    label: str
    needs: Optional[str]
    kinds: tuple
    # save(prepared, path) -> result; path is None for writers that return bytes
    save: Callable
    to_file: bool = True
    quick: bool = True  # also measured by --quick (on llm only)
    # prepare(tensors, stc_path) -> prepared: untimed conversion (e.g. to torch)
    prepare: Callable = lambda tensors, stc_path: tensors
    native: Optional[str] = None  # the format whose file this writer makes
    limit: bool = False


def _stc_save_file(tensors, path):
    import safetensors_c

    safetensors_c.save_file(tensors, path)


def _stc_save(tensors, path):
    import safetensors_c

    return safetensors_c.save(tensors)


def _ref_save_file(tensors, path):
    import safetensors.numpy

    safetensors.numpy.save_file(tensors, path)


def _ref_save(tensors, path):
    import safetensors.numpy

    return safetensors.numpy.save(tensors)


def _pickle_dump(tensors, path):
    with open(path, "wb") as f:
        pickle.dump(tensors, f, protocol=5)


def _torch_save(tensors, path):
    import torch

    torch.save(tensors, path)


def _np_savez(tensors, path):
    np.savez(path, **tensors)


def _np_save(tensors, path):
    (array,) = tensors.values()
    np.save(path, array)


WRITERS = [
    Writer("stc.save_file", "safetensors_c save_file", None, NOT_BIG, _stc_save_file,
           native="stc"),
    Writer("stc.save", "safetensors_c save (bytes)", None, NOT_BIG, _stc_save, to_file=False),
    Writer("ref.save_file", "safetensors.numpy.save_file", "safetensors", NOT_BIG,
           _ref_save_file, native="ref"),
    Writer("ref.save", "safetensors.numpy.save (bytes)", "safetensors", NOT_BIG, _ref_save,
           to_file=False, quick=False),
    Writer("pickle.dump", "pickle.dump (protocol 5)", None, NOT_BIG, _pickle_dump,
           native="pickle"),
    Writer("torch.save", "torch.save", "torch", NOT_BIG, _torch_save,
           prepare=lambda tensors, stc_path: to_torch(tensors), native="torch"),
    Writer("np.savez", "np.savez", None, NOT_BIG, _np_savez, native="npz"),
    Writer("np.save", "np.save (one array)", None, ("big",), _np_save, native="npy"),
    Writer("limit.write_fsync", "plain write + fsync (limit)", None, NOT_BIG,
           lambda p, path: _plain_write(p[0], path, p[1], fsync=True),
           prepare=lambda tensors, stc_path: (tensors, _header_of(stc_path)), limit=True),
    Writer("limit.write", "plain write, no fsync (limit)", None, NOT_BIG,
           lambda p, path: _plain_write(p[0], path, p[1], fsync=False),
           prepare=lambda tensors, stc_path: (tensors, _header_of(stc_path)), limit=True,
           quick=False),
]

# Makes each format's native file in the parent (big has no measured writers).
NATIVE_WRITERS = {w.native: w for w in WRITERS if w.native}


# -- loaders -----------------------------------------------------------------


@dataclass(frozen=True)
class Loader:
    key: str
    label: str
    fmt: Optional[str]  # the format whose native file it reads (None: in memory)
    action: str  # load | keys | slice | memory | seqread
    kinds: tuple
    # run(path, slice_name, slice_rows) -> result
    run: Callable = None
    limit: bool = False
    cold_check: bool = False  # also measured cold in a warm run (the cold target)
    quick: bool = True  # also measured by --quick
    needs: Optional[str] = None  # an optional module the loader itself requires


def _stc(path, name, rows):
    import safetensors_c

    return safetensors_c.load_file(path)


def _stc_torch(path, name, rows):
    import safetensors_c.torch

    return safetensors_c.torch.load_file(path)


def _stc_pread(path, name, rows):
    import safetensors_c

    return safetensors_c.load_file(path, backend="pread")


def _stc_open_all(path, name, rows):
    from safetensors_c import safe_open

    with safe_open(path, framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _stc_keys(path, name, rows):
    from safetensors_c import safe_open

    with safe_open(path, framework="np") as f:
        return f.keys()


def _stc_slice(path, name, rows, backend="mmap"):
    from safetensors_c import safe_open

    with safe_open(path, framework="np", backend=backend) as f:
        return f.get_slice(name)[:rows]


def _ref(path, name, rows):
    import safetensors.numpy

    return safetensors.numpy.load_file(path)


def _ref_open_all(path, name, rows):
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _ref_keys(path, name, rows):
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return f.keys()


def _ref_slice(path, name, rows):
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return f.get_slice(name)[:rows]


def _pickle_load(path, name, rows):
    with open(path, "rb") as f:
        return pickle.load(f)


def _torch_load(path, name, rows, mmap=False):
    import torch

    return torch.load(path, weights_only=True, mmap=mmap)


def _torch_slice(path, name, rows):
    return _torch_load(path, name, rows, mmap=True)[name][:rows]


def _npz_load(path, name, rows):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _npy_slice(path, name, rows):
    return np.load(path, mmap_mode="r")[:rows]


def _seqread(path, name, rows):
    with open(path, "rb", buffering=0) as f:
        buffer = memoryview(bytearray(min(8 << 20, os.fstat(f.fileno()).st_size) or 1))
        while f.readinto(buffer):
            pass


LOADERS = [
    Loader("stc.load_file", "safetensors_c load_file", "stc", "load", ALL_KINDS, _stc,
           cold_check=True),
    Loader("stc.safe_open", "safetensors_c safe_open+get_tensor", "stc", "load", NOT_BIG,
           _stc_open_all, quick=False),
    Loader("stc_torch.load_file", "safetensors_c.torch load_file", "stc", "load", ALL_KINDS,
           _stc_torch, quick=False, needs="torch"),
    Loader("stc.pread", "safetensors_c load_file (pread)", "stc", "load", ALL_KINDS, _stc_pread,
           cold_check=True),
    Loader("stc.keys", "safetensors_c safe_open+keys", "stc", "keys", NOT_BIG, _stc_keys),
    Loader("stc.slice", "safetensors_c get_slice 1/8 rows", "stc", "slice", SLICEABLE,
           _stc_slice),
    Loader("stc.slice_pread", "safetensors_c get_slice 1/8 rows (pread)", "stc", "slice",
           SLICEABLE, lambda p, n, r: _stc_slice(p, n, r, backend="pread"), quick=False),
    Loader("ref.load_file", "safetensors.numpy.load_file", "ref", "load", ALL_KINDS, _ref),
    Loader("ref.safe_open", "safetensors safe_open+get_tensor", "ref", "load", NOT_BIG,
           _ref_open_all, quick=False),
    Loader("ref.keys", "safetensors safe_open+keys", "ref", "keys", NOT_BIG, _ref_keys),
    Loader("ref.slice", "safetensors get_slice 1/8 rows", "ref", "slice", SLICEABLE, _ref_slice),
    Loader("pickle.load", "pickle.load", "pickle", "load", NOT_BIG, _pickle_load),
    Loader("torch.load", "torch.load(weights_only=True)", "torch", "load", NOT_BIG, _torch_load,
           quick=False),
    Loader("torch.load_mmap", "torch.load(mmap=True, weights_only=True)", "torch", "load",
           ALL_KINDS, lambda p, n, r: _torch_load(p, n, r, mmap=True)),
    Loader("torch.slice", "torch.load(mmap=True) [:rows/8]", "torch", "slice", SLICEABLE,
           _torch_slice, quick=False),
    Loader("np.npz", "np.load (.npz)", "npz", "load", NOT_BIG, _npz_load),
    Loader("np.npy", "np.load (.npy)", "npy", "load", ("big",), lambda p, n, r: np.load(p)),
    Loader("np.npy_mmap", "np.load(mmap_mode='r') (.npy)", "npy", "load", ("big",),
           lambda p, n, r: np.load(p, mmap_mode="r")),
    Loader("np.npy_slice", "np.load(mmap_mode='r') [:rows/8]", "npy", "slice", ("big",),
           _npy_slice),
    Loader("limit.memory", "in-memory arrays, read only (limit)", None, "memory", ALL_KINDS,
           limit=True),
    Loader("limit.seqread", "plain sequential read() (limit)", "stc", "seqread", ALL_KINDS,
           _seqread, limit=True, cold_check=True),
]

ACTIONS_THAT_READ = ("load", "slice", "memory")


def loader(key: str) -> Loader:
    return next(item for item in LOADERS if item.key == key)


def writer(key: str) -> Writer:
    return next(item for item in WRITERS if item.key == key)
