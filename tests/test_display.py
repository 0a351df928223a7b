"""Notebook display helpers: escaped, truncated HTML and short text."""

from __future__ import annotations

import numpy as np
import pytest

import safetensors_c

from safetensors_c import safe_open, save_file
from safetensors_c._display import (
    safe_open_html,
    safe_open_text,
    slice_text,
    tensors_html,
    tensors_text,
)

EVIL = "<script>alert(1)</script>"


def _file(tmp_path, n=3):
    tensors = {f"t{i:03d}": np.zeros((2, i + 1), np.float32) for i in range(n)}
    tensors[EVIL] = np.ones(4, np.int16)
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"note": '"><img src=x onerror=alert(1)>'})
    return path


def test_handle_html_escapes_names_and_metadata(tmp_path):
    with safe_open(_file(tmp_path)) as f:
        html = f._repr_html_()
        assert html == safe_open_html(f)
        assert f._ipython_key_completions_() == f.keys()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img" in html
    assert "<td>I16</td>" in html and "<td>[4]</td>" in html and "8 B" in html
    assert "<td>F32</td>" in html and "[2, 3]" in html


def test_truncation(tmp_path):
    with safe_open(_file(tmp_path, n=40)) as f:
        html = safe_open_html(f, max_rows=5)
        text = safe_open_text(f, max_rows=5)
    tensor_table, metadata_table = html.split("</table>")[:2]
    assert tensor_table.count("<tr><td><code>") == 5
    assert "… 36 more" in tensor_table
    assert "<code>note</code>" in metadata_table
    assert "… 36 more" in text
    assert "41 tensors" in text


def test_slice_and_dict(tmp_path):
    with safe_open(_file(tmp_path)) as f:
        sl = f.get_slice(EVIL)
        html = sl._repr_html_()
        text = slice_text(sl)
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "I16" in html and "[4]" in html
    assert text == f"TensorSlice {EVIL!r}: I16 [4] (8 B)"
    d = {EVIL: np.zeros((3, 2), np.float64), "b": np.zeros(1, np.uint8)}
    html = tensors_html(d, max_rows=1)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "F64" in html and "[3, 2]" in html and "… 1 more" in html
    assert tensors_text(d).splitlines()[0] == "2 tensors, 49 B"


def test_closed_handle(tmp_path):
    f = safe_open(_file(tmp_path))
    f.close()
    assert "closed" in f._repr_html_()


def test_item_access_is_get_tensor_and_completes_names(tmp_path):
    path = tmp_path / "items.safetensors"
    safetensors_c.save_file({"beta": np.arange(3), "alpha": np.ones(2)}, path)
    with safetensors_c.safe_open(path, "np") as f:
        assert f._ipython_key_completions_() == ["alpha", "beta"]
        assert np.array_equal(f["beta"], np.arange(3))
        with pytest.raises(safetensors_c.SafetensorError):
            f["gamma"]


def test_loaded_dicts_display_as_tables(tmp_path):
    path = tmp_path / "d.safetensors"
    safetensors_c.save_file({"w<script>": np.zeros((2, 3), np.float32)}, path)
    for loaded in (safetensors_c.load_file(path), safetensors_c.load(path.read_bytes())):
        assert isinstance(loaded, dict) and list(loaded) == ["w<script>"]
        html = loaded._repr_html_()
        assert "w&lt;script&gt;" in html and "<script>" not in html
        assert "<td>F32</td><td>[2, 3]</td><td>24 B</td>" in html


def test_sharded_handle_displays_a_table_and_completes_keys(tmp_path):
    tensors = {f"layer{i}": np.zeros((4, 4), np.float32) for i in range(3)}
    tensors[EVIL] = np.ones(4, np.int16)
    safetensors_c.save_sharded(tensors, tmp_path, max_shard_size=100, progress=False)
    with safetensors_c.safe_open_sharded(tmp_path) as f:
        html = f._repr_html_()
        assert f._ipython_key_completions_() == sorted(tensors)
        np.testing.assert_array_equal(f["layer1"], tensors["layer1"])
        shards = f.shard_files
    assert len(shards) >= 3
    assert EVIL not in html and "&lt;script&gt;" in html
    assert f"4 tensors in {len(shards)} shards" in html
    for name in ("layer0", shards[0], "F32", "[4, 4]"):
        assert name in html
    assert "closed" in f._repr_html_()


def test_control_characters_are_shown_as_escapes_in_html_and_text(tmp_path):
    """A name or value from the file may hold ESC sequences or a bidi override:
    in the notebook table and the text forms they are visible escapes, and the
    HTML escaping still applies on top."""
    name = "w\u202e<b>\x1b]0;t\x07"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ is part of the spelling
    path = tmp_path / "c.safetensors"
    save_file({name: np.zeros(2, np.float32)}, path,
              metadata={"k\x9b2J": "v\r\x7f " + persian})
    with safe_open(path) as f:
        html = f._repr_html_()
        text = safe_open_text(f)
    for shown in (html, text, tensors_text({name: np.zeros(1)})):
        assert not any(ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) <= 0x9f
                       or c == "\u202e" for c in shown), shown
    assert r"<code>w\u202e&lt;b&gt;\x1b]0;t\x07</code>" in html
    assert r"<code>k\x9b2J</code>" in html and r"v\r\x7f " + persian in html
    assert r"w\u202e<b>\x1b]0;t\x07: F32 [2]" in text
