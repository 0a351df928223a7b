"""A pickle interpreter that never imports or calls anything it was not built with.

``pickle.load`` resolves every GLOBAL with ``find_class`` (an import) and
calls whatever REDUCE names: a pickle is a program. This module runs that
program on a small virtual machine of its own instead. A global is only a
name: it is looked up in :data:`ALLOWED_GLOBALS`, an allow-list of the
functions and classes that rebuild tensors and arrays, each mapped to a
constructor of ours (:mod:`safetensors_c._pickle_rebuild`; nothing is
imported by name, ever). Any other
global, and any opcode that tensors never need, stops the machine with an
:class:`UnsafePickleError` naming it.

In scan mode (``Machine(..., scan=True)``) the machine does not stop: it
records every global and every suspicious opcode, and replaces what it may
not build by an inert :class:`Opaque` placeholder, so that one pass reports
everything a pickle would do (including globals whose names are computed,
e.g. STACK_GLOBAL over memoized strings: the machine sees the real values).

The machine is a loop over a table (``Machine._DISPATCH``): each opcode
byte maps to one small handler method, the refused opcodes to handlers
that first refuse (or, in scan mode, record) them; a byte not in the table
is an unknown opcode and stops the machine.

Limits: the machine is iterative (no recursion), reads only inside the
buffer it is given (every length is checked against what is left), and its
stack, memo and mark depth are bounded by the number of opcodes, that is by
the size of the input.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass
from typing import Any, Callable

from ._pickle_rebuild import (
    ALLOWED_GLOBALS,
    NDARRAY,
    STATE_METADATA_ATTRIBUTE,
    ConversionError,
    JoblibWrapper,
    Marker,
    Opaque,
    OrderedDictData,
    PendingArray,
    PendingDtype,
    StorageType,
    TensorRef,
    TorchDtype,
    UnsafePickleError,
    array_from_bytes,
    as_dtype,
    build_array,
    build_dtype,
    build_ordered_dict,
    check_hash_cost,
    hashable_items,
    int_tuple,
    joblib_wrapper,
)

# The machine's own names, and (from _pickle_rebuild) the values it builds.
__all__ = [
    "ALLOWED_GLOBALS",
    "STATE_METADATA_ATTRIBUTE",
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
        # The interpreter's state: the stack, the stacks MARK put aside, the
        # memo, and where the opcode being run starts (for messages).
        self.stack: list = []
        self.metastack: list = []
        self.memo: dict = {}
        self.offset = pos

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
        if not callable(func) or isinstance(func, Marker):
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
                build_array(obj, state)
            elif isinstance(obj, PendingDtype):
                build_dtype(obj, state)
            elif isinstance(obj, JoblibWrapper):
                return self._read_joblib(obj, state)
            elif type(obj) is OrderedDictData:
                try:
                    build_ordered_dict(obj, state)
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
        shape = int_tuple(state.get("shape"), "joblib array shape")
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
        wrapper.pending.array = array_from_bytes(raw.toreadonly(), dtype, shape, order == "F")
        return wrapper.pending

    # -- the loop ----------------------------------------------------------

    def run(self) -> Any:
        """Interprets opcodes up to STOP; returns the pickled object.

        Each opcode byte is looked up in :attr:`_DISPATCH`, the table of the
        only opcodes the machine knows; a byte not in it stops the machine.
        """
        data, end, dispatch = self.data, len(self.data), self._DISPATCH
        try:
            while True:
                if self.pos >= end:
                    raise ConversionError(f"{self.label}: pickle ends without STOP")
                self.offset = self.pos
                handler = dispatch.get(data[self.pos], Machine._unknown_opcode)
                self.pos += 1
                handler(self)
        except _Stop as stop:
            return stop.value

    # -- the stack ---------------------------------------------------------

    def _pop_mark(self) -> list:
        """The items pushed since the last MARK; the stack before it comes back."""
        if not self.metastack:
            raise ConversionError(f"{self.label}: MARK expected at byte {self.offset}")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _pop(self) -> Any:
        if not self.stack:
            raise ConversionError(f"{self.label}: stack underflow at byte {self.offset}")
        value = self.stack.pop()
        if value is _MARK:
            raise ConversionError(f"{self.label}: unexpected MARK at byte {self.offset}")
        return value

    def _top(self) -> Any:
        if not self.stack:
            raise ConversionError(f"{self.label}: stack underflow at byte {self.offset}")
        return self.stack[-1]

    def _length(self) -> int:
        """The length that prefixes the current opcode's argument."""
        fmt, size = _LENGTH_PREFIXES[self.data[self.offset]]
        return struct.unpack(fmt, self._take(size))[0]

    def _setitems(self, target: Any, items: list) -> None:
        if len(items) % 2:
            raise ConversionError(f"{self.label}: odd number of items at byte {self.offset}")
        if isinstance(target, Opaque):
            return
        if not isinstance(target, dict):
            raise ConversionError(
                f"{self.label}: SETITEM on {type(target).__name__} (byte {self.offset})"
            )
        for i in range(0, len(items), 2):
            key = items[i]
            check_hash_cost(key, self.label, self.offset)
            try:
                target[key] = items[i + 1]
            except TypeError:
                raise ConversionError(
                    f"{self.label}: unhashable dict key at byte {self.offset}"
                ) from None

    def _extend(self, target: Any, items: list) -> None:
        if isinstance(target, Opaque):
            return
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, set):
            target.update(hashable_items(items, self.label, self.offset))
        else:
            raise ConversionError(
                f"{self.label}: APPEND to {type(target).__name__} (byte {self.offset})"
            )

    # -- opcodes: framing and control --------------------------------------

    def _op_proto(self) -> None:
        proto = self._take(1)[0]
        if proto > 5:
            raise ConversionError(f"{self.label}: unsupported pickle protocol {proto}")

    def _op_frame(self) -> None:
        # Frames only group opcodes; every length inside is checked anyway.
        (n,) = struct.unpack("<Q", self._take(8))
        if n > len(self.data) - self.pos:
            raise ConversionError(f"{self.label}: frame longer than the data")

    def _op_stop(self) -> None:
        raise _Stop(self._pop())

    def _op_mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _op_pop(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def _op_pop_mark(self) -> None:
        self._pop_mark()

    def _op_dup(self) -> None:
        self.stack.append(self._top())

    # -- opcodes: constants, numbers, text and bytes -----------------------

    def _op_none(self) -> None:
        self.stack.append(None)

    def _op_true(self) -> None:
        self.stack.append(True)

    def _op_false(self) -> None:
        self.stack.append(False)

    def _op_binint(self) -> None:
        self.stack.append(struct.unpack("<i", self._take(4))[0])

    def _op_binint1(self) -> None:
        self.stack.append(self._take(1)[0])

    def _op_binint2(self) -> None:
        self.stack.append(struct.unpack("<H", self._take(2))[0])

    def _op_long1(self) -> None:
        n = self._take(1)[0]
        self.stack.append(int.from_bytes(self._take(n), "little", signed=True))

    def _op_long4(self) -> None:
        (n,) = struct.unpack("<i", self._take(4))
        if n > 4096:  # no tensor needs an integer this long
            raise ConversionError(f"{self.label}: LONG4 of {n} bytes at byte {self.offset}")
        self.stack.append(int.from_bytes(self._take(n), "little", signed=True))

    def _op_binfloat(self) -> None:
        self.stack.append(struct.unpack(">d", self._take(8))[0])

    def _op_binunicode(self) -> None:  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
        n = self._length()
        try:
            self.stack.append(str(self._take(n), "utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise ConversionError(f"{self.label}: bad UTF-8 at byte {self.offset}") from None

    def _op_binstring(self) -> None:  # SHORT_BINSTRING, BINSTRING: a Python 2 str
        n = self._length()
        self.stack.append(bytes(self._take(n)).decode("latin-1"))

    def _op_binbytes(self) -> None:  # SHORT_BINBYTES, BINBYTES(8), BYTEARRAY8
        self.stack.append(self._bytes(self._length()))

    # -- opcodes: containers -----------------------------------------------

    def _op_empty_dict(self) -> None:
        self.stack.append({})

    def _op_empty_list(self) -> None:
        self.stack.append([])

    def _op_empty_tuple(self) -> None:
        self.stack.append(())

    def _op_empty_set(self) -> None:
        self.stack.append(set())

    # _pop_mark replaces self.stack: take the items before naming the stack to push on.

    def _op_tuple(self) -> None:
        items = tuple(self._pop_mark())
        self.stack.append(items)

    def _op_small_tuple(self) -> None:  # TUPLE1, TUPLE2, TUPLE3
        n = self.data[self.offset] - 0x84
        if len(self.stack) < n:
            raise ConversionError(f"{self.label}: stack underflow at byte {self.offset}")
        items = tuple(self._pop() for _ in range(n))[::-1]
        self.stack.append(items)

    def _op_frozenset(self) -> None:
        items = frozenset(hashable_items(self._pop_mark(), self.label, self.offset))
        self.stack.append(items)

    def _op_append(self) -> None:
        value = self._pop()
        self._extend(self._top(), [value])

    def _op_appends(self) -> None:  # APPENDS, ADDITEMS
        items = self._pop_mark()
        self._extend(self._top(), items)

    def _op_setitem(self) -> None:
        value = self._pop()
        key = self._pop()
        self._setitems(self._top(), [key, value])

    def _op_setitems(self) -> None:
        items = self._pop_mark()
        self._setitems(self._top(), items)

    # -- opcodes: the memo -------------------------------------------------

    def _put(self, idx: int) -> None:
        self.memo[idx] = self._top()

    def _op_binput(self) -> None:
        self._put(self._take(1)[0])

    def _op_long_binput(self) -> None:
        self._put(struct.unpack("<I", self._take(4))[0])

    def _op_memoize(self) -> None:
        self.memo[len(self.memo)] = self._top()

    def _get(self, idx: int) -> None:
        if idx not in self.memo:
            raise ConversionError(f"{self.label}: memo key {idx} missing at byte {self.offset}")
        self.stack.append(self.memo[idx])

    def _op_binget(self) -> None:
        self._get(self._take(1)[0])

    def _op_long_binget(self) -> None:
        self._get(struct.unpack("<I", self._take(4))[0])

    # -- opcodes: globals, calls and external data -------------------------

    def _op_global(self) -> None:
        module = self._line()
        name = self._line()
        self.stack.append(self._resolve(module, name, self.offset))

    def _op_stack_global(self) -> None:
        name = self._pop()
        module = self._pop()
        self.stack.append(self._resolve(module, name, self.offset))

    def _op_reduce(self) -> None:
        args = self._pop()
        func = self._pop()
        self.stack.append(self._call(func, args, self.offset))

    def _op_newobj(self) -> None:  # cls.__new__(cls, *args): joblib's wrapper only
        self._pop()  # the arguments: no class we build takes any
        cls = self._pop()
        if cls is joblib_wrapper or isinstance(cls, Opaque):
            self.stack.append(self._call(cls, (), self.offset))
        else:
            self._refuse("NEWOBJ", f"NEWOBJ of {cls!r:.60} is not allowed", self.offset)
            self.stack.append(Opaque("NEWOBJ"))

    def _op_build(self) -> None:
        state = self._pop()
        obj = self._pop()
        self.stack.append(self._build(obj, state, self.offset))

    def _op_binpersid(self) -> None:
        pid = self._pop()
        if self.persistent_load is not None:
            self.stack.append(self.persistent_load(pid))
        elif self.scan:
            self.stack.append(Opaque("persistent id"))
        else:
            raise ConversionError(
                f"{self.label}: persistent id at byte {self.offset}, but this kind of "
                f"file has no external storages"
            )

    def _op_next_buffer(self) -> None:
        if self.buffers is None:
            if not self.scan:
                raise ConversionError(
                    f"{self.label}: the pickle has out-of-band buffers; pass them "
                    f"with buffers=[...]"
                )
            self.stack.append(Opaque("out-of-band buffer"))
            return
        try:
            buf = next(self.buffers)
        except StopIteration:
            raise ConversionError(
                f"{self.label}: not enough out-of-band buffers (byte {self.offset})"
            ) from None
        self.stack.append(memoryview(buf).toreadonly())

    def _op_readonly_buffer(self) -> None:
        pass  # our buffers are never written to

    def _unknown_opcode(self) -> None:
        hexed = f"0x{self.data[self.offset]:02x}"
        self._refuse(hexed, f"unknown opcode {hexed}", self.offset, "unknown opcode")
        raise ConversionError(f"{self.label}: unknown opcode {hexed} at byte {self.offset}")

    # -- opcodes conversion refuses ----------------------------------------
    # Each runs behind _refused (see the table): in conversion it stops the
    # machine before reading anything; in scan mode the finding is recorded,
    # then the opcode is interpreted just enough to keep going and to see
    # the globals it names.

    def _refuse_opcode(self) -> None:
        name, why = REFUSED_OPCODES[bytes(self.data[self.offset : self.offset + 1])]
        if not self.scan:
            raise UnsafePickleError(
                f"{self.label}: opcode {name} ({why}) is not allowed in a tensor "
                f"checkpoint (at byte {self.offset}); nothing was executed",
                f"opcode {name}",
            )
        self.findings.append(Finding("opcode", name, self.offset, False, why))

    def _scan_inst(self) -> None:
        module, name = self._line(), self._line()
        self._resolve(module, name, self.offset)
        self._pop_mark()
        self.stack.append(Opaque(name))

    def _scan_obj(self) -> None:
        self._pop_mark()
        self.stack.append(Opaque("OBJ"))

    def _scan_dict(self) -> None:
        self._pop_mark()
        self.stack.append({})

    def _scan_list(self) -> None:
        self._pop_mark()
        self.stack.append([])

    def _scan_ext(self) -> None:  # EXT1, EXT2, EXT4
        self._take({0x82: 1, 0x83: 2, 0x84: 4}[self.data[self.offset]])
        self.stack.append(Opaque("extension code"))

    def _scan_persid(self) -> None:
        self._line()
        self.stack.append(Opaque("persistent id"))

    def _scan_newobj_ex(self) -> None:
        self._pop()
        self._pop()
        self._pop()
        self.stack.append(Opaque("NEWOBJ_EX"))

    def _scan_int(self) -> None:  # INT, LONG
        text = self._line().rstrip("L")
        self.stack.append(True if text == "01" else False if text == "00" else _safe_int(text))

    def _scan_float(self) -> None:
        try:
            self.stack.append(float(self._line()))
        except ValueError:
            self.stack.append(Opaque("float"))

    def _scan_string(self) -> None:
        text = self._line()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            try:
                text = codecs.escape_decode(text[1:-1].encode("latin-1", "replace"))[0]
                text = text.decode("latin-1")
            except ValueError:  # a bad escape: the real unpickler fails here too
                text = Opaque("string")
        self.stack.append(text)

    def _scan_unicode(self) -> None:
        raw = self._line().encode("latin-1", "replace")
        self.stack.append(raw.decode("raw-unicode-escape", "replace"))

    def _scan_put(self) -> None:
        self.memo[_safe_int(self._line())] = self.stack[-1] if self.stack else None

    def _scan_get(self) -> None:
        self.stack.append(self.memo.get(_safe_int(self._line()), Opaque("memo")))

    #: opcode byte -> handler: every opcode the machine knows. Anything else is
    #: an unknown opcode. The refused ones run behind _refused.
    _DISPATCH: dict[int, Callable[["Machine"], None]] = {}


class _Stop(Exception):
    """Raised by STOP to end the loop with the pickled object."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def _refused(interpret: Callable[[Machine], None]) -> Callable[[Machine], None]:
    """The handler of a refused opcode: conversion stops at it, scan mode
    records it and then interprets it (``interpret``)."""

    def handler(machine: Machine) -> None:
        machine._refuse_opcode()
        interpret(machine)

    return handler


# opcode byte -> (struct format, size) of the length before its argument
_LENGTH_PREFIXES = {
    0x8C: ("<B", 1), ord("X"): ("<I", 4), 0x8D: ("<Q", 8),  # unicode
    ord("U"): ("<B", 1), ord("T"): ("<i", 4),  # Python 2 str
    ord("C"): ("<B", 1), ord("B"): ("<I", 4), 0x8E: ("<Q", 8), 0x96: ("<Q", 8),  # bytes
}

Machine._DISPATCH.update({
    # framing and control
    0x80: Machine._op_proto,            # PROTO
    0x95: Machine._op_frame,            # FRAME
    ord("."): Machine._op_stop,         # STOP
    ord("("): Machine._op_mark,         # MARK
    ord("0"): Machine._op_pop,          # POP
    ord("1"): Machine._op_pop_mark,     # POP_MARK
    ord("2"): Machine._op_dup,          # DUP
    # constants and numbers
    ord("N"): Machine._op_none,         # NONE
    0x88: Machine._op_true,             # NEWTRUE
    0x89: Machine._op_false,            # NEWFALSE
    ord("J"): Machine._op_binint,       # BININT
    ord("K"): Machine._op_binint1,      # BININT1
    ord("M"): Machine._op_binint2,      # BININT2
    0x8A: Machine._op_long1,            # LONG1
    0x8B: Machine._op_long4,            # LONG4
    ord("G"): Machine._op_binfloat,     # BINFLOAT
    # text and bytes
    0x8C: Machine._op_binunicode,       # SHORT_BINUNICODE
    ord("X"): Machine._op_binunicode,   # BINUNICODE
    0x8D: Machine._op_binunicode,       # BINUNICODE8
    ord("U"): Machine._op_binstring,    # SHORT_BINSTRING
    ord("T"): Machine._op_binstring,    # BINSTRING
    ord("C"): Machine._op_binbytes,     # SHORT_BINBYTES
    ord("B"): Machine._op_binbytes,     # BINBYTES
    0x8E: Machine._op_binbytes,         # BINBYTES8
    0x96: Machine._op_binbytes,         # BYTEARRAY8 (read as bytes)
    # containers
    ord("}"): Machine._op_empty_dict,   # EMPTY_DICT
    ord("]"): Machine._op_empty_list,   # EMPTY_LIST
    ord(")"): Machine._op_empty_tuple,  # EMPTY_TUPLE
    0x8F: Machine._op_empty_set,        # EMPTY_SET
    ord("t"): Machine._op_tuple,        # TUPLE
    0x85: Machine._op_small_tuple,      # TUPLE1
    0x86: Machine._op_small_tuple,      # TUPLE2
    0x87: Machine._op_small_tuple,      # TUPLE3
    0x91: Machine._op_frozenset,        # FROZENSET
    ord("a"): Machine._op_append,       # APPEND
    ord("e"): Machine._op_appends,      # APPENDS
    0x90: Machine._op_appends,          # ADDITEMS
    ord("s"): Machine._op_setitem,      # SETITEM
    ord("u"): Machine._op_setitems,     # SETITEMS
    # the memo
    ord("q"): Machine._op_binput,       # BINPUT
    ord("r"): Machine._op_long_binput,  # LONG_BINPUT
    0x94: Machine._op_memoize,          # MEMOIZE
    ord("h"): Machine._op_binget,       # BINGET
    ord("j"): Machine._op_long_binget,  # LONG_BINGET
    # globals (resolved only from ALLOWED_GLOBALS), calls and external data
    ord("c"): Machine._op_global,       # GLOBAL
    0x93: Machine._op_stack_global,     # STACK_GLOBAL
    ord("R"): Machine._op_reduce,       # REDUCE
    0x81: Machine._op_newobj,           # NEWOBJ
    ord("b"): Machine._op_build,        # BUILD
    ord("Q"): Machine._op_binpersid,    # BINPERSID
    0x97: Machine._op_next_buffer,      # NEXT_BUFFER
    0x98: Machine._op_readonly_buffer,  # READONLY_BUFFER
    # refused in conversion; interpreted in scan mode
    ord("i"): _refused(Machine._scan_inst),       # INST
    ord("o"): _refused(Machine._scan_obj),        # OBJ
    ord("d"): _refused(Machine._scan_dict),       # DICT
    ord("l"): _refused(Machine._scan_list),       # LIST
    0x82: _refused(Machine._scan_ext),            # EXT1
    0x83: _refused(Machine._scan_ext),            # EXT2
    0x84: _refused(Machine._scan_ext),            # EXT4
    ord("P"): _refused(Machine._scan_persid),     # PERSID
    0x92: _refused(Machine._scan_newobj_ex),      # NEWOBJ_EX
    ord("I"): _refused(Machine._scan_int),        # INT
    ord("L"): _refused(Machine._scan_int),        # LONG
    ord("F"): _refused(Machine._scan_float),      # FLOAT
    ord("S"): _refused(Machine._scan_string),     # STRING
    ord("V"): _refused(Machine._scan_unicode),    # UNICODE
    ord("p"): _refused(Machine._scan_put),        # PUT
    ord("g"): _refused(Machine._scan_get),        # GET
})


def _safe_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def _flat(args: Any):
    return args if isinstance(args, tuple) else (args,)


def run_pickle(data: Any, pos: int = 0, **kwargs: Any) -> tuple[Any, int]:
    """Runs one pickle; returns (object, position after STOP)."""
    machine = Machine(data, pos, **kwargs)
    return machine.run(), machine.pos
