"""The safetensors-c command line, via main(argv) and as a subprocess."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safetensors_c import load_file, save_file
from safetensors_c import safe_open as safe_open_np
from safetensors_c.cli import main
from safetensors_c.integrity import save_file_with_digests

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "safetensors_c", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.int8)}, path,
              metadata={"format": "np"})
    return path


def test_inspect_table_and_json(model, capsys):
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert "w" in out and "F32" in out and "[2, 3]" in out and "format: np" in out
    assert main(["inspect", str(model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metadata"] == {"format": "np"}
    rows = {r["name"]: r for r in data["tensors"]}
    assert rows["w"]["size"] == 24 and rows["w"]["shape"] == [2, 3]
    assert rows["b"]["offset"] == rows["w"]["offset"] + 24
    assert rows["w"]["offset"] % rows["w"]["alignment"] == 0


def test_verify(tmp_path, model, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model.read_bytes()[:-1])
    assert main(["verify", str(model)]) == 0
    assert main(["verify", str(model), str(bad), str(tmp_path / "missing")]) == 1
    captured = capsys.readouterr()
    assert f"OK  {model}" in captured.out
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 2 and all(line.startswith("BAD ") for line in err_lines)
    assert str(bad) in err_lines[0]


def test_verify_digests(tmp_path, capsys):
    path = tmp_path / "d.safetensors"
    save_file_with_digests({"x": np.arange(4, dtype=np.int32)}, path)
    assert main(["verify", str(path)]) == 0
    assert "digests verified" in capsys.readouterr().out
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and "'x'" in err


def test_convert_and_scan_subprocess(tmp_path):
    src = tmp_path / "a.pkl"
    src.write_bytes(pickle.dumps({"x": np.arange(3.0)}, protocol=4))
    dst = tmp_path / "a.safetensors"
    result = _run("convert", str(src), str(dst))
    assert result.returncode == 0, result.stderr
    assert load_file(dst)["x"].tolist() == [0.0, 1.0, 2.0]
    result = _run("scan", str(src))
    assert result.returncode == 0 and "safe" in result.stdout


def test_unsafe_scan_and_convert_give_one_line(tmp_path, capsys):
    src = tmp_path / "evil.pkl"
    src.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    assert main(["scan", str(src)]) == 1
    assert "UNSAFE global os.system" in capsys.readouterr().out
    result = _run("convert", str(src), str(tmp_path / "o.safetensors"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "os.system" in result.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_file_never_tracebacks(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 3)
    for args in (["inspect", str(junk)], ["verify", str(junk)],
                 ["convert", str(junk), str(tmp_path / "o.safetensors")]):
        result = _run(*args)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_builtin_bench(capsys):
    assert main(["bench", "--builtin"]) == 0
    assert "safetensors_c" in capsys.readouterr().out


def test_usage_error_exit_status():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_inspect_and_verify_sharded(tmp_path, capsys):
    sharded = pytest.importorskip("safetensors_c.sharded")
    tensors = {f"w{i}": np.full(1000, i, np.float32) for i in range(4)}
    sharded.save_sharded(tensors, tmp_path / "ckpt", max_shard_size=5000, progress=False)
    assert main(["inspect", str(tmp_path / "ckpt"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tensors"]
    assert sorted(r["name"] for r in rows) == sorted(tensors)
    assert len({r["file"] for r in rows}) > 1
    assert main(["verify", str(tmp_path / "ckpt")]) == 0
    assert "4 tensors in 4 shards" in capsys.readouterr().out


def test_verify_checks_the_digests_of_every_shard(tmp_path, capsys):
    from safetensors_c import integrity

    for i in range(2):
        integrity.save_file_with_digests(
            {f"t{i}": np.full(64, i, np.float32)}, tmp_path / f"model-0000{i + 1}-of-00002.safetensors"
        )
    index = {"metadata": {"total_size": 512},
             "weight_map": {"t0": "model-00001-of-00002.safetensors",
                            "t1": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["verify", "--quiet", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 tensors in 2 shards, digests verified in 2 of 2 shards" in out
    shard = tmp_path / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "SHA-256 mismatch for 1 tensor: 't1'" in err


def test_verify_digests_reports_progress_in_bytes(tmp_path):
    from safetensors_c import integrity

    path = tmp_path / "d.safetensors"
    integrity.save_file_with_digests({"a": np.ones(10, np.float32), "b": np.ones(6)}, path)
    calls = []
    assert integrity.verify_digests(path, progress=lambda done, total: calls.append((done, total))) == []
    assert calls == [(40, 88), (88, 88)]


def test_verify_checks_the_v2_records_that_bind_the_metadata(tmp_path, capsys):
    from safetensors_c import integrity

    path = tmp_path / "v2.safetensors"
    integrity.save_file_with_digests({"w": np.arange(8, dtype=np.float32)}, path)
    assert main(["verify", str(path)]) == 0
    assert "digests verified" in capsys.readouterr().out
    with safe_open_np(path) as f:
        metadata = f.metadata()
        tensors = {"w": f.get_tensor("w")}
    metadata["note"] = "added after saving"  # the bytes are untouched, the metadata is not
    save_file(tensors, path, metadata=metadata)
    assert main(["verify", str(path)]) == 1
    assert "SHA-256 mismatch for 1 tensor: '__metadata__'" in capsys.readouterr().err
