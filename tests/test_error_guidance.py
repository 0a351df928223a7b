"""Errors say what to do next: close names for a missing tensor, what to
call instead of load_file, the byte counts of a size mismatch, a ScanReport
that shows its verdict, and a state_dict's _metadata not reported as lost."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, _core, safe_open
from safetensors_c._checks import did_you_mean
from safetensors_c.scan import scan

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["model.layers.0.weight", "model.layers.0.bias", "model.layers.1.weight", "lm_head.weight"]


@pytest.fixture()
def path(tmp_path):
    p = tmp_path / "m.safetensors"
    safetensors_c.save_file({n: np.zeros(2, np.float32) for n in NAMES}, p)
    return p


def _sources(path):
    """Every kind of source a safe_open can read: mapped, pread, file objects."""
    yield "mmap", safe_open(path, "np")
    yield "pread", safe_open(path, "np", backend="pread")
    yield "bytesio", safetensors_c._open._safe_open_handle(io.BytesIO(path.read_bytes()))
    with open(path, "rb") as fd:
        yield "fd", safetensors_c._open._safe_open_handle(fd)


# MARK: did you mean ------------------------------------------------------------


@pytest.mark.parametrize("access", ["get_tensor", "get_slice", "getitem"])
def test_a_typo_suggests_the_close_name_on_every_source(path, access):
    for kind, f in _sources(path):
        with f:
            with pytest.raises(SafetensorError) as info:
                if access == "get_tensor":
                    f.get_tensor("model.layers.0.weigth")
                elif access == "get_slice":
                    f.get_slice("model.layers.0.weigth")
                else:
                    f["model.layers.0.weigth"]
        assert str(info.value).endswith(
            "no tensor named 'model.layers.0.weigth' in this file; "
            "did you mean 'model.layers.0.weight'?"), kind
        assert info.value.code == "STC_ERR_NO_SUCH_TENSOR"


def test_no_suggestion_when_nothing_is_close(path):
    with safe_open(path, "np") as f, pytest.raises(SafetensorError) as info:
        f.get_tensor("optimizer.state")
    assert str(info.value).endswith("no tensor named 'optimizer.state' in this file")


def test_at_most_three_suggestions_all_equally_close(tmp_path):
    p = tmp_path / "many.safetensors"
    names = [f"layer.{c}.w" for c in "abcdef"]
    safetensors_c.save_file({n: np.zeros(1, np.uint8) for n in names}, p)
    with safe_open(p, "np") as f, pytest.raises(SafetensorError) as info:
        f.get_tensor("layer.x.w")
    assert str(info.value).endswith(
        "did you mean 'layer.a.w', 'layer.b.w' or 'layer.c.w'?")


def test_a_suggested_name_with_control_characters_is_escaped(tmp_path):
    p = tmp_path / "esc.safetensors"
    safetensors_c.save_file({"w\x1b[2Jx": np.zeros(1, np.uint8)}, p)
    with safe_open(p, "np") as f, pytest.raises(SafetensorError) as info:
        f.get_tensor("w\x1b[2Jy")
    assert "\x1b" not in str(info.value)
    assert "did you mean 'w\\x1b[2Jx'?" in str(info.value)


def test_suggestions_stay_cheap_on_100000_names(tmp_path):
    p = tmp_path / "big.safetensors"
    names = [f"model.layers.{i}.{part}.weight" for i in range(20000)
             for part in ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")]
    safetensors_c.save_file({n: np.zeros(1, np.uint8) for n in names}, p)
    with safe_open(p, "np") as f:
        start = time.monotonic()
        with pytest.raises(SafetensorError, match=r"did you mean 'model\.layers\.19999\."
                                                  r"down_proj\.weight'\?$"):
            f.get_tensor("model.layers.19999.down_proj.weigth")
        assert time.monotonic() - start < 2.0  # difflib takes ~6 s here


def test_close_names_function():
    assert _core.close_names("abc", ["abd", "xyz", 3, "abc\udcff"]) == ["abd"]
    assert _core.close_names("abc", []) == []
    assert did_you_mean("bais", ["bias", "weight"]) == "; did you mean 'bias'?"
    assert did_you_mean(3, ["bias"]) == ""
    with pytest.raises(TypeError):
        _core.close_names(b"abc", ["abc"])


def test_a_sharded_handle_names_the_checkpoint_and_suggests(tmp_path):
    tensors = {n: np.zeros(64, np.float32) for n in NAMES}
    safetensors_c.save_sharded(tensors, tmp_path / "ck", max_shard_size=300)
    index = str(tmp_path / "ck" / "model.safetensors.index.json")
    with safetensors_c.safe_open_sharded(tmp_path / "ck") as f:
        with pytest.raises(SafetensorError) as info:
            f.get_tensor("lm_head.wieght")
    assert str(info.value) == (f"no tensor named 'lm_head.wieght' in checkpoint {index!r}; "
                               f"did you mean 'lm_head.weight'?")
    assert info.value.code == "STC_ERR_NO_SUCH_TENSOR"


# MARK: what load_file should have been -------------------------------------------


def test_load_file_on_a_sharded_directory_points_to_load_sharded(tmp_path):
    safetensors_c.save_sharded({n: np.zeros(64, np.float32) for n in NAMES}, tmp_path / "ck",
                               max_shard_size=300)
    ck = str(tmp_path / "ck")
    with pytest.raises(IsADirectoryError) as info:
        safetensors_c.load_file(ck)
    assert info.value.filename == ck
    assert f"it is a sharded checkpoint: load it with safetensors_c.load_sharded({ck!r})" \
        in str(info.value)
    torch = pytest.importorskip("torch")
    import safetensors_c.torch as st_torch  # noqa: F401
    with pytest.raises(IsADirectoryError, match=r"safetensors_c\.torch\.load_sharded\("):
        safetensors_c.torch.load_file(ck)
    assert torch is not None


def test_load_file_on_another_directory_still_names_both_ways(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsADirectoryError, match=r"for a sharded checkpoint call "
                                                r"safetensors_c\.load_sharded\(.*"
                                                r"`safetensors-c convert`"):
        safetensors_c.load_file(tmp_path / "empty")
    (tmp_path / "bins").mkdir()
    (tmp_path / "bins" / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    with pytest.raises(IsADirectoryError, match="it holds PyTorch checkpoint files: convert "
                                                "them with `safetensors-c convert DIR OUT_DIR`"):
        safetensors_c.load_file(tmp_path / "bins")


def test_load_file_on_an_index_points_to_load_sharded(tmp_path):
    safetensors_c.save_sharded({n: np.zeros(64, np.float32) for n in NAMES}, tmp_path / "ck",
                               max_shard_size=300)
    index = str(tmp_path / "ck" / "model.safetensors.index.json")
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(index)
    assert info.value.code == "STC_ERR_NOT_SAFETENSORS"
    assert str(info.value).endswith(
        f"; an index loads with safetensors_c.load_sharded({index!r}) (or its directory)")


def test_load_file_on_a_pickle_points_to_convert(tmp_path):
    p = tmp_path / "model.pkl"
    p.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(p)
    assert info.value.code == "STC_ERR_NOT_SAFETENSORS"
    assert "loading it would run code; convert it first with " \
           f"`safetensors-c convert {str(p)!r} OUT.safetensors`" in str(info.value)


def test_other_open_errors_are_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError):
        safetensors_c.load_file(tmp_path / "absent.safetensors")
    (tmp_path / "t.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}      ")
    safetensors_c.load_file(tmp_path / "t.safetensors")  # an empty file loads


# MARK: data_offsets ------------------------------------------------------------------


def _raw_file(path, header: dict, data_len: int) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * data_len)


def test_a_size_mismatch_gives_both_byte_counts(tmp_path):
    p = tmp_path / "bad.safetensors"
    _raw_file(p, {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, 12)
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load_file(p)
    assert info.value.code == "STC_ERR_SIZE_MISMATCH"
    assert ("tensor 'x': data_offsets span a different number of bytes than shape and dtype "
            "need: they hold 12 bytes, but the dtype and shape need 16 (at byte") \
        in str(info.value)
    # the other size messages keep their own wording
    _raw_file(p, {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4)
    with pytest.raises(SafetensorError, match="the header describes a file of") as info:
        safetensors_c.load_file(p)
    assert "they hold" not in str(info.value)


# MARK: ScanReport ---------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_scan_report_repr_shows_the_verdict(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"a": _Evil()}, protocol=4))
    report = scan(p)
    text = repr(report)
    assert text.startswith(f"<ScanReport unsafe: {p} (pickle), 1 finding, 1 not safe: ")
    assert "global posix.system (not on the allow-list)>" in text
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert repr(scan(ok)) == f"<ScanReport safe: {ok} (pickle), 0 findings>"


def test_scan_report_repr_shows_three_reasons_then_counts(tmp_path):
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps([_Evil(), subprocess.Popen, sys.exit, os.remove], protocol=4))
    report = scan(p)
    assert len(report.reasons) == 4
    assert repr(report).endswith("; and 1 more>")


def test_scan_report_html_is_a_table_and_escaped(tmp_path):
    p = tmp_path / "<script>.pkl"
    p.write_bytes(pickle.dumps({"a": _Evil()}, protocol=4))
    page = scan(p)._repr_html_()
    assert page.startswith('<table class="safetensors-c"><caption><b>unsafe</b>: ')
    assert "&lt;script&gt;.pkl" in page and "<script>" not in page
    assert "<td>UNSAFE</td><td>global</td><td>posix.system</td>" in page


def test_scan_report_repr_escapes_the_path(tmp_path):
    p = tmp_path / "a\x1b[2J.pkl"
    p.write_bytes(pickle.dumps(1, protocol=4))
    assert "\x1b" not in repr(scan(p))


# MARK: a state_dict's _metadata ---------------------------------------------------------


def test_convert_names_module_versions_apart(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors_c.convert import convert
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    report = convert(tmp_path / "sd.pt", tmp_path / "sd.safetensors")
    assert report.skipped == ["_metadata"] and report.module_versions == ["_metadata"]
    assert report.skipped_summary() == (
        ", torch's _metadata (module versions) not kept (--keep-scalars keeps it)")
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    report = convert(tmp_path / "ck.pt", tmp_path / "ck.safetensors")
    assert report.skipped_summary() == (
        ", 1 non-tensor value skipped, torch's _metadata (module versions) not kept "
        "(--keep-scalars keeps them in metadata)")
    report = convert(tmp_path / "ck.pt", tmp_path / "ck.safetensors", keep_scalars=True)
    assert report.skipped_summary() == ""


def test_cli_convert_of_a_state_dict_does_not_count_metadata_as_lost(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    proc = subprocess.run([sys.executable, "-m", "safetensors_c", "convert",
                           str(tmp_path / "sd.pt"), str(tmp_path / "sd.safetensors")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(
        ": 2 tensors, torch's _metadata (module versions) not kept (--keep-scalars keeps it)")
    assert "non-tensor value" not in proc.stdout
