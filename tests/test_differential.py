"""Differential testing against the reference ``safetensors`` package.

A hypothesis strategy builds valid files (random tensors of every dtype,
random unicode names, data laid out in a random order, optional metadata
with at most one key) and near-valid ones, by mutating them: in the JSON
model before it is serialised (offsets, shapes, dtype strings, entry
layout, duplicate keys, escapes, whitespace, nesting, metadata, raw number
tokens) or in the bytes after (flip/insert/delete a header byte, change N,
truncate, append).

Every case goes through ``safetensors_c.load(bytes)`` and the reference's
``safetensors.deserialize(bytes)`` (the Rust parser and validator that
``safetensors.numpy.load`` wraps; it returns dtype codes and raw bytes, so
BF16, F8 and the packed F4/F6 compare too). They must agree on accepting or
rejecting; when both accept, on every name, dtype code, shape and byte, on
the metadata (both ``safe_open``s on the same file), and for the dtypes
``safetensors.numpy`` knows, on the NumPy arrays. Our rejections must be
``SafetensorError``, never another exception.

Cases where the reference accepts and we reject are deliberate deviations
only when the header, inspected independently with Python's ``json``, has
the feature that explains them (README.md, tests/vectors/README.md):
duplicate keys, a tensor entry written as a JSON array, a dtype written as
a JSON object, or a zero-size tensor whose other dimensions overflow
NumPy's index type. Those are counted by kind; anything else is a
disagreement and fails the test.

``tests/differential_long.py N`` runs the same checks for N cases.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import tempfile
from collections import Counter
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
reference = pytest.importorskip("safetensors")
import safetensors.numpy as reference_numpy  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import safetensors_c  # noqa: E402
from safetensors_c import SafetensorError, _core, _dtypes  # noqa: E402

CODES = [code for code, _ in _core.dtypes()]
BITS = dict(_core.dtypes())
PACKED = tuple(_dtypes.PACKED_BITS)
CODE_OF_NUMPY = {_dtypes.numpy_dtype(c): c for c in CODES if c not in PACKED}
INT64_MAX = 2**63 - 1

# Deliberate deviations (README.md "Deliberate differences from the reference
# reader"): the reference accepts, we reject with this code.
DEVIATION_CODES = {
    "duplicate_keys": "STC_ERR_DUPLICATE_KEY",
    "entry_as_array": "STC_ERR_INVALID_HEADER",
    "dtype_as_object": "STC_ERR_INVALID_HEADER",
    "numpy_huge_zero_size": "STC_ERR_SIZE_OVERFLOW",
}


# MARK: - A JSON model that can say what json.dumps cannot


class Obj:
    """A JSON object as a list of [key, value] pairs: keys may repeat."""

    __slots__ = ("pairs",)

    def __init__(self, pairs):
        self.pairs = [list(p) for p in pairs]

    def get(self, key, default=None):
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def set(self, key, value):
        for p in self.pairs:
            if p[0] == key:
                p[1] = value
                return
        self.pairs.append([key, value])

    def remove(self, key):
        self.pairs = [p for p in self.pairs if p[0] != key]


class Raw(str):
    """A token written verbatim (possibly invalid JSON)."""


JSON_WS = (" ", "\t", "\n", "\r")


class Emitter:
    """Serialises the model. ``ws`` puts random JSON whitespace between
    tokens; ``bad_ws`` puts one non-JSON whitespace character somewhere;
    ``escape`` writes some characters of strings as \\u escapes (or \\/)."""

    def __init__(self, rng: random.Random, ws=False, bad_ws=False, escape=False):
        self.rng = rng
        self.ws = ws
        self.bad_ws = bad_ws
        self.escape = escape
        self.out: list[str] = []

    def space(self):
        if self.ws and self.rng.random() < 0.3:
            self.out.append("".join(self.rng.choice(JSON_WS) for _ in range(self.rng.randint(1, 3))))
        if self.bad_ws and self.rng.random() < 0.1:
            self.out.append(self.rng.choice(["\x0b", "\x0c", "\u00a0", "\u2028", "\ufeff"]))
            self.bad_ws = False

    def string(self, s: str):
        if not self.escape:
            self.out.append(json.dumps(s, ensure_ascii=self.rng.random() < 0.5))
            return
        parts = ['"']
        for ch in s:
            r = self.rng.random()
            if ch in '"\\' or ord(ch) < 0x20:
                parts.append(json.dumps(ch)[1:-1])
            elif r < 0.4:
                encoded = json.dumps(ch, ensure_ascii=True)[1:-1]
                if not encoded.startswith("\\u"):
                    encoded = "\\u%04x" % ord(ch)
                if self.rng.random() < 0.3:  # hex digits may be upper case
                    encoded = re.sub(r"[0-9a-f]{4}", lambda m: m.group(0).upper(), encoded)
                parts.append(encoded)
            elif ch == "/" and r < 0.7:
                parts.append("\\/")
            else:
                parts.append(ch)
        parts.append('"')
        self.out.append("".join(parts))

    def value(self, v: Any):
        self.space()
        if isinstance(v, Raw):
            self.out.append(str(v))
        elif isinstance(v, Obj):
            self.out.append("{")
            for i, (k, item) in enumerate(v.pairs):
                if i:
                    self.out.append(",")
                self.space()
                self.string(k)
                self.space()
                self.out.append(":")
                self.value(item)
            self.space()
            self.out.append("}")
        elif isinstance(v, dict):
            self.value(Obj(v.items()))
        elif isinstance(v, (list, tuple)):
            self.out.append("[")
            for i, item in enumerate(v):
                if i:
                    self.out.append(",")
                self.value(item)
            self.space()
            self.out.append("]")
        elif isinstance(v, str):
            self.string(v)
        elif v is None or isinstance(v, bool):
            self.out.append(json.dumps(v))
        elif isinstance(v, int):
            self.out.append(str(v))
        elif isinstance(v, float):
            self.out.append(repr(v) if v == v else "NaN")
        else:
            raise TypeError(type(v))
        self.space()

    def text(self) -> str:
        return "".join(self.out)


# MARK: - Valid files


def pack_file(header_text: bytes, data: bytes, pad: bytes = b" ", n: int | None = None) -> bytes:
    if pad:
        header_text += (pad * 8)[: -len(header_text) % 8]
    length = len(header_text) if n is None else n
    return struct.pack("<Q", length) + header_text + data


@st.composite
def valid_models(draw):
    """(header model, data bytes, expected {name: (code, shape, bytes)}, metadata)."""
    names = draw(
        st.lists(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=10).filter(
                lambda s: s != "__metadata__"
            ),
            max_size=5,
            unique=True,
        )
    )
    tensors = {}
    for name in names:
        code = draw(st.sampled_from(CODES))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        count = int(np.prod(shape, dtype=np.int64))
        if count * BITS[code] % 8:
            shape.append(2 if BITS[code] == 4 else 4)
            count *= shape[-1]
        size = count * BITS[code] // 8
        raw = draw(st.binary(min_size=size, max_size=size))
        tensors[name] = (code, shape, raw)
    order = draw(st.permutations(names))
    offset = 0
    entries = {}
    chunks = []
    for name in order:
        code, shape, raw = tensors[name]
        entries[name] = Obj(
            [["dtype", code], ["shape", list(shape)], ["data_offsets", [offset, offset + len(raw)]]]
        )
        offset += len(raw)
        chunks.append(raw)
    pairs = []
    metadata_choice = draw(st.sampled_from(["none", "null", "empty", "one"]))
    metadata = None
    if metadata_choice == "null":
        pairs.append(["__metadata__", None])
    elif metadata_choice == "empty":
        pairs.append(["__metadata__", Obj([])])
        metadata = {}
    elif metadata_choice == "one":
        key = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=6))
        value = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=6))
        pairs.append(["__metadata__", Obj([[key, value]])])
        metadata = {key: value}
    names_in_header = draw(st.permutations(names))
    pairs.extend([name, entries[name]] for name in names_in_header)
    if pairs and metadata_choice != "none" and draw(st.booleans()):
        pairs.append(pairs.pop(0))  # __metadata__ need not come first
    return Obj(pairs), b"".join(chunks), tensors, metadata


# MARK: - Mutations

JSON_MUTATIONS = [
    "none",
    "offsets",
    "shape",
    "dtype",
    "entry_as_array",
    "drop_field",
    "unknown_field",
    "dup_field",
    "dup_tensor",
    "dup_metadata",
    "metadata",
    "nesting",
    "raw_number",
    "top_level",
    "tensor_named_metadata",
]
BYTE_MUTATIONS = [
    "none",
    "flip",
    "insert",
    "delete",
    "change_n",
    "truncate",
    "append",
    "pad",
    "flip_data",
]
BOUNDARY_INTS = [
    -1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**65, 10**30,
]
ODD_NUMBERS = ["01", "-0", "1.0", "1e0", "1E2", "+1", "0x10", "1.", ".5", "-", "NaN",
               "Infinity", "true", "null", '"3"', "[]", "{}", "4 4"]
DTYPE_STRINGS = ["f32", "float32", "F32 ", " F32", "F32\u0000", "", "BF8", "F128", "I4",
                 "U128", "F8", "f8_e4m3", "Bool", "BOOL\n", "C128", "Q"]


def entries_of(model: Obj):
    return [p for p in model.pairs if p[0] != "__metadata__" and isinstance(p[1], Obj)]


def random_json_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.4:
        return rng.choice([None, True, False, 0, -7, 1.5, "x", "\u00e9\U0001f600", 2**64 - 1])
    if r < 0.7:
        return [random_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return Obj([[f"k{i}", random_json_value(rng, depth + 1)] for i in range(rng.randint(0, 3))])


def nested(depth: int, kind: str):
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "array" else Obj([["a", value]])
    return value


def mutate_model(model: Obj, kind: str, rng: random.Random) -> Obj:
    entries = entries_of(model)
    pick = rng.choice(entries)[1] if entries else None
    if kind == "offsets" and pick is not None:
        offsets = list(pick.get("data_offsets"))
        i = rng.randrange(2)
        r = rng.random()
        if r < 0.6:
            offsets[i] += rng.choice([-3, -2, -1, 1, 2, 3, 4, 8])
        elif r < 0.85:
            offsets[i] = rng.choice(BOUNDARY_INTS)
        elif r < 0.9:
            offsets = offsets[:1] if rng.random() < 0.5 else offsets + [offsets[1]]
        else:
            offsets[i] = Raw(rng.choice(ODD_NUMBERS))
        pick.set("data_offsets", offsets)
    elif kind == "shape" and pick is not None:
        shape = list(pick.get("shape"))
        r = rng.random()
        if shape and r < 0.3:
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 2])
        elif shape and r < 0.45:
            shape[rng.randrange(len(shape))] = rng.choice(BOUNDARY_INTS + [0])
        elif r < 0.55:
            shape.append(rng.choice([0, 1, 2, 2**40]))
        elif shape and r < 0.65:
            shape.pop(rng.randrange(len(shape)))
        elif r < 0.75:
            shape = [0] + [rng.choice(BOUNDARY_INTS[1:]) for _ in range(rng.randint(1, 3))]
            rng.shuffle(shape)
        elif shape and r < 0.85:
            shape[rng.randrange(len(shape))] = Raw(rng.choice(ODD_NUMBERS))
        else:
            pick.set("shape", rng.choice([None, 3, "3", Obj([]), Raw("[1,]"), [[1]]]))
            return model
        pick.set("shape", shape)
    elif kind == "dtype" and pick is not None:
        r = rng.random()
        if r < 0.5:
            pick.set("dtype", rng.choice(CODES))
        elif r < 0.75:
            pick.set("dtype", rng.choice(DTYPE_STRINGS))
        elif r < 0.88:
            pick.set("dtype", Obj([[pick.get("dtype"), None]]))
        else:
            pick.set("dtype", rng.choice([None, 32, [pick.get("dtype")], Obj([])]))
    elif kind == "entry_as_array" and entries:
        pair = rng.choice(entries)
        e = pair[1]
        pair[1] = [e.get("dtype"), e.get("shape"), e.get("data_offsets")]
        if rng.random() < 0.2:
            pair[1].reverse()
    elif kind == "drop_field" and pick is not None:
        pick.remove(rng.choice(["dtype", "shape", "data_offsets"]))
    elif kind == "unknown_field" and pick is not None:
        name = rng.choice(["extra", "offsets", "DTYPE", "", "\u00e9"])
        pick.pairs.insert(rng.randint(0, len(pick.pairs)), [name, random_json_value(rng)])
    elif kind == "dup_field" and pick is not None:
        field = rng.choice(pick.pairs)
        value = field[1] if rng.random() < 0.5 else random_json_value(rng)
        pick.pairs.insert(rng.randint(0, len(pick.pairs)), [field[0], value])
    elif kind == "dup_tensor" and entries:
        name, entry = rng.choice(entries)
        copy = Obj(entry.pairs) if rng.random() < 0.6 else mutate_model(
            Obj([[name, Obj(entry.pairs)]]), "offsets", rng
        ).pairs[0][1]
        model.pairs.insert(rng.randint(0, len(model.pairs)), [name, copy])
    elif kind == "dup_metadata":
        meta = model.get("__metadata__")
        if isinstance(meta, Obj) and meta.pairs and rng.random() < 0.6:
            key = meta.pairs[0][0]
            meta.pairs.insert(rng.randint(0, len(meta.pairs)), [key, rng.choice(["v", "w"])])
        else:
            value = Obj([["a", "b"]]) if rng.random() < 0.7 else None
            model.pairs.insert(rng.randint(0, len(model.pairs)), ["__metadata__", value])
    elif kind == "metadata":
        model.set(
            "__metadata__",
            rng.choice(
                [None, Obj([]), Obj([["k", "v"]]), Obj([["k", 1]]), Obj([["k", None]]),
                 Obj([["k", ["x"]]]), Obj([["k", Obj([])]]), "str", 0, [], [["k", "v"]],
                 Obj([["", ""]]), Obj([["k", "\u0000\U0001f600"]])]
            ),
        )
    elif kind == "nesting":
        depth = rng.randint(118, 132)
        value = nested(depth, rng.choice(["array", "object"]))
        target = pick if pick is not None and rng.random() < 0.6 else model
        name = "deep" if target is pick else "__deep__"
        if target is model and rng.random() < 0.5:
            model.set("__metadata__", Obj([["k", value]]))
        else:
            target.pairs.append([name, value])
    elif kind == "raw_number" and pick is not None:
        field = rng.choice(["shape", "data_offsets"])
        values = list(pick.get(field) or [])
        if values:
            values[rng.randrange(len(values))] = Raw(rng.choice(ODD_NUMBERS))
            pick.set(field, values)
    elif kind == "top_level":
        return rng.choice([[], "x", 1, None, [Obj([])], Raw(""), Raw("{"), Raw("{}{}"),
                           Raw("{} x"), Raw("{,}"), Raw('{"a"}')])
    elif kind == "tensor_named_metadata" and entries:
        pair = rng.choice(entries)
        pair[0] = "__metadata__"
    return model


def mutate_bytes(blob: bytes, kind: str, rng: random.Random) -> bytes:
    if len(blob) < 8:
        return blob
    n = struct.unpack("<Q", blob[:8])[0]
    header_end = min(len(blob), 8 + n)
    if kind == "flip" and header_end > 8:
        i = rng.randrange(8, header_end)
        b = bytearray(blob)
        b[i] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
        return bytes(b)
    if kind in ("insert", "delete") and header_end > 8:
        i = rng.randrange(8, header_end)
        if kind == "insert":
            byte = bytes([rng.choice([rng.randrange(256), ord(" "), ord("\\"), ord('"'), 0x80])])
            blob = blob[:i] + byte + blob[i:]
            delta = 1
        else:
            blob = blob[:i] + blob[i + 1 :]
            delta = -1
        if rng.random() < 0.5:  # keep N consistent with the new header length
            blob = struct.pack("<Q", n + delta) + blob[8:]
        return blob
    if kind == "change_n":
        r = rng.random()
        if r < 0.6:
            new = max(0, n + rng.choice([-9, -8, -1, 1, 7, 8, 9]))
        elif r < 0.8:
            new = rng.choice([0, 1, len(blob) - 8, len(blob) - 7, 100_000_000, 100_000_001])
        else:
            new = rng.randrange(2**64)
        return struct.pack("<Q", max(0, new)) + blob[8:]
    if kind == "truncate":
        return blob[: rng.randrange(len(blob))]
    if kind == "append":
        return blob + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    if kind == "flip_data" and len(blob) > header_end:
        b = bytearray(blob)
        b[rng.randrange(header_end, len(blob))] ^= 0xFF
        return bytes(b)
    return blob


@st.composite
def cases(draw):
    """(file bytes, what was done to it, expected tensors or None)."""
    model, data, tensors, metadata = draw(valid_models())
    # The mutations are chosen by a seeded generator rather than by hypothesis
    # draws, whose preference for the first choice would leave most cases
    # unmutated; hypothesis still shrinks the file's contents and the seed.
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    json_kind = rng.choice(JSON_MUTATIONS)
    byte_kind = rng.choice(BYTE_MUTATIONS)
    if rng.random() < 0.2:  # a fifth stay valid (with whitespace and escapes)
        json_kind = byte_kind = "none"
    ws = rng.random() < 0.5
    bad_ws = rng.random() < 0.1
    escape = rng.random() < 0.5
    if json_kind != "none":
        model = mutate_model(model, json_kind, rng)
    emitter = Emitter(rng, ws=ws, bad_ws=bad_ws, escape=escape)
    emitter.value(model)
    text = emitter.text().encode("utf-8")
    pad = b" "
    if byte_kind == "pad":
        pad = rng.choice([b"", b"\t", b"\n", b"\r", b"\x00", b"\x0b", b"x", b"\xff"])
    blob = pack_file(text, data, pad=pad)
    blob = mutate_bytes(blob, byte_kind, rng)
    pristine = json_kind == "none" and byte_kind in ("none", "pad") and not bad_ws and pad in (
        b" ", b"\t", b"\n", b"\r", b"")
    label = f"{json_kind}/{byte_kind}" + ("/ws" if ws else "") + ("/badws" if bad_ws else "")
    return blob, label, (tensors, metadata) if pristine else None


# MARK: - The check


def header_features(blob: bytes) -> set[str]:
    """What an independent parse (Python's json) sees in a header the reference
    accepted: the features that explain a deliberate deviation."""
    features: set[str] = set()
    try:
        n = struct.unpack("<Q", blob[:8])[0]
        text = blob[8 : 8 + n].decode("utf-8")

        def hook(pairs):
            keys = [k for k, _ in pairs]
            if len(keys) != len(set(keys)):
                features.add("duplicate_keys")
            return dict(pairs)

        header = json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError, struct.error):
        return features
    if not isinstance(header, dict):
        return features
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if isinstance(entry, list):
            features.add("entry_as_array")
            if entry and isinstance(entry[0], dict):
                features.add("dtype_as_object")
            shape = entry[1] if len(entry) > 1 else None
        elif isinstance(entry, dict):
            if isinstance(entry.get("dtype"), dict):
                features.add("dtype_as_object")
            shape = entry.get("shape")
        else:
            continue
        if isinstance(shape, list) and 0 in shape:
            product = 1
            for d in shape:
                if isinstance(d, int) and d:
                    product *= d
            if product > INT64_MAX // 8 or any(isinstance(d, int) and d > INT64_MAX for d in shape):
                features.add("numpy_huge_zero_size")
    return features


def our_view(array) -> tuple[str, list[int], bytes]:
    if isinstance(array, _dtypes.PackedArray):
        return array.format_dtype, list(array.logical_shape), np.asarray(array).tobytes()
    return CODE_OF_NUMPY[array.dtype], list(array.shape), np.ascontiguousarray(array).tobytes()


def metadata_pair(blob: bytes, directory: str):
    """(ours, reference) metadata of the file, through both safe_opens."""
    fd, path = tempfile.mkstemp(suffix=".safetensors", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        with safetensors_c.safe_open(path, "np") as f:
            ours = f.metadata()
        with reference.safe_open(path, "np") as f:
            theirs = f.metadata()
    finally:
        os.unlink(path)
    return ours, theirs


def scratch_dir() -> str:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def check_case(blob: bytes, expected=None, directory: str | None = None) -> tuple[str, str]:
    """Classifies one case: ("both_accept"|"both_reject", ""), ("deviation:KIND",
    detail) or ("disagreement:KIND", detail)."""
    try:
        ours = safetensors_c.load(blob)
        our_error = None
    except SafetensorError as exc:
        ours = None
        our_error = exc
    except Exception as exc:  # noqa: BLE001 - any other type is the finding
        return "disagreement:wrong_exception", f"{type(exc).__name__}: {exc}"
    if our_error is not None and not isinstance(our_error.code, str):
        return "disagreement:no_code", str(our_error)
    try:
        theirs = reference.deserialize(blob)
        their_error = None
    except (Exception, BaseException) as exc:  # noqa: BLE001 - PanicException is a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        theirs = None
        their_error = exc

    if ours is None and theirs is None:
        return "both_reject", our_error.code
    if ours is not None and theirs is None:
        return "disagreement:we_accept_reference_rejects", str(their_error)
    if ours is None:
        features = header_features(blob)
        for kind, code in DEVIATION_CODES.items():
            if kind in features and our_error.code == code:
                return f"deviation:{kind}", our_error.code
        if "duplicate_keys" in features:
            # The reference ignores all but the last duplicate; we validate
            # each occurrence as it is parsed, so an invalid shadowed entry
            # (e.g. a size mismatch) can be reported before the duplicate.
            return "deviation:duplicate_keys_other_error_first", our_error.code
        return "disagreement:we_reject_reference_accepts", f"{our_error.code}: {our_error}"

    # Both accept: names, dtypes, shapes, bytes.
    their_map = {name: (v["dtype"], list(v["shape"]), bytes(v["data"])) for name, v in theirs}
    our_map = {name: our_view(a) for name, a in ours.items()}
    if len(theirs) != len(their_map):
        return "disagreement:reference_repeats_a_name", repr(sorted(their_map))
    if our_map != their_map:
        return "disagreement:content", f"ours={our_map!r} reference={their_map!r}"
    if expected is not None:
        tensors, _ = expected
        if our_map != {n: (c, list(s), r) for n, (c, s, r) in tensors.items()}:
            return "disagreement:not_what_was_written", repr(our_map)
    # The reference's NumPy path, for the dtypes it has.
    try:
        their_numpy = reference_numpy.load(blob)
    except KeyError:  # BF16, F8, F4, F6: no NumPy dtype in the reference
        their_numpy = None
    if their_numpy is not None:
        for name, their_array in their_numpy.items():
            our_array = ours[name]
            if (
                our_array.dtype != their_array.dtype
                or our_array.shape != their_array.shape
                or our_array.tobytes() != their_array.tobytes()
            ):
                return "disagreement:numpy_arrays", name
    # Metadata, through both safe_opens on one file.
    our_meta, their_meta = metadata_pair(blob, directory or scratch_dir())
    if our_meta != their_meta:
        return "disagreement:metadata", f"ours={our_meta!r} reference={their_meta!r}"
    if expected is not None and our_meta != expected[1]:
        return "disagreement:metadata_not_what_was_written", repr(our_meta)
    return "both_accept", ""


def tally(counts: Counter, verdict: str) -> None:
    counts["cases"] += 1
    counts[verdict] += 1


# MARK: - pytest

SEEN: Counter = Counter()


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(cases())
def test_agrees_with_reference(case):
    blob, label, expected = case
    verdict, detail = check_case(blob, expected)
    tally(SEEN, verdict)
    SEEN["label:" + label.split("/")[0]] += 1
    assert not verdict.startswith("disagreement"), (verdict, label, detail, blob[:300])


def test_every_outcome_was_exercised():
    """The strategy reaches both verdicts and the deviations (it is not
    generating only garbage or only valid files). Runs after the test above."""
    if SEEN["cases"] == 0:
        pytest.skip("run together with test_agrees_with_reference")
    assert SEEN["both_accept"] >= 20, SEEN
    assert SEEN["both_reject"] >= 50, SEEN


@pytest.mark.parametrize(
    "mutation, expected_kind",
    [
        ("dup_metadata_key", "deviation:duplicate_keys"),
        ("entry_as_array", "deviation:entry_as_array"),
        ("dtype_as_object", "deviation:dtype_as_object"),
        ("huge_zero_size", "deviation:numpy_huge_zero_size"),
        ("hole", "both_reject"),
        ("valid", "both_accept"),
    ],
)
def test_classifier(mutation, expected_kind):
    """Each deliberate deviation is classified as such, not as a disagreement,
    and not silently."""
    entry = Obj([["dtype", "F32"], ["shape", [2]], ["data_offsets", [0, 8]]])
    model = Obj([["w", entry]])
    data = bytes(range(8))
    if mutation == "dup_metadata_key":
        model.pairs.insert(0, ["__metadata__", Obj([["k", "a"], ["k", "b"]])])
    elif mutation == "entry_as_array":
        model.pairs[0][1] = ["F32", [2], [0, 8]]
    elif mutation == "dtype_as_object":
        entry.set("dtype", Obj([["F32", None]]))
    elif mutation == "huge_zero_size":
        model.pairs.append(
            ["z", Obj([["dtype", "U8"], ["shape", [0, 2**62, 8]], ["data_offsets", [8, 8]]])]
        )
    elif mutation == "hole":
        entry.set("data_offsets", [4, 12])
        data += bytes(4)
    emitter = Emitter(random.Random(0))
    emitter.value(model)
    blob = pack_file(emitter.text().encode(), data)
    assert check_case(blob)[0] == expected_kind


def test_classifier_reports_disagreements(monkeypatch):
    """A reader that accepts what the reference rejects is reported."""
    blob = pack_file(b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(9))
    assert check_case(blob)[0] == "both_reject"
    monkeypatch.setattr(safetensors_c, "load", lambda b: {"w": np.zeros(2, np.float32)})
    assert check_case(blob)[0] == "disagreement:we_accept_reference_rejects"
