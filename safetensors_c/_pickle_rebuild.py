"""What a pickle may rebuild: the allow-list of globals and our own constructors for them.

The pickle machine (:mod:`safetensors_c._pickle_vm`) resolves a global only
through :data:`ALLOWED_GLOBALS`, which maps each ``(module, name)`` that
rebuilds tensors and arrays to a constructor written here: it validates its
arguments and builds plain data (dicts, tuples, :class:`TensorRef`,
:class:`PendingArray`, ...). Nothing here imports anything by name but NumPy
and ml_dtypes, and nothing calls code a pickle names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


# MARK: errors ------------------------------------------------------------


class ConversionError(ValueError):
    """A checkpoint cannot be converted (malformed, unsupported, or unsafe)."""


class UnsafePickleError(ConversionError):
    """A pickle uses a global or an opcode that is not on the allow-list.

    ``found`` names it: ``"os.system"`` for a global, ``"opcode INST"`` for
    an opcode. Nothing was executed: the check happens before any call.
    """

    def __init__(self, message: str, found: str = "") -> None:
        # ``found`` has a default so that unpickling (which calls the class
        # with the message alone, then restores ``found``) works.
        super().__init__(message)
        self.found = found


# MARK: values the machine builds ------------------------------------------


class Opaque:
    """Scan mode's stand-in for something the machine would not build."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<not built: {self.what}>"


@dataclass(frozen=True)
class Marker:
    """A global that is data, not a function: a class or a dtype name."""

    kind: str
    name: str


class StorageType(Marker):
    """``torch.FloatStorage`` and friends: names a storage's element dtype."""


class TorchDtype(Marker):
    """``torch.float32`` and friends."""


class OrderedDictData(dict):
    """A ``collections.OrderedDict`` rebuilt as data: a plain dict (insertion
    order is a dict's order) plus the one attribute pickles of
    ``Module.state_dict()`` restore on it with BUILD.

    ``state_metadata`` is ``None``, or the ``_metadata`` attribute's value as
    plain data (dicts, lists, tuples, strings, numbers, booleans, None): the
    per-module ``{"version": N}`` records that ``load_state_dict`` reads.
    """

    __slots__ = ("state_metadata",)

    def __init__(self) -> None:
        super().__init__()
        self.state_metadata: Any = None


@dataclass
class PendingArray:
    """An ndarray being rebuilt by ``_reconstruct`` + BUILD (or joblib's wrapper)."""

    array: np.ndarray | None = None


@dataclass
class PendingDtype:
    """A ``numpy.dtype(...)`` call; BUILD may still set its byte order."""

    dtype: np.dtype


@dataclass
class JoblibWrapper:
    """joblib's NumpyArrayWrapper: its array data follows it in the stream."""

    pending: PendingArray = field(default_factory=PendingArray)


@dataclass
class TensorRef:
    """A torch tensor: a view (offset, size, stride in elements) of a storage."""

    storage: Any  # what persistent_load returned
    offset: int
    size: tuple
    stride: tuple
    dtype: str | None  # torch dtype name for _rebuild_tensor_v3, else None


# MARK: safe constructors ---------------------------------------------------
# Each validates its arguments and builds plain data. None imports anything
# but NumPy and ml_dtypes.

_DTYPE_KINDS = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
_ML_DTYPE_NAMES = (
    "bfloat16",
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e8m0fnu",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
)


def _int(value: Any, what: str, minimum: int | None = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConversionError(f"{what} must be an integer, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ConversionError(f"{what} must be >= {minimum}, not {value}")
    return value


def int_tuple(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise ConversionError(f"{what} must be a tuple of integers, not {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def as_dtype(value: Any) -> np.dtype:
    if isinstance(value, PendingDtype):
        return value.dtype
    raise ConversionError(f"expected a numpy dtype, found {type(value).__name__}")


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> PendingDtype:
    if isinstance(spec, Marker) and spec.kind == "ml_dtypes":
        import ml_dtypes

        return PendingDtype(np.dtype(getattr(ml_dtypes, spec.name)))
    if not isinstance(spec, str) or len(spec) < 2:
        raise ConversionError(f"unsupported numpy dtype {spec!r}")
    kind, digits = spec[0], spec[1:]
    if kind not in _DTYPE_KINDS or not digits.isdigit() or int(digits) not in _DTYPE_KINDS[kind]:
        raise ConversionError(
            f"numpy dtype {spec!r} is not a plain numeric dtype (object, string, structured "
            f"and datetime arrays are refused)"
        )
    return PendingDtype(np.dtype(spec))


def build_dtype(pending: PendingDtype, state: Any) -> None:
    # numpy's dtype.__setstate__: (version, byteorder, subdescr, names, fields,
    # elsize, alignment, flags[, metadata])
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise ConversionError(f"unsupported numpy dtype state {state!r:.80}")
    order, subdescr, names, fields = state[1:5]
    if subdescr is not None or names is not None or fields is not None:
        raise ConversionError("structured numpy dtypes are refused")
    if len(state) == 9 and state[8] is not None:
        raise ConversionError("numpy dtypes with metadata are refused")
    if order not in ("<", ">", "|", "="):
        raise ConversionError(f"bad byte order {order!r} in a numpy dtype")
    if order in ("<", ">") and pending.dtype.itemsize > 1:
        pending.dtype = pending.dtype.newbyteorder(order)


def array_from_bytes(raw: Any, dtype: np.dtype, shape: tuple, fortran: bool) -> np.ndarray:
    try:
        view = memoryview(raw).cast("B")
    except TypeError:
        raise ConversionError(f"array data must be bytes, not {type(raw).__name__}") from None
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != view.nbytes:
        raise ConversionError(
            f"array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
            f"the pickle holds {view.nbytes}"
        )
    flat = np.frombuffer(view, dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype: Any, shape: Any, code: Any) -> PendingArray:
    if subtype is not NDARRAY:
        raise ConversionError(f"_reconstruct of {subtype!r}: only numpy.ndarray is rebuilt")
    return PendingArray()


def build_array(pending: PendingArray, state: Any) -> None:
    # ndarray.__setstate__: (version, shape, dtype, is_fortran, rawdata)
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise ConversionError("unsupported numpy array state")
    if len(state) == 5:
        state = state[1:]
    shape, dtype, fortran, raw = state
    pending.array = array_from_bytes(
        raw, as_dtype(dtype), int_tuple(shape, "array shape"), bool(fortran)
    )


def _scalar(dtype: Any, raw: Any = None) -> PendingArray:
    dt = as_dtype(dtype)
    return PendingArray(array_from_bytes(raw, dt, (), False))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> PendingArray:
    if order not in ("C", "F"):
        raise ConversionError(f"bad array order {order!r}")
    return PendingArray(
        array_from_bytes(buf, as_dtype(dtype), int_tuple(shape, "array shape"), order == "F")
    )


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # How protocol 2 spells bytes: _codecs.encode(latin-1 text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ConversionError("_codecs.encode is only accepted as encode(str, 'latin1')")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # the real call fails the same way
        raise ConversionError("_codecs.encode: the text is not latin-1") from None


def _empty_bytes(*args: Any) -> bytes:
    # How protocol 2 spells b"": __builtin__.bytes().
    if args:
        raise ConversionError("bytes(...) is only accepted without arguments")
    return b""


def _ordered_dict(*args: Any) -> OrderedDictData:
    if args and args != ([],):
        raise ConversionError("collections.OrderedDict is only accepted empty (items follow)")
    return OrderedDictData()


#: The attribute a ``state_dict()`` OrderedDict carries; the only BUILD state accepted.
STATE_METADATA_ATTRIBUTE = "_metadata"
_PLAIN_DEPTH = 32
_PLAIN_NODES = 1_000_000


def _plain_copy(value: Any, what: str) -> Any:
    """A copy of nested dicts/lists/tuples of str, int, float, bool and None.

    Anything else is refused. The copy is taken when BUILD runs, so that
    containers the pickle changes later (or that contain themselves) cannot
    change it; depth and size are bounded.
    """
    nodes = 0

    def copy(item: Any, depth: int) -> Any:
        nonlocal nodes
        nodes += 1
        if nodes > _PLAIN_NODES:
            raise ConversionError(f"{what} holds more than {_PLAIN_NODES} values")
        if depth > _PLAIN_DEPTH:
            raise ConversionError(f"{what} nests deeper than {_PLAIN_DEPTH} levels (a cycle?)")
        if item is None or isinstance(item, (str, int, float, bool)):
            return item
        if type(item) in (dict, OrderedDictData):
            out = {}
            for key, sub in item.items():
                if key is not None and not isinstance(key, (str, int, float, bool)):
                    raise ConversionError(f"{what} has a key of type {type(key).__name__}")
                out[key] = copy(sub, depth + 1)
            return out
        if type(item) in (list, tuple):
            items = [copy(sub, depth + 1) for sub in item]
            return items if type(item) is list else tuple(items)
        raise ConversionError(
            f"{what} must be plain data (dicts, lists, strings, numbers), "
            f"not {type(item).__name__}"
        )

    return copy(value, 0)


def build_ordered_dict(target: OrderedDictData, state: Any) -> None:
    # What pickle's BUILD would do here is setattr(target, key, value) for each
    # key of a dict state (OrderedDict has no __setstate__). Only a state_dict's
    # `_metadata` of plain data is accepted, and it is recorded, not set.
    if type(state) is not dict or set(state) != {STATE_METADATA_ATTRIBUTE}:
        shown = sorted(map(repr, state))[:4] if isinstance(state, dict) else type(state).__name__
        raise UnsafePickleError(
            f"BUILD on an OrderedDict may only restore its {STATE_METADATA_ATTRIBUTE!r} "
            f"attribute (a state_dict's), not {shown}",
            "BUILD",
        )
    if target.state_metadata is not None:
        raise ConversionError(f"BUILD restores {STATE_METADATA_ATTRIBUTE!r} twice")
    target.state_metadata = _plain_copy(
        state[STATE_METADATA_ATTRIBUTE], f"the OrderedDict's {STATE_METADATA_ATTRIBUTE!r}"
    )


def _rebuild_tensor(storage, offset, size, stride, *rest) -> TensorRef:
    return TensorRef(
        storage,
        _int(offset, "storage offset"),
        int_tuple(size, "tensor size"),
        int_tuple(stride, "tensor stride"),
        None,
    )


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *rest):
    if not isinstance(dtype, TorchDtype):
        raise ConversionError(f"_rebuild_tensor_v3: expected a torch dtype, got {dtype!r:.60}")
    ref = _rebuild_tensor(storage, offset, size, stride)
    ref.dtype = dtype.name
    return ref


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    if not isinstance(data, TensorRef):
        raise ConversionError("_rebuild_parameter: expected a tensor")
    return data


def _rebuild_from_type(func, cls, args, state=None, *rest) -> TensorRef:
    # torch._tensor._rebuild_from_type_v2: a tensor that carries Python attributes
    # (t.note = ...). The tensor is rebuilt by one of our rebuilders; the
    # attributes have no place in a safetensors file and are dropped.
    if func not in _TENSOR_REBUILDERS or cls not in (TORCH_TENSOR, TORCH_PARAMETER):
        raise ConversionError(
            "_rebuild_from_type_v2 is only accepted for torch.Tensor and Parameter "
            "rebuilt by a tensor rebuilder"
        )
    if not isinstance(args, tuple):
        raise ConversionError("_rebuild_from_type_v2: the arguments are not a tuple")
    if state is not None:
        _plain_copy(state, "a tensor's attributes")
    tensor = func(*args)
    if not isinstance(tensor, TensorRef):
        raise ConversionError("_rebuild_from_type_v2 did not rebuild a tensor")
    return tensor


def _torch_size(values: Any = ()) -> tuple:
    return int_tuple(values, "torch.Size")


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or len(kind) > 64:
        raise ConversionError("torch.device: the device type must be a short string")
    if index is None:
        return kind
    return f"{kind}:{_int(index, 'torch.device index')}"


def _set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise ConversionError("set(...) is only accepted over a list")
    return set(hashable_items(list(items), "set", 0))


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


def _counter(mapping: Any = None) -> dict:
    if mapping is None:
        return {}
    if type(mapping) is not dict:
        raise ConversionError("collections.Counter is only accepted over a dict")
    return _plain_copy(mapping, "a collections.Counter")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    for part in (real, imag):
        if isinstance(part, bool) or not isinstance(part, (int, float)):
            raise ConversionError("complex(...) is only accepted over two numbers")
    return complex(real, imag)


def _bytearray(data: Any = b"") -> bytearray:
    if not isinstance(data, (bytes, memoryview)):
        raise ConversionError("bytearray(...) is only accepted over bytes")
    return bytearray(data)


def joblib_wrapper() -> JoblibWrapper:
    return JoblibWrapper()


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)


NDARRAY = Marker("numpy", "ndarray")
TORCH_TENSOR = Marker("torch", "Tensor")
TORCH_PARAMETER = Marker("torch.nn.parameter", "Parameter")

# torch storage classes -> torch dtype name
_STORAGES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
TORCH_DTYPES = (
    "bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "float8_e5m2", "float8_e4m3fn", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float4_e2m1fn_x2",
)


def _build_allow_list() -> dict:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "UntypedStorage"): StorageType("torch", "uint8"),
        ("numpy", "ndarray"): NDARRAY,
        ("numpy", "dtype"): _numpy_dtype,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("joblib.numpy_pickle", "NumpyArrayWrapper"): joblib_wrapper,
        # Plain data that torch.load(weights_only=True) accepts too
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch", "Tensor"): TORCH_TENSOR,
        ("torch.nn.parameter", "Parameter"): TORCH_PARAMETER,
        ("torch", "Size"): _torch_size,
        ("torch", "device"): _torch_device,
        ("collections", "Counter"): _counter,
    }
    for builtins in ("builtins", "__builtin__"):
        allowed[(builtins, "set")] = _set
        allowed[(builtins, "frozenset")] = _frozenset
        allowed[(builtins, "complex")] = _complex
        allowed[(builtins, "bytearray")] = _bytearray
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = _reconstruct
        allowed[(core + ".multiarray", "scalar")] = _scalar
        allowed[(core + ".numeric", "_frombuffer")] = _frombuffer
    for name, dtype in _STORAGES.items():
        allowed[("torch", name)] = StorageType("torch", dtype)
    for name in TORCH_DTYPES:
        allowed[("torch", name)] = TorchDtype("torch", name)
    for name in _ML_DTYPE_NAMES:
        allowed[("ml_dtypes", name)] = Marker("ml_dtypes", name)
    return allowed


#: (module, name) -> our own constructor or marker. Nothing else is resolved.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allow_list()



# MARK: hashing bounded --------------------------------------------------------

# Hashing a tuple recurses in C without a depth check (a key nested 10**6 deep crashes
# the interpreter) and visits shared sub-tuples once per path (exponential time): keys
# are bounded before they are hashed.
_MAX_KEY_DEPTH = 100
_MAX_KEY_NODES = 100_000


def check_hash_cost(value: Any, label: str, offset: int) -> None:
    if not isinstance(value, (tuple, frozenset)):
        return
    pending = [(value, 0)]
    nodes = 0
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, (tuple, frozenset)):
            continue
        nodes += len(item)
        if depth >= _MAX_KEY_DEPTH or nodes > _MAX_KEY_NODES:
            raise ConversionError(
                f"{label}: a dict key or set item nested too deep or too large to hash "
                f"(byte {offset})")
        pending.extend((x, depth + 1) for x in item)


def hashable_items(items: list, label: str, offset: int) -> list:
    for item in items:
        check_hash_cost(item, label, offset)
        try:
            hash(item)
        except TypeError:
            raise ConversionError(f"{label}: unhashable set item at byte {offset}") from None
    return items
