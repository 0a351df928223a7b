"""One crafted file per validation rule: the verdict, the code and the message.

Every bad file is tried through ``safe_open`` with both backends and through
``load(bytes)``; each must raise ``SafetensorError`` whose ``code`` is the
core's status name and whose message says what is wrong.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open

from conftest import build, entry

OK_ENTRY = '"dtype":"U8","shape":[2],"data_offsets":[0,2]'


def one(extra: str = "", name: str = "a") -> str:
    """A header with one valid U8[2] tensor; `extra` goes first in its entry."""
    return '{"%s":{%s%s}}' % (name, extra, OK_ENTRY)


def with_field(field: str, value: str) -> str:
    """One U8[2] tensor whose `field` is replaced by the raw JSON `value`."""
    fields = {"dtype": '"U8"', "shape": "[2]", "data_offsets": "[0,2]"}
    fields[field] = value
    body = ",".join('"%s":%s' % (k, v) for k, v in fields.items())
    return '{"a":{%s}}' % body


def without_field(field: str) -> str:
    fields = {"dtype": '"U8"', "shape": "[2]", "data_offsets": "[0,2]"}
    del fields[field]
    return '{"a":{%s}}' % ",".join('"%s":%s' % (k, v) for k, v in fields.items())


def nested_arrays(levels: int) -> str:
    return "[" * levels + "]" * levels


def nested_objects(levels: int) -> str:
    return '{"y":' * levels + "1" + "}" * levels


def a_pickle(protocol):
    return pickle.dumps({"weight": [1.0, 2.0, 3.0], "name": "model"}, protocol=protocol)


def a_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def a_npy():
    buffer = io.BytesIO()
    np.save(buffer, np.arange(10, dtype=np.float32))
    return buffer.getvalue()


LFS = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)
HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body></body></html>\n"

AB = b"ab"

# id -> (file bytes, code, message fragment)
BAD = {
    # -- the length prefix --
    "empty_file": (b"", "STC_ERR_HEADER_TOO_SMALL", "empty"),
    "three_bytes": (b"abc", "STC_ERR_HEADER_TOO_SMALL", "8-byte"),
    "seven_bytes": (b"\x02\x00\x00\x00\x00\x00\x00", "STC_ERR_HEADER_TOO_SMALL", "8-byte"),
    "n_over_100M": (build(b"{}", n=100_000_001), "STC_ERR_HEADER_TOO_LARGE", "limit"),
    "n_max_u64": (build(b"{}", n=2**64 - 1), "STC_ERR_HEADER_TOO_LARGE", "limit"),
    "n_100M_short_file": (build(b"{}", n=100_000_000), "STC_ERR_HEADER_LENGTH", "past the end"),
    "n_past_eof": (build(b"{}", n=10, pad=False), "STC_ERR_HEADER_LENGTH", "past the end"),
    "n_past_eof_by_one": (build(b"{}" + b" " * 6, n=9, pad=False), "STC_ERR_HEADER_LENGTH",
                          "past the end"),
    # -- UTF-8 --
    "utf8_invalid_byte": (build(b'{"\xff":{' + OK_ENTRY.encode() + b"}}", AB),
                          "STC_ERR_INVALID_UTF8", "UTF-8"),
    "utf8_overlong_nul": (build(b'{"\xc0\x80":{' + OK_ENTRY.encode() + b"}}", AB),
                          "STC_ERR_INVALID_UTF8", "UTF-8"),
    "utf8_cesu_surrogate": (build(b'{"\xed\xa0\x80":{' + OK_ENTRY.encode() + b"}}", AB),
                            "STC_ERR_INVALID_UTF8", "UTF-8"),
    "utf8_truncated_sequence": (build(b'{"\xe2\x82":{' + OK_ENTRY.encode() + b"}}", AB),
                                "STC_ERR_INVALID_UTF8", "UTF-8"),
    "utf8_in_padding": (build(b"{}  \xe2\x82", pad=False), "STC_ERR_INVALID_UTF8", "UTF-8"),
    "utf8_in_metadata": (build(b'{"__metadata__":{"k":"\xf8\x88\x80\x80\x80"}}'),
                         "STC_ERR_INVALID_UTF8", "UTF-8"),
    # -- strict JSON --
    "json_empty_header": (build(b"", pad=False), "STC_ERR_INVALID_JSON", "empty"),
    "json_spaces_only": (build(b"    ", pad=False), "STC_ERR_INVALID_JSON", "empty"),
    "json_comment_before": (build("/* c */" + one(), AB), "STC_ERR_INVALID_JSON", "value was expected"),
    "json_comment_after": (build(one() + "/* c */", AB), "STC_ERR_INVALID_JSON",
                           "unexpected data after"),
    "json_line_comment_inside": (build('{"a":{//c\n' + OK_ENTRY + "}}", AB),
                                 "STC_ERR_INVALID_JSON", "string key"),
    "json_trailing_comma_object": (build(one()[:-1] + ",}", AB), "STC_ERR_INVALID_JSON", "string key"),
    "json_trailing_comma_entry": (build('{"a":{' + OK_ENTRY + ",}}", AB),
                                  "STC_ERR_INVALID_JSON", "string key"),
    "json_trailing_comma_unknown_array": (build(one('"x":[1,2,],'), AB),
                                          "STC_ERR_INVALID_JSON", "value was expected"),
    "json_single_quoted_key": (build("{'a':{" + OK_ENTRY + "}}", AB), "STC_ERR_INVALID_JSON",
                               "string key"),
    "json_single_quoted_value": (build(one("\"x\":'v',"), AB), "STC_ERR_INVALID_JSON", "value"),
    "json_unquoted_key": (build("{a:{" + OK_ENTRY + "}}", AB), "STC_ERR_INVALID_JSON",
                          "string key"),
    "json_nan": (build(one('"x":NaN,'), AB), "STC_ERR_INVALID_JSON", "value"),
    "json_infinity": (build(one('"x":Infinity,'), AB), "STC_ERR_INVALID_JSON", "value"),
    "json_minus_infinity": (build(one('"x":-Infinity,'), AB), "STC_ERR_INVALID_JSON", "number"),
    "json_leading_zero": (build(one('"x":01,'), AB), "STC_ERR_INVALID_JSON", "leading zero"),
    "json_leading_zero_in_shape": (build(with_field("shape", "[02]"), AB),
                                   "STC_ERR_INVALID_JSON", "leading zero"),
    "json_leading_zero_in_offsets": (build(with_field("data_offsets", "[00,2]"), AB),
                                     "STC_ERR_INVALID_JSON", "leading zero"),
    "json_plus_sign": (build(one('"x":+1,'), AB), "STC_ERR_INVALID_JSON", "value"),
    "json_bare_dot": (build(one('"x":.5,'), AB), "STC_ERR_INVALID_JSON", "value"),
    "json_dot_no_digits": (build(one('"x":1.,'), AB), "STC_ERR_INVALID_JSON", "number"),
    "json_exponent_no_digits": (build(one('"x":1e,'), AB), "STC_ERR_INVALID_JSON", "exponent"),
    "json_hex_number": (build(one('"x":0x10,'), AB), "STC_ERR_INVALID_JSON", "expected ','"),
    "json_bad_literal": (build(one('"x":tru,'), AB), "STC_ERR_INVALID_JSON", "value was expected"),
    "json_uppercase_literal": (build(one('"x":True,'), AB), "STC_ERR_INVALID_JSON", "value was expected"),
    "json_raw_control_in_name": (build('{"a\x01":{' + OK_ENTRY + "}}", AB),
                                 "STC_ERR_INVALID_JSON", "control character"),
    "json_raw_tab_in_name": (build('{"a\tb":{' + OK_ENTRY + "}}", AB),
                             "STC_ERR_INVALID_JSON", "control character"),
    "json_raw_newline_in_unknown": (build(one('"x":"a\nb",'), AB), "STC_ERR_INVALID_JSON",
                                    "control character"),
    "json_raw_nul_in_metadata": (build('{"__metadata__":{"k":"a\x00b"}}'),
                                 "STC_ERR_INVALID_JSON", "control character"),
    "json_lone_high_surrogate_name": (build('{"a\\ud800":{' + OK_ENTRY + "}}", AB),
                                      "STC_ERR_INVALID_JSON", "surrogate"),
    "json_lone_low_surrogate_name": (build('{"a\\udc00":{' + OK_ENTRY + "}}", AB),
                                     "STC_ERR_INVALID_JSON", "surrogate"),
    "json_two_high_surrogates": (build('{"a\\ud800\\ud800":{' + OK_ENTRY + "}}", AB),
                                 "STC_ERR_INVALID_JSON", "surrogate"),
    "json_surrogate_then_letter": (build('{"a\\ud800\\u0041":{' + OK_ENTRY + "}}", AB),
                                   "STC_ERR_INVALID_JSON", "surrogate"),
    "json_lone_surrogate_unknown_value": (build(one('"x":"\\udfff",'), AB),
                                          "STC_ERR_INVALID_JSON", "surrogate"),
    "json_lone_surrogate_unknown_key": (build(one('"\\ud83d":1,'), AB),
                                        "STC_ERR_INVALID_JSON", "surrogate"),
    "json_lone_surrogate_metadata_value": (build('{"__metadata__":{"k":"\\ud800"}}'),
                                           "STC_ERR_INVALID_JSON", "surrogate"),
    "json_lone_surrogate_metadata_key": (build('{"__metadata__":{"\\ud800":"v"}}'),
                                         "STC_ERR_INVALID_JSON", "surrogate"),
    "json_bad_escape": (build('{"a\\x41":{' + OK_ENTRY + "}}", AB), "STC_ERR_INVALID_JSON",
                        "escape"),
    "json_short_unicode_escape": (build(one('"x":"\\u12",'), AB), "STC_ERR_INVALID_JSON",
                                  "escape"),
    "json_non_hex_unicode_escape": (build(one('"x":"\\u00g0",'), AB), "STC_ERR_INVALID_JSON",
                                    "escape"),
    "json_escaped_single_quote": (build(one('"x":"\\\'",'), AB), "STC_ERR_INVALID_JSON",
                                  "escape"),
    "json_unterminated_string": (build('{"a', pad=False), "STC_ERR_INVALID_JSON", "string"),
    "json_unterminated_object": (build('{"a":{' + OK_ENTRY + "}", AB), "STC_ERR_INVALID_JSON",
                                 "expected ','"),
    "json_missing_colon": (build('{"a"{' + OK_ENTRY + "}}", AB), "STC_ERR_INVALID_JSON", ":"),
    "json_missing_comma": (build(one('"x":1 "y":2,'), AB), "STC_ERR_INVALID_JSON", ","),
    "json_trailing_garbage": (build(one() + "x", AB), "STC_ERR_INVALID_JSON",
                              "unexpected data after"),
    "json_trailing_nul_padding": (build((one() + "\x00" * 8).encode(), AB, pad=False),
                                  "STC_ERR_INVALID_JSON", "unexpected data after"),
    "json_trailing_single_nul": (build(b"{}\x00", pad=False), "STC_ERR_INVALID_JSON",
                                 "unexpected data after"),
    "json_trailing_vertical_tab": (build(b"{}\x0b", pad=False), "STC_ERR_INVALID_JSON",
                                   "unexpected data after"),
    "json_trailing_form_feed": (build(b"{}\x0c", pad=False), "STC_ERR_INVALID_JSON",
                                "unexpected data after"),
    "json_trailing_nbsp": (build("{}\u00a0".encode(), pad=False), "STC_ERR_INVALID_JSON",
                           "unexpected data after"),
    "json_second_object": (build(b"{}{}", pad=False), "STC_ERR_INVALID_JSON",
                           "unexpected data after"),
    "json_bom": (build(b"\xef\xbb\xbf{}", pad=False), "STC_ERR_INVALID_JSON", "value was expected"),
    "top_level_array": (build(b"[]"), "STC_ERR_INVALID_HEADER", "JSON object"),
    "top_level_string": (build(b'"x"'), "STC_ERR_INVALID_HEADER", "JSON object"),
    "top_level_number": (build(b"1"), "STC_ERR_INVALID_HEADER", "JSON object"),
    "top_level_null": (build(b"null"), "STC_ERR_INVALID_HEADER", "JSON object"),
    "top_level_true": (build(b"true"), "STC_ERR_INVALID_HEADER", "JSON object"),
    # -- nesting --
    "nesting_128_arrays": (build(one('"x":%s,' % nested_arrays(126)), AB),
                           "STC_ERR_NESTING_TOO_DEEP", "nest too deeply"),
    "nesting_128_objects": (build(one('"x":%s,' % nested_objects(126)), AB),
                            "STC_ERR_NESTING_TOO_DEEP", "nest too deeply"),
    "nesting_100000_arrays": (build(one('"x":%s,' % nested_arrays(100_000)), AB),
                              "STC_ERR_NESTING_TOO_DEEP", "nest too deeply"),
    "nesting_unclosed_arrays": (build(one('"x":' + "[" * 200_000), AB),
                                "STC_ERR_NESTING_TOO_DEEP", "nest too deeply"),
    # -- numbers in shape and data_offsets --
    "shape_negative": (build(with_field("shape", "[-1]"), AB), "STC_ERR_INVALID_HEADER",
                       "negative"),
    "shape_negative_zero": (build(with_field("shape", "[2,-0]"), AB), "STC_ERR_INVALID_HEADER",
                            "negative"),
    "shape_float": (build(with_field("shape", "[2.0]"), AB), "STC_ERR_INVALID_HEADER",
                    "fractions or exponents"),
    "shape_exponent": (build(with_field("shape", "[2e0]"), AB), "STC_ERR_INVALID_HEADER",
                       "fractions or exponents"),
    "shape_exponent_upper": (build(with_field("shape", "[1E1]"), AB), "STC_ERR_INVALID_HEADER",
                             "fractions or exponents"),
    "shape_too_large": (build(with_field("shape", "[18446744073709551616]"), AB),
                        "STC_ERR_INVALID_HEADER", "64 bits"),
    "shape_huge_number": (build(with_field("shape", "[1" + "0" * 400 + "]"), AB),
                          "STC_ERR_INVALID_HEADER", "64 bits"),
    "shape_string_element": (build(with_field("shape", '["2"]'), AB), "STC_ERR_INVALID_HEADER",
                             "integers"),
    "shape_bool_element": (build(with_field("shape", "[true]"), AB), "STC_ERR_INVALID_HEADER",
                           "integers"),
    "shape_null_element": (build(with_field("shape", "[null]"), AB), "STC_ERR_INVALID_HEADER",
                           "integers"),
    "shape_nested_array": (build(with_field("shape", "[[2]]"), AB), "STC_ERR_INVALID_HEADER",
                           "integers"),
    "shape_not_array": (build(with_field("shape", "2"), AB), "STC_ERR_INVALID_HEADER",
                        "shape must be an array"),
    "shape_object": (build(with_field("shape", '{"0":2}'), AB), "STC_ERR_INVALID_HEADER",
                     "shape must be an array"),
    "offsets_negative": (build(with_field("data_offsets", "[0,-2]"), AB),
                         "STC_ERR_INVALID_HEADER", "negative"),
    "offsets_float": (build(with_field("data_offsets", "[0,2.0]"), AB),
                      "STC_ERR_INVALID_HEADER", "fractions or exponents"),
    "offsets_exponent": (build(with_field("data_offsets", "[0,2e0]"), AB),
                         "STC_ERR_INVALID_HEADER", "fractions or exponents"),
    "offsets_too_large": (build(with_field("data_offsets", "[0,18446744073709551616]"), AB),
                          "STC_ERR_INVALID_HEADER", "64 bits"),
    "offsets_string": (build(with_field("data_offsets", '[0,"2"]'), AB),
                       "STC_ERR_INVALID_HEADER", "integers"),
    "offsets_not_array": (build(with_field("data_offsets", "2"), AB), "STC_ERR_INVALID_HEADER",
                          "data_offsets"),
    "offsets_object": (build(with_field("data_offsets", '{"begin":0,"end":2}'), AB),
                       "STC_ERR_INVALID_HEADER", "data_offsets"),
    # -- data_offsets arity --
    "offsets_empty": (build(with_field("data_offsets", "[]"), AB), "STC_ERR_INVALID_HEADER",
                      "exactly two"),
    "offsets_one": (build(with_field("data_offsets", "[0]"), AB), "STC_ERR_INVALID_HEADER",
                    "exactly two"),
    "offsets_three": (build(with_field("data_offsets", "[0,2,2]"), AB),
                      "STC_ERR_INVALID_HEADER", "exactly two"),
    # -- fields --
    "missing_dtype": (build(without_field("dtype"), AB), "STC_ERR_INVALID_HEADER", '"dtype"'),
    "missing_shape": (build(without_field("shape"), AB), "STC_ERR_INVALID_HEADER", '"shape"'),
    "missing_offsets": (build(without_field("data_offsets"), AB), "STC_ERR_INVALID_HEADER",
                        '"data_offsets"'),
    "empty_entry": (build('{"a":{}}'), "STC_ERR_INVALID_HEADER", '"dtype"'),
    "uppercase_field_name": (build('{"a":{"DTYPE":"U8","shape":[2],"data_offsets":[0,2]}}', AB),
                             "STC_ERR_INVALID_HEADER", '"dtype"'),
    "entry_null": (build('{"a":null}'), "STC_ERR_INVALID_HEADER", "must be an object"),
    "entry_string": (build('{"a":"x"}'), "STC_ERR_INVALID_HEADER", "must be an object"),
    "entry_number": (build('{"a":1}'), "STC_ERR_INVALID_HEADER", "must be an object"),
    "entry_empty_array": (build('{"a":[]}'), "STC_ERR_INVALID_HEADER", "must be an object"),
    # The reference accepts serde's struct-as-sequence form; we do not.
    "entry_as_array": (build('{"a":["U8",[2],[0,2]]}', AB), "STC_ERR_INVALID_HEADER",
                       "must be an object"),
    # -- dtype --
    "dtype_lowercase": (build(with_field("dtype", '"f32"'), AB), "STC_ERR_INVALID_HEADER",
                        "unknown dtype"),
    "dtype_lowercase_u8": (build(with_field("dtype", '"u8"'), AB), "STC_ERR_INVALID_HEADER",
                           "unknown dtype"),
    "dtype_unknown": (build(with_field("dtype", '"F128"'), AB), "STC_ERR_INVALID_HEADER",
                      "unknown dtype"),
    "dtype_numpy_name": (build(with_field("dtype", '"uint8"'), AB), "STC_ERR_INVALID_HEADER",
                         "unknown dtype"),
    "dtype_empty": (build(with_field("dtype", '""'), AB), "STC_ERR_INVALID_HEADER",
                    "unknown dtype"),
    "dtype_trailing_space": (build(with_field("dtype", '"U8 "'), AB), "STC_ERR_INVALID_HEADER",
                             "unknown dtype"),
    "dtype_with_nul": (build(with_field("dtype", '"U8\\u0000"'), AB), "STC_ERR_INVALID_HEADER",
                       "unknown dtype"),
    "dtype_number": (build(with_field("dtype", "1"), AB), "STC_ERR_INVALID_HEADER",
                     "dtype must be a string"),
    "dtype_null": (build(with_field("dtype", "null"), AB), "STC_ERR_INVALID_HEADER",
                   "dtype must be a string"),
    # The reference accepts serde's enum-as-map form; we do not.
    "dtype_as_map": (build(with_field("dtype", '{"U8":null}'), AB), "STC_ERR_INVALID_HEADER",
                     "dtype must be a string"),
    # -- __metadata__ --
    "metadata_value_int": (build('{"__metadata__":{"k":1}}'), "STC_ERR_INVALID_HEADER",
                           "must be strings"),
    "metadata_value_null": (build('{"__metadata__":{"k":null}}'), "STC_ERR_INVALID_HEADER",
                            "must be strings"),
    "metadata_value_object": (build('{"__metadata__":{"k":{}}}'), "STC_ERR_INVALID_HEADER",
                              "must be strings"),
    "metadata_value_array": (build('{"__metadata__":{"k":["v"]}}'), "STC_ERR_INVALID_HEADER",
                             "must be strings"),
    "metadata_value_bool": (build('{"__metadata__":{"k":true}}'), "STC_ERR_INVALID_HEADER",
                            "must be strings"),
    "metadata_is_array": (build('{"__metadata__":[]}'), "STC_ERR_INVALID_HEADER",
                          "__metadata__ must be an object"),
    "metadata_is_string": (build('{"__metadata__":"x"}'), "STC_ERR_INVALID_HEADER",
                           "__metadata__ must be an object"),
    "metadata_is_number": (build('{"__metadata__":1}'), "STC_ERR_INVALID_HEADER",
                           "__metadata__ must be an object"),
    "metadata_is_true": (build('{"__metadata__":true}'), "STC_ERR_INVALID_HEADER",
                         "__metadata__ must be an object"),
    # -- duplicate keys, at every level --
    "dup_tensor_name": (build('{"a":{%s},"a":{%s}}' % (OK_ENTRY, OK_ENTRY), AB),
                        "STC_ERR_DUPLICATE_KEY", "'a'"),
    "dup_tensor_name_disjoint": (
        build('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
              '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', AB),
        "STC_ERR_DUPLICATE_KEY", "'a'"),
    "dup_tensor_name_escaped": (build('{"a":{%s},"\\u0061":{%s}}' % (OK_ENTRY, OK_ENTRY), AB),
                                "STC_ERR_DUPLICATE_KEY", "'a'"),
    "dup_field_dtype": (build(one('"dtype":"U8",'), AB), "STC_ERR_DUPLICATE_KEY", "twice"),
    "dup_field_shape": (build(one('"shape":[2],'), AB), "STC_ERR_DUPLICATE_KEY", "twice"),
    "dup_field_offsets": (build(one('"data_offsets":[0,2],'), AB), "STC_ERR_DUPLICATE_KEY",
                          "twice"),
    "dup_field_escaped": (build(one('"d\\u0074ype":"U8",'), AB), "STC_ERR_DUPLICATE_KEY",
                          "twice"),
    "dup_metadata": (build('{"__metadata__":{},"__metadata__":{}}'), "STC_ERR_DUPLICATE_KEY",
                     "__metadata__"),
    "dup_metadata_null": (build('{"__metadata__":null,"__metadata__":null}'),
                          "STC_ERR_DUPLICATE_KEY", "__metadata__"),
    "dup_metadata_key": (build('{"__metadata__":{"k":"1","k":"2"}}'), "STC_ERR_DUPLICATE_KEY",
                         "twice"),
    "dup_unknown_field": (build(one('"x":1,"x":1,'), AB), "STC_ERR_DUPLICATE_KEY", "twice"),
    "dup_key_nested_in_unknown": (build(one('"x":{"y":1,"y":2},'), AB), "STC_ERR_DUPLICATE_KEY",
                                  "twice"),
    "dup_key_deeply_nested": (build(one('"x":[{"o":{"y":[],"z":0,"y":[]}}],'), AB),
                              "STC_ERR_DUPLICATE_KEY", "twice"),
    # -- layout --
    "hole_at_start": (build({"a": entry("U8", [2], 1, 3)}, b"abc"), "STC_ERR_INVALID_OFFSETS",
                      "hole"),
    "hole_between": (build({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 3, 5)},
                           b"abcde"), "STC_ERR_INVALID_OFFSETS", "hole"),
    "overlap": (build({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 1, 3)}, b"abc"),
                "STC_ERR_INVALID_OFFSETS", "overlaps"),
    "same_range_twice": (build({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 0, 2)}, AB),
                         "STC_ERR_INVALID_OFFSETS", "overlaps"),
    "begin_after_end": (build({"a": entry("U8", [2], 2, 0)}, AB), "STC_ERR_INVALID_OFFSETS",
                        "begin is after end"),
    "begin_after_end_by_one": (build({"a": entry("U8", [0], 1, 0)}, b"x"),
                               "STC_ERR_INVALID_OFFSETS", "begin is after end"),
    "zero_size_inside_another": (build({"a": entry("U8", [8], 0, 8), "z": entry("U8", [0], 4, 4)},
                                       b"12345678"), "STC_ERR_INVALID_OFFSETS", "'z'"),
    "zero_size_past_end": (build({"a": entry("U8", [2], 0, 2), "z": entry("U8", [0], 3, 3)}, AB),
                           "STC_ERR_INVALID_OFFSETS", "'z'"),
    "zero_size_only_not_at_zero": (build({"z": entry("U8", [0], 1, 1)}, b"x"),
                                   "STC_ERR_INVALID_OFFSETS", "'z'"),
    "shape_overflow_count": (build({"a": entry("U8", [2**32, 2**32], 0, 0)}),
                             "STC_ERR_SIZE_OVERFLOW", "overflows"),
    "shape_overflow_bits": (build({"a": entry("F64", [2**61], 0, 0)}), "STC_ERR_SIZE_OVERFLOW",
                            "overflows"),
    "shape_overflow_many_dims": (build({"a": entry("U8", [65536] * 5, 0, 0)}),
                                 "STC_ERR_SIZE_OVERFLOW", "overflows"),
    "f4_odd_count": (build({"a": entry("F4", [3], 0, 2)}, AB), "STC_ERR_MISALIGNED",
                     "whole bytes"),
    "f4_odd_count_2d": (build({"a": entry("F4", [3, 3], 0, 5)}, b"abcde"), "STC_ERR_MISALIGNED",
                        "whole bytes"),
    "f6_three_values": (build({"a": entry("F6_E2M3", [3], 0, 2)}, AB), "STC_ERR_MISALIGNED",
                        "whole bytes"),
    "f6_e3m2_misaligned": (build({"a": entry("F6_E3M2", [5], 0, 4)}, b"abcd"),
                           "STC_ERR_MISALIGNED", "whole bytes"),
    "size_mismatch_short": (build({"a": entry("U8", [3], 0, 2)}, AB), "STC_ERR_SIZE_MISMATCH",
                            "different number of bytes"),
    "size_mismatch_long": (build({"a": entry("F32", [1], 0, 8)}, b"12345678"),
                           "STC_ERR_SIZE_MISMATCH", "different number of bytes"),
    "size_mismatch_zero_d": (build({"a": entry("F32", [], 0, 0)}), "STC_ERR_SIZE_MISMATCH",
                             "different number of bytes"),
    "size_mismatch_empty": (build({"a": entry("F32", [0], 0, 4)}, b"1234"),
                            "STC_ERR_SIZE_MISMATCH", "different number of bytes"),
    "size_mismatch_huge_end": (build({"a": entry("U8", [2], 0, 2**64 - 1)}, AB),
                               "STC_ERR_SIZE_MISMATCH", "different number of bytes"),
    "truncated_data": (build({"a": entry("U8", [2], 0, 2)}, b"a"), "STC_ERR_TRUNCATED_DATA",
                       "ends before"),
    "truncated_no_data": (build({"a": entry("F64", [4], 0, 32)}), "STC_ERR_TRUNCATED_DATA",
                          "ends before"),
    "trailing_bytes": (build({"a": entry("U8", [2], 0, 2)}, b"abc"), "STC_ERR_TRAILING_DATA",
                       "follow the last tensor"),
    "trailing_bytes_no_tensors": (build(b"{}", b"\x00"), "STC_ERR_TRAILING_DATA",
                                  "follow the last tensor"),
    "trailing_bytes_metadata_only": (build('{"__metadata__":{"a":"b"}}', b"xyz"),
                                     "STC_ERR_TRAILING_DATA", "follow the last tensor"),
    "trailing_bytes_after_zero_size": (build({"z": entry("U8", [0], 0, 0)}, b"x"),
                                       "STC_ERR_TRAILING_DATA", "follow the last tensor"),
    # -- other formats --
    "pickle_protocol_2": (a_pickle(2), "STC_ERR_NOT_SAFETENSORS", "pickle"),
    "pickle_protocol_3": (a_pickle(3), "STC_ERR_NOT_SAFETENSORS", "pickle"),
    "pickle_protocol_4": (a_pickle(4), "STC_ERR_NOT_SAFETENSORS", "pickle"),
    "pickle_protocol_5": (a_pickle(5), "STC_ERR_NOT_SAFETENSORS", "pickle"),
    "pickle_tiny": (pickle.dumps(None, protocol=2), "STC_ERR_NOT_SAFETENSORS", "pickle"),
    "zip": (a_zip(), "STC_ERR_NOT_SAFETENSORS", "ZIP"),
    "git_lfs_pointer": (LFS, "STC_ERR_NOT_SAFETENSORS", "Git LFS"),
    "html_page": (HTML, "STC_ERR_NOT_SAFETENSORS", "HTML"),
    "npy": (a_npy(), "STC_ERR_NOT_SAFETENSORS", ".npy"),
}


def _open_and_read(path, backend):
    with safe_open(path, "np", backend=backend) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.fixture(params=["mmap", "pread", "load_bytes"])
def reader(request, tmp_path):
    def read(data: bytes):
        if request.param == "load_bytes":
            return safetensors_c.load(data)
        path = tmp_path / "bad.safetensors"
        path.write_bytes(data)
        return _open_and_read(path, request.param)

    read.kind = request.param
    return read


@pytest.mark.parametrize("case", list(BAD))
def test_rejected(case, reader):
    data, code, fragment = BAD[case]
    with pytest.raises(SafetensorError) as info:
        reader(data)
    err = info.value
    assert getattr(err, "code", None) == code, str(err)
    assert fragment in str(err)


@pytest.mark.parametrize("case", list(BAD))
def test_load_file_rejects_too(case, tmp_path):
    data, code, _ = BAD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(path)
    assert info.value.code == code


def test_error_message_names_the_file(tmp_path):
    path = tmp_path / "named.safetensors"
    path.write_bytes(BAD["overlap"][0])
    with pytest.raises(SafetensorError) as info:
        safe_open(path, "np")
    assert str(path) in str(info.value)
    assert "'b'" in str(info.value)


@pytest.mark.parametrize(
    "header, expected_offset",
    [
        (b'{"a":{"x":01,' + OK_ENTRY.encode() + b"}}", 8 + 11),  # at the 2nd digit
        (b"{}x", 8 + 2),
        (b'{"\xff":1}', 8 + 2),
    ],
)
def test_error_message_has_the_byte_offset(header, expected_offset):
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load(build(header, pad=False))
    assert f"at byte {expected_offset} of the file" in str(info.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("shape", "[NaN]"),
        ("shape", "[+2]"),
        ("shape", "[2,]"),
        ("data_offsets", "[0,Infinity]"),
        ("data_offsets", "[0,2,]"),
    ],
)
def test_json_syntax_errors_inside_shape_are_json_errors(field, value):
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load(build(with_field(field, value), AB))
    assert info.value.code == "STC_ERR_INVALID_JSON"


@pytest.mark.parametrize(
    "field, value",
    [("shape", "[NaN]"), ("shape", "[+2]"), ("shape", "[2,]"), ("data_offsets", "[0,2,]")],
)
def test_json_syntax_errors_inside_shape_are_rejected(field, value):
    with pytest.raises(SafetensorError):
        safetensors_c.load(build(with_field(field, value), AB))


@pytest.mark.parametrize(
    "header",
    [
        '{"__metadata__":{"k":"1","k":"2"}}',
        '{"__metadata__":{"k":1}}',
        one('"k":1,"k":1,'),
        one('"x":{"k":1,"k":1},'),
    ],
    ids=["dup_metadata_key", "metadata_value_type", "dup_unknown_field", "dup_nested_key"],
)
def test_non_tensor_keys_are_not_called_tensors(header):
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load(build(header, AB if '"a"' in header else b""))
    message = str(info.value)
    assert "'k'" in message or '"k"' in message
    assert "tensor 'k'" not in message


# MARK: - Files that are accepted


def _accepted(header, data=b"", pad=True):
    return build(header, data, pad=pad)


GOOD = {
    "whitespace_around": (_accepted(" \t\r\n" + one() + "\n\t \r", AB), {"a": b"ab"}),
    "whitespace_inside": (_accepted('{ "a" : { "dtype" : "U8" , "shape" : [ 2 ] , '
                                    '"data_offsets" : [ 0 , 2 ] } }', AB), {"a": b"ab"}),
    "unpadded": (_accepted(one(), AB, pad=False), {"a": b"ab"}),
    "unpadded_n2": (_accepted(b"{}", pad=False), {}),
    "unpadded_n3": (_accepted(b" {}", pad=False), {}),
    "unknown_fields": (_accepted(one('"x":{"y":[1,-2.5e300,null,true,"s"]},"z":-0,'), AB),
                       {"a": b"ab"}),
    "unknown_field_last": (_accepted('{"a":{' + OK_ENTRY + ',"zz":[[{}]]}}', AB), {"a": b"ab"}),
    "escaped_field_name": (_accepted('{"a":{"d\\u0074ype":"U8","shape":[2],'
                                     '"data_offsets":[0,2]}}', AB), {"a": b"ab"}),
    "escaped_dtype_code": (_accepted(with_field("dtype", '"\\u0055\\u0038"'), AB), {"a": b"ab"}),
    "escaped_metadata_key": (_accepted('{"__m\\u0065tadata__":{"k":"v"}}'), {}),
    "escaped_slash_in_name": (_accepted('{"a\\/b":{' + OK_ENTRY + "}}", AB), {"a/b": b"ab"}),
    "all_simple_escapes": (_accepted('{"\\"\\\\\\/\\b\\f\\n\\r\\t":{' + OK_ENTRY + "}}", AB),
                           {'"\\/\b\f\n\r\t': b"ab"}),
    "surrogate_pair": (_accepted('{"\\ud83d\\ude00":{' + OK_ENTRY + "}}", AB), {"😀": b"ab"}),
    "max_code_point": (_accepted('{"\\udbff\\udfff":{' + OK_ENTRY + "}}", AB),
                       {"\U0010ffff": b"ab"}),
    "uppercase_hex_escape": (_accepted('{"\\u00E9":{' + OK_ENTRY + "}}", AB), {"é": b"ab"}),
    "raw_utf8_name": (_accepted('{"é😀":{' + OK_ENTRY + "}}", AB), {"é😀": b"ab"}),
    "raw_del_char": (_accepted('{"a\x7f":{' + OK_ENTRY + "}}", AB), {"a\x7f": b"ab"}),
    "escaped_nul_in_name": (_accepted('{"a\\u0000":{' + OK_ENTRY + "}}", AB), {"a\x00": b"ab"}),
    "empty_name": (_accepted('{"":{' + OK_ENTRY + "}}", AB), {"": b"ab"}),
    "metadata_null": (_accepted('{"__metadata__":null}'), {}),
    "metadata_empty_strings": (_accepted('{"__metadata__":{"":""}}'), {}),
    "empty_object": (_accepted(b"{}"), {}),
    "zero_d": (_accepted({"s": entry("U8", [], 0, 1)}, b"\x07"), {"s": b"\x07"}),
    "zero_size_shared_offsets": (
        _accepted({"a": entry("U8", [0], 0, 0), "b": entry("F32", [0, 5], 0, 0),
                   "c": entry("U8", [2], 0, 2)}, AB),
        {"a": b"", "b": b"", "c": b"ab"}),
    "zero_size_between": (
        _accepted({"a": entry("U8", [2], 0, 2), "z": entry("U8", [0], 2, 2),
                   "b": entry("U8", [1], 2, 3)}, b"abc"),
        {"a": b"ab", "z": b"", "b": b"c"}),
    "zero_size_at_end": (_accepted({"a": entry("U8", [2], 0, 2), "z": entry("I64", [0], 2, 2)},
                                   AB), {"a": b"ab", "z": b""}),
    "huge_dim_times_zero": (_accepted({"a": entry("U8", [2**40, 0], 0, 0)}), {"a": b""}),
    "nesting_127_arrays": (_accepted(one('"x":%s,' % nested_arrays(125)), AB), {"a": b"ab"}),
    "nesting_127_objects": (_accepted(one('"x":%s,' % nested_objects(125)), AB), {"a": b"ab"}),
    "f4_even": (_accepted({"p": entry("F4", [2, 2], 0, 2)}, AB), {"p": b"ab"}),
    "f6_four": (_accepted({"p": entry("F6_E3M2", [4], 0, 3)}, b"abc"), {"p": b"abc"}),
    "same_key_in_different_objects": (
        _accepted('{"a":{"x":{"k":1},"y":{"k":1},' + OK_ENTRY + "}}", AB), {"a": b"ab"}),
    "unknown_field_named_metadata": (_accepted(one('"__metadata__":1,'), AB), {"a": b"ab"}),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_accepted(case, reader):
    data, expected = GOOD[case]
    tensors = reader(data)
    assert sorted(tensors) == sorted(expected)
    for name, raw in expected.items():
        assert tensors[name].tobytes() == raw


def test_zero_size_tensors_sharing_offsets_keep_order(craft):
    path = craft({"b": entry("U8", [0], 0, 0), "a": entry("U8", [0], 0, 0),
                  "x": entry("U8", [2], 0, 2)}, AB)
    with safe_open(path, "np") as f:
        assert f.keys() == ["a", "b", "x"]
        assert f.offset_keys() == ["a", "b", "x"]


def test_maximum_u64_dimension_is_not_a_crash():
    # Valid per the format (zero elements), but NumPy cannot hold the dimension.
    data = build({"a": entry("U8", [2**64 - 1, 0], 0, 0)})
    with pytest.raises((SafetensorError, ValueError)) as info:
        safetensors_c.load(data)
    assert "too large" in str(info.value) or "dimension" in str(info.value)


def test_metadata_values_decoded(craft):
    path = craft('{"__metadata__":{"k\\n":"v\\u00e9\\ud83d\\ude00","\\u0000":"\\""}}')
    with safe_open(path, "np") as f:
        assert f.metadata() == {"k\n": "vé😀", "\x00": '"'}


# MARK: - max_header_size


def test_max_header_size_lowers_the_cap(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors_c.save_file({"a": np.zeros(3)}, path, metadata={"k": "v" * 100})
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    with safe_open(path, "np", max_header_size=n) as f:
        assert f.keys() == ["a"]
    for backend in ("mmap", "pread"):
        with pytest.raises(SafetensorError) as info:
            safe_open(path, "np", backend=backend, max_header_size=n - 1)
        assert info.value.code == "STC_ERR_HEADER_TOO_LARGE"
        assert "max_header_size" in str(info.value)


def test_max_header_size_raises_the_cap(tmp_path):
    n = 100_000_008
    path = tmp_path / "huge_header.safetensors"
    # '{}' followed by spaces up to n bytes: valid, but above the default cap.
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + b"{}")
        chunk = b" " * (1 << 22)
        remaining = n - 2
        while remaining:
            step = min(remaining, len(chunk))
            f.write(chunk[:step])
            remaining -= step
    with pytest.raises(SafetensorError) as info:
        safe_open(path, "np")
    assert info.value.code == "STC_ERR_HEADER_TOO_LARGE"
    with safe_open(path, "np", backend="pread", max_header_size=n) as f:
        assert f.keys() == []
        assert f.metadata() is None


# MARK: - Valid files that NumPy cannot represent


@pytest.mark.parametrize(
    "dtype, shape",
    [
        ("F32", [0, 2**40, 2**40]),  # zero-size, but NumPy refuses the size product
        ("U8", [0, 2**63 + 1]),  # a dimension above NumPy's index type
        ("F32", [0, 2**61]),  # 4 * 2**61 bytes per row: just past the limit
        ("U8", [1] * 65),  # more dimensions than NumPy arrays have
    ],
    ids=["size-product", "huge-dimension", "itemsize-times-dim", "65-dimensions"],
)
def test_tensors_beyond_numpy_raise_safetensor_error(dtype, shape, backend, tmp_path):
    nbytes = 0 if 0 in shape else 1
    data = build({"t": entry(dtype, shape, 0, nbytes)}, b"\0" * nbytes)
    path = tmp_path / "beyond.safetensors"
    path.write_bytes(data)
    with safe_open(path, "np", backend=backend) as f:
        assert f.keys() == ["t"]  # the file itself is valid
        with pytest.raises(SafetensorError) as info:
            f.get_tensor("t")
    assert info.value.code == "STC_ERR_SIZE_OVERFLOW"
    assert "'t'" in str(info.value) and "NumPy" in str(info.value)


def test_largest_zero_size_tensor_numpy_can_hold_loads():
    data = build({"t": entry("F32", [0, 2**60], 0, 0)})
    assert safetensors_c.load(data)["t"].shape == (0, 2**60)
