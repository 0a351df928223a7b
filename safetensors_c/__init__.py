"""safetensors_c: strict, zero-copy .safetensors loading and byte-exact writing.

A drop-in for the ``safetensors`` package's NumPy API, with a C core:

    from safetensors_c import safe_open, load_file, save_file

    save_file({"w": np.ones((2, 2), np.float32)}, "model.safetensors")
    with safe_open("model.safetensors", framework="np") as f:
        w = f.get_tensor("w")          # a zero-copy view of the file
"""

from . import _core, _dtypes
from ._core import SafetensorError
from ._dtypes import PackedArray, packed
from ._open import TensorSlice, safe_open
from .numpy import load, load_file, save, save_file
from .sharded import load_sharded, safe_open_sharded, save_sharded

__version__ = "0.1.0"

_core._set_hooks(_dtypes.numpy_dtype, _dtypes._wrap_packed)

__all__ = [
    "SafetensorError",
    "PackedArray",
    "TensorSlice",
    "__version__",
    "load",
    "load_file",
    "load_sharded",
    "packed",
    "safe_open",
    "safe_open_sharded",
    "save",
    "save_file",
    "save_sharded",
]
