"""A pickle interpreter that never imports or calls anything it was not built with.

``pickle.load`` resolves every GLOBAL with ``find_class`` (an import) and
calls whatever REDUCE names: a pickle is a program. This module runs that
program on a small virtual machine of its own instead. A global is only a
name: it is looked up in :data:`ALLOWED_GLOBALS`, an allow-list of the
functions and classes that rebuild tensors and arrays, each mapped to a
constructor written here (nothing is imported by name, ever). Any other
global, and any opcode that tensors never need, stops the machine with an
:class:`UnsafePickleError` naming it.

In scan mode (``Machine(..., scan=True)``) the machine does not stop: it
records every global and every suspicious opcode, and replaces what it may
not build by an inert :class:`Opaque` placeholder, so that one pass reports
everything a pickle would do (including globals whose names are computed,
e.g. STACK_GLOBAL over memoized strings: the machine sees the real values).

Limits: the machine is iterative (no recursion), reads only inside the
buffer it is given (every length is checked against what is left), and its
stack, memo and mark depth are bounded by the number of opcodes, that is by
the size of the input.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = [
    "ALLOWED_GLOBALS",
    "ConversionError",
    "OrderedDictData",
    "UnsafePickleError",
    "Machine",
    "Opaque",
    "PendingArray",
    "StorageType",
    "TorchDtype",
    "TensorRef",
    "run_pickle",
]


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
class _Marker:
    """A global that is data, not a function: a class or a dtype name."""

    kind: str
    name: str


class StorageType(_Marker):
    """``torch.FloatStorage`` and friends: names a storage's element dtype."""


class TorchDtype(_Marker):
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


def _int_tuple(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise ConversionError(f"{what} must be a tuple of integers, not {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def as_dtype(value: Any) -> np.dtype:
    if isinstance(value, PendingDtype):
        return value.dtype
    raise ConversionError(f"expected a numpy dtype, found {type(value).__name__}")


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> PendingDtype:
    if isinstance(spec, _Marker) and spec.kind == "ml_dtypes":
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


def _build_dtype(pending: PendingDtype, state: Any) -> None:
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


def _array_from_bytes(raw: Any, dtype: np.dtype, shape: tuple, fortran: bool) -> np.ndarray:
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


def _build_array(pending: PendingArray, state: Any) -> None:
    # ndarray.__setstate__: (version, shape, dtype, is_fortran, rawdata)
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise ConversionError("unsupported numpy array state")
    if len(state) == 5:
        state = state[1:]
    shape, dtype, fortran, raw = state
    pending.array = _array_from_bytes(
        raw, as_dtype(dtype), _int_tuple(shape, "array shape"), bool(fortran)
    )


def _scalar(dtype: Any, raw: Any = None) -> PendingArray:
    dt = as_dtype(dtype)
    return PendingArray(_array_from_bytes(raw, dt, (), False))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> PendingArray:
    if order not in ("C", "F"):
        raise ConversionError(f"bad array order {order!r}")
    return PendingArray(
        _array_from_bytes(buf, as_dtype(dtype), _int_tuple(shape, "array shape"), order == "F")
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


def _build_ordered_dict(target: OrderedDictData, state: Any) -> None:
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
        _int_tuple(size, "tensor size"),
        _int_tuple(stride, "tensor stride"),
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
    return _int_tuple(values, "torch.Size")


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or len(kind) > 64:
        raise ConversionError("torch.device: the device type must be a short string")
    if index is None:
        return kind
    return f"{kind}:{_int(index, 'torch.device index')}"


def _set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise ConversionError("set(...) is only accepted over a list")
    return set(_hashable(list(items), "set", 0))


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


def _joblib_wrapper() -> JoblibWrapper:
    return JoblibWrapper()


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)


NDARRAY = _Marker("numpy", "ndarray")
TORCH_TENSOR = _Marker("torch", "Tensor")
TORCH_PARAMETER = _Marker("torch.nn.parameter", "Parameter")

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
        ("joblib.numpy_pickle", "NumpyArrayWrapper"): _joblib_wrapper,
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
        allowed[("ml_dtypes", name)] = _Marker("ml_dtypes", name)
    return allowed


#: (module, name) -> our own constructor or marker. Nothing else is resolved.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allow_list()

# Python 2 module names the real unpickler maps (fix_imports): reported as is.


# MARK: the machine ---------------------------------------------------------

# Opcodes refused in conversion (scan mode interprets them and reports them).
# Tensor pickles (protocol >= 2) never contain them.
REFUSED_OPCODES = {
    b"i": ("INST", "builds an object by calling a class named in the text"),
    b"o": ("OBJ", "builds an object by calling a class"),
    b"\x82": ("EXT1", "imports a global through the copyreg extension registry"),
    b"\x83": ("EXT2", "imports a global through the copyreg extension registry"),
    b"\x84": ("EXT4", "imports a global through the copyreg extension registry"),
    b"P": ("PERSID", "text persistent id (protocol 0)"),
    b"\x92": ("NEWOBJ_EX", "builds an object with keyword arguments"),
    b"I": ("INT", "protocol-0 text opcode"),
    b"L": ("LONG", "protocol-0 text opcode"),
    b"F": ("FLOAT", "protocol-0 text opcode"),
    b"S": ("STRING", "protocol-0 text opcode"),
    b"V": ("UNICODE", "protocol-0 text opcode"),
    b"p": ("PUT", "protocol-0 text opcode"),
    b"g": ("GET", "protocol-0 text opcode"),
    b"d": ("DICT", "protocol-0 text opcode"),
    b"l": ("LIST", "protocol-0 text opcode"),
}

_MARK = object()


@dataclass
class Finding:
    """One thing a scan found: a global or a suspicious opcode."""

    kind: str  # "global" | "opcode" | "error"
    name: str  # "os.system", "INST", or the error message
    offset: int
    safe: bool
    note: str = ""
    where: str = ""


class Machine:
    """Runs one pickle from ``data[pos:]``.

    persistent_load(pid) -> value is called for BINPERSID; ``buffers`` feeds
    NEXT_BUFFER. In scan mode nothing raises for unsafe content: see
    :attr:`findings`.
    """

    def __init__(
        self,
        data: Any,
        pos: int = 0,
        *,
        persistent_load: Callable[[Any], Any] | None = None,
        buffers: Any = None,
        scan: bool = False,
        label: str = "pickle",
    ) -> None:
        self.data = memoryview(data).cast("B")
        self.pos = pos
        self.persistent_load = persistent_load
        self.buffers = iter(buffers) if buffers is not None else None
        self.scan = scan
        self.label = label
        self.findings: list[Finding] = []

    # -- reading -----------------------------------------------------------

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ConversionError(
                f"{self.label}: truncated pickle (needs {n} bytes at byte {self.pos}, "
                f"{len(self.data) - self.pos} left)"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _line(self) -> str:
        end = self.pos
        data = self.data
        limit = min(len(data), self.pos + 4096)
        while end < limit and data[end] != 0x0A:
            end += 1
        if end >= limit:
            raise ConversionError(f"{self.label}: unterminated text argument at byte {self.pos}")
        text = bytes(data[self.pos : end]).decode("utf-8", "replace")
        self.pos = end + 1
        return text

    def take_raw(self, n: int) -> memoryview:
        """Raw bytes that follow an opcode (joblib's array data)."""
        return self._take(n)

    def _bytes(self, n: int) -> Any:
        chunk = self._take(n)
        # Small payloads as bytes; big ones stay zero-copy views of the input.
        return bytes(chunk) if n < 65536 else chunk.toreadonly()

    # -- policy --------------------------------------------------------------

    def _refuse(self, what: str, message: str, offset: int, note: str = "") -> None:
        if self.scan:
            self.findings.append(Finding("opcode", what, offset, False, note or message))
            return
        raise UnsafePickleError(f"{self.label}: {message} (at byte {offset})", what)

    def _resolve(self, module: Any, name: Any, offset: int) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            what = f"{module!r:.40}.{name!r:.40}"
            self._refuse(what, f"a global with a non-string name: {what}", offset)
            return Opaque(what)
        qualname = f"{module}.{name}"
        target = ALLOWED_GLOBALS.get((module, name))
        if self.scan:
            self.findings.append(
                Finding("global", qualname, offset, target is not None,
                        "" if target is not None else "not on the allow-list")
            )
        if target is None:
            if not self.scan:
                raise UnsafePickleError(
                    f"{self.label}: global {qualname} is not on the allow-list of tensor "
                    f"rebuilders (at byte {offset}); nothing was executed",
                    qualname,
                )
            return Opaque(qualname)
        return target

    def _call(self, func: Any, args: Any, offset: int) -> Any:
        if isinstance(func, Opaque) or any(isinstance(a, Opaque) for a in _flat(args)):
            return Opaque(f"call of {getattr(func, 'what', func)!r}")
        if not callable(func) or isinstance(func, _Marker):
            self._refuse("REDUCE", f"REDUCE calls {func!r:.60}, which is not a function", offset)
            return Opaque("call")
        if not isinstance(args, tuple):
            raise ConversionError(f"{self.label}: REDUCE arguments are not a tuple (byte {offset})")
        try:
            return func(*args)
        except (TypeError, ConversionError) as exc:
            return self._failed(exc, offset)

    def _failed(self, exc: Exception, offset: int) -> Opaque:
        if isinstance(exc, UnsafePickleError) and not self.scan:
            raise exc
        message = f"{self.label}: {exc} (at byte {offset})"
        if self.scan:
            self.findings.append(Finding("error", message, offset, False))
            return Opaque("error")
        raise ConversionError(message) from None

    def _build(self, obj: Any, state: Any, offset: int) -> Any:
        if isinstance(obj, Opaque) or isinstance(state, Opaque):
            return obj
        try:
            if isinstance(obj, PendingArray) and obj.array is None:
                _build_array(obj, state)
            elif isinstance(obj, PendingDtype):
                _build_dtype(obj, state)
            elif isinstance(obj, JoblibWrapper):
                return self._read_joblib(obj, state)
            elif type(obj) is OrderedDictData:
                try:
                    _build_ordered_dict(obj, state)
                except UnsafePickleError as exc:
                    self._refuse("BUILD", str(exc), offset)
            else:
                self._refuse("BUILD", f"BUILD on {type(obj).__name__} is not allowed", offset)
        except ConversionError as exc:
            return self._failed(exc, offset)
        return obj

    def _read_joblib(self, wrapper: JoblibWrapper, state: Any) -> PendingArray:
        if not isinstance(state, dict) or state.get("subclass") is not NDARRAY:
            raise ConversionError(f"{self.label}: unsupported joblib array wrapper")
        dtype = as_dtype(state.get("dtype"))
        shape = _int_tuple(state.get("shape"), "joblib array shape")
        order = state.get("order")
        if order not in ("C", "F"):
            raise ConversionError(f"{self.label}: bad joblib array order {order!r}")
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self._take(1)[0]
            self._take(padding)
        count = 1
        for d in shape:
            count *= d
        raw = self._take(count * dtype.itemsize)
        wrapper.pending.array = _array_from_bytes(raw.toreadonly(), dtype, shape, order == "F")
        return wrapper.pending

    # -- the loop ----------------------------------------------------------

    def run(self) -> Any:
        """Interprets opcodes up to STOP; returns the pickled object."""
        data = self.data
        stack: list = []
        metastack: list = []
        memo: dict = {}
        end = len(data)

        def pop_mark() -> list:
            nonlocal stack
            if not metastack:
                raise ConversionError(f"{self.label}: MARK expected at byte {offset}")
            items = stack
            stack = metastack.pop()
            return items

        def pop() -> Any:
            if not stack:
                raise ConversionError(f"{self.label}: stack underflow at byte {offset}")
            value = stack.pop()
            if value is _MARK:
                raise ConversionError(f"{self.label}: unexpected MARK at byte {offset}")
            return value

        def top() -> Any:
            if not stack:
                raise ConversionError(f"{self.label}: stack underflow at byte {offset}")
            return stack[-1]

        def setitems(target: Any, items: list) -> None:
            if len(items) % 2:
                raise ConversionError(f"{self.label}: odd number of items at byte {offset}")
            if isinstance(target, Opaque):
                return
            if not isinstance(target, dict):
                raise ConversionError(
                    f"{self.label}: SETITEM on {type(target).__name__} (byte {offset})"
                )
            for i in range(0, len(items), 2):
                key = items[i]
                _check_hash_cost(key, self.label, offset)
                try:
                    target[key] = items[i + 1]
                except TypeError:
                    raise ConversionError(
                        f"{self.label}: unhashable dict key at byte {offset}"
                    ) from None

        def append(target: Any, items: list) -> None:
            if isinstance(target, Opaque):
                return
            if isinstance(target, list):
                target.extend(items)
            elif isinstance(target, set):
                target.update(_hashable(items, self.label, offset))
            else:
                raise ConversionError(
                    f"{self.label}: APPEND to {type(target).__name__} (byte {offset})"
                )

        while True:
            if self.pos >= end:
                raise ConversionError(f"{self.label}: pickle ends without STOP")
            offset = self.pos
            op = bytes(data[offset : offset + 1])
            self.pos += 1

            if op in REFUSED_OPCODES:
                name, why = REFUSED_OPCODES[op]
                if not self.scan:
                    raise UnsafePickleError(
                        f"{self.label}: opcode {name} ({why}) is not allowed in a tensor "
                        f"checkpoint (at byte {offset}); nothing was executed",
                        f"opcode {name}",
                    )
                self.findings.append(Finding("opcode", name, offset, False, why))
                if op in (b"i", b"o", b"d", b"l"):  # these take the items since MARK
                    if op == b"i":
                        module, name = self._line(), self._line()
                        self._resolve(module, name, offset)
                    pop_mark()
                    stack.append({} if op == b"d" else [] if op == b"l" else Opaque(name))
                else:
                    self._scan_refused(op, stack, memo, pop)
                continue

            if op == b"\x80":  # PROTO
                proto = self._take(1)[0]
                if proto > 5:
                    raise ConversionError(f"{self.label}: unsupported pickle protocol {proto}")
            elif op == b"\x95":  # FRAME: frames only group opcodes; lengths are checked
                (n,) = struct.unpack("<Q", self._take(8))
                if n > end - self.pos:
                    raise ConversionError(f"{self.label}: frame longer than the data")
            elif op == b".":  # STOP
                return pop()
            elif op == b"(":  # MARK
                metastack.append(stack)
                stack = []
            elif op == b"0":  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == b"1":  # POP_MARK
                pop_mark()
            elif op == b"2":  # DUP
                stack.append(top())
            elif op == b"N":
                stack.append(None)
            elif op == b"\x88":
                stack.append(True)
            elif op == b"\x89":
                stack.append(False)
            elif op == b"J":
                stack.append(struct.unpack("<i", self._take(4))[0])
            elif op == b"K":
                stack.append(self._take(1)[0])
            elif op == b"M":
                stack.append(struct.unpack("<H", self._take(2))[0])
            elif op == b"\x8a":  # LONG1
                n = self._take(1)[0]
                stack.append(int.from_bytes(self._take(n), "little", signed=True))
            elif op == b"\x8b":  # LONG4
                (n,) = struct.unpack("<i", self._take(4))
                if n > 4096:  # no tensor needs an integer this long
                    raise ConversionError(f"{self.label}: LONG4 of {n} bytes at byte {offset}")
                stack.append(int.from_bytes(self._take(n), "little", signed=True))
            elif op == b"G":
                stack.append(struct.unpack(">d", self._take(8))[0])
            elif op in (b"\x8c", b"X", b"\x8d"):  # SHORT_BINUNICODE, BINUNICODE(8)
                fmt = {b"\x8c": ("<B", 1), b"X": ("<I", 4), b"\x8d": ("<Q", 8)}[op]
                (n,) = struct.unpack(fmt[0], self._take(fmt[1]))
                try:
                    stack.append(str(self._take(n), "utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise ConversionError(f"{self.label}: bad UTF-8 at byte {offset}") from None
            elif op in (b"U", b"T"):  # SHORT_BINSTRING, BINSTRING: Python 2 str
                fmt = ("<B", 1) if op == b"U" else ("<i", 4)
                (n,) = struct.unpack(fmt[0], self._take(fmt[1]))
                stack.append(bytes(self._take(n)).decode("latin-1"))
            elif op in (b"C", b"B", b"\x8e", b"\x96"):  # bytes, bytearray
                fmt = {b"C": ("<B", 1), b"B": ("<I", 4)}.get(op, ("<Q", 8))
                (n,) = struct.unpack(fmt[0], self._take(fmt[1]))
                stack.append(self._bytes(n))
            elif op == b"}":
                stack.append({})
            elif op == b"]":
                stack.append([])
            elif op == b")":
                stack.append(())
            elif op == b"\x8f":  # EMPTY_SET
                stack.append(set())
            elif op == b"\x90":  # ADDITEMS
                items = pop_mark()
                append(top(), items)
            elif op == b"\x91":  # FROZENSET
                stack.append(frozenset(_hashable(pop_mark(), self.label, offset)))
            elif op == b"t":
                items = pop_mark()
                stack.append(tuple(items))
            elif op in (b"\x85", b"\x86", b"\x87"):
                n = op[0] - 0x84
                if len(stack) < n:
                    raise ConversionError(f"{self.label}: stack underflow at byte {offset}")
                items = tuple(pop() for _ in range(n))[::-1]
                stack.append(items)
            elif op == b"a":
                value = pop()
                append(top(), [value])
            elif op == b"e":
                items = pop_mark()
                append(top(), items)
            elif op == b"s":
                value = pop()
                key = pop()
                setitems(top(), [key, value])
            elif op == b"u":
                items = pop_mark()
                setitems(top(), items)
            elif op in (b"q", b"r"):
                idx = self._take(1)[0] if op == b"q" else struct.unpack("<I", self._take(4))[0]
                memo[idx] = top()
            elif op == b"\x94":
                memo[len(memo)] = top()
            elif op in (b"h", b"j"):
                idx = self._take(1)[0] if op == b"h" else struct.unpack("<I", self._take(4))[0]
                if idx not in memo:
                    raise ConversionError(f"{self.label}: memo key {idx} missing at byte {offset}")
                stack.append(memo[idx])
            elif op == b"c":  # GLOBAL
                module = self._line()
                name = self._line()
                stack.append(self._resolve(module, name, offset))
            elif op == b"\x93":  # STACK_GLOBAL
                name = pop()
                module = pop()
                stack.append(self._resolve(module, name, offset))
            elif op == b"R":  # REDUCE
                args = pop()
                func = pop()
                stack.append(self._call(func, args, offset))
            elif op == b"\x81":  # NEWOBJ: cls.__new__(cls, *args)
                args = pop()
                cls = pop()
                if cls is _joblib_wrapper or isinstance(cls, Opaque):
                    stack.append(self._call(cls, (), offset))
                else:
                    self._refuse("NEWOBJ", f"NEWOBJ of {cls!r:.60} is not allowed", offset)
                    stack.append(Opaque("NEWOBJ"))
            elif op == b"b":  # BUILD
                state = pop()
                obj = pop()
                stack.append(self._build(obj, state, offset))
            elif op == b"Q":  # BINPERSID
                pid = pop()
                if self.persistent_load is None:
                    if not self.scan:
                        raise ConversionError(
                            f"{self.label}: persistent id at byte {offset}, but this kind of "
                            f"file has no external storages"
                        )
                    stack.append(Opaque("persistent id"))
                else:
                    stack.append(self.persistent_load(pid))
            elif op in (b"\x97", b"\x98"):  # NEXT_BUFFER, READONLY_BUFFER
                if op == b"\x98":
                    continue  # our buffers are never written to
                if self.buffers is None:
                    if not self.scan:
                        raise ConversionError(
                            f"{self.label}: the pickle has out-of-band buffers; pass them "
                            f"with buffers=[...]"
                        )
                    stack.append(Opaque("out-of-band buffer"))
                    continue
                try:
                    buf = next(self.buffers)
                except StopIteration:
                    raise ConversionError(
                        f"{self.label}: not enough out-of-band buffers (byte {offset})"
                    ) from None
                stack.append(memoryview(buf).toreadonly())
            else:
                self._refuse(
                    f"0x{op.hex()}", f"unknown opcode 0x{op.hex()}", offset, "unknown opcode"
                )
                raise ConversionError(f"{self.label}: unknown opcode 0x{op.hex()} at byte {offset}")

    # Scan mode: interpret the refused opcodes just enough to keep going and
    # to see the globals they name.
    def _scan_refused(self, op, stack, memo, pop) -> None:
        if op in (b"\x82", b"\x83", b"\x84"):
            self._take({b"\x82": 1, b"\x83": 2, b"\x84": 4}[op])
            stack.append(Opaque("extension code"))
        elif op == b"P":
            self._line()
            stack.append(Opaque("persistent id"))
        elif op == b"\x92":
            pop()
            pop()
            pop()
            stack.append(Opaque("NEWOBJ_EX"))
        elif op in (b"I", b"L"):
            text = self._line().rstrip("L")
            stack.append(True if text == "01" else False if text == "00" else _safe_int(text))
        elif op == b"F":
            try:
                stack.append(float(self._line()))
            except ValueError:
                stack.append(Opaque("float"))
        elif op == b"S":
            text = self._line()
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                try:
                    text = codecs.escape_decode(text[1:-1].encode("latin-1", "replace"))[0]
                    text = text.decode("latin-1")
                except ValueError:  # a bad escape: the real unpickler fails here too
                    text = Opaque("string")
            stack.append(text)
        elif op == b"V":
            raw = self._line().encode("latin-1", "replace")
            stack.append(raw.decode("raw-unicode-escape", "replace"))
        elif op == b"p":
            memo[_safe_int(self._line())] = stack[-1] if stack else None
        elif op == b"g":
            stack.append(memo.get(_safe_int(self._line()), Opaque("memo")))


def _safe_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def _flat(args: Any):
    return args if isinstance(args, tuple) else (args,)


# Hashing a tuple recurses in C without a depth check (a key nested 10**6 deep crashes
# the interpreter) and visits shared sub-tuples once per path (exponential time): keys
# are bounded before they are hashed.
_MAX_KEY_DEPTH = 100
_MAX_KEY_NODES = 100_000


def _check_hash_cost(value: Any, label: str, offset: int) -> None:
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


def _hashable(items: list, label: str, offset: int) -> list:
    for item in items:
        _check_hash_cost(item, label, offset)
        try:
            hash(item)
        except TypeError:
            raise ConversionError(f"{label}: unhashable set item at byte {offset}") from None
    return items


def run_pickle(data: Any, pos: int = 0, **kwargs: Any) -> tuple[Any, int]:
    """Runs one pickle; returns (object, position after STOP)."""
    machine = Machine(data, pos, **kwargs)
    return machine.run(), machine.pos
