"""Ceiling: every hostile input kind is scanned and converted in a subprocess under an
address-space limit and a CPU-time limit; each must end with a finding (scan) and a
ConversionError (convert), never a MemoryError, a raw exception or a timeout."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
import zlib

import pytest

from test_archive import Entry, deflated_zeros, entry, make_zip, zeros_crc
from test_scan_corpus import _torch_prefix, _torch_zip_bytes

GIB = 1 << 30
ADDRESS_SPACE = 1 * GIB  # the interpreter with NumPy and safetensors_c needs ~160 MiB
CPU_SECONDS = 60

_RUNNER = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({address}, {address}))
    resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
    from safetensors_c.convert import ConversionError, convert
    from safetensors_c.scan import scan
    path, dst = sys.argv[1], sys.argv[2]
    out = {{}}
    t = time.process_time()
    report = scan(path)
    out["scan"] = report.verdict
    out["reasons"] = report.reasons[:3]
    out["scan_cpu"] = time.process_time() - t
    t = time.process_time()
    try:
        convert(path, dst)
        out["convert"] = "converted"
    except ConversionError as exc:
        out["convert"] = type(exc).__name__ + ": " + str(exc)[:300]
    out["convert_cpu"] = time.process_time() - t
    print(json.dumps(out))
""")


def _deflated(body: bytes, zeros: int) -> tuple[bytes, int]:
    """body followed by ``zeros`` zero bytes, deflated; returns (stream, crc)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(body) + c.flush(zlib.Z_FULL_FLUSH)
    return head + deflated_zeros(zeros), _crc_of(body, zeros)


def _crc_of(body: bytes, zeros: int) -> int:
    crc = zlib.crc32(body)
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(bytes(zeros & ((1 << 20) - 1)), crc)


def _torch_members() -> tuple[str, dict[str, bytes]]:
    torch = pytest.importorskip("torch")
    good = _torch_zip_bytes({"w": torch.ones(4)})
    z = zipfile.ZipFile(io.BytesIO(good))
    return _torch_prefix(good), {i.filename: z.read(i) for i in z.infolist()}


def _hostile() -> dict[str, tuple[bytes, bool]]:
    """name -> (file bytes, whether scan may call it safe: only when no code is involved
    and the file is well formed). convert must refuse every one."""
    prefix, body = _torch_members()
    n = 2 * GIB
    kinds: dict[str, tuple[bytes, bool]] = {}

    def torch_with(name: str, replacement: Entry) -> bytes:
        return make_zip([replacement if k.endswith(name) else entry(k, v)
                         for k, v in body.items()])

    bomb = deflated_zeros(n)
    kinds["storage bomb, size declared"] = (
        torch_with("data/0", Entry(f"{prefix}/data/0", bomb, n, zeros_crc(n), 8)), False)
    kinds["storage bomb, size hidden"] = (
        torch_with("data/0", Entry(f"{prefix}/data/0", bomb, 16, zeros_crc(16), 8)), False)
    pkl = body[f"{prefix}/data.pkl"]
    stream, crc = _deflated(pkl, n)
    kinds["data.pkl bomb, size declared"] = (
        torch_with("data.pkl", Entry(f"{prefix}/data.pkl", stream, len(pkl) + n, crc, 8)),
        False)
    kinds["data.pkl bomb, size hidden"] = (
        torch_with("data.pkl", Entry(f"{prefix}/data.pkl", stream, len(pkl), zlib.crc32(pkl),
                                     8)), False)
    buf = io.BytesIO()
    import numpy as np

    np.save(buf, np.arange(4.0))
    npy = buf.getvalue()
    stream, crc = _deflated(npy, n)
    kinds["npz member bomb, size declared"] = (
        make_zip([Entry("a.npy", stream, len(npy) + n, crc, 8)]), False)
    kinds["npz member bomb, size hidden"] = (
        make_zip([Entry("a.npy", stream, len(npy), zlib.crc32(npy), 8)]), False)
    # a zip inside a zip, each member of the inner one inflating to 700 MiB
    inner_n = 700 << 20
    inner = make_zip([Entry(f"m{i}.bin", deflated_zeros(inner_n), inner_n, zeros_crc(inner_n),
                            8) for i in range(3)])
    kinds["nested zip bomb"] = (make_zip([entry("inner.zip", inner, 8)]), False)
    # one local header listed many times (members overlap)
    one = Entry("a.npy", bomb, n, zeros_crc(n), 8)
    kinds["overlapping members"] = (make_zip([one] * 8), False)
    # data.pkl declares an absurd storage (2**40 elements) over a 16-byte member
    hacked = pkl.replace(b"K\x04", b"\x8a\x06\x00\x00\x00\x00\x00\x01", 1)
    kinds["absurd declared storage"] = (torch_with("data.pkl", entry(f"{prefix}/data.pkl",
                                                                     hacked)), False)
    # a stride-0 view: 4 bytes stored, 6.4 GB if written out (no code: scan may call it safe)
    torch = pytest.importorskip("torch")
    kinds["stride-0 expansion"] = (_torch_zip_bytes({"w": torch.ones(1).expand(40000, 40000)}),
                                   True)
    # a legacy pickle whose storage claims more bytes than the file has
    legacy = _torch_zip_bytes({"w": torch.ones(4)}, legacy=True)
    kinds["legacy storage past the end"] = (legacy[:-8], False)
    kinds["huge pickle frame"] = (b"\x80\x04\x95" + (2**62).to_bytes(8, "little") + b"}.",
                                  False)
    kinds["huge BINBYTES8"] = (b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b".", False)
    # hashing a tuple nested 10**6 deep overflows the C stack; shared sub-tuples make
    # hashing exponential
    kinds["deeply nested dict key"] = (b"\x80\x04}" + b")" + b"\x85" * 10**6 + b"Ns.", False)
    kinds["shared sub-tuples as a set item"] = (
        b"\x80\x04\x8f(" + b")" + b"2\x86" * 80 + b"\x90.", False)
    kinds["deep nesting"] = (b"\x80\x04" + b"(" * 200000 + b"t" * 200000 + b".", True)
    return kinds


@pytest.fixture(scope="module")
def hostile():
    return _hostile()


def test_inputs_are_small(hostile):
    for name, (data, _) in hostile.items():
        assert len(data) < 8 << 20, name
    assert len(hostile) == 16


@pytest.mark.parametrize("name", [
    "storage bomb, size declared", "storage bomb, size hidden",
    "data.pkl bomb, size declared", "data.pkl bomb, size hidden",
    "npz member bomb, size declared", "npz member bomb, size hidden",
    "nested zip bomb", "overlapping members", "absurd declared storage",
    "stride-0 expansion", "legacy storage past the end", "huge pickle frame",
    "huge BINBYTES8", "deep nesting", "deeply nested dict key", "shared sub-tuples as a set item",
])
def test_hostile_kind_under_limits(tmp_path, hostile, name):
    data, may_be_safe = hostile[name]
    src = tmp_path / "hostile.bin"
    src.write_bytes(data)
    dst = tmp_path / "out.safetensors"
    runner = _RUNNER.format(address=ADDRESS_SPACE, cpu=CPU_SECONDS)
    result = subprocess.run([sys.executable, "-c", runner, str(src), str(dst)],
                            capture_output=True, text=True, timeout=3 * CPU_SECONDS)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if not may_be_safe:
        assert out["scan"] != "safe", out
        assert out["reasons"], out
    assert out["convert"].startswith(("ConversionError", "UnsafePickleError", "ArchiveError")), out
    assert "MemoryError" not in out["convert"], out
    assert not dst.exists()
    # time bounded in proportion to the input: these files are a few MB at most
    assert out["scan_cpu"] < 30 and out["convert_cpu"] < 30, out
