"""Text from a file never drives the terminal.

An adversary names tensors, metadata keys and values, shard files, pickle
globals and the files themselves with escape sequences: an OSC 0 window
title, a CSI screen clear, an OSC 8 hyperlink, a CR that overwrites the line
with "digests verified", a one-byte C1 CSI, bidi overrides, DEL and BS, NUL
and its neighbours. Every CLI command, table, JSON or error line, shows them
as visible escapes; --json loads back to exactly the original strings; the
library's own messages and the notebook text stay safe too.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open, save_file
from safetensors_c._terminal import dumps, escape_message, escape_name, escape_prose
from safetensors_c.cli import main
from safetensors_c.convert import UnsafePickleError, convert
from safetensors_c.integrity import save_file_with_digests

ROOT = Path(__file__).resolve().parent.parent

PAYLOADS = {
    "osc0-title": "\x1b]0;pwned\x07",
    "csi-clear": "\x1b[2J\x1b[H",
    "osc8-link": "\x1b]8;;https://evil.example/\x1b\\trusted\x1b]8;;\x1b\\",
    "cr-overwrite": "x\rdigests verified",
    "c1-csi": "\x9b2J\x9d0;t\x9c",
    "bidi-override": "\u202egnp.exe",
    "bidi-isolates": "\u2066a\u2069\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u2067\u2068",
    "del-bs": "ok\x7f\x08\x08\x08",
    "nul-adjacent": "\x00\x01\x1f\x0b\x0c\x1a",
}
# Characters a file may not get onto the terminal (TAB and LF are ours to print).
BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def unsafe(text: str) -> list[str]:
    return [c for c in text
            if (ord(c) < 0x20 and c not in "\t\n") or 0x7f <= ord(c) <= 0x9f or c in BIDI
            or 0xD800 <= ord(c) <= 0xDFFF]


def assert_safe(text: str) -> None:
    found = unsafe(text)
    assert not found, f"raw control characters reached the output: {found!r} in {text!r}"


def assert_safe_bytes(data: bytes) -> None:
    bad = sorted({b for b in data if b < 0x20 and b not in b"\t\n" or b == 0x7f})
    assert not bad, f"raw control bytes reached the output: {bad!r}"
    assert_safe(data.decode("utf-8"))  # strict: no stray byte (a raw 0x9b is CSI to 8-bit terminals)


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "safetensors_c", *args], capture_output=True,
                          env=env, timeout=120)


def _hostile_file(tmp_path, payload, digests=False):
    path = tmp_path / "m.safetensors"
    tensors = {"t" + payload: np.arange(4, dtype=np.float32), "plain": np.zeros(2, np.int8)}
    metadata = {"k" + payload: "v" + payload, "note": "tab\there\nnew line"}
    (save_file_with_digests if digests else save_file)(tensors, path, metadata=metadata)
    return path, tensors, metadata


def _stack_global_pickle(path, module, name):
    def unicode(text):
        raw = text.encode("utf-8")
        return b"\x8c" + bytes([len(raw)]) + raw

    path.write_bytes(b"\x80\x04" + unicode(module) + unicode(name) + b"\x93)R.")
    return path


# MARK: the escaping itself ------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_every_escape_is_visible_and_maps_back(payload):
    for escape in (escape_name, escape_prose, escape_message):
        shown = escape(payload)
        assert_safe(shown)
        assert shown.isprintable()
    assert escape_name(payload).encode().decode("unicode_escape") == payload
    assert json.loads(dumps({"k": [payload]}, indent=2)) == {"k": [payload]}


def test_backslash_is_escaped_so_names_are_unambiguous():
    assert escape_name("a\x1bb") == r"a\x1bb"
    assert escape_name(r"a\x1bb") == r"a\\x1bb"
    assert escape_name("tab\there") == r"tab\there"
    assert escape_name("\u202e\U000e0041\udcff") == r"\u202e\U000e0041\udcff"
    assert escape_message("x\rdigests verified") == r"x\rdigests verified"
    assert escape_message(escape_message("a\n\x1b b")) == escape_message("a\n\x1b b") == r"a \x1b b"


def test_prose_keeps_joiners_and_spaces_names_do_not():
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ is spelling here
    assert escape_prose(persian) == persian
    assert escape_name(persian) == persian.replace("\u200c", r"\u200c")
    assert escape_prose("a\u00a0b\u200db") == "a\u00a0b\u200db"
    assert escape_name("a\u00a0b\u200db") == r"a\xa0b\u200db"
    assert escape_prose("\u200b\ufeff\u2028\U000e0041") == r"\u200b\ufeff\u2028\U000e0041"


def test_plain_text_is_unchanged():
    for text in ("model.layers.0.weight", "日本語の名前", "naïve café", "emoji 🦀"):
        assert escape_name(text) == escape_prose(text) == escape_message(text) == text


# MARK: inspect ---------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_inspect_table_escapes_names_and_metadata(tmp_path, capsys, payload):
    path, _, _ = _hostile_file(tmp_path, payload)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert_safe(out)
    assert "t" + escape_name(payload) in out
    assert f"k{escape_name(payload)}: v{escape_prose(payload)}" in out
    assert r"note: tab\there\nnew line" in out  # one table line per entry


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_inspect_json_is_exact_and_safe(tmp_path, capsys, payload):
    path, tensors, metadata = _hostile_file(tmp_path, payload)
    assert main(["inspect", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert_safe(out)
    data = json.loads(out)
    assert data["metadata"] == metadata
    assert sorted(r["name"] for r in data["tensors"]) == sorted(tensors)


def test_inspect_json_keeps_readable_text_readable(tmp_path, capsys):
    path = tmp_path / "u.safetensors"
    save_file({"重み": np.zeros(1, np.float32)}, path, metadata={"note": "naïve"})
    assert main(["inspect", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"重み"' in out and '"naïve"' in out


def test_inspect_sharded_escapes_the_shard_file_names(tmp_path, capsys):
    payload = PAYLOADS["csi-clear"]
    shard = "s" + payload + ".safetensors"
    save_file({"w" + payload: np.zeros(2, np.float32)}, tmp_path / shard)
    index = {"metadata": {"total_size": 8, "x" + payload: "y" + payload},
             "weight_map": {"w" + payload: shard}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert_safe(out)
    assert escape_name(shard) in out and "w" + escape_name(payload) in out
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert_safe(out)
    data = json.loads(out)
    assert [(r["name"], r["file"]) for r in data["tensors"]] == [("w" + payload, shard)]
    assert data["metadata"]["x" + payload] == "y" + payload


# MARK: verify ----------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_verify_lines_are_safe(tmp_path, capsys, payload):
    path, _, _ = _hostile_file(tmp_path, payload, digests=True)
    assert main(["verify", "--quiet", str(path)]) == 0
    captured = capsys.readouterr()
    assert_safe(captured.out + captured.err)
    raw = bytearray(path.read_bytes())
    raw[-9] ^= 0xFF  # a byte of the tensor named after the payload (sorted first)
    path.write_bytes(bytes(raw))
    assert main(["verify", "--quiet", str(path)]) == 1
    captured = capsys.readouterr()
    assert_safe(captured.out + captured.err)
    assert "SHA-256 mismatch" in captured.err and repr("t" + payload) in captured.err


# MARK: scan and convert -------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_scan_escapes_the_globals_a_pickle_names(tmp_path, capsys, payload):
    src = _stack_global_pickle(tmp_path / "evil.pkl", "os" + payload, "system")
    assert main(["scan", str(src)]) == 1
    out = capsys.readouterr().out
    assert_safe(out)
    assert "UNSAFE global os" + escape_name(payload) + ".system" in out
    assert main(["scan", str(src), "--json"]) == 1
    out = capsys.readouterr().out
    assert_safe(out)
    names = [f["name"] for f in json.loads(out)[0]["findings"]]
    assert "os" + payload + ".system" in names


def test_scan_text_cannot_be_given_a_fake_line(tmp_path, capsys):
    src = _stack_global_pickle(tmp_path / "evil.pkl", "os", "system\n  ok global builtins.dict")
    assert main(["scan", str(src)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert lines[1].startswith("  UNSAFE global os.system\\n  ok global builtins.dict")


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_convert_error_line_is_safe(tmp_path, capsys, payload):
    src = _stack_global_pickle(tmp_path / "evil.pkl", "os" + payload, "system")
    assert main(["convert", str(src), str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err
    assert_safe(err)
    assert len(err.strip().splitlines()) == 1
    # The library's message already names the global escaped (a backslash
    # doubled, so the text is unambiguous); the CLI line keeps it as it is.
    assert escape_name("os" + payload) + ".system" in err
    assert not (tmp_path / "o.safetensors").exists()


# MARK: hostile paths -----------------------------------------------------------------


PATH_PAYLOADS = {k: v for k, v in PAYLOADS.items() if "\x00" not in v and "/" not in v}


@pytest.mark.parametrize("payload", PATH_PAYLOADS.values(), ids=PATH_PAYLOADS.keys())
@pytest.mark.parametrize("command", ["inspect", "inspect-json", "verify", "scan", "scan-json",
                                     "convert", "missing"])
def test_a_file_named_with_escapes(tmp_path, capsys, payload, command):
    path = tmp_path / f"m{payload}.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, path)
    pkl = _stack_global_pickle(tmp_path / f"p{payload}.pkl", "os", "system")
    benign = tmp_path / f"b{payload}.npy"
    np.save(benign, np.arange(3.0))
    argv = {
        "inspect": ["inspect", str(path)],
        "inspect-json": ["inspect", "--json", str(path)],
        "verify": ["verify", "--quiet", str(path)],
        "scan": ["scan", str(pkl)],
        "scan-json": ["scan", "--json", str(pkl)],
        "convert": ["convert", str(benign), str(tmp_path / f"o{payload}.safetensors")],
        "missing": ["inspect", str(tmp_path / f"gone{payload}.safetensors")],
    }[command]
    main(argv)
    captured = capsys.readouterr()
    assert_safe(captured.out + captured.err)
    if command.endswith("json"):
        data = json.loads(captured.out)
        shown = data["file"] if command == "inspect-json" else data[0]["path"]
        assert shown == argv[-1]
    elif command == "missing":  # the path inside an error message
        assert escape_message(payload) in captured.err
    elif command != "inspect":  # the table does not show the path; the others name it
        assert escape_name(payload) in captured.out


def test_undecodable_file_names_reach_no_terminal_raw(tmp_path):
    """A name that is not UTF-8 (a raw 0x9b byte is CSI on an 8-bit terminal)
    is shown escaped, never as the raw byte, and does not crash the output."""
    base = os.fsencode(tmp_path)
    path = base + b"/m\x9b2J\xff.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, path)
    for args in (["inspect", path], ["inspect", "--json", path], ["verify", path]):
        result = _run(*args)
        assert result.returncode == 0, result.stderr
        assert_safe_bytes(result.stdout + result.stderr)
        assert b"\x9b" not in result.stdout + result.stderr
    assert rb"m\udc9b2J\udcff.safetensors" in _run("verify", path).stdout  # verify names the path


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_subprocess_output_bytes_are_clean(tmp_path, payload):
    path, _, metadata = _hostile_file(tmp_path, payload)
    table = _run("inspect", str(path))
    as_json = _run("inspect", "--json", str(path))
    for result in (table, as_json):
        assert result.returncode == 0, result.stderr
        assert_safe_bytes(result.stdout + result.stderr)
    assert json.loads(as_json.stdout)["metadata"] == metadata


# MARK: malformed files and library messages ------------------------------------------


def _malformed(path, name):
    """A header whose one tensor's offsets run past the data it describes."""
    header = json.dumps({name: {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    return path


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_malformed_file_error_embeds_the_name_escaped(tmp_path, capsys, payload):
    path = _malformed(tmp_path / "bad.safetensors", "t" + payload)
    with pytest.raises(SafetensorError) as info:
        safe_open(path)
    assert_safe(str(info.value))
    assert repr("t" + payload) in str(info.value)
    for argv in (["inspect", str(path)], ["verify", str(path)]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert_safe(captured.out + captured.err)
        assert repr("t" + payload) in captured.err


@pytest.mark.parametrize("payload", PATH_PAYLOADS.values(), ids=PATH_PAYLOADS.keys())
def test_library_errors_quote_a_hostile_file_name(tmp_path, payload):
    path = _malformed(tmp_path / f"bad{payload}.safetensors", "t")
    with pytest.raises(SafetensorError) as info:
        safe_open(path)
    assert info.value.code == "STC_ERR_TRUNCATED_DATA"
    assert_safe(str(info.value))
    assert repr(str(path)) in str(info.value)


@pytest.mark.parametrize("payload", PATH_PAYLOADS.values(), ids=PATH_PAYLOADS.keys())
def test_a_missing_tensor_message_quotes_a_hostile_source_name(tmp_path, payload):
    """The name of a file object is text its caller may not control (an
    upload's file name): a missing tensor's message quotes it like a path."""
    path = tmp_path / "m.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, path)
    source = io.BytesIO(path.read_bytes())
    source.name = f"upload{payload}.safetensors"
    with pytest.raises(SafetensorError) as info:
        safe_open(source).get_tensor("nope")
    assert info.value.code == "STC_ERR_NO_SUCH_TENSOR"
    assert_safe(str(info.value))
    assert str(info.value) == f"{source.name!r}: no tensor named 'nope' in this file"


def test_library_errors_keep_a_plain_file_name_as_it_is(tmp_path):
    path = _malformed(tmp_path / "bad.safetensors", "t")
    with pytest.raises(SafetensorError) as info:
        safe_open(path)
    assert str(info.value).startswith(f"{path}: tensor 't': ")


def test_handle_text_is_escaped(tmp_path):
    payload = PAYLOADS["osc0-title"] + PAYLOADS["bidi-override"]
    path, _, _ = _hostile_file(tmp_path, payload)
    with safe_open(path) as f:
        text = safetensors_c._display.safe_open_text(f)
        for shown in (text, repr(f), repr(f.get_slice("t" + payload))):
            assert_safe(shown)
        assert "t" + escape_name(payload) in text


@pytest.mark.parametrize("payload", PATH_PAYLOADS.values(), ids=PATH_PAYLOADS.keys())
def test_convert_refusals_escape_the_globals_they_name(tmp_path, payload):
    """The library's UnsafePickleError names the global a pickle imports:
    that name is the pickle author's text."""
    src = tmp_path / "evil.pkl"
    src.write_bytes(b"c" + f"os{payload}".encode("utf-8", "surrogateescape")
                    + b"\nsystem\n(S'true'\ntR.")
    with pytest.raises(UnsafePickleError) as info:
        convert(str(src), str(tmp_path / "out.safetensors"))
    assert_safe(str(info.value))
    assert f"global {escape_name('os' + payload)}.system" in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()
