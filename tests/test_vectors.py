"""The crafted vectors of tests/vectors/: every reader agrees on every verdict.

For each file listed in tests/vectors/expected.json, ``safe_open`` and
``load_file`` (both backends) and ``load(bytes)`` must succeed for "OK"
vectors and otherwise raise exactly ``SafetensorError`` whose ``code`` is
the C core's status name (the binding maps core statuses 1:1 onto
``exc.code``, so this checks the core too). Never another exception type.

The reference ``safetensors`` package, when installed, must reject every
file we reject, except the deliberate deviations documented in
tests/vectors/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError
from conftest import BACKENDS

VECTORS = Path(__file__).resolve().parent / "vectors"
EXPECTED: dict[str, str] = json.loads((VECTORS / "expected.json").read_text())
NAMES = sorted(EXPECTED)

# Files the reference reader accepts although we reject them, on purpose
# (README.md, "Deliberate deviations"). Files where the reference also
# rejects a deviation-class input (e.g. a duplicate name whose surviving
# entry leaves a hole) need no entry here.
DEVIATIONS = {
    "dup_tensor_name_same_entry.safetensors": "duplicate keys",
    "dup_metadata_key.safetensors": "duplicate keys",
    "dup_unknown_field.safetensors": "duplicate keys",
    "dup_key_nested_ignored.safetensors": "duplicate keys",
    "schema_entry_array.safetensors": "tensor entry written as a JSON array",
    "schema_dtype_map.safetensors": "dtype written as a map",
}

# Open core bugs found by these vectors: the verdict in expected.json is the
# one the contract (stc.h) asks for; the core currently returns another.
# strict xfail: when the core is fixed these XPASS and must be removed.
KNOWN_CORE_BUGS: dict[str, str] = {
    # "file.safetensors": "what the core gets wrong",
}


def vector_params() -> list:
    params = []
    for name in NAMES:
        marks = []
        if name in KNOWN_CORE_BUGS:
            marks.append(pytest.mark.xfail(reason=KNOWN_CORE_BUGS[name], strict=True))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def outcome(fn) -> str:
    """Runs fn(); "OK", or the SafetensorError code. Other exceptions propagate."""
    try:
        fn()
    except SafetensorError as exc:
        code = getattr(exc, "code", None)
        assert isinstance(code, str) and code.startswith("STC_ERR_"), (
            f"SafetensorError without a core status code: {exc!r}"
        )
        assert str(exc), "empty error message"
        return code
    return "OK"


def read_all_safe_open(path: Path, backend: str) -> None:
    with safetensors_c.safe_open(path, framework="np", backend=backend) as f:
        keys = f.keys()
        assert keys == sorted(keys)
        assert sorted(f.offset_keys()) == keys
        meta = f.metadata()
        assert meta is None or all(isinstance(v, str) for v in meta.values())
        for name in keys:
            np.asarray(f.get_tensor(name))
            f.get_slice(name).get_shape()


def test_expected_json_covers_the_directory():
    on_disk = {p.name for p in VECTORS.iterdir()
               if p.suffix not in (".py", ".md") and p.name != "expected.json"
               and not p.name.startswith(".") and p.is_file()}
    assert on_disk == set(EXPECTED), on_disk.symmetric_difference(EXPECTED)
    assert set(EXPECTED.values()) - {"OK"} <= {
        "STC_ERR_" + s for s in (
            "NOT_SAFETENSORS", "HEADER_TOO_SMALL", "HEADER_TOO_LARGE", "HEADER_LENGTH",
            "INVALID_UTF8", "INVALID_JSON", "NESTING_TOO_DEEP", "DUPLICATE_KEY",
            "INVALID_HEADER", "INVALID_OFFSETS", "SIZE_OVERFLOW", "MISALIGNED",
            "SIZE_MISMATCH", "TRUNCATED_DATA", "TRAILING_DATA")}


def test_vectors_are_up_to_date(tmp_path):
    """The committed files are exactly what make_vectors.py writes."""
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    try:
        spec.loader.exec_module(module)
        assert module.main(["--check"]) == 0
    finally:
        sys.modules.pop("make_vectors", None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", vector_params())
def test_safe_open(name, backend):
    path = VECTORS / name
    assert outcome(lambda: read_all_safe_open(path, backend)) == EXPECTED[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", vector_params())
def test_load_file(name, backend):
    path = VECTORS / name
    assert outcome(lambda: safetensors_c.load_file(path, backend=backend)) == EXPECTED[name]


@pytest.mark.parametrize("name", vector_params())
def test_load_bytes(name):
    data = (VECTORS / name).read_bytes()
    assert outcome(lambda: safetensors_c.load(data)) == EXPECTED[name]
    assert outcome(lambda: safetensors_c.load(bytearray(data))) == EXPECTED[name]


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n] == "OK"])
def test_ok_vectors_agree_across_readers(name):
    path = VECTORS / name
    by_file = safetensors_c.load_file(path)
    by_pread = safetensors_c.load_file(path, backend="pread")
    by_bytes = safetensors_c.load(path.read_bytes())
    assert list(by_file) == list(by_pread) == list(by_bytes)
    for key in by_file:
        a, b, c = (np.asarray(x) for x in (by_file[key], by_pread[key], by_bytes[key]))
        assert a.dtype == b.dtype == c.dtype and a.shape == b.shape == c.shape
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_200000_zero_size_tensors():
    """A header of 200,000 zero-size tensors (~10 MB) is valid and loads."""
    count = 200_000
    parts = ['"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(count)]
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * (-len(text) % 8)
    data = len(text).to_bytes(8, "little") + text
    tensors = safetensors_c.load(data)
    assert len(tensors) == count
    assert all(t.shape == (0,) for t in tensors.values())


def test_200000_tensors_claimed_but_truncated():
    """The same header cut in half, with its full length still claimed."""
    count = 200_000
    parts = ['"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(count)]
    text = ("{" + ",".join(parts) + "}").encode()
    # Pad so that the length prefix starts with a byte no format sniffer knows
    # (see the sniff_truncated_n_* vectors).
    text += b" " * ((0x10 - len(text)) % 256)
    data = len(text).to_bytes(8, "little") + text[: len(text) // 2]
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load(data)
    assert info.value.code == "STC_ERR_HEADER_LENGTH"
    # Consistent length, JSON cut short: a syntax error, not a crash.
    half = text[: len(text) // 2]
    with pytest.raises(SafetensorError) as info:
        safetensors_c.load(len(half).to_bytes(8, "little") + half)
    assert info.value.code == "STC_ERR_INVALID_JSON"


# MARK: - the reference reader

def reference_accepts(path: Path) -> bool:
    reference = pytest.importorskip("safetensors")
    try:
        with reference.safe_open(str(path), framework="numpy") as f:
            f.keys()
            f.metadata()
    except Exception:  # the reference raises several types; any refusal counts
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_reference_rejects_what_we_reject(name):
    verdict = EXPECTED[name]
    accepted = reference_accepts(VECTORS / name)
    if verdict == "OK":
        assert accepted, "the reference rejects a file we accept"
    elif name in DEVIATIONS:
        assert accepted, (
            f"documented deviation ({DEVIATIONS[name]}) no longer needed: "
            "the reference rejects it too; remove it from DEVIATIONS and README.md"
        )
    else:
        assert not accepted, f"the reference accepts a file we reject ({verdict})"


def test_deviations_are_documented():
    readme = (VECTORS / "README.md").read_text()
    for name in DEVIATIONS:
        assert name.replace(".safetensors", "") in readme, name
        assert EXPECTED[name] != "OK"
