"""One index validator for both kinds of sharded index, and the public names the CLI uses.

An adversary writes the index: a ``pytorch_model.bin.index.json`` handed to
``convert_sharded`` must be refused for exactly what a
``model.safetensors.index.json`` is refused for, with the same words, since
one function checks both.
"""

from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, sharded
from safetensors_c.convert import ConversionError, convert_sharded
from safetensors_c.sharded import (
    SAVE_ID_KEY,
    load_sharded,
    parse_index,
    remove_stale_shards,
    remove_unbound_index,
)

torch = pytest.importorskip("torch")

from conftest import PACKAGE  # noqa: E402

BIN_INDEX = "pytorch_model.bin.index.json"
ST_INDEX = "model.safetensors.index.json"


def _bin_checkpoint(tmp_path):
    """Two .bin shards, a (1 element) and b (2 elements), and a valid index."""
    d = tmp_path / "bin"
    d.mkdir()
    torch.save({"a": torch.ones(1)}, d / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.ones(2)}, d / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    (d / BIN_INDEX).write_text(json.dumps({"metadata": {"total_size": 12},
                                           "weight_map": weight_map}))
    return d


def _st_checkpoint(tmp_path):
    d = tmp_path / "st"
    d.mkdir()
    safetensors_c.save_file({"a": np.zeros(1, np.float32)}, d / "s1.safetensors")
    safetensors_c.save_file({"b": np.zeros(2, np.float32)}, d / "s2.safetensors")
    return d


def _body(raw: str, shards: tuple[str, str]) -> str:
    return raw.replace("S1", shards[0]).replace("S2", shards[1])


# Each: index text (S1, S2 stand for the two shard names) and the problem named.
# All of these were accepted by convert_sharded before it shared the validator.
LIES = [
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"total_size": NaN}}',
     "NaN is not valid JSON"),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"x": Infinity}}',
     "Infinity is not valid JSON"),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"total_size": -12}}',
     '"total_size" must be a non-negative integer, not -12'),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"total_size": "12"}}',
     '"total_size" must be a non-negative integer'),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"total_size": true}}',
     '"total_size" must be a non-negative integer, not True'),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"%s": "../../etc"}}' % SAVE_ID_KEY,
     f'"{SAVE_ID_KEY}" must be 32 lowercase hex digits'),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"total_size": 12, "total_size": 0}}',
     "duplicate key 'total_size'"),
    ('{"weight_map": {"a": "S1", "b": "S2"}, "metadata": {"k": {"v": 1, "v": 2}}}',
     "duplicate key 'v'"),
]


@pytest.mark.parametrize("raw, problem", LIES)
def test_a_lying_bin_index_is_refused_as_a_safetensors_index_is(tmp_path, raw, problem):
    src = _bin_checkpoint(tmp_path)
    (src / BIN_INDEX).write_text(_body(raw, ("pytorch_model-00001-of-00002.bin",
                                             "pytorch_model-00002-of-00002.bin")))
    with pytest.raises(ConversionError, match="invalid sharded checkpoint index") as converted:
        convert_sharded(src, tmp_path / "out")
    assert problem in str(converted.value)
    assert os.listdir(tmp_path / "out") == []  # nothing was written

    st = _st_checkpoint(tmp_path)
    (st / ST_INDEX).write_text(_body(raw, ("s1.safetensors", "s2.safetensors")))
    with pytest.raises(SafetensorError) as loaded:
        load_sharded(st, progress=False)
    assert loaded.value.code == "STC_ERR_INVALID_INDEX"
    # the same validator: the same words after the path
    assert str(converted.value).split(": ", 1)[1] == str(loaded.value).split(": ", 1)[1]


def test_a_duplicate_key_message_says_why(tmp_path):
    raw = b'{"weight_map": {"a": "x.bin", "a": "y.bin"}}'
    with pytest.raises(SafetensorError, match="JSON readers disagree on which value wins") as info:
        parse_index(raw, "i.json")
    assert info.value.code == "STC_ERR_INVALID_INDEX"
    assert "i.json: invalid sharded checkpoint index: duplicate key 'a'" in str(info.value)


def test_the_index_size_limit_is_the_validators(tmp_path):
    with pytest.raises(SafetensorError, match=f"larger than {sharded.MAX_INDEX_SIZE} bytes"):
        parse_index(b" " * (sharded.MAX_INDEX_SIZE + 1), "big.json")


def test_a_valid_bin_index_still_converts(tmp_path):
    src = _bin_checkpoint(tmp_path)
    report = convert_sharded(src, tmp_path / "out")
    assert sorted(report.tensors) == ["a", "b"]
    index = json.loads((tmp_path / "out" / ST_INDEX).read_text())
    assert index["weight_map"] == {"a": "model-00001-of-00002.safetensors",
                                   "b": "model-00002-of-00002.safetensors"}


def test_convert_and_sharded_share_one_validator():
    """No second JSON-index parser hides in convert: it calls the one in sharded."""
    tree = ast.parse((PACKAGE / "convert.py").read_text())
    calls = {node.func.id for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "parse_index" in calls
    loads = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute)
             and node.attr == "loads" and getattr(node.value, "id", "") == "json"]
    assert loads == [], "convert.py parses JSON itself"


# MARK: the public names the CLI uses ------------------------------------------------


def test_the_cli_reaches_no_private_name_of_sharded():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    private = [alias.name for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module == "sharded"
               for alias in node.names if alias.name.startswith("_")]
    private += [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and getattr(node.value, "id", "") == "sharded" and node.attr.startswith("_")]
    assert private == []


@pytest.mark.parametrize("name", ["remove_unbound_index", "remove_stale_shards", "parse_index"])
def test_the_names_are_public_and_documented(name):
    assert name in sharded.__all__
    assert len((getattr(sharded, name).__doc__ or "").split()) >= 20


def _index(directory, save_id=None):
    meta = {"total_size": 0}
    if save_id is not None:
        meta[SAVE_ID_KEY] = save_id
    (directory / ST_INDEX).write_text(json.dumps({"metadata": meta, "weight_map": {}}))


def test_remove_unbound_index_removes_only_an_index_of_no_save(tmp_path):
    _index(tmp_path)  # another tool's index: it would bind old and new shards together
    remove_unbound_index(str(tmp_path / ST_INDEX))
    assert not (tmp_path / ST_INDEX).exists()
    _index(tmp_path, "0" * 32)  # it names its save: it refuses other shards itself
    remove_unbound_index(str(tmp_path / ST_INDEX))
    assert (tmp_path / ST_INDEX).exists()
    (tmp_path / ST_INDEX).write_text("{not json")  # garbage binds nothing either
    remove_unbound_index(str(tmp_path / ST_INDEX))
    assert not (tmp_path / ST_INDEX).exists()
    remove_unbound_index(str(tmp_path / ST_INDEX))  # none there: nothing to do


def test_remove_stale_shards_leaves_what_is_not_an_earlier_save(tmp_path):
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model-00003-of-00003.safetensors", "other-00001-of-00002.safetensors",
                 "model-1-of-2.safetensors", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "model-00009-of-00009.safetensors").mkdir()  # not a file: stays
    _index(tmp_path)
    keep = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    remove_stale_shards(str(tmp_path), "model", keep, remove_index=False)
    assert sorted(os.listdir(tmp_path)) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model-00009-of-00009.safetensors", "model-1-of-2.safetensors", ST_INDEX,
        "notes.txt", "other-00001-of-00002.safetensors"]
    remove_stale_shards(str(tmp_path), "model", {"model.safetensors"}, remove_index=True)
    assert sorted(os.listdir(tmp_path)) == [
        "model-00009-of-00009.safetensors", "model-1-of-2.safetensors", "notes.txt",
        "other-00001-of-00002.safetensors"]
    remove_stale_shards(str(tmp_path), "model", set(), remove_index=True)  # no index: fine
