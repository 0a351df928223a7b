"""convert on what real producers write: torch.save of state_dicts and training checkpoints,
transformers and diffusers directories (single-file and sharded .bin), NumPy and joblib.

Every file is made here by the real library; every converted tensor must equal what that
library's own loader returns (torch.load(weights_only=True), from_pretrained, np.load,
joblib.load), dtype and bytes.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from safetensors_c import load_file, safe_open
from safetensors_c.convert import (
    ConversionError,
    convert,
    convert_sharded,
    safetensors_name,
    scan,
)

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")  # an independent reader of our output

ROOT = Path(__file__).resolve().parent.parent


# MARK: helpers -----------------------------------------------------------------


def _flat(tree, prefix=""):
    """Dotted names -> tensors, as convert names them."""
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            out.update(_flat(value, f"{prefix}.{i}" if prefix else str(i)))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tree
    return out


def _raw(t) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _assert_same_tensors(converted: dict, expected: dict, aliases: dict | None = None) -> None:
    """Every expected tensor is in ``converted`` (or an alias of one), same dtype, shape, bytes."""
    aliases = aliases or {}
    assert set(converted) | set(aliases) == set(expected)
    for name, ref in expected.items():
        got = converted[aliases.get(name, name)]
        assert got.dtype == ref.dtype, name
        assert tuple(got.shape) == tuple(ref.shape), name
        assert _raw(got) == _raw(ref), name


def _load_converted(path) -> dict:
    return st_torch.load_file(str(path))


def _metadata(path) -> dict | None:
    with safe_open(path) as f:
        return f.metadata()


class Net(torch.nn.Module):
    """Linear, BatchNorm (int64 buffer, module version 2), LayerNorm, Embedding, a buffer."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.fc = torch.nn.Linear(6, 5)
        self.bn = torch.nn.BatchNorm1d(5)
        self.ln = torch.nn.LayerNorm(5)
        self.head = torch.nn.Linear(5, 3, bias=False)
        self.register_buffer("positions", torch.arange(7))

    def forward(self, ids):
        return self.head(self.ln(self.bn(self.fc(self.embed(ids)))))


def _trained_net():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    return net, opt


FORMATS = pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])


# MARK: torch.save of state_dict() -------------------------------------------------


@FORMATS
def test_module_state_dict(tmp_path, zip_format):
    net, _ = _trained_net()
    src, dst = tmp_path / "net.pt", tmp_path / "net.safetensors"
    torch.save(net.state_dict(), src, _use_new_zipfile_serialization=zip_format)
    ref = torch.load(src, weights_only=True)
    assert ref._metadata  # the attribute pickle restores with BUILD

    report = convert(src, dst)
    assert report.source_kind == ("pytorch zip" if zip_format else "pytorch legacy")
    _assert_same_tensors(_load_converted(dst), dict(ref))
    # Dropped by default (listed as skipped), like every non-tensor value.
    assert _metadata(dst) == {"format": "pt"}
    assert report.skipped == ["_metadata"]
    assert scan(src).verdict == "safe"

    # Kept with keep_scalars, as JSON under "_metadata".
    report = convert(src, dst, keep_scalars=True)
    assert json.loads(_metadata(dst)["_metadata"]) == json.loads(json.dumps(ref._metadata))
    assert json.loads(_metadata(dst)["_metadata"])["bn"] == {"version": 2}

    fresh = Net()
    fresh.load_state_dict(_load_converted(dst))
    ids = torch.tensor([4, 5, 6])
    assert torch.equal(fresh.eval()(ids), net.eval()(ids))


@FORMATS
def test_low_precision_and_quantized_looking_weights(tmp_path, zip_format):
    torch.manual_seed(1)
    w = torch.randn(8, 4)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    sd = {
        "bf16": w.to(torch.bfloat16),
        "fp16": w.to(torch.float16),
        "fp8_e4m3fn": w.to(torch.float8_e4m3fn),
        "fp8_e5m2": w.to(torch.float8_e5m2),
        "fp8_e4m3fnuz": w.to(torch.float8_e4m3fnuz),
        "fp8_e5m2fnuz": w.to(torch.float8_e5m2fnuz),
        "fp8_e8m0fnu": w.abs().to(torch.float8_e8m0fnu),
        # what int8 weight-only quantizers store: int8 values, float scales, zero points
        "q.weight": torch.round(w / scale).to(torch.int8),
        "q.scale": scale.squeeze(1),
        "q.zero_point": torch.zeros(8, dtype=torch.uint8),
        "q.weight_t": torch.round(w / scale).to(torch.int8).t(),  # a transposed view
    }
    src, dst = tmp_path / "q.pt", tmp_path / "q.safetensors"
    torch.save(sd, src, _use_new_zipfile_serialization=zip_format)
    convert(src, dst)
    try:
        ref = torch.load(src, weights_only=True)
    except AttributeError:
        # torch 2.13 writes float8 tensors in its legacy format but cannot load them back
        # ("UntypedStorage has no attribute dtype"); compare with what was saved.
        assert not zip_format
        ref = sd
    _assert_same_tensors(_load_converted(dst), ref)
    with safe_open(dst) as f:
        codes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert codes["fp8_e4m3fn"] == "F8_E4M3" and codes["fp8_e8m0fnu"] == "F8_E8M0"
    assert codes["q.weight"] == "I8" and codes["bf16"] == "BF16"


@FORMATS
def test_training_checkpoint(tmp_path, zip_format):
    net, adamw = _trained_net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.tensor([1, 2])).sum().backward()
    sgd.step()
    sched = torch.optim.lr_scheduler.StepLR(adamw, step_size=3)
    ckpt = {
        "model": net.state_dict(),
        "optimizer": adamw.state_dict(),
        "sgd": sgd.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 3,
        "best": 0.25,
        "arch": "net",
        "rng": torch.get_rng_state(),
    }
    src, dst = tmp_path / "ckpt.pt", tmp_path / "ckpt.safetensors"
    torch.save(ckpt, src, _use_new_zipfile_serialization=zip_format)
    ref = torch.load(src, weights_only=True)
    expected = _flat(ref)
    assert "optimizer.state.0.exp_avg" in expected and "rng" in expected

    report = convert(src, dst)
    _assert_same_tensors(_load_converted(dst), expected)
    assert _metadata(dst) == {"format": "pt"}
    # The non-tensor parts are reported, never executed.
    for name in ("epoch", "best", "arch", "model._metadata", "optimizer.param_groups.0.lr",
                 "optimizer.param_groups.0.betas.1", "scheduler.step_size"):
        assert name in report.skipped, name

    report = convert(src, dst, keep_scalars=True)
    meta = _metadata(dst)
    assert meta["epoch"] == "3" and meta["best"] == "0.25" and meta["arch"] == "net"
    assert meta["optimizer.param_groups.0.lr"] == "0.001"
    assert meta["optimizer.param_groups.0.betas.1"] == "0.999"
    assert meta["optimizer.param_groups.0.amsgrad"] == "false"
    assert meta["sgd.param_groups.0.momentum"] == "0.9"
    assert json.loads(meta["model._metadata"])["bn"] == {"version": 2}
    assert report.scalars["epoch"] == 3
    _assert_same_tensors(_load_converted(dst), expected)

    # Only the model, under the names load_state_dict wants.
    report = convert(src, dst, select="model")
    _assert_same_tensors(_load_converted(dst), dict(ref["model"]))
    assert {"optimizer", "sgd", "scheduler", "epoch", "best", "arch", "rng",
            "_metadata"} == set(report.skipped)
    fresh = Net()
    fresh.load_state_dict(_load_converted(dst))
    report = convert(src, dst, select="optimizer.state.0")
    assert sorted(report.tensors) == ["exp_avg", "exp_avg_sq", "step"]
    with pytest.raises(ConversionError, match=r"no 'weights' in the checkpoint \(its keys: "
                                              r"'model', 'optimizer'"):
        convert(src, dst, select="weights")
    proc = _cli("convert", str(src), str(tmp_path / "m.safetensors"), "--select", "model")
    assert proc.returncode == 0, proc.stderr
    _assert_same_tensors(_load_converted(tmp_path / "m.safetensors"), dict(ref["model"]))


def test_values_weights_only_loading_accepts(tmp_path):
    # What torch.load(weights_only=True) accepts besides tensors: tensors with Python
    # attributes, Parameters with state, torch.Size, torch.device, sets, Counter, complex,
    # bytearray. Tensors convert; the rest is plain data (kept or reported), never run.
    import collections

    t = torch.arange(4.0)
    t.note = "calibrated"
    p = torch.nn.Parameter(torch.zeros(3))
    p.tag = 1
    ckpt = {"t": t, "p": p, "shape": torch.Size([2, 3]), "device": torch.device("cuda", 1),
            "cpu": torch.device("cpu"), "tags": {"a", "b"}, "counts": collections.Counter("aab"),
            "z": complex(1, 2), "raw": bytearray(b"xy")}
    src, dst = tmp_path / "values.pt", tmp_path / "values.safetensors"
    torch.save(ckpt, src)
    ref = torch.load(src, weights_only=True)
    assert ref["t"].note == "calibrated"
    report = convert(src, dst, keep_scalars=True)
    _assert_same_tensors(_load_converted(dst), {"t": ref["t"], "p": ref["p"]})
    assert _metadata(dst) == {"format": "pt", "shape.0": "2", "shape.1": "3",
                              "device": "cuda:1", "cpu": "cpu", "counts.a": "2", "counts.b": "1"}
    assert sorted(report.skipped) == ["raw", "tags", "z"]
    assert scan(src).verdict == "safe"


def test_tied_shared_and_views_into_a_larger_storage(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed.weight  # tied

    torch.manual_seed(2)
    qkv = torch.randn(12, 4)
    grid = torch.randn(4, 6)
    big = torch.arange(100, dtype=torch.float32)
    sd = dict(Tied().state_dict())
    sd.update({
        # a fused projection split into views (offsets into one storage)
        "q": qkv[0:4], "k": qkv[4:8], "v": qkv[8:12],
        # disjoint views of one larger storage, one of them reshaped
        "first": big[:40], "rest": big[40:100].view(6, 10),
        # disjoint strided (non-contiguous) views
        "even": grid[:, ::2], "odd": grid[:, 1::2],
        "same_as_q": qkv[0:4],  # another tensor object with the same view: an alias
    })
    src, dst = tmp_path / "tied.pt", tmp_path / "tied.safetensors"
    torch.save(sd, src)
    ref = torch.load(src, weights_only=True)
    report = convert(src, dst)
    assert report.aliases == {"lm_head.weight": "embed.weight", "same_as_q": "q"}
    out = _load_converted(dst)
    _assert_same_tensors(out, ref, report.aliases)
    meta = _metadata(dst)
    assert meta["lm_head.weight"] == "embed.weight" and meta["same_as_q"] == "q"
    # Disjoint views write each stored byte once: nothing is expanded.
    written = sum(t.numel() * t.element_size() for t in out.values())
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ref.values()}
    assert written == sum(storages.values())


# MARK: amplification ----------------------------------------------------------------


def test_stride_zero_view_in_a_tiny_zip_is_refused(tmp_path):
    base = torch.zeros(4)
    huge = base.as_strided((1 << 15, 1 << 14), (0, 0))  # 2 GiB of float32 viewing 16 bytes
    src, dst = tmp_path / "bomb.pt", tmp_path / "bomb.safetensors"
    torch.save({"x": huge}, src)
    assert src.stat().st_size < 4096
    with pytest.raises(ConversionError, match=r"share 16 stored bytes but together would "
                       r"write 2147483648 bytes .*allow_expansion=True"):
        convert(src, dst)
    assert not dst.exists()


def test_overlapping_views_need_allow_expansion(tmp_path, monkeypatch):
    monkeypatch.setattr("safetensors_c.convert.EXPANSION_ALLOWANCE", 0)  # the 2x rule alone
    base = torch.arange(64, dtype=torch.int16)
    sd = {f"w{i}": base[i:i + 32] for i in range(32)}  # 32 overlapping windows
    sd["bcast"] = base[:4].expand(100, 4)
    src, dst = tmp_path / "ov.pt", tmp_path / "ov.safetensors"
    torch.save(sd, src)
    with pytest.raises(ConversionError, match="share 128 stored bytes but together would "
                                              "write 2848 bytes"):
        convert(src, dst)
    assert not dst.exists()
    convert(src, dst, allow_expansion=True)
    _assert_same_tensors(_load_converted(dst), torch.load(src, weights_only=True))


class _SharedBuffer:
    """A real pickle whose arrays are all rebuilt from one memoized bytes object."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def __reduce__(self):
        return np._core.numeric._frombuffer, (self.raw, np.dtype("<f4"), (len(self.raw) // 4,),
                                              "C")


def test_one_pickled_buffer_rebuilt_many_times_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("safetensors_c.convert.EXPANSION_ALLOWANCE", 0)  # the 2x rule alone
    raw = np.arange(1024, dtype="<f4").tobytes()
    src, dst = tmp_path / "memo.pkl", tmp_path / "memo.safetensors"
    src.write_bytes(pickle.dumps({f"a{i}": _SharedBuffer(raw) for i in range(50)}, protocol=4))
    assert src.stat().st_size < 2 * len(raw)
    with pytest.raises(ConversionError, match="share 4096 stored bytes but together would "
                                              "write 204800 bytes"):
        convert(src, dst)
    convert(src, dst, allow_expansion=True)
    out = load_file(dst)
    assert len(out) == 50 and all(a.tobytes() == raw for a in out.values())


# MARK: NumPy and joblib ---------------------------------------------------------------

NUMPY_ARRAYS = {
    "f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "f64_fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "i8": np.array([-128, 0, 127], dtype=np.int8),
    "u16_be": np.arange(5, dtype=">u2"),
    "c64": np.array([1 + 2j, -3j], dtype=np.complex64),
    "bool": np.array([True, False, True]),
    "scalar": np.array(3.5, dtype=np.float16),
    "empty": np.zeros((0, 4), dtype=np.int32),
}


def _assert_same_arrays(converted: dict, expected: dict) -> None:
    assert set(converted) == set(expected)
    for name, ref in expected.items():
        got = converted[name]
        assert got.dtype == ref.dtype.newbyteorder("<") and got.shape == ref.shape, name
        assert got.tobytes() == ref.astype(ref.dtype.newbyteorder("<")).tobytes(), name


def test_npy_npz(tmp_path):
    for name, array in NUMPY_ARRAYS.items():
        np.save(tmp_path / f"{name}.npy", array)
        convert(tmp_path / f"{name}.npy", tmp_path / f"{name}.safetensors")
        _assert_same_arrays(load_file(tmp_path / f"{name}.safetensors"),
                            {name: np.load(tmp_path / f"{name}.npy")})
    for saver in (np.savez, np.savez_compressed):
        saver(tmp_path / "all.npz", **NUMPY_ARRAYS)
        convert(tmp_path / "all.npz", tmp_path / "all.safetensors")
        with np.load(tmp_path / "all.npz") as ref:
            _assert_same_arrays(load_file(tmp_path / "all.safetensors"), dict(ref))


def test_joblib(tmp_path):
    joblib = pytest.importorskip("joblib")
    src, dst = tmp_path / "model.joblib", tmp_path / "model.safetensors"
    joblib.dump({"weights": NUMPY_ARRAYS, "n_iter": 12, "name": "ridge"}, src)
    report = convert(src, dst, keep_scalars=True)
    ref = joblib.load(src)
    _assert_same_arrays(load_file(dst), {f"weights.{k}": v for k, v in ref["weights"].items()})
    assert _metadata(dst) == {"n_iter": "12", "name": "ridge"}
    assert report.source_kind == "joblib"
    assert scan(src).verdict == "safe"


# MARK: transformers and diffusers ------------------------------------------------------


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )
    return transformers, transformers.BertForMaskedLM(config).eval()


def _save_pretrained_bin(model, directory, max_shard_size):
    """save_pretrained(..., safe_serialization=False) where transformers still has it
    (4.x); transformers 5 writes only safetensors, so there the same layout comes from
    huggingface_hub's writer of it (torch.save per shard + pytorch_model.bin.index.json)."""
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(directory, safe_serialization=False, max_shard_size=max_shard_size)
        return
    from huggingface_hub import save_torch_state_dict

    model.config.save_pretrained(directory)
    save_torch_state_dict(model.state_dict(), directory, safe_serialization=False,
                          max_shard_size=max_shard_size)


def _bin_tensors(directory: Path) -> dict:
    out = {}
    for shard in sorted(directory.glob("*.bin")):
        out.update(torch.load(shard, weights_only=True))
    return out


@pytest.mark.parametrize("max_shard_size", ["50GB", "40KB"], ids=["single", "sharded"])
def test_transformers_save_pretrained_bin(tmp_path, max_shard_size):
    transformers, model = _tiny_bert()
    src, dst = tmp_path / "bin", tmp_path / "converted"
    _save_pretrained_bin(model, src, max_shard_size)
    sharded = max_shard_size != "50GB"
    names = sorted(os.listdir(src))
    if sharded:
        assert "pytorch_model.bin.index.json" in names
        assert "pytorch_model-00001-of-00003.bin" in names
    else:
        assert "pytorch_model.bin" in names

    report = convert_sharded(src, dst)
    expected = _bin_tensors(src)
    out_names = sorted(os.listdir(dst))
    if sharded:
        shards = sorted(safetensors_name(n) for n in names if n.endswith(".bin"))
        assert len(shards) == 3
        assert out_names == ["config.json", *shards, "model.safetensors.index.json"]
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        converted = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors = _load_converted(dst / shard)
            assert all(index["weight_map"][k] == shard for k in tensors)
            converted.update(tensors)
        assert set(index["weight_map"]) == set(converted)
        assert index["metadata"]["total_size"] == sum(
            t.numel() * t.element_size() for t in converted.values())
    else:
        assert out_names == ["config.json", "model.safetensors"]
        converted = _load_converted(dst / "model.safetensors")
    # A tied decoder weight saved twice is one tensor in the output, as safetensors keeps it
    # (transformers 4 drops it before saving; huggingface_hub's writer keeps both names).
    if "cls.predictions.decoder.weight" in expected:
        assert report.aliases["cls.predictions.decoder.weight"] == (
            "bert.embeddings.word_embeddings.weight")
    _assert_same_tensors(converted, expected, report.aliases)

    loaded, info = transformers.BertForMaskedLM.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reference = transformers.BertForMaskedLM.from_pretrained(src).eval()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    assert torch.equal(loaded.eval()(ids).logits, reference(ids).logits)


def test_cli_converts_a_sharded_directory_and_its_index(tmp_path):
    transformers, model = _tiny_bert()
    src = tmp_path / "bin"
    _save_pretrained_bin(model, src, "40KB")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for source, dst in ((src, tmp_path / "a"), (src / "pytorch_model.bin.index.json",
                                                 tmp_path / "b")):
        proc = subprocess.run([sys.executable, "-m", "safetensors_c", "convert", str(source),
                               str(dst)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""  # not a terminal: no progress bar
        count = len(_bin_tensors(src))
        aliases = 2 if "cls.predictions.decoder.weight" in _bin_tensors(src) else 0
        summary = f"{count - aliases} tensors in 3 files"
        if aliases:
            summary += f", {aliases} shared-storage aliases recorded in metadata"
        assert summary in proc.stdout
        loaded, info = transformers.BertForMaskedLM.from_pretrained(dst, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        state = loaded.state_dict()
        assert set(state) == set(model.state_dict())
        for key, value in model.state_dict().items():
            assert torch.equal(state[key], value), key
    proc = subprocess.run([sys.executable, "-m", "safetensors_c", "convert", str(src),
                           str(tmp_path / "c"), "--max-shard-size", "1MB"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--max-shard-size applies to single-file" in proc.stderr


def test_sharded_index_that_lies_is_refused(tmp_path):
    _, model = _tiny_bert()
    src = tmp_path / "bin"
    _save_pretrained_bin(model, src, "40KB")
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"]["not.in.any.shard"] = index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"misses \['not.in.any.shard'\]"):
        convert_sharded(src, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []  # no index, and no shard left behind
    index["weight_map"]["not.in.any.shard"] = "../elsewhere.bin"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="is not a file name in the index's directory"):
        convert_sharded(src, tmp_path / "out")
    index_path.write_text('{"weight_map": {"a": "x.bin", "a": "y.bin"}}')
    with pytest.raises(ConversionError, match="repeats the key 'a'"):
        convert_sharded(index_path, tmp_path / "out")


def test_a_directory_given_to_convert(tmp_path):
    with pytest.raises(ConversionError, match=r"a directory; convert_sharded\(src, "
                                              r"dst_directory\) converts"):
        convert(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(ConversionError, match="no \\*.bin.index.json, pytorch_model.bin"):
        convert_sharded(tmp_path, tmp_path / "out")
    torch.save({"w": torch.ones(2, dtype=torch.float16)}, tmp_path / "pytorch_model.fp16.bin")
    report = convert_sharded(tmp_path, tmp_path / "out")
    assert [os.path.basename(f) for f in report.files] == ["model.fp16.safetensors"]
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="several weights files \\(pytorch_model.bin, "
                                              "pytorch_model.fp16.bin\\)"):
        convert_sharded(tmp_path, tmp_path / "out")


def test_side_files_copied_but_never_pickles(tmp_path):
    _, model = _tiny_bert()
    src = tmp_path / "bin"
    _save_pretrained_bin(model, src, "50GB")
    (src / "training_args.bin").write_bytes(pickle.dumps({"lr": 1}))
    (src / "tokenizer.json").write_text("{}")
    (src / "modeling_custom.py").write_text("raise SystemExit")
    report = convert_sharded(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors",
                                                     "tokenizer.json"]
    assert sorted(os.path.basename(f) for f in report.files) == sorted(
        os.listdir(tmp_path / "out"))


def test_safetensors_names():
    assert safetensors_name("pytorch_model.bin") == "model.safetensors"
    assert safetensors_name("pytorch_model-00002-of-00005.bin") == (
        "model-00002-of-00005.safetensors")
    assert safetensors_name("pytorch_model.bin.index.json") == "model.safetensors.index.json"
    assert safetensors_name("diffusion_pytorch_model-00001-of-00002.bin") == (
        "diffusion_pytorch_model-00001-of-00002.safetensors")
    assert safetensors_name("diffusion_pytorch_model.bin.index.json") == (
        "diffusion_pytorch_model.safetensors.index.json")


@pytest.mark.parametrize("max_shard_size", [None, "20KB"], ids=["single", "sharded"])
def test_diffusers_save_pretrained_bin(tmp_path, max_shard_size):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(4)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    src, dst, own = tmp_path / "bin", tmp_path / "converted", tmp_path / "own"
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    unet.save_pretrained(src, safe_serialization=False, **kwargs)
    unet.save_pretrained(own, **kwargs)  # the library's own safetensors writer
    assert not any(n.endswith(".safetensors") for n in os.listdir(src))

    convert_sharded(src, dst)
    names = sorted(os.listdir(dst))
    if max_shard_size:
        assert "diffusion_pytorch_model.safetensors.index.json" in names
        assert sorted(n for n in names if n.endswith(".safetensors")) == sorted(
            safetensors_name(n) for n in os.listdir(src) if n.endswith(".bin"))
    else:
        assert names == ["config.json", "diffusion_pytorch_model.safetensors"]
    expected = _bin_tensors(src)
    converted = {}
    for name in names:
        if name.endswith(".safetensors"):
            converted.update(_load_converted(dst / name))
    _assert_same_tensors(converted, expected)

    loaded = diffusers.UNet2DModel.from_pretrained(dst).eval()
    theirs = diffusers.UNet2DModel.from_pretrained(own).eval()
    for key, value in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, 3).sample, theirs(x, 3).sample)


# MARK: the command line: wording and progress -------------------------------------------


def _cli(*args, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "safetensors_c", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_counts_in_words(tmp_path):
    w = torch.ones(3)
    torch.save({"w": w, "tied": w, "epoch": 1}, tmp_path / "one.pt")
    proc = _cli("convert", str(tmp_path / "one.pt"), str(tmp_path / "one.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(
        ": 1 tensor, 1 shared-storage alias recorded in metadata, 1 non-tensor value skipped "
        "(--keep-scalars keeps them in metadata)")
    proc = _cli("convert", str(tmp_path / "one.pt"), str(tmp_path / "one.safetensors"),
                "--keep-scalars")
    assert "1 non-tensor value kept in metadata" in proc.stdout


def test_cli_allow_expansion(tmp_path):
    base = torch.arange(8, dtype=torch.float32)
    # 68 MiB from 32 stored bytes: beyond the default allowance of 64 MiB.
    torch.save({"a": base, "b": base[2:6].expand(17 << 18, 4)}, tmp_path / "x.pt")
    proc = _cli("convert", str(tmp_path / "x.pt"), str(tmp_path / "x.safetensors"))
    assert proc.returncode == 1
    assert "--allow-expansion" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("convert", str(tmp_path / "x.pt"), str(tmp_path / "x.safetensors"),
                "--allow-expansion")
    assert proc.returncode == 0, proc.stderr
    _assert_same_tensors(_load_converted(tmp_path / "x.safetensors"),
                         torch.load(tmp_path / "x.pt", weights_only=True))


def _run_in_terminal(args: list[str]) -> tuple[int, str]:
    """Runs the CLI with stdout and stderr on a pseudo-terminal; returns (status, output)."""
    import fcntl
    import pty
    import struct
    import termios

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pid, fd = pty.fork()
    if pid == 0:  # child: a terminal of 24 x 100 (a new pty has no size, and tqdm draws
        # nothing on a terminal 0 columns wide)
        fcntl.ioctl(2, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.execve(sys.executable, [sys.executable, "-m", "safetensors_c", *args], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def big_checkpoint(tmp_path):
    pytest.importorskip("tqdm")
    src = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(18 << 20, dtype=torch.float32)}, src)  # 72 MiB
    return src


def test_progress_bar_on_a_terminal(tmp_path, big_checkpoint):
    status, output = _run_in_terminal(["convert", str(big_checkpoint),
                                       str(tmp_path / "big.safetensors")])
    assert status == 0, output
    assert "converting" in output and "%|" in output  # a tqdm bar
    assert "1 tensor" in output


def test_progress_bar_quiet(tmp_path, big_checkpoint):
    status, output = _run_in_terminal(["convert", "--quiet", str(big_checkpoint),
                                       str(tmp_path / "q.safetensors")])
    assert status == 0 and output == ""
    proc = _cli("convert", str(big_checkpoint), str(tmp_path / "p.safetensors"))
    assert proc.returncode == 0 and proc.stderr == ""  # stderr is a pipe: no bar


def test_progress_callback_counts_bytes(tmp_path, big_checkpoint):
    calls = []
    convert(big_checkpoint, tmp_path / "cb.safetensors", progress=lambda d, t: calls.append((d, t)))
    total = 72 << 20
    assert calls[-1] == (total, total)
    assert all(t == total and 0 <= d <= total for d, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert zipfile.is_zipfile(big_checkpoint)
