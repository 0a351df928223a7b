"""safetensors_c: strict, zero-copy .safetensors loading and byte-exact writing.

A drop-in for the ``safetensors`` package, with a C core:

    from safetensors_c import safe_open, load_file, save_file

    save_file({"w": np.ones((2, 2), np.float32)}, "model.safetensors")
    with safe_open("model.safetensors", framework="np") as f:
        w = f.get_tensor("w")          # a zero-copy view of the file

Framework modules: ``safetensors_c.numpy``, ``.torch``, ``.flax``,
``.tensorflow``, ``.paddle``, ``.mlx``; ``safe_open(..., framework=...)``
serves all of them.
"""

from ._core import SafetensorError
from ._dtypes import PackedArray, packed
from ._open import _safe_open_handle, safe_open
from ._reader import SliceIndexError, TensorSlice
from ._writer import TensorSpec, deserialize, serialize, serialize_file
from .diff import DiffReport, diff
from .numpy import load, load_file, save, save_file
from .sharded import load_sharded, safe_open_sharded, save_sharded
from .stats import StatsReport, TensorStats, stats

__version__ = "0.1.0"

__all__ = [
    "SafetensorError",
    "SliceIndexError",
    "StatsReport",
    "TensorStats",
    "DiffReport",
    "PackedArray",
    "TensorSlice",
    "TensorSpec",
    "__version__",
    "_safe_open_handle",
    "deserialize",
    "diff",
    "load",
    "load_file",
    "load_sharded",
    "packed",
    "safe_open",
    "safe_open_sharded",
    "save",
    "save_file",
    "save_sharded",
    "serialize",
    "serialize_file",
    "stats",
]
