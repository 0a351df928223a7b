#!/usr/bin/env python3
"""Writes the crafted test vectors of tests/vectors/ and their verdicts.

    python3 tests/vectors/make_vectors.py          # (re)write the files
    python3 tests/vectors/make_vectors.py --check  # fail if any file is stale

Deterministic: no clocks, no randomness (random data comes from a fixed
seed), so running it twice gives byte-identical files. Every vector has
an expected verdict -- the stc status name the C core must return, or
"OK" -- an origin, and a one-line description; README.md's table and
expected.json are generated from the same list, so they cannot drift.

Only the standard library is used, so the vectors can be rebuilt anywhere.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

RULE = "validator rule"
FOREIGN = "non-safetensors file"


def attack(what: str) -> str:
    return f"published attack: {what}"


# MARK: - building blocks


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def header_text(header) -> bytes:
    if isinstance(header, bytes):
        return header
    if isinstance(header, str):
        return header.encode("utf-8")
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def st(header, data: bytes = b"", pad: bool = True, n: int | None = None) -> bytes:
    """A file: 8-byte length, header (space-padded to 8 unless pad=False), data."""
    text = header_text(header)
    if pad:
        text += b" " * (-len(text) % 8)
    return u64(len(text) if n is None else n) + text + data


def entry(dtype: str, shape, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def ent(dtype: str, shape, begin: int, end: int) -> str:
    """The same entry as JSON text (for headers assembled by hand)."""
    return json.dumps(entry(dtype, shape, begin, end), separators=(",", ":"))


def filler(n: int, seed: int = 1) -> bytes:
    """n deterministic pseudo-random bytes (an LCG; no dependency on random)."""
    out = bytearray(n)
    x = seed
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out[i] = x >> 56
    return bytes(out)


BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
RANK = list(BITS)  # writer order rank, ascending


def packed_file(tensors: list[tuple[str, str, list[int]]], metadata=None) -> bytes:
    """A valid file laid out like the writer: rank descending, then name."""
    order = sorted(tensors, key=lambda t: (-RANK.index(t[1]), t[0].encode("utf-8")))
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, code, shape in order:
        count = 1
        for d in shape:
            count *= d
        nbytes = count * BITS[code] // 8
        header[name] = entry(code, shape, offset, offset + nbytes)
        offset += nbytes
    return st(header, filler(offset))


ONE_F32 = (ent("F32", [1], 0, 4), filler(4))  # a valid entry and its data


def with_field(extra: str) -> bytes:
    """One valid F32 tensor "a" whose entry also holds `extra` (JSON text)."""
    return st('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],%s}}' % extra, filler(4))


def nested(depth_arrays: int, close: bool = True) -> bytes:
    """Tensor "a" with an unknown field holding depth_arrays nested arrays.

    The top-level object is depth 1, the entry 2, so the innermost array is
    at depth 2 + depth_arrays.
    """
    value = "[" * depth_arrays + ("]" * depth_arrays if close else "")
    return with_field('"x":' + value)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, content)
    return buf.getvalue()


def torch_like_zip() -> bytes:
    """The shape of a PyTorch >= 1.6 checkpoint: a zip holding data.pkl."""
    return zip_bytes({
        "archive/data.pkl": pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
        "archive/version": b"3\n",
        "archive/data/0": filler(16),
    })


# MARK: - the vectors

# (file name, verdict, origin, what it tests, bytes)
VECTORS: list[tuple[str, str, str, str, bytes]] = []


def vector(name: str, verdict: str, origin: str, what: str, data: bytes) -> None:
    assert verdict == "OK" or verdict.startswith("STC_ERR_"), verdict
    assert not any(v[0] == name for v in VECTORS), name
    VECTORS.append((name, verdict, origin, what, data))


def many_zero_size(count: int) -> bytes:
    """count zero-size U8 tensors, all at offset 0, plus one real one."""
    parts = ['"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(count)]
    parts.append('"z":' + ent("U8", [4], 0, 4))
    return st("{" + ",".join(parts) + "}", filler(4))


def build_all() -> None:
    # -- valid files ---------------------------------------------------
    vector("ok_empty.safetensors", "OK", RULE,
           "no tensors, no metadata: the 16-byte file the writer makes for {}", st({}))
    vector("ok_one_tensor.safetensors", "OK", RULE,
           "FORMAT.md's example: one I32 [2,2]",
           st({"test": entry("I32", [2, 2], 0, 16)}, filler(16)))
    vector("ok_all_dtypes.safetensors", "OK", RULE,
           "one tensor of every dtype code, including F4/F6 packing",
           packed_file([(f"t_{code.lower()}", code, [2, 4]) for code in BITS]))
    vector("ok_metadata.safetensors", "OK", RULE, "__metadata__ with string values",
           packed_file([("w", "F32", [2])], metadata={"format": "np", "k": "v \u00e9"}))
    vector("ok_metadata_null.safetensors", "OK", RULE, "__metadata__ may be null",
           st('{"__metadata__":null,"a":%s}' % ONE_F32[0], ONE_F32[1]))
    vector("ok_metadata_empty.safetensors", "OK", RULE, "__metadata__ may be {}",
           st('{"__metadata__":{},"a":%s}' % ONE_F32[0], ONE_F32[1]))
    vector("ok_scalar.safetensors", "OK", RULE, "shape [] is a scalar of one element",
           st({"s": entry("F64", [], 0, 8)}, filler(8)))
    vector("ok_zero_size_shared_offset.safetensors", "OK", RULE,
           "zero-size tensors may share an offset with each other and a real tensor",
           st({"e1": entry("F32", [0], 0, 0), "e2": entry("U8", [3, 0], 0, 0),
               "a": entry("U8", [2], 0, 2), "e3": entry("I64", [0, 5], 2, 2)}, filler(2)))
    vector("ok_unpadded_whitespace.safetensors", "OK", RULE,
           "N not a multiple of 8; JSON whitespace (space, tab, CR, LF) around and inside",
           st(' \t\r\n{ "a" : %s }\n' % ONE_F32[0], ONE_F32[1], pad=False))
    vector("ok_unknown_fields.safetensors", "OK", RULE,
           "unknown fields in a tensor entry are ignored (any JSON value)",
           with_field('"extra":{"x":[1,2.5,-3e2,null,true,false,"s"]},"z":null'))
    vector("ok_field_order.safetensors", "OK", RULE, "entry fields in any order",
           st('{"a":{"data_offsets":[0,4],"shape":[1],"dtype":"F32"}}', filler(4)))
    vector("ok_escaped_names.safetensors", "OK", RULE,
           "names with \\u0000, a surrogate pair, escapes and raw UTF-8",
           st('{"a\\u0000b":%s,"\\ud83d\\ude00":%s,"q\\"\\\\\\/\\b\\f\\n\\r\\t":%s,"\u00e9\u20ac":%s}'
              % (ent("U8", [1], 0, 1), ent("U8", [1], 1, 2), ent("U8", [1], 2, 3),
                 ent("U8", [1], 3, 4)), filler(4)))
    vector("ok_nesting_127.safetensors", "OK", RULE,
           "unknown field nested to depth 127, the deepest allowed", nested(125))
    vector("ok_many_zero_size_tensors.safetensors", "OK",
           attack("huge tensor counts (scaled down; tests/test_vectors.py builds 200,000)"),
           "500 zero-size tensors sharing offset 0 plus one real tensor", many_zero_size(500))
    vector("ok_large_dims_zero_size.safetensors", "OK", RULE,
           "a zero dimension next to huge ones: 0 elements, no overflow",
           st({"a": entry("F64", [0, 2**28, 2**28], 0, 0)}))
    vector("size_overflow_before_zero_dim.safetensors", "STC_ERR_SIZE_OVERFLOW", RULE,
           "F64 [2^40, 2^40, 0]: the running product overflows before the zero (as in "
           "the reference, which multiplies left to right with checks)",
           st({"a": entry("F64", [2**40, 2**40, 0], 0, 0)}))
    vector("ok_zip_inside_tensor.safetensors", "OK",
           attack("polyglot: a zip archive hidden inside a tensor's bytes"),
           "valid safetensors whose U8 tensor is a zip (zip readers also open it); the "
           "format cannot forbid this, and loading never interprets the bytes",
           st({"blob": entry("U8", [len(torch_like_zip())], 0, len(torch_like_zip()))},
              torch_like_zip()))

    vector("repro_json_keys_null_plus_zero.safetensors", "OK",
           RULE + " (regression vector: core bug found by fuzz_write)",
           "one tensor, no metadata, no unknown fields: the key stack is never allocated "
           "and stc__json_check_keys computes NULL + 0 (UB; clang -fsanitize=undefined "
           "aborts)", st({"a": entry("U8", [1], 0, 1)}, b"\x2a"))

    # -- the 8-byte length prefix ----------------------------------------
    vector("empty.bin", "STC_ERR_HEADER_TOO_SMALL", FOREIGN, "empty file (0 bytes)", b"")
    vector("seven_bytes.bin", "STC_ERR_HEADER_TOO_SMALL", RULE,
           "7 bytes: shorter than the length prefix", b"\x08\x00\x00\x00\x00\x00\x00")
    vector("header_len_zero.safetensors", "STC_ERR_INVALID_JSON", RULE,
           "N = 0: an empty header is not a JSON object", u64(0))
    vector("header_len_past_eof.safetensors", "STC_ERR_HEADER_LENGTH",
           attack("header length past the end of the file"),
           "N = 64 but only 16 header bytes follow", st({}, n=64))
    vector("header_len_one_past_eof.safetensors", "STC_ERR_HEADER_LENGTH", RULE,
           "N exactly one byte more than the file holds", st({}, n=9))
    vector("header_len_above_cap.safetensors", "STC_ERR_HEADER_TOO_LARGE", RULE,
           "N = 100,000,001: above the reference's 100 MB cap", st({}, n=100_000_001))
    vector("header_len_4gib.safetensors", "STC_ERR_HEADER_TOO_LARGE",
           attack("multi-gigabyte header-length claim"),
           "N = 2^32 in a 16-byte file: must not allocate 4 GiB", st({}, n=2**32))
    vector("header_len_u64_max.safetensors", "STC_ERR_HEADER_TOO_LARGE",
           attack("multi-gigabyte header-length claim"),
           "N = 2^64-1: 8 + N overflows", st({}, n=2**64 - 1))
    vector("header_len_2_63.safetensors", "STC_ERR_HEADER_TOO_LARGE",
           attack("multi-gigabyte header-length claim"),
           "N = 2^63 (negative as a signed integer)", st({}, n=2**63))
    vector("many_tensors_truncated.safetensors", "STC_ERR_HEADER_LENGTH",
           attack("huge tensor counts: a header claiming many tensors, cut short"),
           "N claims a 10 MB header of tensor entries; the file stops after 100 of them",
           u64(10_000_000) + ("{" + ",".join(
               '"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i
               for i in range(100))).encode())

    # A truncated safetensors file whose length prefix happens to start with the
    # bytes of another format's magic number: the core's format sniffer reads
    # the prefix as content and misnames the file (core bug reproducers).
    for n, looks_like in ((0x7B, "'{' (JSON)"), (0x3C, "'<' (HTML)"),
                          (0x0280, "80 02 (pickle)"), (0x8B1F, "1F 8B (gzip)")):
        vector(f"sniff_truncated_n_{n:04x}.safetensors", "STC_ERR_HEADER_LENGTH",
               RULE + " (regression vector: core bug found by these vectors)",
               f"a truncated download whose header length N = {n:#x} begins with the bytes "
               f"{looks_like}: must say the header length is past the end, not name "
               "another format", u64(n) + b'{"a":{"dtype":"U8","shape":[1],"data_')

    # -- UTF-8 ----------------------------------------------------------------
    vector("utf8_invalid_byte.safetensors", "STC_ERR_INVALID_UTF8", RULE,
           "0xFF byte inside a tensor name",
           st(b'{"a\xff":' + ONE_F32[0].encode() + b"}", ONE_F32[1]))
    vector("utf8_overlong.safetensors", "STC_ERR_INVALID_UTF8", RULE,
           "overlong encoding C0 AF of '/'",
           st(b'{"a\xc0\xaf":' + ONE_F32[0].encode() + b"}", ONE_F32[1]))
    vector("utf8_surrogate.safetensors", "STC_ERR_INVALID_UTF8", RULE,
           "a UTF-16 surrogate encoded in UTF-8 (ED A0 80)",
           st(b'{"a\xed\xa0\x80":' + ONE_F32[0].encode() + b"}", ONE_F32[1]))
    vector("utf8_above_max.safetensors", "STC_ERR_INVALID_UTF8", RULE,
           "code point above U+10FFFF (F4 90 80 80)",
           st(b'{"a\xf4\x90\x80\x80":' + ONE_F32[0].encode() + b"}", ONE_F32[1]))
    vector("utf8_truncated_sequence.safetensors", "STC_ERR_INVALID_UTF8", RULE,
           "a multi-byte sequence cut by the end of the header",
           st(b'{"a":' + ONE_F32[0].encode() + b"}\xe2\x82", ONE_F32[1], pad=False))
    vector("utf8_in_padding.safetensors", "STC_ERR_INVALID_UTF8", RULE,
           "invalid UTF-8 after the JSON object, in the padding",
           st(b'{"a":' + ONE_F32[0].encode() + b"}\x80", ONE_F32[1], pad=False))

    # -- strict JSON --------------------------------------------------------
    def bad_json(name: str, what: str, text: bytes, data: bytes = ONE_F32[1]) -> None:
        vector(name, "STC_ERR_INVALID_JSON", RULE, what, st(text, data))

    a = ONE_F32[0].encode()
    bad_json("json_trailing_comma.safetensors", "trailing comma in the object",
             b'{"a":' + a + b",}")
    bad_json("json_trailing_comma_array.safetensors", "trailing comma in shape",
             b'{"a":{"dtype":"F32","shape":[1,],"data_offsets":[0,4]}}')
    bad_json("json_comment.safetensors", "a /* comment */", b'{/* c */"a":' + a + b"}")
    bad_json("json_single_quotes.safetensors", "single-quoted key", b"{'a':" + a + b"}")
    bad_json("json_unquoted_key.safetensors", "unquoted key", b"{a:" + a + b"}")
    bad_json("json_nan.safetensors", "NaN as a value of an unknown field",
             b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":NaN}}')
    bad_json("json_infinity.safetensors", "Infinity as a value",
             b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":Infinity}}')
    bad_json("json_leading_zero.safetensors", "number with a leading zero (04)",
             b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,04]}}')
    bad_json("json_plus_sign.safetensors", "number with a plus sign",
             b'{"a":{"dtype":"F32","shape":[+1],"data_offsets":[0,4]}}')
    bad_json("json_hex_number.safetensors", "hexadecimal number",
             b'{"a":{"dtype":"F32","shape":[0x1],"data_offsets":[0,4]}}')
    bad_json("json_lone_high_surrogate.safetensors", "lone high surrogate \\ud83d",
             b'{"a\\ud83d":' + a + b"}")
    bad_json("json_lone_low_surrogate.safetensors", "lone low surrogate \\ude00",
             b'{"a\\ude00":' + a + b"}")
    bad_json("json_reversed_surrogates.safetensors", "surrogates in the wrong order",
             b'{"\\ude00\\ud83d":' + a + b"}")
    bad_json("json_bad_escape.safetensors", "unknown escape \\x41",
             b'{"\\x41":' + a + b"}")
    bad_json("json_short_unicode_escape.safetensors", "\\u with three hex digits",
             b'{"\\u004":' + a + b"}")
    bad_json("json_raw_control_char.safetensors", "raw TAB inside a string",
             b'{"a\tb":' + a + b"}")
    bad_json("json_raw_newline.safetensors", "raw newline inside a string",
             b'{"a\nb":' + a + b"}")
    bad_json("json_raw_nul.safetensors", "raw NUL byte inside a string",
             b'{"a\x00b":' + a + b"}")
    bad_json("json_unterminated_string.safetensors", "string never closed",
             b'{"a":{"dtype":"F32')
    bad_json("json_unterminated_object.safetensors", "object never closed",
             b'{"a":' + a)
    bad_json("json_garbage_after.safetensors", "non-whitespace after the object",
             b'{"a":' + a + b"}x")
    bad_json("json_two_objects.safetensors", "a second object after the first",
             b'{"a":' + a + b"}{}")
    bad_json("json_nul_padding.safetensors", "header padded with NUL bytes, not spaces",
             b'{"a":' + a + b"}\x00\x00\x00")
    bad_json("json_bom.safetensors", "UTF-8 byte order mark before the object",
             b"\xef\xbb\xbf{" + b'"a":' + a + b"}")
    bad_json("json_only_spaces.safetensors", "a header of only spaces", b" " * 16, b"")
    bad_json("json_missing_colon.safetensors", "key without ':'", b'{"a" ' + a + b"}")
    bad_json("json_missing_comma.safetensors", "members without ','",
             b'{"a":' + a + b'"b":' + a + b"}", filler(8))
    bad_json("json_non_string_key.safetensors", "a number as a key", b"{1:" + a + b"}")
    bad_json("json_bad_literal.safetensors", "misspelt literal (nul)",
             b'{"__metadata__":nul,"a":' + a + b"}")
    bad_json("json_truncated_literal.safetensors", "literal cut by the end of the header",
             b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":tru', b"")
    bad_json("json_fraction_no_digits.safetensors", "1. is not a JSON number",
             b'{"a":{"dtype":"F32","shape":[1.],"data_offsets":[0,4]}}')
    bad_json("json_minus_alone.safetensors", "- is not a JSON number",
             b'{"a":{"dtype":"F32","shape":[-],"data_offsets":[0,4]}}')

    # -- nesting ------------------------------------------------------------------
    vector("nesting_128.safetensors", "STC_ERR_NESTING_TOO_DEEP", RULE,
           "unknown field nested to depth 128, one more than allowed", nested(126))
    vector("nesting_10000_arrays.safetensors", "STC_ERR_NESTING_TOO_DEEP",
           attack("deep nesting (stack exhaustion in recursive parsers)"),
           "10,000 '[' in an unknown field, never closed", nested(10_000, close=False))
    vector("nesting_10000_top_level.safetensors", "STC_ERR_NESTING_TOO_DEEP",
           attack("deep nesting (stack exhaustion in recursive parsers)"),
           "the whole header is 10,000 '['", st(b"[" * 10_000))
    vector("nesting_10000_objects.safetensors", "STC_ERR_NESTING_TOO_DEEP",
           attack("deep nesting (stack exhaustion in recursive parsers)"),
           '10,000 nested {"a": in an unknown field',
           with_field('"x":' + '{"a":' * 10_000))
    vector("nesting_in_metadata.safetensors", "STC_ERR_NESTING_TOO_DEEP",
           attack("deep nesting (stack exhaustion in recursive parsers)"),
           "10,000 '[' as a __metadata__ value",
           st('{"__metadata__":{"k":' + "[" * 10_000 + "}}"))

    # -- header schema ------------------------------------------------------------
    def bad_header(name: str, what: str, text, data: bytes = ONE_F32[1]) -> None:
        vector(name, "STC_ERR_INVALID_HEADER", RULE, what, st(text, data))

    bad_header("schema_top_level_array.safetensors", "the header is an array, not an object",
               b"[]", b"")
    bad_header("schema_top_level_string.safetensors", "the header is a string",
               b'"hello"', b"")
    bad_header("schema_top_level_number.safetensors", "the header is a number", b"8", b"")
    bad_header("schema_top_level_null.safetensors", "the header is null", b"null", b"")
    bad_header("schema_entry_not_object.safetensors", "a tensor entry that is a number",
               b'{"a":1}', b"")
    bad_header("schema_entry_null.safetensors", "a tensor entry that is null",
               b'{"a":null}', b"")
    bad_header("schema_entry_array.safetensors",
               "a tensor entry written as a JSON array [dtype, shape, offsets] "
               "(deliberate deviation: the reference accepts it)",
               b'{"a":["F32",[1],[0,4]]}')
    bad_header("schema_missing_dtype.safetensors", "entry without dtype",
               b'{"a":{"shape":[1],"data_offsets":[0,4]}}')
    bad_header("schema_missing_shape.safetensors", "entry without shape",
               b'{"a":{"dtype":"F32","data_offsets":[0,4]}}')
    bad_header("schema_missing_offsets.safetensors", "entry without data_offsets",
               b'{"a":{"dtype":"F32","shape":[1]}}')
    bad_header("schema_empty_entry.safetensors", "entry {}", b'{"a":{}}', b"")
    bad_header("schema_dtype_lowercase.safetensors", "dtype codes are case-sensitive (f32)",
               {"a": entry("f32", [1], 0, 4)})
    bad_header("schema_dtype_unknown.safetensors", "unknown dtype F128",
               {"a": entry("F128", [1], 0, 16)}, filler(16))
    bad_header("schema_dtype_torch_name.safetensors", "torch name float32 instead of F32",
               {"a": entry("float32", [1], 0, 4)})
    bad_header("schema_dtype_padded.safetensors", "dtype with a trailing space",
               {"a": entry("F32 ", [1], 0, 4)})
    bad_header("schema_dtype_nul.safetensors", "dtype with an escaped NUL (F32\\u0000)",
               b'{"a":{"dtype":"F32\\u0000","shape":[1],"data_offsets":[0,4]}}')
    bad_header("schema_dtype_number.safetensors", "dtype as a number",
               b'{"a":{"dtype":17,"shape":[1],"data_offsets":[0,4]}}')
    bad_header("schema_dtype_map.safetensors",
               'dtype written as a map {"F32":null} (deliberate deviation: the reference '
               "accepts it)",
               b'{"a":{"dtype":{"F32":null},"shape":[1],"data_offsets":[0,4]}}')
    bad_header("schema_shape_not_array.safetensors", "shape as a number",
               b'{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}')
    bad_header("schema_shape_null.safetensors", "shape null",
               b'{"a":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}')
    bad_header("schema_shape_negative.safetensors", "negative dimension",
               b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}')
    bad_header("schema_shape_negative_zero.safetensors", "dimension -0",
               b'{"a":{"dtype":"F32","shape":[-0,1],"data_offsets":[0,0]}}', b"")
    bad_header("schema_shape_float.safetensors", "dimension 1.0",
               b'{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}')
    bad_header("schema_shape_exponent.safetensors", "dimension 1e0",
               b'{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}')
    bad_header("schema_shape_string.safetensors", 'dimension "1"',
               b'{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}')
    bad_header("schema_shape_nested.safetensors", "dimension [1]",
               b'{"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}}')
    bad_header("schema_shape_2_64.safetensors",
               "dimension 18446744073709551616 (2^64) does not fit 64 bits",
               b'{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,0]}}',
               b"")
    bad_header("schema_offsets_2_64.safetensors", "data_offsets end 2^64",
               b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}}')
    bad_header("schema_offsets_one.safetensors", "data_offsets with one integer",
               b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}}')
    bad_header("schema_offsets_three.safetensors", "data_offsets with three integers",
               b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}')
    bad_header("schema_offsets_empty.safetensors", "data_offsets []",
               b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[]}}')
    bad_header("schema_offsets_negative.safetensors", "negative begin",
               b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}')
    bad_header("schema_offsets_object.safetensors", "data_offsets as an object",
               b'{"a":{"dtype":"F32","shape":[1],"data_offsets":{"begin":0,"end":4}}}')
    bad_header("schema_metadata_number_value.safetensors", "__metadata__ value 1",
               b'{"__metadata__":{"k":1},"a":' + a + b"}")
    bad_header("schema_metadata_null_value.safetensors", "__metadata__ value null",
               b'{"__metadata__":{"k":null},"a":' + a + b"}")
    bad_header("schema_metadata_object_value.safetensors", "__metadata__ value {}",
               b'{"__metadata__":{"k":{}},"a":' + a + b"}")
    bad_header("schema_metadata_array.safetensors", "__metadata__ as an array",
               b'{"__metadata__":["k","v"],"a":' + a + b"}")
    bad_header("schema_metadata_string.safetensors", "__metadata__ as a string",
               b'{"__metadata__":"v","a":' + a + b"}")

    # -- duplicate keys -------------------------------------------------------------
    def dup(name: str, what: str, origin: str, text: bytes, data: bytes = ONE_F32[1]) -> None:
        vector(name, "STC_ERR_DUPLICATE_KEY", origin, what, st(text, data))

    dup("dup_tensor_name.safetensors",
        "the same tensor name twice (deliberate deviation: the reference keeps the last)",
        attack("duplicate keys (parser differentials: tools disagree on which entry wins)"),
        b'{"a":' + a + b',"a":' + ent("F32", [1], 4, 8).encode() + b"}", filler(8))
    dup("dup_tensor_name_same_entry.safetensors",
        "the same tensor name and entry twice (deviation: the reference keeps the last)",
        attack("duplicate keys (parser differentials: tools disagree on which entry wins)"),
        b'{"a":' + a + b',"a":' + a + b"}")
    dup("dup_tensor_name_escaped.safetensors",
        'the same name spelt "a" and "\\u0061" (deviation: the reference keeps the last)',
        attack("duplicate keys (parser differentials: tools disagree on which entry wins)"),
        b'{"a":' + a + b',"\\u0061":' + ent("F32", [1], 4, 8).encode() + b"}", filler(8))
    dup("dup_field_dtype.safetensors", "dtype twice in one entry", RULE,
        b'{"a":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}}')
    dup("dup_field_offsets.safetensors", "data_offsets twice in one entry", RULE,
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"data_offsets":[0,4]}}')
    dup("dup_metadata.safetensors", "__metadata__ twice", RULE,
        b'{"__metadata__":{"a":"1"},"__metadata__":{"a":"2"},"a":' + a + b"}")
    dup("dup_metadata_key.safetensors",
        "a key twice inside __metadata__ (deviation: the reference keeps the last)",
        attack("duplicate keys (parser differentials: tools disagree on which entry wins)"),
        b'{"__metadata__":{"k":"1","k":"2"},"a":' + a + b"}")
    dup("dup_unknown_field.safetensors",
        "an unknown field twice in one entry (deviation: the reference ignores it)", RULE,
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1,"x":2}}')
    dup("dup_key_nested_ignored.safetensors",
        "a duplicate key deep inside an ignored field (deviation: the reference ignores it)",
        RULE, b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[{"k":1,"k":2}]}}')

    # -- offsets and layout ------------------------------------------------------------
    vector("offsets_begin_after_end.safetensors", "STC_ERR_INVALID_OFFSETS", RULE,
           "begin > end", st({"a": entry("U8", [0], 4, 0)}, filler(4)))
    vector("offsets_not_from_zero.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("holes in the data section (hidden payload before the first tensor)"),
           "the first tensor starts at 4, leaving bytes 0..4 unaccounted",
           st({"a": entry("F32", [1], 4, 8)}, filler(8)))
    vector("offsets_hole.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("holes in the data section (hidden payload between tensors)"),
           "a gap of 4 bytes between two tensors",
           st({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, filler(12)))
    vector("offsets_overlap.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("overlapping tensors (writes through one view change another)"),
           "two tensors overlapping by 4 bytes",
           st({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, filler(12)))
    vector("offsets_aliased.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("aliased tensors: two names, the same offsets"),
           "two names with identical data_offsets",
           st({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 0, 4)}, filler(4)))
    vector("offsets_contained.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("overlapping tensors (writes through one view change another)"),
           "one tensor inside another",
           st({"a": entry("F32", [4], 0, 16), "b": entry("F32", [1], 4, 8)}, filler(16)))
    vector("offsets_zero_size_in_hole.safetensors", "STC_ERR_INVALID_OFFSETS", RULE,
           "a zero-size tensor placed past the end of the data",
           st({"a": entry("F32", [1], 0, 4), "b": entry("F32", [0], 8, 8)}, filler(4)))
    vector("offsets_u64_max_zero_size.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("integer overflow in offsets"),
           "a zero-size tensor at offset 2^64-1 after a real one",
           st({"a": entry("F32", [1], 0, 4), "b": entry("U8", [0], 2**64 - 1, 2**64 - 1)},
              filler(4)))
    vector("offsets_end_2_61.safetensors", "STC_ERR_TRUNCATED_DATA",
           attack("integer overflow in offsets"),
           "a U8 tensor of 2^61-1 bytes, [0, 2^61-1], in a tiny file: must not be mapped "
           "or allocated", st({"a": entry("U8", [2**61 - 1], 0, 2**61 - 1)}, filler(4)))
    vector("size_overflow_u8_u64_max.safetensors", "STC_ERR_SIZE_OVERFLOW",
           attack("integer overflow in offsets"),
           "U8 [2^64-1] spanning [0, 2^64-1]: the span matches the element count, but "
           "the bit count overflows", st({"a": entry("U8", [2**64 - 1], 0, 2**64 - 1)},
                                          filler(4)))
    vector("offsets_wrap_begin.safetensors", "STC_ERR_INVALID_OFFSETS",
           attack("integer overflow in offsets"),
           "begin near 2^64 so that begin + size would wrap to a small end",
           st({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 2**64 - 2, 2)},
              filler(8)))
    vector("truncated_data.safetensors", "STC_ERR_TRUNCATED_DATA", RULE,
           "the file ends 1 byte before the last tensor's data does",
           st({"a": entry("F32", [2], 0, 8)}, filler(7)))
    vector("truncated_all_data.safetensors", "STC_ERR_TRUNCATED_DATA",
           attack("truncated download"), "header intact, no data at all",
           st({"a": entry("F32", [1024], 0, 4096)}))
    vector("trailing_byte.safetensors", "STC_ERR_TRAILING_DATA",
           attack("trailing bytes (hidden payload after the last tensor)"),
           "one byte after the last tensor", st({"a": entry("F32", [1], 0, 4)}, filler(5)))
    vector("trailing_after_empty.safetensors", "STC_ERR_TRAILING_DATA",
           attack("trailing bytes (hidden payload after the last tensor)"),
           "a header with no tensors followed by data", st({}, filler(8)))

    # -- sizes ---------------------------------------------------------------------------
    vector("size_mismatch_short.safetensors", "STC_ERR_SIZE_MISMATCH", RULE,
           "F32 [2] with a 4-byte span", st({"a": entry("F32", [2], 0, 4)}, filler(4)))
    vector("size_mismatch_long.safetensors", "STC_ERR_SIZE_MISMATCH", RULE,
           "F32 [1] with an 8-byte span", st({"a": entry("F32", [1], 0, 8)}, filler(8)))
    vector("size_mismatch_scalar_empty.safetensors", "STC_ERR_SIZE_MISMATCH", RULE,
           "a scalar (shape []) with a zero-byte span",
           st({"a": entry("F32", [], 0, 0)}))
    vector("size_overflow_shape_wraps_to_zero.safetensors", "STC_ERR_SIZE_OVERFLOW",
           attack("integer overflow in shapes (product wraps to 0 and passes a naive check)"),
           "F32 [2^32, 2^32]: 2^64 elements, wrapping to 0 bytes",
           st({"a": entry("F32", [2**32, 2**32], 0, 0)}))
    vector("size_overflow_shape_wraps_to_four.safetensors", "STC_ERR_SIZE_OVERFLOW",
           attack("integer overflow in shapes (product wraps to the span)"),
           "U8 [2^63+2, 2]: 2^64+4 elements, wrapping to 4 bytes = the span",
           st({"a": entry("U8", [2**63 + 2, 2], 0, 4)}, filler(4)))
    vector("size_overflow_bits.safetensors", "STC_ERR_SIZE_OVERFLOW",
           attack("integer overflow in shapes (elements x dtype size)"),
           "F32 [2^62]: the element count fits, its bit count does not",
           st({"a": entry("F32", [2**62], 0, 0)}))
    vector("size_overflow_f4_bits.safetensors", "STC_ERR_SIZE_OVERFLOW",
           attack("integer overflow in shapes (elements x dtype size)"),
           "F4 [2^62]: 2^64 bits", st({"a": entry("F4", [2**62], 0, 2**61)}))
    vector("size_overflow_many_dims.safetensors", "STC_ERR_SIZE_OVERFLOW",
           attack("integer overflow in shapes"),
           "65 dimensions of 2 (2^65 elements)", st({"a": entry("U8", [2] * 65, 0, 0)}))
    vector("misaligned_f4.safetensors", "STC_ERR_MISALIGNED", RULE,
           "F4 [3]: 12 bits, not whole bytes", st({"a": entry("F4", [3], 0, 2)}, filler(2)))
    vector("misaligned_f6.safetensors", "STC_ERR_MISALIGNED", RULE,
           "F6_E2M3 [3]: 18 bits", st({"a": entry("F6_E2M3", [3], 0, 3)}, filler(3)))
    vector("misaligned_f6_e3m2_scalar.safetensors", "STC_ERR_MISALIGNED", RULE,
           "F6_E3M2 scalar: 6 bits", st({"a": entry("F6_E3M2", [], 0, 1)}, filler(1)))

    # -- polyglots -----------------------------------------------------------------------
    valid = packed_file([("w", "F32", [2, 2])])
    vector("polyglot_zip_appended.safetensors", "STC_ERR_TRAILING_DATA",
           attack("pickle/zip polyglot: a zip appended to a valid safetensors file"),
           "valid file + a torch-style zip archive (zip readers find it from the end)",
           valid + torch_like_zip())
    vector("polyglot_pickle_appended.safetensors", "STC_ERR_TRAILING_DATA",
           attack("pickle/zip polyglot: a pickle appended to a valid safetensors file"),
           "valid file + a protocol-2 pickle",
           valid + pickle.dumps({"payload": "x"}, protocol=2))
    vector("polyglot_zip_with_safetensors_prefix.bin", "STC_ERR_TRAILING_DATA",
           attack("pickle/zip polyglot: a zip archive with a safetensors prefix"),
           "a zip whose offsets account for a safetensors file before it (both formats "
           "open it unless trailing bytes are rejected)",
           zip_with_prefix(valid))
    vector("polyglot_pickle_in_metadata.safetensors", "OK",
           attack("pickle/zip polyglot: pickle bytes smuggled in metadata"),
           "a pickle's bytes (as a JSON string) in __metadata__: just a string to us",
           packed_file([("w", "U8", [4])],
                       metadata={"payload": pickle.dumps("x", protocol=0).decode("ascii")}))

    # -- other formats ---------------------------------------------------------------------
    for proto in (2, 3, 4, 5):
        vector(f"pickle_protocol_{proto}.bin", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
               f"a pickle, protocol {proto} (legacy torch.save format)",
               pickle.dumps({"w": [1.0, 2.0], "step": 3}, protocol=proto))
    vector("pickle_tiny.bin", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "a 4-byte pickle (protocol 2 of None): shorter than the length prefix",
           pickle.dumps(None, protocol=2))
    vector("torch_zip_checkpoint.bin", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "a zip laid out like a torch.save checkpoint", torch_like_zip())
    vector("empty_zip.zip", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "an empty zip archive (end-of-central-directory record only)", zip_bytes({}))
    vector("git_lfs_pointer.safetensors", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "a Git LFS pointer file checked out instead of the model",
           b"version https://git-lfs.github.com/spec/v1\n"
           b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
           b"size 12345\n")
    vector("html_page.safetensors", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "an HTML error page saved under the model's name",
           b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
           b"<body><h1>Not Found</h1></body></html>\n")
    vector("html_page_short.safetensors", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "a 6-byte HTML fragment", b"<html>")
    vector("npy_file.npy", "STC_ERR_NOT_SAFETENSORS", FOREIGN, "a NumPy .npy file",
           npy_bytes())
    vector("gzip_file.gz", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "a gzip-compressed safetensors file", gzip.compress(valid, mtime=0))
    vector("hdf5_magic.h5", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "the HDF5 signature (Keras .h5)", b"\x89HDF\r\n\x1a\n" + bytes(56))
    vector("gguf_magic.gguf", "STC_ERR_NOT_SAFETENSORS", FOREIGN, "the GGUF signature",
           b"GGUF\x03\x00\x00\x00" + bytes(24))
    vector("index_json.json", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "a model.safetensors.index.json file",
           json.dumps({"metadata": {"total_size": 16},
                       "weight_map": {"w": "model-00001-of-00002.safetensors"}},
                      indent=2).encode())
    vector("plain_text.txt", "STC_ERR_NOT_SAFETENSORS", FOREIGN,
           "plain text, named as text (its first 8 bytes would read as a huge length)",
           b"This is not a model file, just some text.\n")


def zip_with_prefix(prefix: bytes) -> bytes:
    """prefix followed by a zip whose recorded offsets include the prefix."""
    buf = io.BytesIO()
    buf.write(prefix)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as z:
        info = zipfile.ZipInfo("archive/data.pkl", date_time=(1980, 1, 1, 0, 0, 0))
        z.writestr(info, pickle.dumps({"w": 1}, protocol=2))
    return buf.getvalue()


def npy_bytes() -> bytes:
    """Version 1.0 .npy of a little-endian float32 [2] array (format by hand)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + \
        struct.pack("<2f", 1.0, 2.0)


# MARK: - outputs

def readme(vectors) -> str:
    lines = [
        "# Crafted test vectors",
        "",
        "Generated by `make_vectors.py` (do not edit by hand: run "
        "`python3 tests/vectors/make_vectors.py`). Each file's expected verdict is the "
        "status name the C core returns for it (through Python: `SafetensorError.code`), "
        "or `OK`; `expected.json` holds the same mapping for tests. "
        "`tests/test_vectors.py` checks every vector through `safe_open`, `load_file` "
        "(both backends) and `load(bytes)`, and checks that the reference `safetensors` "
        "package rejects every vector we reject, except the deviations below.",
        "",
        "## Deliberate deviations from the reference reader (safetensors 0.8)",
        "",
        "We are stricter in these cases; the reference accepts the file:",
        "",
        "- **Duplicate keys**, at every level: the reference keeps the last duplicated tensor "
        "name or metadata key and ignores duplicates inside ignored fields; its own README "
        "says duplicates are not allowed. Accepted by the reference: "
        "`dup_tensor_name_same_entry`, `dup_metadata_key`, `dup_unknown_field`, "
        "`dup_key_nested_ignored`. (In `dup_tensor_name` and `dup_tensor_name_escaped` the "
        "surviving entry leaves a hole, so the reference rejects those too, with another "
        "error; a duplicated field inside one entry and a second `__metadata__` are errors "
        "there as well.)",
        "- **Tensor entries written as JSON arrays** (`[\"F32\",[1],[0,4]]`), which serde "
        "accepts for structs: `schema_entry_array`.",
        "- **dtype written as a map** (`{\"F32\":null}`), which serde accepts for enums: "
        "`schema_dtype_map`.",
        "",
        "Also: files of another format get `STC_ERR_NOT_SAFETENSORS` (the reference reports "
        "a header-length or JSON error for the same files), and `ok_many_zero_size_tensors` "
        "is a scaled-down version of the 200,000-tensor case that "
        "`tests/test_vectors.py` builds in memory. The nesting limit matches the "
        "reference's (depth 127 loads, 128 does not).",
        "",
        "Vectors whose origin says *regression vector* reproduce core bugs found while "
        "writing these vectors and the fuzzers; they are kept so that the bugs stay fixed. "
        "A vector whose verdict the core does not (yet) meet is listed in "
        "`KNOWN_CORE_BUGS` in `tests/test_vectors.py` (a strict xfail).",
        "",
        f"## Vectors ({len(vectors)})",
        "",
        "| file | verdict | what it tests | origin |",
        "|---|---|---|---|",
    ]
    for name, verdict, origin, what, _ in vectors:
        what = what.replace("|", "\\|")
        lines.append(f"| `{name}` | `{verdict}` | {what} | {origin} |")
    return "\n".join(lines) + "\n"


def outputs() -> dict[str, bytes]:
    VECTORS.clear()
    build_all()
    files = {name: data for name, _, _, _, data in VECTORS}
    expected = {name: verdict for name, verdict, _, _, _ in VECTORS}
    files["expected.json"] = (json.dumps(expected, indent=1, sort_keys=True) + "\n").encode()
    files["README.md"] = readme(VECTORS).encode()
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that the files on disk are up to date")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    args = parser.parse_args(argv)
    files = outputs()
    stale = []
    # Files left over from vectors that were renamed or dropped.
    keep = set(files) | {"make_vectors.py"}
    for path in sorted(args.out.iterdir()):
        if path.is_file() and path.name not in keep and not path.name.startswith("."):
            if args.check:
                stale.append(path.name + " (not generated)")
            else:
                path.unlink()
    for name, data in files.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
    if args.check and stale:
        print("stale vectors:", ", ".join(stale), file=sys.stderr)
        return 1
    print(f"{len(files) - 2} vectors {'checked' if args.check else 'written'} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
