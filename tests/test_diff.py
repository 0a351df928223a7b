"""safetensors_c.diff and ``safetensors-c diff A B``: what differs between two
checkpoints, exit 0 / 1 / 2, escaped text, exact JSON, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, _remote, packed, save_file, save_sharded
from safetensors_c.cli import main
from safetensors_c.diff import (BOOKKEEPING_METADATA, CHUNK_ELEMENTS, DiffReport, TensorValues,
                                _label, _Side)
from safetensors_c.integrity import save_file_with_digests

from conftest import build, entry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_servers.nginx import serving_nginx  # noqa: E402

diff = safetensors_c.diff
# The module (its attribute on the package is the function of the same name).
diff_module = sys.modules["safetensors_c.diff"]


def _tensors():
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1, -2, 3], dtype=np.int32),
        "mask": np.array([True, False, True]),
        "h": np.linspace(-1, 1, 7).astype(np.float16),
    }


def _save(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def _values(report: DiffReport, name: str) -> TensorValues:
    (found,) = [t for t in report.tensors if t.name == name]
    return found


def _cli(*args):
    """(status, stdout, stderr) of the command in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "safetensors_c", "diff", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stdout, done.stderr


def _printable(text: str) -> bool:
    return all(line.isprintable() for line in text.splitlines())


# MARK: identical ------------------------------------------------------------------


def test_identical_files_exit_0(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", _tensors(), {"format": "np"})
    b = _save(tmp_path / "b.safetensors", _tensors(), {"format": "np"})
    report = diff(a, b)
    assert report.identical and not report.differing
    assert [t.name for t in report.tensors] == ["b", "h", "mask", "w"]  # sorted
    assert all(t.bit_identical and t.mismatched == 0 and t.max_abs == 0 and t.max_rel == 0
               for t in report.tensors)
    assert main(["diff", a, b]) == 0
    assert capsys.readouterr().out == "identical: 4 tensors, metadata equal\n"
    assert main(["diff", "--json", a, b]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] is True


def test_the_layout_does_not_count(tmp_path):
    """The same tensors with their data in another order in the file."""
    x, y = np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)
    a = _save(tmp_path / "a.safetensors", {"x": x, "y": y})
    b = tmp_path / "b.safetensors"
    b.write_bytes(build({"x": entry("F32", [2], 8, 16), "y": entry("F32", [2], 0, 8)},
                        y.tobytes() + x.tobytes()))
    assert safetensors_c.safe_open(str(b)).offset_keys() == ["y", "x"]
    assert diff(a, str(b)).identical
    b.write_bytes(build({"x": entry("F32", [2], 8, 16), "y": entry("F32", [2], 0, 8)},
                        x.tobytes() + y.tobytes()))  # now x holds y's values
    assert [t.name for t in diff(a, str(b)).differing] == ["x", "y"]


def test_a_file_against_itself_and_empty_files(tmp_path):
    a = _save(tmp_path / "a.safetensors", _tensors())
    assert diff(a, a).identical
    e1 = _save(tmp_path / "e1.safetensors", {})
    e2 = _save(tmp_path / "e2.safetensors", {"z": np.zeros((0, 3), np.float32)})
    assert diff(e1, e1).identical
    report = diff(e1, e2)
    assert not report.identical and [t.name for t in report.only_in_b] == ["z"]
    assert diff(e2, e2).identical  # an empty tensor compares as identical


# MARK: values ---------------------------------------------------------------------


def test_a_changed_value_gives_exact_max_abs_and_rel(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", _tensors())
    changed = _tensors()
    changed["w"][1, 2] = 7.5  # was 6.0
    changed["w"][2, 3] = 11.25  # was 11.0
    b = _save(tmp_path / "b.safetensors", changed)
    report = diff(a, b)
    assert not report.identical
    w = _values(report, "w")
    assert (w.bit_identical, w.mismatched, w.nan_mismatched) == (False, 2, 0)
    assert w.max_abs == 1.5 and type(w.max_abs) is float
    assert w.max_rel == 1.5 / 7.5  # |a-b| / max(|a|, |b|)
    assert [t.name for t in report.differing] == ["w"]
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "values  w  F32 [3, 4]: 2 of 12 differ, max abs 1.5, max rel 0.2",
        "differ: 1 of 4 compared tensors not bit-identical",
    ]


def test_integers_and_bool_are_compared_exactly(tmp_path):
    a = _save(tmp_path / "a.safetensors", {
        "i64": np.array([np.iinfo(np.int64).min, 0, 7], np.int64),
        "u64": np.array([0, 2**64 - 1], np.uint64),
        "i8": np.array([-128, 5], np.int8),
        "flag": np.array([True, False, False]),
    })
    b = _save(tmp_path / "b.safetensors", {
        "i64": np.array([np.iinfo(np.int64).max, 0, 7], np.int64),
        "u64": np.array([2**64 - 1, 2**64 - 2], np.uint64),
        "i8": np.array([127, 5], np.int8),
        "flag": np.array([True, True, False]),
    })
    report = diff(a, b)
    i64 = _values(report, "i64")
    assert i64.max_abs == 2**64 - 1 and type(i64.max_abs) is int  # beyond float64's 53 bits
    assert i64.max_rel == (2**64 - 1) / 2**63 and i64.mismatched == 1
    u64 = _values(report, "u64")
    assert u64.max_abs == 2**64 - 1 and u64.max_rel == 1.0 and u64.mismatched == 2
    i8 = _values(report, "i8")
    assert (i8.max_abs, i8.max_rel) == (255, 255 / 128)
    flag = _values(report, "flag")
    assert (flag.max_abs, flag.max_rel, flag.mismatched) == (1, 1.0, 1)


def test_nan_inf_and_signed_zero(tmp_path):
    nan = np.float32("nan")
    other_nan = np.array([0x7FC00001], np.uint32).view(np.float32)[0]  # another payload
    a = _save(tmp_path / "a.safetensors", {
        "both_nan": np.array([nan, 1.0], np.float32),
        "payload": np.array([nan, 1.0], np.float32),
        "one_nan": np.array([nan, 2.0, 3.0], np.float32),
        "zero": np.array([0.0, 1.0], np.float32),
        "inf": np.array([np.inf, np.inf, -np.inf, 1.0], np.float32),
    })
    b = _save(tmp_path / "b.safetensors", {
        "both_nan": np.array([nan, 1.0], np.float32),
        "payload": np.array([other_nan, 1.0], np.float32),
        "one_nan": np.array([1.0, nan, 3.5], np.float32),
        "zero": np.array([-0.0, 1.0], np.float32),
        "inf": np.array([np.inf, 5.0, np.inf, 1.0], np.float32),
    })
    report = diff(a, b)
    both = _values(report, "both_nan")
    assert both.bit_identical and both.mismatched == 0
    payload = _values(report, "payload")  # NaN equals NaN, but the bits differ
    assert (payload.bit_identical, payload.mismatched, payload.max_abs) == (False, 0, 0.0)
    one = _values(report, "one_nan")  # NaN against a number differs, outside max_abs
    assert (one.mismatched, one.nan_mismatched, one.max_abs, one.max_rel) == (3, 2, 0.5,
                                                                              0.5 / 3.5)
    zero = _values(report, "zero")
    assert (zero.bit_identical, zero.mismatched, zero.max_rel) == (False, 0, 0.0)
    inf = _values(report, "inf")  # inf = inf; inf against 5: rel 1; -inf against inf: rel 2
    assert (inf.mismatched, inf.max_abs, inf.max_rel) == (2, float("inf"), 2.0)
    data = report.to_dict()
    [row] = [t for t in data["tensors"] if t["name"] == "inf"]
    assert row["max_abs"] == "inf"  # strict JSON has no infinity
    assert "Infinity" not in safetensors_c._terminal.dumps(data)
    assert report.to_dict()["identical"] is False
    text = str(report)
    assert "payload  F32 [2]: values equal, bits differ" in text
    assert "one_nan  F32 [3]: 3 of 3 differ, max abs 0.5, max rel 0.142857, 2 NaN against a " \
           "number" in text


def test_inf_against_finite_is_rel_1_and_huge_finite_values_stay_in_range(tmp_path):
    big = np.finfo(np.float64).max
    a = _save(tmp_path / "a.safetensors", {"x": np.array([np.inf, big], np.float64)})
    b = _save(tmp_path / "b.safetensors", {"x": np.array([3.0, -big], np.float64)})
    x = _values(diff(a, b), "x")
    # |big - -big| overflows float64: the relative difference is still 2, not inf.
    assert (x.max_abs, x.max_rel) == (float("inf"), 2.0)
    b2 = _save(tmp_path / "b2.safetensors", {"x": np.array([3.0, big], np.float64)})
    assert _values(diff(a, b2), "x").max_rel == 1.0


def test_low_precision_complex_and_packed_dtypes(tmp_path):
    bf16 = ml_dtypes.bfloat16
    e4m3 = ml_dtypes.float8_e4m3fn
    f6 = np.array([1, 2, 3], np.uint8)
    a = _save(tmp_path / "a.safetensors", {
        "bf": np.array([1.0, 2.0], bf16),
        "f8": np.array([2.0, -1.0], e4m3),
        "c": np.array([1 + 1j, 2], np.complex64),
        "f4": packed(np.array([0x21, 0x00], np.uint8), "F4"),  # values 0.5, 1.0, 0, 0
        "f6": packed(f6, "F6_E2M3", (4,)),
        "f6same": packed(f6, "F6_E3M2", (4,)),
    })
    b = _save(tmp_path / "b.safetensors", {
        "bf": np.array([1.0078125, 2.0], bf16),  # the next bfloat16 after 1
        "f8": np.array([2.5, -1.0], e4m3),
        "c": np.array([1 + 2j, 2], np.complex64),
        "f4": packed(np.array([0x71, 0x00], np.uint8), "F4"),  # values 0.5, 6.0, 0, 0
        "f6": packed(np.array([1, 2, 4], np.uint8), "F6_E2M3", (4,)),
        "f6same": packed(f6, "F6_E3M2", (4,)),
    })
    report = diff(a, b)
    bf = _values(report, "bf")
    assert (bf.max_abs, bf.max_rel) == (0.0078125, 0.0078125 / 1.0078125)
    f8 = _values(report, "f8")
    assert (f8.max_abs, f8.max_rel, f8.mismatched) == (0.5, 0.2, 1)
    c = _values(report, "c")
    assert c.max_abs == 1.0 and c.max_rel == pytest.approx(1 / abs(1 + 2j), rel=1e-15)
    f4 = _values(report, "f4")  # compared value by value, low nibble first
    assert (f4.mismatched, f4.max_abs, f4.max_rel) == (1, 5.0, 5.0 / 6.0)
    f6v = _values(report, "f6")  # no agreed bit order: bytes only
    assert (f6v.bit_identical, f6v.max_abs, f6v.max_rel) == (False, None, None)
    assert _values(report, "f6same").bit_identical
    assert "values  f6  F6_E2M3 [4]: bytes differ (values not decoded for F6_E2M3)" in str(report)


# MARK: names, dtypes, shapes, metadata -------------------------------------------


def test_a_renamed_tensor_is_only_in_a_and_only_in_b(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", _tensors())
    renamed = _tensors()
    renamed["weight"] = renamed.pop("w")
    b = _save(tmp_path / "b.safetensors", renamed)
    report = diff(a, b)
    assert [(t.name, t.dtype, t.shape) for t in report.only_in_a] == [("w", "F32", (3, 4))]
    assert [(t.name, t.dtype, t.shape) for t in report.only_in_b] == [("weight", "F32", (3, 4))]
    assert not report.differing and not report.changed
    assert main(["diff", a, b]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "only in A  w       F32 [3, 4]",
        "only in B  weight  F32 [3, 4]",
        "differ: 1 only in A, 1 only in B, 3 compared tensors bit-identical",
    ]


def test_dtype_and_shape_changes_are_listed_not_compared(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", _tensors())
    other = _tensors()
    other["w"] = other["w"].astype(np.float64)
    other["b"] = other["b"].reshape(1, 3)
    b = _save(tmp_path / "b.safetensors", other)
    report = diff(a, b)
    changes = {c.name: ((c.a.dtype, c.a.shape), (c.b.dtype, c.b.shape)) for c in report.changed}
    assert changes == {"w": (("F32", (3, 4)), ("F64", (3, 4))),
                       "b": (("I32", (3,)), ("I32", (1, 3)))}
    assert sorted(t.name for t in report.tensors) == ["h", "mask"]
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "changed  w  F32 [3, 4] -> F64 [3, 4]\n" in out
    assert "changed  b  I32 [3] -> I32 [1, 3]\n" in out
    assert out.endswith("differ: 2 tensors of another dtype or shape, "
                        "2 compared tensors bit-identical\n")


def test_metadata_changes(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", _tensors(), {"format": "np", "step": "10"})
    b = _save(tmp_path / "b.safetensors", _tensors(), {"format": "pt", "epoch": "2"})
    report = diff(a, b)
    assert [(m.key, m.a, m.b) for m in report.metadata] == [
        ("epoch", None, "2"), ("format", "np", "pt"), ("step", "10", None)]
    assert not report.identical and not report.differing
    assert main(["diff", a, b]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "metadata  epoch   (absent) -> '2'",
        "metadata  format  'np' -> 'pt'",
        "metadata  step    '10' -> (absent)",
        "differ: 4 compared tensors bit-identical, 3 metadata entries",
    ]


def test_long_metadata_values_alike_in_what_is_shown_say_where_they_differ(tmp_path, capsys):
    config = '{"layers": 32, ' + '"pad": 0, ' * 20
    a = _save(tmp_path / "a.safetensors", _tensors(), {"config": config + '"heads": 8}'})
    b = _save(tmp_path / "b.safetensors", _tensors(), {"config": config + '"heads": 16}'})
    assert main(["diff", a, b]) == 1
    line = capsys.readouterr().out.splitlines()[0]
    # '"heads": ' is common to both.
    assert line.endswith(f"…' (they differ from character {len(config) + 9})")
    assert line.startswith("metadata  config  '{\"layers\": 32, ")


def test_recorded_digests_are_bookkeeping_unless_all_metadata(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", _tensors())
    b = str(tmp_path / "b.safetensors")
    save_file_with_digests(_tensors(), b)
    assert diff(a, b).identical
    report = diff(a, b, all_metadata=True)
    assert [m.key for m in report.metadata] == ["safetensors_c.digests.v2"]
    assert set(BOOKKEEPING_METADATA) >= {m.key for m in report.metadata}
    assert main(["diff", a, b]) == 0
    assert main(["diff", "--all-metadata", a, b]) == 1
    capsys.readouterr()


# MARK: sharded checkpoints --------------------------------------------------------


def _many():
    rng = np.random.default_rng(3)
    return {f"layer.{i}.w": rng.standard_normal((64, 32)).astype(np.float32) for i in range(7)}


def test_sharded_against_single_file_of_the_same_tensors_is_identical(tmp_path, capsys):
    single = _save(tmp_path / "one.safetensors", _many())
    index = save_sharded(_many(), str(tmp_path / "sharded"), max_shard_size=20_000,
                         progress=False)
    assert len(set(index["weight_map"].values())) > 2
    index_path = str(tmp_path / "sharded" / "model.safetensors.index.json")
    for sharded in (str(tmp_path / "sharded"), index_path):
        report = diff(single, sharded)
        assert report.identical, report
        assert len(report.tensors) == 7
        assert main(["diff", sharded, single]) == 0
    assert capsys.readouterr().out.count("identical: 7 tensors, metadata equal") == 2
    # Two saves of one model carry different save ids: bookkeeping.
    save_sharded(_many(), str(tmp_path / "again"), max_shard_size=20_000, progress=False)
    assert diff(str(tmp_path / "sharded"), str(tmp_path / "again")).identical
    strict = diff(str(tmp_path / "sharded"), str(tmp_path / "again"), all_metadata=True)
    assert [m.key for m in strict.metadata] == ["safetensors_c.save_id"]


def test_sharded_with_one_tensor_changed(tmp_path):
    tensors = _many()
    save_sharded(tensors, str(tmp_path / "a"), max_shard_size=20_000, progress=False)
    tensors["layer.5.w"][3, 4] += 0.25
    b = _save(tmp_path / "b.safetensors", tensors)
    report = diff(str(tmp_path / "a"), b)
    assert [t.name for t in report.differing] == ["layer.5.w"]
    assert report.differing[0].mismatched == 1


# MARK: streaming ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["mmap", "pread"])
@pytest.mark.parametrize("where", [0, 4999, 9999])
def test_chunked_comparison_finds_a_change_in_any_chunk(tmp_path, backend, where):
    base = np.linspace(-5, 5, 10_000).astype(np.float32)
    a = _save(tmp_path / "a.safetensors", {"x": base})
    changed = base.copy()
    changed[where] += 1.0
    b = _save(tmp_path / "b.safetensors", {"x": changed})
    whole = _values(diff(a, b, backend=backend), "x")
    for step in (1, 7, 4096):
        chunked = _values(diff(a, b, backend=backend, chunk_elements=step), "x")
        assert chunked == whole
    assert whole.mismatched == 1 and whole.max_abs == pytest.approx(1.0, abs=1e-5)


def test_chunk_elements_must_be_positive(tmp_path):
    a = _save(tmp_path / "a.safetensors", _tensors())
    with pytest.raises(ValueError, match="chunk_elements must be a positive int"):
        diff(a, a, chunk_elements=0)


_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, tracemalloc
    import safetensors_c
    a, b, backend, step = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tracemalloc.start()
    report = safetensors_c.diff(a, b, backend=backend, chunk_elements=step)
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"peak": peak, "differing": len(report.differing)}))
""")


def _peak(a, b, backend, step):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, a, b, backend, str(step)],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def many_tensors(tmp_path_factory):
    """Two files of 65 tensors (48 MiB each), every value different."""
    base = tmp_path_factory.mktemp("peak")
    rng = np.random.default_rng(5)
    tensors = {f"t{i:02d}": rng.standard_normal(1 << 16).astype(np.float32) for i in range(64)}
    tensors["big"] = rng.standard_normal(8 << 20).astype(np.float32)  # 32 MiB
    a = _save(base / "a.safetensors", tensors)
    b = _save(base / "b.safetensors", {k: v + 1 for k, v in tensors.items()})
    return a, b


def test_peak_memory_is_a_few_chunks_not_a_tensor(many_tensors):
    """Read with pread (each chunk into memory of its own): the peak of
    Python's and NumPy's allocations stays a few chunks, far below one side's
    largest tensor (32 MiB) or one side's tensors (48 MiB)."""
    a, b = many_tensors
    step = 1 << 16  # 256 KiB of float32 from each side at a time
    result = _peak(a, b, "pread", step)
    assert result["differing"] == 65
    assert result["peak"] < 4 << 20, result
    # The default chunks: 2 Mi elements, 8 MiB of float32 from each side (and
    # never the previous chunks while the next are read: 24 MiB then).
    result = _peak(a, b, "pread", CHUNK_ELEMENTS)
    assert result["peak"] < 20 << 20, result


# MARK: over http ------------------------------------------------------------------


def _fill_nginx_root(root) -> None:
    _save(root / "a.safetensors", _many(), {"format": "np"})
    changed = _many()
    changed["layer.2.w"][0, 0] = 100.0
    _save(root / "b.safetensors", changed, {"format": "np"})
    save_sharded(_many(), str(root / "sharded"), max_shard_size=20_000, metadata={"format": "np"},
                 progress=False)
    rng = np.random.default_rng(6)
    big = {"x": rng.standard_normal(1 << 21).astype(np.float32)}  # 8 MiB
    _save(root / "big_a.safetensors", big)
    _save(root / "big_b.safetensors", {"x": big["x"] + 0.5})


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    yield from serving_nginx(tmp_path_factory.mktemp("nginx"), _fill_nginx_root)


def test_urls_files_and_sharded_over_http(nginx, tmp_path):
    local = _save(tmp_path / "a.safetensors", _many(), {"format": "np"})
    url_a, url_b = nginx.url_of("a.safetensors"), nginx.url_of("b.safetensors")
    assert diff(url_a, local).identical
    assert diff(nginx.url + "/sharded/", local).identical
    assert diff(nginx.url + "/sharded/model.safetensors.index.json", url_a).identical
    report = diff(url_a, url_b)
    assert [t.name for t in report.differing] == ["layer.2.w"]
    status, out, err = _cli(url_a, url_b)
    assert (status, err) == (1, "")
    assert "values  layer.2.w  F32 [64, 32]: 1 of 2048 differ" in out


def test_over_http_peak_memory_is_a_few_chunks(nginx):
    """An 8 MiB tensor on each side, compared 256 KiB at a time."""
    result = _peak(nginx.url_of("big_a.safetensors"), nginx.url_of("big_b.safetensors"),
                   "mmap", 1 << 16)
    assert result["differing"] == 1
    assert result["peak"] < 4 << 20, result


def test_over_http_a_large_tensor_is_read_in_chunks(nginx):
    """Each chunk is one range request: the bytes of the tensor, never the
    whole tensor at once (8 MiB here, 64 KiB chunks)."""
    nginx.log()  # start the log afresh
    report = diff(nginx.url_of("big_a.safetensors"), nginx.url_of("big_b.safetensors"),
                  chunk_elements=1 << 14)
    assert _values(report, "x").mismatched == 1 << 21
    sent = [e.sent for e in nginx.log() if e.path == "/big_a.safetensors"]
    # The opening read (256 KiB, kept for the tensor bytes it holds), then
    # chunks of at most 64 KiB; every byte of the file moved exactly once.
    assert sent[0] == _remote.DEFAULT_PREFETCH
    assert max(sent[1:]) == 1 << 16 and len(sent) > 100
    assert sum(sent) == os.path.getsize(nginx.root / "big_a.safetensors")


# MARK: errors and hostile text ----------------------------------------------------


def test_bad_files_exit_2_with_one_line(tmp_path):
    good = _save(tmp_path / "good.safetensors", _tensors())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(Path(good).read_bytes()[:-1])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    cases = [
        (str(truncated), "truncated.safetensors"),
        (str(garbage), "garbage.safetensors"),
        (str(tmp_path / "missing.safetensors"), "missing.safetensors"),
        (str(empty_dir), "no sharded checkpoint here"),
    ]
    for bad, needle in cases:
        for args in ((good, bad), (bad, good), ("--json", bad, good)):
            status, out, err = _cli(*args)
            assert status == 2, (args, err)
            assert out == ""
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("safetensors-c: error: "), err
            assert needle in lines[0] and "Traceback" not in err


def test_a_shard_missing_from_the_index_exits_2(tmp_path):
    index = save_sharded(_many(), str(tmp_path / "s"), max_shard_size=20_000, progress=False)
    shard = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / "s" / shard)
    with pytest.raises(FileNotFoundError):
        diff(str(tmp_path / "s"), str(tmp_path / "s"))
    status, out, err = _cli(str(tmp_path / "s"), str(tmp_path / "s"))
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert shard in err


def test_a_hostile_file_name_in_the_error_line_is_escaped(tmp_path):
    hostile = tmp_path / "evil\x1b]0;pwned\x07\nBAD.safetensors"
    hostile.write_bytes(b"\x00" * 3)
    good = _save(tmp_path / "good.safetensors", _tensors())
    status, out, err = _cli(good, str(hostile))
    assert status == 2 and out == ""
    assert "\x1b" not in err and "\x07" not in err
    assert len(err.splitlines()) == 1 and "evil\\x1b]0;pwned\\x07" in err


def test_hostile_names_keys_and_values_are_escaped(tmp_path):
    evil = "w\x1b[2J\n\u202eevil\r"
    a = _save(tmp_path / "a.safetensors", {evil: np.zeros(2, np.float32),
                                           "gone\x9b31m": np.zeros(1, np.int8)},
              {"k\x1b]8;;http://x\x07": "v\x1b[31m\u2028red"})
    b = _save(tmp_path / "b.safetensors", {evil: np.ones(2, np.float32),
                                           "new\u200b": np.zeros(1, np.int8)},
              {"k\x1b]8;;http://x\x07": "other"})
    report = diff(a, b)
    assert [t.name for t in report.differing] == [evil]  # the API keeps names as they are
    status, out, err = _cli(a, b)
    assert status == 1 and err == ""
    assert _printable(out), out
    assert len(out.splitlines()) == 5  # four differences and the summary, one line each
    assert "w\\x1b[2J\\n\\u202eevil\\r" in out
    assert "gone\\x9b31m" in out and "new\\u200b" in out
    assert "k\\x1b]8;;http://x\\x07" in out and "'v\\x1b[31m\\u2028red' -> 'other'" in out
    status, out, err = _cli("--json", a, b)
    assert status == 1 and _printable(out.replace("\n", ""))
    data = json.loads(out)
    assert data["tensors"][0]["name"] == evil  # JSON loads back to the exact names
    assert [t["name"] for t in data["only_in_a"]] == ["gone\x9b31m"]
    assert data["metadata"] == [{"key": "k\x1b]8;;http://x\x07", "a": "v\x1b[31m\u2028red",
                                 "b": "other"}]


def test_a_url_is_shown_without_credentials_or_query():
    assert DiffReport("x", "y").identical
    assert _label("https://user:secret@host/m.safetensors?sig=abc") == \
        "https://host/m.safetensors?..."


def test_not_a_path_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="diff compares paths, URLs or sharded checkpoints"):
        diff(str(tmp_path), 3)
    with pytest.raises(TypeError, match="not dict"):
        diff({}, "x")


# MARK: JSON -----------------------------------------------------------------------


def test_json_exact(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", {
        "same": np.arange(3, dtype=np.int16),
        "val": np.array([1.0, -4.0], np.float32),
        "dt": np.zeros(2, np.float32),
        "gone": np.zeros((1, 2), np.uint8),
    }, {"format": "np", "step": "1"})
    b = _save(tmp_path / "b.safetensors", {
        "same": np.arange(3, dtype=np.int16),
        "val": np.array([1.0, np.nan], np.float32),
        "dt": np.zeros(2, np.float16),
        "new": np.zeros(4, np.bool_),
    }, {"format": "np", "step": "2"})
    assert main(["diff", "--json", a, b]) == 1
    out = capsys.readouterr().out
    assert json.loads(out) == {
        "a": a,
        "b": b,
        "identical": False,
        "only_in_a": [{"name": "gone", "dtype": "U8", "shape": [1, 2]}],
        "only_in_b": [{"name": "new", "dtype": "BOOL", "shape": [4]}],
        "changed": [{"name": "dt", "a": {"dtype": "F32", "shape": [2]},
                     "b": {"dtype": "F16", "shape": [2]}}],
        "tensors": [
            {"name": "same", "dtype": "I16", "shape": [3], "bit_identical": True,
             "mismatched": 0, "nan_mismatched": 0, "max_abs": 0, "max_rel": 0.0},
            {"name": "val", "dtype": "F32", "shape": [2], "bit_identical": False,
             "mismatched": 1, "nan_mismatched": 1, "max_abs": 0.0, "max_rel": 0.0},
        ],
        "metadata": [{"key": "step", "a": "1", "b": "2"}],
    }
    assert out.endswith("}\n") and "NaN" not in out


def test_json_of_identical_files(tmp_path, capsys):
    a = _save(tmp_path / "a.safetensors", {"x": np.ones(2, np.uint32)})
    assert main(["diff", "--json", a, a]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "a": a, "b": a, "identical": True, "only_in_a": [], "only_in_b": [], "changed": [],
        "tensors": [{"name": "x", "dtype": "U32", "shape": [2], "bit_identical": True,
                     "mismatched": 0, "nan_mismatched": 0, "max_abs": 0, "max_rel": 0.0}],
        "metadata": [],
    }


def test_a_read_failure_mid_diff_is_an_error_not_a_difference(tmp_path, monkeypatch):
    """A file cut short after it was opened: reading its tensor fails, and
    diff raises instead of reporting the lost bytes as differences."""
    a = _save(tmp_path / "a.safetensors", {"x": np.arange(1 << 16, dtype=np.float32)})
    b = _save(tmp_path / "b.safetensors", {"x": np.arange(1 << 16, dtype=np.float32)})
    class Shrinking(_Side):
        def __init__(self, source, **options):
            super().__init__(source, **options)
            if source == b:
                os.truncate(b, os.path.getsize(b) // 2)

    monkeypatch.setattr(diff_module, "_Side", Shrinking)
    with pytest.raises(SafetensorError) as info:
        diff(a, b, backend="pread")
    assert info.value.code in ("STC_ERR_FILE_CHANGED", "STC_ERR_IO", "STC_ERR_TRUNCATED_DATA")
