"""The public ways below the frameworks: ``safe_open.reader`` and
``safe_open_sharded.shards``, used by the CLI, diff, statistics and loaders
instead of private methods reached from other modules."""

from __future__ import annotations


import numpy as np
import pytest

from safetensors_c import SafetensorError, safe_open
from safetensors_c.numpy import save_file
from safetensors_c.sharded import safe_open_sharded, save_sharded

from conftest import PACKAGE


def shard_name(i, n):
    return f"model-{i:05d}-of-{n:05d}.safetensors"


@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    tensors = {
        "a": np.arange(24, dtype=np.float32),
        "b": np.arange(16, dtype=np.int64),
        "c": np.ones(20, np.float64),
    }
    save_sharded(tensors, directory, 100, progress=False)
    return directory, tensors


def test_shards_are_the_open_handles_by_file_in_order(checkpoint):
    directory, tensors = checkpoint
    with safe_open_sharded(directory) as f:
        shards = f.shards
        assert list(shards) == f.shard_files == [shard_name(i, 3) for i in (1, 2, 3)]
        assert all(isinstance(shard, safe_open) for shard in shards.values())
        for name in tensors:
            shard = shards[f.weight_map[name]]
            assert np.array_equal(shard.get_tensor(name), tensors[name])
            assert np.array_equal(shard.reader.tensor(name), tensors[name])


def test_shards_cannot_be_rewritten_by_a_caller(checkpoint):
    directory, tensors = checkpoint
    with safe_open_sharded(directory) as f:
        first = f.shards
        first.clear()
        first["intruder"] = None
        assert list(f.shards) == [shard_name(i, 3) for i in (1, 2, 3)]
        assert np.array_equal(f.get_tensor("c"), tensors["c"])


def test_shards_of_a_closed_checkpoint_is_a_closed_error(checkpoint):
    directory, _ = checkpoint
    f = safe_open_sharded(directory)
    handles = list(f.shards.values())
    f.close()
    with pytest.raises(SafetensorError, match="safe_open_sharded handle is closed") as info:
        f.shards
    assert info.value.code == "STC_ERR_CLOSED"
    for handle in handles:  # closing the checkpoint closed the shards it handed out
        with pytest.raises(SafetensorError, match="safe_open handle is closed"):
            handle.reader


def test_shards_of_a_single_file_is_that_file(tmp_path):
    path = tmp_path / "one.safetensors"
    save_file({"x": np.arange(3, dtype=np.uint8)}, path)
    with safe_open_sharded(path) as f:
        assert list(f.shards) == ["one.safetensors"]
        assert f.shards["one.safetensors"].reader.keys() == ["x"]


MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
PRIVATE_REACHES = ("._handle()", "def _handle(", "._open_shards()", "._shard_of(",
                   "handle._shards")
@pytest.mark.parametrize("module", MODULES)
def test_no_module_reaches_a_handle_through_private_spellings(module):
    text = (PACKAGE / module).read_text()
    own = {"sharded.py": ("._open_shards()", "._shard_of(")}.get(module, ())
    assert [n for n in PRIVATE_REACHES if n in text and n not in own] == []


def test_the_notebook_display_reads_only_public_attributes():
    """_display renders handles and slices it is given: through their public
    attributes only, so a renamed private field cannot silently break it."""
    import ast

    tree = ast.parse((PACKAGE / "_display.py").read_text())
    private = sorted({f"{ast.unparse(node.value)}.{node.attr}" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                      and not node.attr.startswith("__")})
    assert private == []


def test_closed_is_false_while_open_and_true_after_close(checkpoint, tmp_path):
    directory, _ = checkpoint
    path = tmp_path / "one.safetensors"
    save_file({"x": np.arange(3, dtype=np.uint8)}, path)
    for handle in (safe_open(path), safe_open_sharded(directory)):
        assert handle.closed is False
        handle.close()
        assert handle.closed is True
        handle.close()  # closing twice is harmless
        assert handle.closed is True
    with safe_open(path) as f:
        pass
    assert f.closed is True


def test_sharded_directory_is_where_the_shards_are(checkpoint, tmp_path):
    directory, _ = checkpoint
    with safe_open_sharded(directory) as f:
        assert f.directory == str(directory)
    with safe_open_sharded(directory / "model.safetensors.index.json") as f:
        assert f.directory == str(directory)
    f.close()
    assert f.directory == str(directory)  # still known once closed


@pytest.mark.parametrize("framework", ["np", "numpy"])
def test_slice_name_and_nbytes_are_the_tensor_in_the_file(tmp_path, framework):
    path = tmp_path / "s.safetensors"
    save_file({"w": np.zeros((3, 5), np.float32), "e": np.zeros((0, 2), np.int64),
               "b": np.zeros(7, np.bool_)}, path)
    with safe_open(path, framework) as f:
        for name, nbytes in (("w", 60), ("e", 0), ("b", 7)):
            sl = f.get_slice(name)
            assert (sl.name, sl.nbytes) == (name, nbytes)
            assert sl[...].nbytes == nbytes
