"""Sharded checkpoints: the Hugging Face layout, and an index that is untrusted input."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import safetensors_c
import safetensors_c.numpy as snp
from safetensors_c import SafetensorError
from safetensors_c.sharded import (
    SAVE_ID_KEY,
    load_sharded,
    parse_size,
    safe_open_sharded,
    save_sharded,
)

INDEX = "model.safetensors.index.json"


def shard_name(i, n):
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def tensors_of(sizes):
    """uint8 tensors t0, t1, ... of the given byte sizes, with distinct contents."""
    return {f"t{i}": np.full(size, i, np.uint8) for i, size in enumerate(sizes)}


def read_index(directory):
    return json.loads((directory / INDEX).read_text())


# ---------------------------------------------------------------------------
# sizes

@pytest.mark.parametrize(
    "text, expected",
    [
        ("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("10KiB", 10 * 2**10), ("2GiB", 2 * 2**30),
        ("3MiB", 3 * 2**20), ("7KB", 7000), ("1TB", 10**12), ("1gb", 10**9 // 8),
        ("8Mb", 10**6), ("5gib", 5 * 2**30), (123, 123),
    ],
)
def test_sizes_parse_as_transformers_does(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["5", "GB", "1.5GB", "5 XB", "-1GB", "0MB", "", 0, -5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(bad)


@pytest.mark.parametrize("bad", [1.5, None, True])
def test_size_types(bad):
    with pytest.raises(TypeError, match="max_shard_size"):
        parse_size(bad)


# ---------------------------------------------------------------------------
# layout

def test_greedy_filling_and_index_as_transformers_writes_it(tmp_path):
    tensors = tensors_of([40, 40, 30, 50, 10, 10])
    index = save_sharded(tensors, tmp_path, max_shard_size=100, progress=False)
    files = [shard_name(i, 2) for i in (1, 2)]
    expected_map = {
        "t0": files[0], "t1": files[0],          # 80; +30 would be 110
        "t2": files[1], "t3": files[1],          # 80; +10+10 = 100 (not over) fits
        "t4": files[1], "t5": files[1],
    }
    # transformers' layout, plus the save id that binds the shards to this index
    save_id = index["metadata"][SAVE_ID_KEY]
    assert len(save_id) == 32 and int(save_id, 16) >= 0
    expected_metadata = {SAVE_ID_KEY: save_id, "total_size": 180}
    assert index == {"metadata": expected_metadata, "weight_map": expected_map}
    text = (tmp_path / INDEX).read_text()
    assert text == json.dumps(
        {"metadata": expected_metadata, "weight_map": expected_map}, indent=2, sort_keys=True
    ) + "\n"
    assert text.startswith('{\n  "metadata": {\n    "safetensors_c.save_id": "%s",\n'
                           '    "total_size": 180\n  },\n  "weight_map": {\n' % save_id)


def test_hub_order_for_tensors_over_the_limit(tmp_path):
    # huggingface_hub: [6, 6, 2, 6, 2, 2] with limit 10 -> [6], [6+2], [6+2+2];
    # an oversized tensor is placed in its own shard when it is met.
    index = save_sharded(tensors_of([6, 6, 2, 6, 2, 2]), tmp_path, 10, progress=False)
    groups = {}
    for name, file in index["weight_map"].items():
        groups.setdefault(file, []).append(name)
    assert [groups[shard_name(i, 3)] for i in (1, 2, 3)] == [["t0"], ["t1", "t2"], ["t3", "t4", "t5"]]
    other = tmp_path / "big"
    index = save_sharded(tensors_of([3, 25, 3, 3]), other, 8, progress=False)
    assert index["weight_map"] == {
        "t1": shard_name(1, 3),  # alone, and ahead of the shard still being filled
        "t0": shard_name(2, 3), "t2": shard_name(2, 3),  # 6; +3 would be 9
        "t3": shard_name(3, 3),
    }
    loaded = load_sharded(other, progress=False)
    assert all(np.array_equal(loaded[k], v) for k, v in tensors_of([3, 25, 3, 3]).items())


def test_single_shard_is_plain_model_safetensors(tmp_path):
    tensors = tensors_of([10, 20])
    index = save_sharded(tensors, tmp_path, "5GB", metadata={"format": "np"}, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert index["weight_map"] == {"t0": "model.safetensors", "t1": "model.safetensors"}
    assert (tmp_path / "model.safetensors").read_bytes() == safetensors_c.save(
        tensors, metadata={"format": "np"}
    )
    loaded = load_sharded(tmp_path)
    assert list(loaded) == ["t0", "t1"] and np.array_equal(loaded["t1"], tensors["t1"])
    with safe_open_sharded(tmp_path / "model.safetensors") as f:
        assert f.keys() == ["t0", "t1"] and f.index_metadata() is None
        assert f.metadata() == {"format": "np"}


def test_shards_are_byte_identical_to_save_file_and_carry_metadata(tmp_path):
    tensors = {"a": np.arange(10, dtype=np.float32), "b": np.ones((4, 4)), "c": np.zeros(3, np.int8)}
    index = save_sharded(tensors, tmp_path, 64, metadata={"format": "np"}, progress=False)
    by_file = {}
    for name, file in index["weight_map"].items():
        by_file.setdefault(file, {})[name] = tensors[name]
    # b (128 bytes) is over the limit: alone, first; a (40) and c (3) share the next
    assert by_file == {shard_name(1, 2): {"b": tensors["b"]},
                       shard_name(2, 2): {"a": tensors["a"], "c": tensors["c"]}}
    for file, part in by_file.items():
        metadata = {"format": "np", SAVE_ID_KEY: index["metadata"][SAVE_ID_KEY]}
        assert (tmp_path / file).read_bytes() == safetensors_c.save(part, metadata)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())


def test_resaving_removes_stale_shards_and_index(tmp_path):
    save_sharded(tensors_of([50] * 6), tmp_path, 100, progress=False)
    assert len(list(tmp_path.glob("model-*"))) == 3
    (tmp_path / "model-00009-of-00009.safetensors.bak").write_bytes(b"keep")
    (tmp_path / "other-00001-of-00002.safetensors").write_bytes(b"keep")
    save_sharded(tensors_of([50] * 4), tmp_path, 100, progress=False)
    assert sorted(p.name for p in tmp_path.glob("model-*")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model-00009-of-00009.safetensors.bak",
    ]
    assert (tmp_path / "other-00001-of-00002.safetensors").exists()
    save_sharded(tensors_of([5]), tmp_path, 100, progress=False)
    assert not (tmp_path / INDEX).exists()
    assert not list(tmp_path.glob("model-0000*.safetensors"))
    assert list(load_sharded(tmp_path)) == ["t0"]


def test_prefix_and_bad_input_write_nothing(tmp_path):
    save_sharded(tensors_of([8, 8]), tmp_path, 8, prefix="diffusion_pytorch_model", progress=False)
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert set(load_sharded(tmp_path, prefix="diffusion_pytorch_model")) == {"t0", "t1"}
    out = tmp_path / "bad"
    with pytest.raises(TypeError):
        save_sharded({"a": [1, 2]}, out, progress=False)
    with pytest.raises(ValueError, match="prefix"):
        save_sharded(tensors_of([1]), out, prefix="../x", progress=False)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_sharded(tensors_of([1]), out, max_shard_size="lots", progress=False)
    assert not out.exists()


def test_numpy_namespace_reexports():
    assert snp.save_sharded is save_sharded and snp.load_sharded is load_sharded
    assert snp.safe_open_sharded is safe_open_sharded


# ---------------------------------------------------------------------------
# reading

@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    tensors = {
        "embed": np.arange(24, dtype=np.float32).reshape(6, 4),
        "layer.0.w": np.arange(16, dtype=np.float16).reshape(4, 4),
        "layer.1.w": np.ones((4, 4), np.float64),
        "head": np.arange(8, dtype=np.int64),
    }
    save_sharded(tensors, directory, 100, progress=False)
    return directory, tensors


def test_load_sharded_from_directory_or_index(checkpoint):
    directory, tensors = checkpoint
    assert len(read_index(directory)["weight_map"]) == 4
    assert len(set(read_index(directory)["weight_map"].values())) == 3
    for path in (directory, directory / INDEX, str(directory)):
        loaded = load_sharded(path, progress=False)
        assert set(loaded) == set(tensors)
        for name, array in tensors.items():
            assert np.array_equal(loaded[name], array) and loaded[name].dtype == array.dtype


def test_safe_open_sharded_methods(checkpoint):
    directory, tensors = checkpoint
    with safe_open_sharded(directory) as f:
        assert f.keys() == sorted(tensors) and len(f) == 4 and "head" in f and "x" not in f
        assert sorted(f.offset_keys()) == sorted(tensors)
        save_id = f.index_metadata()[SAVE_ID_KEY]
        assert f.index_metadata() == {"total_size": sum(a.nbytes for a in tensors.values()),
                                      SAVE_ID_KEY: save_id}
        assert f.metadata() == {SAVE_ID_KEY: save_id}  # numpy arrays: no "format" is implied
        assert f.shard_files == [shard_name(i, 3) for i in (1, 2, 3)]
        assert np.array_equal(f.get_tensor("embed"), tensors["embed"])
        assert np.array_equal(f.get_slice("embed")[2:4, 1], tensors["embed"][2:4, 1])
        assert f.get_slice("layer.1.w").get_shape() == [4, 4]
        assert set(f.get_tensors()) == set(tensors)
        with pytest.raises(SafetensorError, match="no tensor named 'nope'"):
            f.get_tensor("nope")
    with pytest.raises(SafetensorError, match="closed"):
        f.get_tensor("embed")


def test_safe_open_sharded_opens_each_shard_once(checkpoint, monkeypatch):
    directory, tensors = checkpoint
    opened = []
    real_open = safetensors_c._core.open

    def counting_open(path, *args):
        opened.append(os.path.basename(path))
        return real_open(path, *args)

    monkeypatch.setattr(safetensors_c._core, "open", counting_open)
    with safe_open_sharded(directory) as f:
        for _ in range(3):
            for name in f.keys():
                f.get_tensor(name)
                f.get_slice(name)[...]
        f.get_tensors()
    assert sorted(opened) == [shard_name(i, 3) for i in (1, 2, 3)]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither model.safetensors.index.json"):
        load_sharded(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_sharded(tmp_path / "nope")


# ---------------------------------------------------------------------------
# the index is untrusted

def write_index(directory, weight_map, total=None, raw=None):
    if raw is None:
        body = {"weight_map": weight_map}
        if total is not None:
            body["metadata"] = {"total_size": total}
        raw = json.dumps(body)
    (directory / INDEX).write_text(raw) if isinstance(raw, str) else (directory / INDEX).write_bytes(raw)


def two_shards(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    safetensors_c.save_file({"a": np.zeros(4, np.uint8)}, d / "s1.safetensors")
    safetensors_c.save_file({"b": np.zeros(8, np.uint8)}, d / "s2.safetensors")
    return d


def assert_refused(d, match):
    with pytest.raises(SafetensorError, match=match) as info:
        load_sharded(d, progress=False)
    assert "invalid sharded checkpoint index" in str(info.value)
    with pytest.raises(SafetensorError, match=match):
        safe_open_sharded(d)


def test_valid_handcrafted_index(tmp_path):
    d = two_shards(tmp_path)
    write_index(d, {"a": "s1.safetensors", "b": "s2.safetensors"}, 12)
    assert sorted(load_sharded(d, progress=False)) == ["a", "b"]
    write_index(d, {"a": "s1.safetensors", "b": "s2.safetensors"})  # total_size optional
    assert sorted(load_sharded(d, progress=False)) == ["a", "b"]


@pytest.mark.parametrize(
    "name",
    ["../s1.safetensors", "/etc/passwd", "sub/s1.safetensors", "..", ".", "", "s1\x00.safetensors",
     "..\\s1.safetensors"],
)
def test_shard_names_must_be_plain_file_names(tmp_path, name):
    d = two_shards(tmp_path)
    (tmp_path / "s1.safetensors").write_bytes((d / "s1.safetensors").read_bytes())
    write_index(d, {"a": name, "b": "s2.safetensors"})
    assert_refused(d, "is not a plain file name")


def test_absolute_path_to_a_real_shard_is_refused(tmp_path):
    d = two_shards(tmp_path)
    write_index(d, {"a": str(d / "s1.safetensors"), "b": "s2.safetensors"})
    assert_refused(d, "is not a plain file name")


def test_symlink_leaving_the_directory_is_refused(tmp_path):
    d = two_shards(tmp_path)
    outside = tmp_path / "outside.safetensors"
    safetensors_c.save_file({"a": np.zeros(4, np.uint8)}, outside)
    os.symlink(outside, d / "link.safetensors")
    write_index(d, {"a": "link.safetensors", "b": "s2.safetensors"})
    assert_refused(d, "symbolic link leading out")
    os.symlink("../outside.safetensors", d / "rel.safetensors")
    write_index(d, {"a": "rel.safetensors", "b": "s2.safetensors"})
    assert_refused(d, "symbolic link leading out")


def test_symlink_inside_the_directory_is_allowed(tmp_path):
    d = two_shards(tmp_path)
    os.symlink("s1.safetensors", d / "alias.safetensors")
    write_index(d, {"a": "alias.safetensors", "b": "s2.safetensors"}, 12)
    assert sorted(load_sharded(d, progress=False)) == ["a", "b"]


def test_symlinked_checkpoint_directory_works(tmp_path):
    d = two_shards(tmp_path)
    write_index(d, {"a": "s1.safetensors", "b": "s2.safetensors"}, 12)
    os.symlink(d, tmp_path / "linked")
    assert sorted(load_sharded(tmp_path / "linked", progress=False)) == ["a", "b"]


# what s2.safetensors holds instead of two_shards' {"b"} (None: that), the
# index's weight map, and the refusal
SHARDS_AND_INDEX_DISAGREE = {
    "unlisted-tensor": (
        {"b": np.zeros(8, np.uint8), "evil": np.ones(1, np.uint8)},
        {"a": "s1.safetensors", "b": "s2.safetensors"},
        "shard 's2.safetensors' holds tensor 'evil', which the index's weight_map does not list",
    ),
    "listed-tensor-missing": (
        None,
        {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"},
        "tensor 'c' is listed in shard 's2.safetensors', which does not hold it",
    ),
    "tensor-in-two-shards": (
        {"a": np.zeros(4, np.uint8), "b": np.zeros(8, np.uint8)},
        {"a": "s1.safetensors", "b": "s2.safetensors"},
        "tensor 'a' is in two shards: 's1.safetensors'.*and 's2.safetensors'",
    ),
}


@pytest.mark.parametrize("case", sorted(SHARDS_AND_INDEX_DISAGREE))
def test_an_index_its_shards_disagree_with_is_refused(tmp_path, case):
    second_shard, weight_map, refusal = SHARDS_AND_INDEX_DISAGREE[case]
    d = two_shards(tmp_path)
    if second_shard is not None:
        safetensors_c.save_file(second_shard, d / "s2.safetensors")
    write_index(d, weight_map)
    assert_refused(d, refusal)


def test_missing_shard_file(tmp_path):
    d = two_shards(tmp_path)
    write_index(d, {"a": "s1.safetensors", "b": "gone.safetensors"})
    with pytest.raises(FileNotFoundError):
        load_sharded(d, progress=False)


@pytest.mark.parametrize("total", [11, 13, 0])
def test_total_size_must_match(tmp_path, total):
    d = two_shards(tmp_path)
    write_index(d, {"a": "s1.safetensors", "b": "s2.safetensors"}, total)
    assert_refused(d, f'"total_size" is {total}, but the shards\' tensors take 12 bytes')


@pytest.mark.parametrize(
    "raw, match",
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ("{}", 'no "weight_map"'),
        ('{"weight_map": []}', '"weight_map" must map'),
        ('{"weight_map": {"a": 1}}', "tensor 'a': shard file name must be a string"),
        ('{"weight_map": {"a": null}}', "tensor 'a': shard file name must be a string"),
        ('{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}', "duplicate key 'a'"),
        ('{"weight_map": {}, "metadata": []}', '"metadata" must be an object'),
        ('{"weight_map": {}, "metadata": {"total_size": "12"}}', '"total_size" must be'),
        ('{"weight_map": {}, "metadata": {"total_size": 1.5}}', '"total_size" must be'),
        ('{"weight_map": {}, "metadata": {"total_size": -1}}', '"total_size" must be'),
        ('{"weight_map": {}, "metadata": {"total_size": true}}', '"total_size" must be'),
        ('{"weight_map": {}, "metadata": {"total_size": NaN}}', "NaN is not valid JSON"),
        (b'{"weight_map": {"\xff": "x"}}', "not UTF-8"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ],
)
def test_malformed_index(tmp_path, raw, match):
    d = two_shards(tmp_path)
    write_index(d, None, raw=raw)
    assert_refused(d, match)


def test_a_bad_shard_is_reported_as_such(tmp_path):
    d = two_shards(tmp_path)
    (d / "s2.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      trailing")
    write_index(d, {"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(SafetensorError, match="s2.safetensors"):
        load_sharded(d, progress=False)


# ---------------------------------------------------------------------------
# progress

def test_progress_bar_on_many_shards(checkpoint, capsys):
    pytest.importorskip("tqdm")
    directory, _ = checkpoint
    load_sharded(directory, progress=True)  # forced: stderr is no terminal here
    assert "Loading shards" in capsys.readouterr().err
    save_sharded(tensors_of([8, 8]), directory / "again", 8, progress=True)
    assert "Saving shards" in capsys.readouterr().err
    load_sharded(directory)  # the default: no terminal, small work, no bar
    save_sharded(tensors_of([8, 8]), directory / "again", 8)
    assert capsys.readouterr().err == ""
    load_sharded(directory, progress=False)
    save_sharded(tensors_of([8, 8]), directory / "again", 8, progress=False)
    assert capsys.readouterr().err == ""


def test_no_progress_bar_without_tqdm(checkpoint, capsys, monkeypatch):
    directory, tensors = checkpoint
    monkeypatch.setitem(sys.modules, "tqdm", None)
    loaded = load_sharded(directory, progress=True)
    assert set(loaded) == set(tensors)
    save_sharded(tensors_of([8, 8]), directory / "again", 8, progress=True)
    assert capsys.readouterr().err == ""


def test_no_progress_bar_for_one_shard(tmp_path, capsys):
    save_sharded(tensors_of([8]), tmp_path, 100, progress=True)
    load_sharded(tmp_path, progress=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------
# torch flavour

def test_torch_sharded_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors_c.torch as ct

    tensors = {
        "a": torch.arange(20, dtype=torch.bfloat16).reshape(4, 5),
        "b": torch.arange(30, dtype=torch.float32),
        "c": torch.zeros(6, dtype=torch.uint8),
    }
    index = ct.save_sharded(tensors, tmp_path, max_shard_size=64, metadata={"format": "pt"},
                            progress=False)
    assert index["weight_map"] == {"b": shard_name(1, 2), "a": shard_name(2, 2),
                                   "c": shard_name(2, 2)}
    loaded = ct.load_sharded(tmp_path, progress=False)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype
    with safe_open_sharded(tmp_path, framework="pt") as f:
        assert f.metadata() == {"format": "pt", SAVE_ID_KEY: index["metadata"][SAVE_ID_KEY]}
        assert torch.equal(f.get_slice("a")[1:3], tensors["a"][1:3])
    with pytest.raises(RuntimeError, match="share memory"):
        ct.save_sharded({"x": tensors["b"], "y": tensors["b"][:4]}, tmp_path / "shared",
                        progress=False)
    assert not (tmp_path / "shared").exists()
    assert load_sharded(tmp_path, progress=False)["a"].dtype.name == "bfloat16"


# MARK: - Interoperability with huggingface_hub (the layout transformers shares)


def _hub_state_dict(torch):
    generator = torch.Generator().manual_seed(0)
    return {
        f"layers.{i}.{part}": torch.randn(16, 16, generator=generator)
        for i in range(6)
        for part in ("attn.weight", "mlp.weight")
    } | {"embed.weight": torch.randn(32, 16, generator=generator)}


def test_we_load_what_huggingface_hub_writes(tmp_path):
    torch = pytest.importorskip("torch")
    hub = pytest.importorskip("huggingface_hub")
    state = _hub_state_dict(torch)
    (tmp_path / "hub").mkdir()
    hub.save_torch_state_dict(state, tmp_path / "hub", max_shard_size="4KB")
    assert (tmp_path / "hub" / "model.safetensors.index.json").exists()
    loaded = load_sharded(tmp_path / "hub", framework="pt")
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_huggingface_hub_loads_what_we_write(tmp_path):
    torch = pytest.importorskip("torch")
    hub = pytest.importorskip("huggingface_hub")
    state = _hub_state_dict(torch)
    save_sharded(state, tmp_path / "ours", max_shard_size="4KB", framework="pt")
    (tmp_path / "hub").mkdir()
    hub.save_torch_state_dict(state, tmp_path / "hub", max_shard_size="4KB")
    # The same shards, the same weight map, the same total size.
    ours = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    theirs = json.loads((tmp_path / "hub" / "model.safetensors.index.json").read_text())
    assert ours["weight_map"] == theirs["weight_map"]
    assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, tensor in state.items():
                self.register_buffer(name.replace(".", "_"), torch.zeros_like(tensor))

    # load_torch_model reads the index and every shard we wrote.
    model = Model()
    renamed = {name.replace(".", "_"): t for name, t in state.items()}
    save_sharded(renamed, tmp_path / "model", max_shard_size="4KB", framework="pt")
    result = hub.load_torch_model(model, tmp_path / "model", strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in renamed.items():
        assert torch.equal(getattr(model, name), tensor), name
