"""convert/scan: real checkpoints convert byte for byte; malicious pickles never run."""

from __future__ import annotations

import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from safetensors_c import load_file, safe_open
from safetensors_c._pickle_vm import TensorRef
from safetensors_c.convert import (
    ConversionError,
    UnsafePickleError,
    _materialize,
    _Storage,
    convert,
    scan,
)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# MARK: NumPy sources ----------------------------------------------------------

ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "be": np.arange(5, dtype=">i4"),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "u8": np.array([1, 2, 255], np.uint8),
    "bool": np.array([True, False]),
    "bf16": np.array([1.5, -2], dtype=ml_dtypes.bfloat16),
    "empty": np.zeros((0, 3), np.int16),
}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickle_protocols(tmp_path, protocol):
    src, dst = tmp_path / "a.pkl", tmp_path / "a.safetensors"
    src.write_bytes(pickle.dumps({"model": dict(ARRAYS), "step": 7}, protocol=protocol))
    report = convert(src, dst, keep_scalars=True)
    out = load_file(dst)
    assert sorted(out) == sorted(f"model.{k}" for k in ARRAYS)
    for k, a in ARRAYS.items():
        _same(out[f"model.{k}"], a.astype(a.dtype.newbyteorder("<")))
    assert report.scalars == {"step": 7}
    with safe_open(dst) as f:
        assert f.metadata() == {"step": "7"}


def test_numpy_scalars_and_out_of_band_buffers(tmp_path):
    buffers = []
    data = pickle.dumps({"x": np.arange(4.0), "s": np.float32(2.5)}, protocol=5,
                        buffer_callback=buffers.append)
    src = tmp_path / "oob.pkl"
    src.write_bytes(data)
    with pytest.raises(ConversionError, match="out-of-band buffers"):
        convert(src, tmp_path / "no.safetensors")
    assert not (tmp_path / "no.safetensors").exists()
    convert(src, tmp_path / "o.safetensors", buffers=[b.raw() for b in buffers])
    out = load_file(tmp_path / "o.safetensors")
    _same(out["x"], np.arange(4.0))
    _same(out["s"], np.array(2.5, np.float32))


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "w.npy", ARRAYS["fortran"])
    convert(tmp_path / "w.npy", tmp_path / "w.safetensors")
    _same(load_file(tmp_path / "w.safetensors")["w"], ARRAYS["fortran"])
    plain = {k: v for k, v in ARRAYS.items() if k != "bf16"}
    for saver in (np.savez, np.savez_compressed):
        saver(tmp_path / "z.npz", **plain)
        convert(tmp_path / "z.npz", tmp_path / "z.safetensors")
        out = load_file(tmp_path / "z.safetensors")
        assert sorted(out) == sorted(plain)
        for k, a in plain.items():
            _same(out[k], a.astype(a.dtype.newbyteorder("<")))


def test_object_npy_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="object array"):
        convert(tmp_path / "o.npy", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    assert scan(tmp_path / "o.npy").verdict == "unsafe"


def test_joblib(tmp_path):
    joblib = pytest.importorskip("joblib")
    src = tmp_path / "m.joblib"
    joblib.dump({"a": ARRAYS["f32"], "F": ARRAYS["fortran"], "n": 3}, src)
    convert(src, tmp_path / "m.safetensors")
    out = load_file(tmp_path / "m.safetensors")
    assert sorted(out) == ["F", "a"]
    _same(out["a"], ARRAYS["f32"])
    _same(out["F"], ARRAYS["fortran"])
    assert scan(src).verdict == "safe"


# MARK: PyTorch sources --------------------------------------------------------


def _torch_state():
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {
        "w": base,
        "tied": base,  # the same view: an alias
        "t": base.t(),  # non-contiguous view of the same storage
        "row": base[2, 1:5],  # offset view
        "h": torch.linspace(-1, 1, 5).to(torch.float16),
        "bf": torch.tensor([1.5, -3.25, 1e30]).to(torch.bfloat16),
        "u16": torch.tensor([1, 65535], dtype=torch.int32).to(torch.uint16),
        "i64": torch.tensor([-(2**62), 5]),
        "b": torch.tensor([True, False, True]),
        "f8": torch.tensor([0.5, 2.0]).to(torch.float8_e4m3fn),
        "p": torch.nn.Parameter(torch.ones(3)),
        "empty": torch.zeros(0, 2),
    }
    return torch, sd


def _torch_bytes(torch, t) -> bytes:
    t = t.detach().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoint(tmp_path, zip_format):
    torch, sd = _torch_state()
    src, dst = tmp_path / "model.pt", tmp_path / "model.safetensors"
    torch.save({"state_dict": sd, "epoch": 3, "arch": "mlp", "opt": {"lr": 0.5}}, src,
               _use_new_zipfile_serialization=zip_format)
    # "t" and "row" view the bytes of "w" again: 208 bytes written from 96
    # stored, well within the default expansion limit.
    report = convert(src, dst, keep_scalars=True, metadata={"source": "test"})
    out = load_file(dst)
    assert report.aliases == {"state_dict.w": "state_dict.tied"}
    assert set(out) == {f"state_dict.{k}" for k in sd if k != "w"}
    for key, t in sd.items():
        if key == "w":
            continue
        got = out[f"state_dict.{key}"]
        assert list(got.shape) == list(t.shape), key
        assert got.tobytes() == _torch_bytes(torch, t), key
    with safe_open(dst) as f:
        meta = f.metadata()
    assert meta == {"format": "pt", "epoch": "3", "arch": "mlp", "opt.lr": "0.5",
                    "state_dict.w": "state_dict.tied", "source": "test"}
    assert out["state_dict.bf"].dtype == ml_dtypes.bfloat16
    assert out["state_dict.h"].dtype == np.float16
    assert scan(src).verdict == "safe"


def test_torch_without_scalars_and_reference_roundtrip(tmp_path):
    torch, sd = _torch_state()
    st = pytest.importorskip("safetensors.torch")
    src = tmp_path / "m.bin"
    torch.save({"x": sd["h"], "n": 1}, src)
    convert(src, tmp_path / "m.safetensors")
    loaded = st.load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(loaded["x"], sd["h"])
    with safe_open(tmp_path / "m.safetensors") as f:
        assert f.metadata() == {"format": "pt"}


def test_view_past_its_storage_is_refused():
    storage = _Storage("0", "float32", 4)
    storage.data = np.arange(4, dtype=np.float32).tobytes()
    ok = _materialize(TensorRef(storage, 1, (3,), (1,), None), "ok")
    assert ok.tolist() == [1.0, 2.0, 3.0]
    for ref in (TensorRef(storage, 2, (3,), (1,), None),
                TensorRef(storage, 0, (2, 2), (3, 1), None)):
        with pytest.raises(ConversionError, match="reaches past its storage"):
            _materialize(ref, "bad")


# MARK: malicious pickles -------------------------------------------------------


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _check_refused(tmp_path, src, marker, expected):
    dst = tmp_path / "out.safetensors"
    with pytest.raises(UnsafePickleError) as info:
        convert(src, dst)
    assert expected in str(info.value)
    assert not marker.exists(), "the payload ran"
    assert not dst.exists(), "something was written"
    report = scan(src)
    assert report.verdict == "unsafe"
    assert not marker.exists()
    return report


def test_the_payload_really_runs_under_pickle(tmp_path):
    # Control: proves the marker test below can fail.
    import os as os_module

    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(os_module.system, f"touch {marker}")))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_refused(tmp_path, protocol):
    marker = tmp_path / "ran"
    payload = _Payload(os.system, f"touch {marker}")
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"w": np.ones(2), "x": payload}, protocol=protocol))
    report = _check_refused(tmp_path, src, marker, f"{os.system.__module__}.system")
    assert f"{os.system.__module__}.system" in report.unsafe_globals


def test_subprocess_eval_exec_getattr_refused(tmp_path):
    import builtins
    import subprocess

    marker = tmp_path / "ran"
    cases = {
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
        # getattr(__import__("os"), "system"): a chain that never names os.system
        "builtins.getattr": _Payload(builtins.getattr, _Payload(builtins.__import__, "os"),
                                     "system"),
    }
    for name, payload in cases.items():
        src = tmp_path / f"{name}.pkl"
        src.write_bytes(pickle.dumps({"state_dict": {"x": payload}}, protocol=2))
        _check_refused(tmp_path, src, marker, name)


def _raw(*parts: bytes) -> bytes:
    return b"".join(parts)


def _ustr(s: str) -> bytes:
    data = s.encode()
    return b"\x8c" + bytes([len(data)]) + data


def test_stack_global_with_memoized_strings(tmp_path):
    marker = tmp_path / "ran"
    # Names split across memo entries: a static scan of GLOBAL opcodes misses them.
    body = _raw(
        b"\x80\x04", _ustr("o"), b"\x94", _ustr("s"), b"\x94", b"0",  # memo 0 'o', memo 1 's'
        _ustr("posix"), b"\x94", _ustr("system"), b"\x94",  # memo 2, 3
        b"h\x02h\x03\x93", _ustr(f"touch {marker}"), b"\x85R.",
    )
    src = tmp_path / "sg.pkl"
    src.write_bytes(body)
    _check_refused(tmp_path, src, marker, "posix.system")


def test_global_name_tricks_and_protocol0(tmp_path):
    marker = tmp_path / "ran"
    cases = {
        # a module that sounds like torch
        "torch.serialization.os": b"\x80\x02ctorch.serialization\nos\n.",
        # dotted attribute paths on allowed modules
        "torch._utils._rebuild_tensor_v2.__globals__":
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2.__globals__\n.",
        "__builtin__.eval": _raw(b"c__builtin__\neval\n(V__import__('os').system('touch ",
                                 str(marker).encode(), b"')\ntR."),
        "builtins.__import__": b"\x80\x02cbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R.",
    }
    for name, body in cases.items():
        src = tmp_path / "trick.pkl"
        src.write_bytes(body)
        _check_refused(tmp_path, src, marker, name)


def test_refused_opcodes(tmp_path):
    marker = tmp_path / "ran"
    cases = {
        "INST": _raw(b"(S'touch ", str(marker).encode(), b"'\nios\nsystem\n."),
        "EXT1": b"\x80\x02\x82\x01.",
        "PERSID": b"\x80\x02P0\n.",
    }
    for name, body in cases.items():
        src = tmp_path / "op.pkl"
        src.write_bytes(body)
        report = _check_refused(tmp_path, src, marker, name)
        assert any(f.kind == "opcode" and name in f.name for f in report.findings)


def _rezip(src, dst, replace=None, extra=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if replace and info.filename.endswith(replace[0]):
                data = replace[1]
            zout.writestr(info, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)


def test_malicious_pickles_inside_a_torch_zip(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    prefix = zipfile.ZipFile(good).namelist()[0].split("/")[0]
    evil = pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2)

    extra = tmp_path / "extra.pt"
    _rezip(good, extra, extra={f"{prefix}/other.pkl": evil})
    report = _check_refused(tmp_path, extra, marker, "system")
    assert any(f.where.endswith("other.pkl") and not f.safe for f in report.findings)

    tampered = tmp_path / "tampered.pt"
    data_pkl = zipfile.ZipFile(good).read(f"{prefix}/data.pkl")
    hacked = data_pkl[:-1] + b"0" + evil[2:]  # drop STOP, pop the dict, run the payload
    _rezip(good, tampered, replace=("data.pkl", hacked))
    _check_refused(tmp_path, tampered, marker, "system")


def test_malformed_inputs_write_nothing(tmp_path):
    dst = tmp_path / "out.safetensors"
    cases = {
        "truncated": pickle.dumps({"a": np.ones(3)}, protocol=4)[:-10],
        "not a checkpoint": b"hello world, not a pickle",
        "complex128": pickle.dumps({"c": np.ones(2, np.complex128)}, protocol=4),
        "lying length": b"\x80\x04B\xff\xff\xff\x7f.",
    }
    for name, body in cases.items():
        src = tmp_path / "bad.pkl"
        src.write_bytes(body)
        with pytest.raises(ConversionError):
            convert(src, dst)
        assert not dst.exists(), name


def test_cycles_and_deep_nesting_are_bounded(tmp_path):
    cyc: list = []
    cyc.append(cyc)
    src = tmp_path / "cyc.pkl"
    src.write_bytes(pickle.dumps({"x": cyc}, protocol=4))
    with pytest.raises(ConversionError, match="nests deeper"):
        convert(src, tmp_path / "out.safetensors")



# MARK: BUILD: only a state_dict's _metadata, as data ----------------------------------


def _ordered_dict_with(tmp_path, attributes: dict, torch_module):
    from collections import OrderedDict

    od = OrderedDict(w=torch_module.ones(2))
    for key, value in attributes.items():
        setattr(od, key, value)
    src = tmp_path / "od.pt"
    torch_module.save(od, src)
    return src


def test_build_of_state_dict_metadata_is_data(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    src = _ordered_dict_with(tmp_path, {"_metadata": {"": {"version": 1}, "x": [1, "a", None]}},
                             torch)
    report = convert(src, tmp_path / "ok.safetensors", keep_scalars=True)
    assert report.metadata["_metadata"] == '{"": {"version": 1}, "x": [1, "a", null]}'
    cases = {
        # any other attribute: refused, whatever its value
        "other attribute": ({"foo": 1}, "may only restore its '_metadata' attribute"),
        "two attributes": ({"_metadata": {}, "foo": 1},
                           "may only restore its '_metadata' attribute"),
        # _metadata that is not plain data
        "a tensor in _metadata": ({"_metadata": {"t": torch.ones(1)}}, "must be plain data"),
        "a global in _metadata": ({"_metadata": {"f": _Payload(os.system, f"touch {marker}")}},
                                  "posix.system"),
    }
    for name, (attributes, message) in cases.items():
        src = _ordered_dict_with(tmp_path, attributes, torch)
        with pytest.raises(ConversionError, match=message):
            convert(src, tmp_path / "no.safetensors")
        assert not (tmp_path / "no.safetensors").exists(), name
        assert scan(src).verdict != "safe", name
    assert not marker.exists()


def test_build_on_anything_else_is_refused(tmp_path):
    from safetensors_c._pickle_vm import Machine

    def run(body: bytes):
        return Machine(body).run()

    od = b"\x80\x02ccollections\nOrderedDict\n)R"
    meta = b"}X\t\x00\x00\x00_metadata}s"
    assert run(od + meta + b"b.") == {}
    cases = {
        "BUILD on a dict": (b"\x80\x02}" + meta + b"b.", "BUILD on dict is not allowed"),
        "BUILD on a list": (b"\x80\x02]" + meta + b"b.", "BUILD on list is not allowed"),
        "a list as state": (b"\x80\x02ccollections\nOrderedDict\n)R]b.",
                            "may only restore its '_metadata'"),
        # _metadata holding the dict it is restored on (and so its tensors)
        "itself": (od + b"q\x00X\x01\x00\x00\x00wK\x01s}X\t\x00\x00\x00_metadatah\x00sb.",
                   None),
    }
    for name, (body, message) in cases.items():
        if message is None:  # allowed, but copied as it is when BUILD runs
            result = run(body)
            assert result == {"w": 1} and result.state_metadata == {"w": 1}
            continue
        with pytest.raises(ConversionError, match=message):
            run(body)
    with pytest.raises(ConversionError, match="restores '_metadata' twice"):
        run(od + meta + b"b" + meta + b"b.")
    # A dict nested in itself through _metadata: bounded, refused.
    deep = od + b"}q\x01X\x01\x00\x00\x00ah\x01s0" + b"}X\t\x00\x00\x00_metadatah\x01sb."
    with pytest.raises(ConversionError, match="nests deeper"):
        run(deep)
    try:
        run(b"\x80\x02}" + meta + b"b.")
    except UnsafePickleError as exc:
        assert exc.found == "BUILD"


def test_rebuild_from_type_only_for_tensors(tmp_path):
    from safetensors_c._pickle_vm import Machine

    rebuild = b"ctorch._tensor\n_rebuild_from_type_v2\n"
    cases = {
        # a class other than torch.Tensor / Parameter
        "numpy.ndarray": rebuild + b"(ctorch._utils\n_rebuild_tensor_v2\ncnumpy\nndarray\n)"
                         b"}tR.",
        # a function other than a tensor rebuilder
        "OrderedDict": rebuild + b"(ccollections\nOrderedDict\nctorch\nTensor\n)}tR.",
    }
    for name, body in cases.items():
        with pytest.raises(ConversionError, match="only accepted for torch.Tensor and Parameter"):
            Machine(b"\x80\x02" + body).run()
    with pytest.raises(ConversionError, match=r"set\(\.\.\.\) is only accepted over a list"):
        Machine(b"\x80\x02c__builtin__\nset\nK\x01\x85R.").run()
    with pytest.raises(ConversionError, match="torch.Size must be a tuple"):
        Machine(b"\x80\x02ctorch\nSize\nX\x01\x00\x00\x00a\x85R.").run()
