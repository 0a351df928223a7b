"""The checkpoint reader (safetensors_c._checkpoint) on its own, and convert above it.

convert scans every source before it reads it; the reader must be safe
even for a caller that forgets to: it runs no pickle, imports no torch,
and believes no length the file states without checking it against the
bytes there are. Above it, convert's public API is what it was.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from safetensors_c import _checkpoint, convert as convert_module
from safetensors_c._archive import ArchiveError
from safetensors_c._pickle_vm import ConversionError, UnsafePickleError
from conftest import PACKAGE

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 1 << 20


def _tree(data: bytes, kind: str, path: str = "ckpt.bin"):
    return _checkpoint.read_tree(path, memoryview(data), kind, None, "stem", LIMIT)


# MARK: a caller that skipped the scan ------------------------------------------------


def test_a_pickle_that_calls_system_is_refused_without_the_scan(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = pickle.dumps({"w": Payload()}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"ckpt.bin: pickle uses global (posix|os)\.system"):
        _tree(data, "pickle")
    assert not marker.exists()


def test_a_kind_that_lies_is_not_believed():
    npy = io.BytesIO()
    np.save(npy, np.arange(3))
    with pytest.raises(ConversionError, match="pickle: stack underflow at byte 0"):
        _tree(npy.getvalue(), "pickle")  # a .npy is not a pickle
    with pytest.raises(ArchiveError, match="ckpt.bin: bad .npy header"):  # a pickle is no .npy
        _tree(pickle.dumps({"a": 1}, protocol=2), "npy")
    with pytest.raises(ArchiveError, match="ckpt.bin: not a readable zip archive"):
        _tree(pickle.dumps({"a": 1}, protocol=2), "pytorch zip")


def test_a_kind_it_does_not_read_is_named():
    with pytest.raises(ConversionError, match=r"not a PyTorch checkpoint, pickle, joblib, "
                                              r"\.npy or \.npz file \(found: gguf\)"):
        _tree(b"GGUF....", "gguf")
    with pytest.raises(ConversionError, match="legacy tar format"):
        _tree(b"", "pytorch tar")


torch = pytest.importorskip("torch")


def _torch_zip(tensors) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def _rewrite_member(data: bytes, suffix: str, body: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, body if info.filename.endswith(suffix) else src.read(info))
    return out.getvalue()


def test_a_storage_member_shorter_than_data_pkl_declares_is_refused():
    data = _rewrite_member(_torch_zip({"w": torch.ones(4)}), "/data/0", b"\0" * 8)
    with pytest.raises(ArchiveError, match=r"holds 8 bytes, but data.pkl declares 4 elements "
                                           r"of float32 \(16 bytes\)"):
        _tree(data, "pytorch zip")


def test_a_data_pkl_larger_than_the_limit_is_not_read():
    data = _torch_zip({f"w{i}": torch.ones(1) for i in range(2000)})
    with pytest.raises(ConversionError):
        _checkpoint.read_tree("ckpt.bin", memoryview(data), "pytorch zip", None, "stem", 1024)
    kind, tree = _checkpoint.read_tree("ckpt.bin", memoryview(data), "pytorch zip", None,
                                       "stem", LIMIT)
    assert kind == "pytorch zip" and len(tree) == 2000


def test_a_view_past_its_storage_is_refused():
    kind, tree = _tree(_torch_zip({"w": torch.ones(4)}), "pytorch zip")
    ref = tree["w"]
    ref.offset = 3  # four elements from element 3 of a four-element storage
    with pytest.raises(ConversionError, match=r"tensor 'w': its view \(offset 3, size \[4\], "
                                              r"stride \[1\]\) reaches past its storage"):
        _checkpoint.materialize(ref, "w")


def test_a_truncated_legacy_checkpoint_is_refused():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(64)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    kind, tree = _tree(data, "pytorch legacy")
    assert kind == "pytorch legacy"
    assert np.array_equal(_checkpoint.materialize(tree["w"], "w"), np.ones(64, np.float32))
    with pytest.raises(ConversionError, match="runs past the end of the file"):
        _tree(data[:-16], "pytorch legacy")


def test_reading_a_torch_checkpoint_never_imports_torch(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, path)
    code = (
        "import sys\n"
        "from safetensors_c import _checkpoint\n"
        f"view = memoryview(_checkpoint.map_file({str(path)!r}))\n"
        "kind, tree = _checkpoint.read_tree('m.pt', view, 'pytorch zip', None, 'm', 1 << 20)\n"
        "found, scalars, skipped = _checkpoint.flatten(tree)\n"
        "print(kind, sorted(found), _checkpoint.materialize(found['w'], 'w').tolist(),"
        " 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=120).stdout
    assert out.strip() == "pytorch zip ['w'] [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] False"


# MARK: the split ---------------------------------------------------------------------


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def test_the_reader_reads_only():
    """No scan policy, no writer, no sharding in the reader: those are convert's."""
    assert _imports("_checkpoint") <= {"_archive", "_dtypes", "_pickle_vm", "_terminal"}
    assert "_checkpoint" in _imports("convert")


def test_convert_keeps_its_public_api():
    assert convert_module.__all__ == [
        "ALLOWED_GLOBALS", "ConversionError", "ConversionReport", "ScanReport",
        "UnsafePickleError", "convert", "convert_sharded", "read_checkpoint",
        "safetensors_name", "scan",
    ]
    assert (convert_module.EXPANSION_FACTOR, convert_module.EXPANSION_ALLOWANCE) == (2, 64 << 20)
    signatures = {name: str(inspect.signature(getattr(convert_module, name)))
                  for name in ("convert", "convert_sharded", "read_checkpoint")}
    assert signatures["read_checkpoint"] == (
        "(src, *, buffers: 'Iterable | None' = None, name: 'str | None' = None, "
        "allow_expansion: 'bool' = False, select: 'str | None' = None)")
    assert "max_shard_size: 'int | str | None' = None, allow_expansion: 'bool' = False, " \
           "select: 'str | None' = None, progress:" in signatures["convert"]
    assert "copy_side_files: 'bool' = True" in signatures["convert_sharded"]
