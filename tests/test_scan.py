"""scan: verdicts by content; clean findings for malformed archives; scan and convert agree."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from safetensors_c.cli import main
from safetensors_c.convert import ConversionError, UnsafePickleError, convert
from safetensors_c.numpy import save
from safetensors_c.scan import ScanReport, scan
from test_archive import Entry, deflated_zeros, entry, make_zip, zeros_crc
from test_scan_corpus import (
    _rezip,
    _torch_prefix,
    _torch_zip_bytes,
    call_pickle,
    safetensors_pickle_polyglot,
    torch_tar_checkpoint,
)

EVIL = call_pickle("os", "system", "true")


def _write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _reasons(report: ScanReport) -> str:
    return "\n".join(report.reasons)


def _refused(path, tmp_path, exc=ConversionError, match=None):
    dst = tmp_path / "out.safetensors"
    with pytest.raises(exc, match=match) as info:
        convert(path, dst)
    assert not dst.exists()
    return str(info.value)


# MARK: the module layout -------------------------------------------------------------


def test_scan_lives_in_its_own_module():
    from safetensors_c import convert as convert_module
    from safetensors_c import scan as scan_module

    assert convert_module.scan is scan_module.scan
    assert convert_module.ScanReport is scan_module.ScanReport
    code = "import sys, safetensors_c.scan; print('safetensors_c.convert' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# MARK: unknown is never safe ---------------------------------------------------------


@pytest.mark.parametrize("body, why", [
    (b"", "the file is empty"),
    (b"hello, this is a text file\n", "not a format this scanner analyses"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 20, "a gzip-compressed file"),
    (pickle.dumps({"a": 1}, protocol=4)[:-3], "a malformed pickle"),
    (pickle.dumps({"a": np.ones(2)}, protocol=4)[:-3], "could not be analysed"),
])
def test_what_cannot_be_analysed_is_unknown(tmp_path, body, why):
    report = scan(_write(tmp_path, "f.bin", body))
    assert report.verdict == "unknown" and not report.safe
    assert why in _reasons(report)


def test_a_data_only_pickle_is_safe(tmp_path):
    report = scan(_write(tmp_path, "d.pkl", pickle.dumps({"a": [1, 2.5, "x"]}, protocol=4)))
    assert report.verdict == "safe" and report.kind == "pickle"


def test_a_long_text_line_cannot_hide_a_payload(tmp_path):
    # Our interpreter bounds text arguments; the real unpickler reads on and runs the
    # payload: the verdict must not be "safe".
    data = b"\x80\x02S'" + b"a" * 10000 + b"'\n0" + EVIL[2:]
    report = scan(_write(tmp_path, "long.pkl", data))
    assert report.verdict != "safe"
    assert "a real unpickler would import or call things here" in _reasons(report)
    _refused(_write(tmp_path, "long.pkl", data), tmp_path)


def test_where_our_interpreter_stops_and_the_real_one_goes_on_is_unknown(tmp_path):
    # list[0] = 1 works in the real unpickler; ours refuses SETITEM on a list
    data = b"\x80\x02](K\x05eK\x00K\x01s0" + EVIL[2:]
    marker = tmp_path / "ran"
    evil = data.replace(b"true", b"touch " + str(marker).encode()).replace(
        b"X\x04\x00\x00\x00", b"X" + len(f"touch {marker}").to_bytes(4, "little"))
    pickle.loads(evil)
    assert marker.exists()  # control: the payload runs
    report = scan(_write(tmp_path, "div.pkl", data))
    assert report.verdict == "unknown"
    assert "SETITEM on list" in _reasons(report)
    assert "a real unpickler would import or call things here" in _reasons(report)
    _refused(_write(tmp_path, "div.pkl", data), tmp_path, match="cannot be analysed")


def test_unknown_opcode_right_away_is_not_a_pickle_but_a_late_one_is_unknown(tmp_path):
    assert "not a format" in _reasons(scan(_write(tmp_path, "a", b"\x00\x01\x02")))
    late = EVIL[:-1] + b"\xff"  # everything runs, then the real unpickler fails
    report = scan(_write(tmp_path, "b", late))
    assert report.verdict == "unsafe" and "global os.system" in _reasons(report)


# MARK: archives: content, not names --------------------------------------------------


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def good_zip():
    return _torch_zip_bytes({"w": torch.ones(4)})


def test_a_pickle_under_any_name_is_examined(tmp_path, good_zip):
    prefix = _torch_prefix(good_zip)
    for name in (f"{prefix}/extra_state", f"{prefix}/data/notes.txt", "README"):
        path = _write(tmp_path, "x.pt", _rezip(good_zip, extra={name: EVIL}))
        report = scan(path)
        assert report.verdict == "unsafe", name
        assert any(f.where == name and f.name == "os.system" for f in report.findings)
        _refused(path, tmp_path, UnsafePickleError, "os.system")


def test_case_tricks(tmp_path, good_zip):
    evil = _rezip(good_zip, replace={"data.pkl": EVIL}, rename={"data.pkl": "DATA.PKL"})
    report = scan(_write(tmp_path, "case.pt", evil))
    assert report.verdict == "unsafe" and report.kind == "pytorch zip"
    both = _rezip(good_zip, extra={f"{_torch_prefix(good_zip)}/Data.pkl": EVIL})
    report = scan(_write(tmp_path, "both.pt", both))
    assert report.verdict == "unsafe"
    assert "2 members are named" in _reasons(report)


def test_npz_member_of_any_name(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x"], dtype=object), allow_pickle=True)
    plain = io.BytesIO()
    np.save(plain, np.arange(3))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("a.npy", plain.getvalue())
        z.writestr("b", buf.getvalue())
    path = _write(tmp_path, "x.npz", out.getvalue())
    report = scan(path)
    assert report.verdict == "unsafe" and "object array" in _reasons(report)
    _refused(path, tmp_path, UnsafePickleError)


def test_nested_archives_are_opened(tmp_path, good_zip):
    inner = _rezip(good_zip, replace={"data.pkl": EVIL})
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/pytorch_model.bin", inner)
    report = scan(_write(tmp_path, "outer.zip", outer.getvalue()))
    assert report.verdict == "unsafe"
    assert any(f.where.startswith("m/pytorch_model.bin/") and f.name == "os.system"
               for f in report.findings)


def test_torchscript_archives_are_unknown(tmp_path, good_zip):
    prefix = _torch_prefix(good_zip)
    path = _write(tmp_path, "ts.pt", _rezip(good_zip, extra={f"{prefix}/constants.pkl":
                                                              pickle.dumps(())}))
    report = scan(path)
    # Not "unsafe" (no bad global) and never "safe": torch.jit.load runs code scan cannot read.
    assert report.verdict == "unknown", report.reasons
    assert report.kind == "TorchScript archive"
    assert "a TorchScript archive (it has constants.pkl)" in _reasons(report)
    assert any(f.kind == "unknown" and not f.safe for f in report.findings)
    _refused(path, tmp_path, match="cannot be analysed completely.*TorchScript archive")


# MARK: torch's tar format ------------------------------------------------------------


def test_tar_format_is_recognised(tmp_path):
    benign = _write(tmp_path, "ok.pt", torch_tar_checkpoint(pickle.dumps({"a": 1}, protocol=2)))
    report = scan(benign)
    assert report.kind == "pytorch tar" and report.verdict == "safe", report.reasons
    _refused(benign, tmp_path, match="legacy tar format.*not supported")
    evil = _write(tmp_path, "evil.pt", torch_tar_checkpoint(EVIL))
    report = scan(evil)
    assert report.kind == "pytorch tar" and report.verdict == "unsafe"
    assert any(f.where == "pickle (main pickle)" and f.name == "os.system"
               for f in report.findings)
    _refused(evil, tmp_path, UnsafePickleError, "os.system")


# MARK: clean errors ------------------------------------------------------------------


def _bad_zips(good: bytes) -> dict[str, bytes]:
    prefix = _torch_prefix(good)
    z = zipfile.ZipFile(io.BytesIO(good))
    body = {i.filename: z.read(i) for i in z.infolist()}
    entries = [entry(name, data) for name, data in body.items()]
    bad_crc = [Entry(e.name, e.data, e.size, e.crc ^ 1) if e.name.endswith("data.pkl") else e
               for e in entries]
    encrypted = [Entry(e.name, e.data, e.size, e.crc, flags=1) if e.name.endswith("data/0")
                 else e for e in entries]
    return {
        "bad CRC": make_zip(bad_crc),
        "encrypted": make_zip(encrypted),
        "truncated": good[: len(good) // 2] + good[-22:],
        "cut": good[:-30],
        "bzip2": make_zip([Entry(e.name, e.data, e.size, e.crc, method=12) for e in entries]),
        "storage missing": make_zip([e for e in entries if not e.name.endswith("data/0")]),
        "name mismatch": make_zip([Entry(e.name, e.data, e.size, e.crc,
                                         local_name=e.name.upper()) for e in entries]),
        "storage too short": make_zip([entry(e.name, e.data[:8]) if e.name.endswith("data/0")
                                       else e for e in entries]),
        "prefix": make_zip(entries, prefix=b"junk" * 10),
        "only prefix dir": make_zip([entry(f"{prefix}/data.pkl", body[f"{prefix}/data.pkl"])]),
    }


def test_malformed_zips_give_findings_and_conversion_errors(tmp_path, good_zip):
    for what, data in _bad_zips(good_zip).items():
        path = _write(tmp_path, "bad.pt", data)
        report = scan(path)
        assert report.verdict != "safe", what
        assert report.reasons, what
        message = _refused(path, tmp_path)
        assert path in message, (what, message)


def test_member_errors_name_the_member(tmp_path, good_zip):
    bad = _bad_zips(good_zip)
    path = _write(tmp_path, "crc.pt", bad["bad CRC"])
    assert "data.pkl' : CRC mismatch".replace("' :", "':") in _reasons(scan(path))
    message = _refused(path, tmp_path)
    assert "data.pkl" in message and "CRC mismatch" in message
    path = _write(tmp_path, "enc.pt", bad["encrypted"])
    assert "data/0' is encrypted" in _reasons(scan(path))


def test_batch_scan_goes_on_after_bad_files(tmp_path, good_zip, capsys):
    files = [_write(tmp_path, "crc.pt", _bad_zips(good_zip)["bad CRC"]),
             _write(tmp_path, "empty.bin", b"")]
    os.mkfifo(tmp_path / "fifo")
    files += [str(tmp_path / "fifo"), str(tmp_path / "missing"),
              _write(tmp_path, "good.pt", good_zip)]
    # Nothing unsafe; files that cannot be read (2) outrank unknown ones (3).
    assert main(["scan", "--json", *files]) == 2
    out = json.loads(capsys.readouterr().out)
    verdicts = {os.path.basename(r["path"]): r["verdict"] for r in out}
    assert verdicts == {"crc.pt": "unknown", "empty.bin": "unknown", "fifo": "error",
                        "missing": "error", "good.pt": "safe"}


def test_cli_never_tracebacks_on_hostile_zips(tmp_path, good_zip):
    for what, data in _bad_zips(good_zip).items():
        path = _write(tmp_path, "bad.pt", data)
        for args in (["scan", path], ["convert", path, str(tmp_path / "o.safetensors")]):
            result = subprocess.run([sys.executable, "-m", "safetensors_c", *args],
                                    capture_output=True, text=True, timeout=120)
            # scan: unknown (3), the zip could not be analysed; convert: refused (1).
            assert result.returncode == (3 if args[0] == "scan" else 1), (what, args,
                                                                             result.stderr)
            assert "Traceback" not in result.stderr, (what, result.stderr)


# MARK: bounded by what is declared ---------------------------------------------------


def test_storage_bigger_than_declared_is_refused_before_inflating(tmp_path, good_zip):
    z = zipfile.ZipFile(io.BytesIO(good_zip))
    body = {i.filename: z.read(i) for i in z.infolist()}
    n = 256 << 20
    entries = [Entry(k, deflated_zeros(n), n, zeros_crc(n), 8) if k.endswith("data/0")
               else entry(k, v) for k, v in body.items()]
    path = _write(tmp_path, "bomb.pt", make_zip(entries))
    report = scan(path)
    assert report.verdict == "unknown"
    assert f"holds {n} bytes, data.pkl declares 4 x 4 = 16" in _reasons(report)
    message = _refused(path, tmp_path)
    assert "data/0: storage '0' holds 268435456 bytes, data.pkl declares 4 x 4 = 16" in message


def test_npy_member_bigger_than_its_header(tmp_path):
    plain = io.BytesIO()
    np.save(plain, np.arange(4.0))
    raw = plain.getvalue()
    n = 64 << 20
    c = __import__("zlib").compressobj(9, 8, -15)
    data = c.compress(raw) + c.compress(bytes(n)) + c.flush()
    crc = __import__("zlib").crc32(bytes(n), __import__("zlib").crc32(raw))
    path = _write(tmp_path, "bomb.npz", make_zip([Entry("a.npy", data, len(raw) + n, crc, 8)]))
    assert "the array needs 32 bytes of data, the member declares 67108896" in _reasons(
        scan(path))
    _refused(path, tmp_path, match="the array needs 32 bytes of data")
    # the directory lying about the size: inflating stops right after it
    lying = make_zip([Entry("a.npy", data, len(raw), crc, 8)])
    path = _write(tmp_path, "lying.npz", lying)
    assert "inflates past its declared 160 bytes" in _reasons(scan(path))
    _refused(path, tmp_path, match="inflates past its declared 160 bytes")


def test_declared_huge_storage_allocates_nothing(tmp_path, good_zip):
    # data.pkl says 2**40 elements; the member holds 16 bytes
    prefix = _torch_prefix(good_zip)
    z = zipfile.ZipFile(io.BytesIO(good_zip))
    pkl = z.read(f"{prefix}/data.pkl")
    hacked = pkl.replace(b"K\x04", b"\x8a\x06\x00\x00\x00\x00\x00\x01", 1)
    path = _write(tmp_path, "big.pt", _rezip(good_zip, replace={"data.pkl": hacked}))
    declared = "storage '0' holds 16 bytes, data.pkl declares 1099511627776 x 4 = 4398046511104"
    # Python's allocations (NumPy's included) while the 4 TiB claim is examined and refused:
    # a few MiB of bookkeeping at most, nothing in proportion to the claim.
    tracemalloc.start()
    try:
        report = scan(path)
        message = _refused(path, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.verdict == "unknown", report.reasons
    assert declared in _reasons(report)
    assert declared in message
    assert peak < 8 << 20, peak


# MARK: safetensors files read every other way ----------------------------------------


def test_safetensors_pickle_polyglot(tmp_path):
    marker = tmp_path / "ran"
    payload = (b"cos\nsystem\n(X" + len(f"touch {marker}").to_bytes(4, "little")
               + f"touch {marker}".encode() + b"tR.")
    data = safetensors_pickle_polyglot(payload)
    path = _write(tmp_path, "model.safetensors", data)
    from safetensors_c.numpy import load_file

    assert list(load_file(path)) == [")0U" + chr(len(
        '":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]},"__metadata__":{"p":"' % (
            len(payload) + 1, len(payload) + 1)))]
    report = scan(path)
    assert report.kind == "safetensors" and report.verdict == "unsafe"
    assert "global os.system" in _reasons(report)
    assert "the file is also a complete pickle" in _reasons(report)
    _refused(path, tmp_path, UnsafePickleError, "os.system")
    assert not marker.exists()
    # control: the real unpickler runs it
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({path!r}, 'rb'))"],
                   timeout=60)
    assert marker.exists()


def test_plain_safetensors_is_safe_and_not_converted(tmp_path):
    path = _write(tmp_path, "x.safetensors", save({"a": np.ones(3, np.float32)}))
    report = scan(path)
    assert report.kind == "safetensors" and report.verdict == "safe"
    _refused(path, tmp_path, match="already a .safetensors file")


@pytest.mark.parametrize("tail", [EVIL, b"PK\x05\x06" + bytes(18), b"\x00" * 7])
def test_trailing_bytes_are_a_possible_polyglot(tmp_path, tail):
    path = _write(tmp_path, "t.safetensors", save({"a": np.ones(3, np.float32)}) + tail)
    report = scan(path)
    assert report.verdict != "safe"
    assert "could be another format (a polyglot)" in _reasons(report)
    _refused(path, tmp_path)


def test_zip_inside_a_tensor_is_opened(tmp_path, good_zip):
    evil = _rezip(good_zip, replace={"data.pkl": EVIL})
    path = _write(tmp_path, "z.safetensors",
                  save({"blob": np.frombuffer(evil, dtype=np.uint8)}))
    report = scan(path)
    assert report.verdict == "unsafe" and "global os.system" in _reasons(report)


def test_pickle_with_a_zip_appended(tmp_path, good_zip):
    benign = pickle.dumps({"a": 1}, protocol=4)
    report = scan(_write(tmp_path, "p.pt", benign + good_zip))
    assert report.verdict == "unknown" and "polyglot" in _reasons(report)
