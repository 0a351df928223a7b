"""safetensors_c.stats and ``inspect --stats``: differential against NumPy
(float64, nan-aware) for every dtype, the special values, empty and 0-d
tensors, chunked tensors whose result does not depend on the thread count,
every kind of source, sources that change or lie, the CLI table and JSON."""

from __future__ import annotations

import importlib
import io
import json
import math
import os

import ml_dtypes
import numpy as np
import pytest

import safetensors_c as st
from safetensors_c import _core, cli

stats_module = importlib.import_module("safetensors_c.stats")  # the package's `stats` is the function

RNG = np.random.default_rng(19)


def reference(values: np.ndarray) -> dict:
    """What NumPy computes, in float64: nan-aware min/max; mean and std of the finite values."""
    v = np.asarray(values).astype(np.float64).ravel()
    not_nan = v[~np.isnan(v)]
    finite = v[np.isfinite(v)]
    return {
        "min": float(np.nanmin(v)) if not_nan.size else None,
        "max": float(np.nanmax(v)) if not_nan.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "nan": int(np.isnan(v).sum()),
        "inf": int(np.isinf(v).sum()),
        "zeros": int((v == 0).sum()),
    }


def assert_matches(got: st.TensorStats, want: dict, rtol: float = 1e-12) -> None:
    for key in ("nan", "inf", "zeros"):
        assert getattr(got, key) == want[key], key
    for key in ("min", "max"):
        assert (getattr(got, key) is None) == (want[key] is None), key
        if want[key] is not None:
            assert getattr(got, key) == want[key], key  # decoded values are exact
    for key in ("mean", "std"):
        assert (getattr(got, key) is None) == (want[key] is None), key
        if want[key] is not None:
            assert getattr(got, key) == pytest.approx(want[key], rel=rtol, abs=1e-300), key


def assert_same_report(got: st.StatsReport, want: dict) -> None:
    """Equal counts and extremes; mean and std equal to rounding (pieces merge in another order)."""
    got = got.to_json()
    assert list(got) == list(want)
    for name in want:
        for key, value in want[name].items():
            if key in ("mean", "std") and value is not None:
                assert got[name][key] == pytest.approx(value, rel=1e-12), (name, key)
            else:
                assert got[name][key] == value, (name, key)


def stats_of(tmp_path, tensors: dict, **kwargs) -> st.StatsReport:
    path = tmp_path / "t.safetensors"
    st.save_file(tensors, path)
    return st.stats(path, **kwargs)


SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -2.25, 1e-3]


# MARK: every dtype against NumPy -------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16])
def test_wide_floats_match_numpy_with_special_values_and_subnormals(tmp_path, dtype):
    info = np.finfo(dtype)
    values = RNG.standard_normal(5000) * 3
    values[:len(SPECIALS)] = SPECIALS
    values[10] = float(info.smallest_subnormal)
    values[11] = -float(info.smallest_subnormal) * 3
    values[12] = float(info.max)
    array = values.astype(dtype)
    got = stats_of(tmp_path, {"x": array})["x"]
    assert_matches(got, reference(array))
    assert got.nan == 1 and got.inf == 2 and got.min == -math.inf and got.max == math.inf


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                  "float8_e5m2fnuz", "float8_e8m0fnu"])
def test_every_code_of_each_f8_type_matches_ml_dtypes(tmp_path, name):
    array = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name))
    got = stats_of(tmp_path, {"x": array})["x"]
    assert_matches(got, reference(array))
    for code in range(256):  # one value at a time: the decoding of each code
        one = np.array([code], np.uint8)
        raw = _core.stats(got.dtype, one)
        want = float(one.view(getattr(ml_dtypes, name))[0])
        if math.isnan(want):
            assert raw[1] == 1, code
        else:
            assert raw[5] == want, (code, raw[5], want)


def _unpack_f4(raw: np.ndarray) -> np.ndarray:
    """F4 codes, the first value of each byte in the low nibble."""
    return np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(-1)


def _unpack_f6(raw: np.ndarray) -> np.ndarray:
    """F6 codes: 3 bytes as one 24-bit little-endian word, value i in bits [6i, 6i + 6)."""
    g = raw.reshape(-1, 3).astype(np.uint32)
    word = g[:, 0] | g[:, 1] << 8 | g[:, 2] << 16
    return np.stack([(word >> (6 * i)) & 0x3F for i in range(4)], axis=-1).reshape(-1).astype(np.uint8)


@pytest.mark.parametrize("code, unpack, ml_name, nbytes", [
    ("F4", _unpack_f4, "float4_e2m1fn", 256),
    ("F6_E2M3", _unpack_f6, "float6_e2m3fn", 3 * 400),
    ("F6_E3M2", _unpack_f6, "float6_e3m2fn", 3 * 400),
])
def test_packed_f4_f6_match_ml_dtypes(tmp_path, code, unpack, ml_name, nbytes):
    raw = np.arange(256, dtype=np.uint8) if code == "F4" else RNG.integers(0, 256, nbytes, np.uint8)
    values = unpack(raw).view(getattr(ml_dtypes, ml_name))
    got = stats_of(tmp_path, {"x": st.packed(raw, code)})["x"]
    assert_matches(got, reference(values))
    assert got.nan == 0 and got.inf == 0


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, np.uint64])
def test_integers_match_numpy_and_have_no_nan_or_inf(tmp_path, dtype):
    info = np.iinfo(dtype)
    array = RNG.integers(info.min, info.max, 3000, dtype=dtype, endpoint=True)
    array[:3] = [info.min, info.max, 0]
    got = stats_of(tmp_path, {"x": array})["x"]
    assert isinstance(got.min, int) and isinstance(got.max, int)
    if np.dtype(dtype).itemsize < 8:  # beyond 2^53 the extremes are rounded doubles
        assert (got.min, got.max) == (int(info.min), int(info.max))
    assert_matches(got, reference(array), rtol=1e-9)
    assert (got.nan, got.inf) == (0, 0) and got.zeros >= 1


def test_bool_counts_false_as_zeros(tmp_path):
    array = RNG.random(1000) < 0.3
    got = stats_of(tmp_path, {"x": array})["x"]
    assert_matches(got, reference(array))
    assert (got.min, got.max) == (0, 1)


def test_complex_is_measured_by_modulus(tmp_path):
    array = (RNG.standard_normal(500) + 1j * RNG.standard_normal(500)).astype(np.complex64)
    array[:3] = [0, complex(np.nan, 1), complex(np.inf, 2)]
    got = stats_of(tmp_path, {"x": array})["x"]
    modulus = np.abs(array.astype(np.complex128))
    modulus[1] = np.nan  # either part NaN: NaN (np.abs would say so too)
    assert_matches(got, reference(modulus), rtol=1e-9)
    assert (got.nan, got.inf, got.zeros) == (1, 1, 1)


# MARK: undefined values ----------------------------------------------------------


def test_empty_zero_d_and_all_nan_tensors(tmp_path):
    report = stats_of(tmp_path, {
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(-3.0, np.float64),
        "nans": np.full(7, np.nan, np.float16),
        "infs": np.array([np.inf, -np.inf], np.float32),
    })
    assert report["empty"].to_json() == {"min": None, "max": None, "mean": None, "std": None,
                                         "nan": 0, "inf": 0, "zeros": 0}
    assert (report["scalar"].min, report["scalar"].std) == (-3.0, 0.0)
    assert report["scalar"].shape == ()
    nans = report["nans"]
    assert (nans.nan, nans.min, nans.max, nans.mean, nans.std) == (7, None, None, None, None)
    infs = report["infs"]
    assert (infs.min, infs.max, infs.mean, infs.std) == (-math.inf, math.inf, None, None)
    assert infs.to_json()["min"] == "-inf" and infs.to_json()["max"] == "inf"
    json.dumps(report.to_json(), allow_nan=False)  # strict JSON


# MARK: chunks and threads ------------------------------------------------------


def test_large_tensor_is_chunked_and_threads_do_not_change_the_result(tmp_path):
    n = 3 * (1 << 20) + 777  # more than three chunks of the core
    array = (RNG.standard_normal(n) * 5 + 1e4).astype(np.float32)
    array[[5, n // 2, n - 1]] = [np.nan, np.inf, 0.0]
    path = tmp_path / "big.safetensors"
    st.save_file({"x": array}, path)
    one, two, every = (st.stats(path, threads=t)["x"] for t in (1, 2, 0))
    assert one == two == every  # identical, not merely close
    assert_matches(one, reference(array), rtol=1e-11)
    # read in pieces (bounded memory) and merged: the same to rounding
    with open(path, "rb") as f:
        pieces = st.stats(io.BytesIO(f.read()))["x"]
    assert_matches(pieces, reference(array), rtol=1e-11)


def test_the_core_releases_work_to_threads_and_merges_exactly():
    array = RNG.standard_normal(5 * (1 << 20)).astype(np.float32)
    raw = array.view(np.uint8)
    whole = _core.stats("F32", raw, 2)
    half = raw.size // 2
    merged = _core.stats_merge(_core.stats("F32", raw[:half], 1), _core.stats("F32", raw[half:], 1))
    assert merged[:7] == whole[:7]
    assert merged[7] == pytest.approx(whole[7], rel=1e-12, abs=1e-15)
    assert merged[8] == pytest.approx(whole[8], rel=1e-12)


# MARK: sources ------------------------------------------------------------------


def test_every_source_gives_the_same_answer(tmp_path, monkeypatch):
    tensors = {"a": RNG.standard_normal((64, 33)).astype(np.float32),
               "b": st.packed(RNG.integers(0, 256, 300, np.uint8), "F6_E3M2"),
               "c": np.arange(-50, 50, dtype=np.int16)}
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, path)
    want = st.stats(path).to_json()
    monkeypatch.setattr(stats_module, "PIECE_BYTES", 24 * 20)  # many pieces per tensor
    data = path.read_bytes()
    assert_same_report(st.stats(io.BytesIO(data)), want)
    with open(path, "rb") as f:
        assert st.stats(f).to_json() == want
    with st.safe_open(path, "np", backend="pread") as f:
        assert_same_report(st.stats(f), want)
    with st.safe_open(path, "np") as f:
        view = f.get_tensor("a")
        view[:] = 0  # a written view (copy-on-write) does not change what the file holds
        assert st.stats(f).to_json() == want
    assert set(st.stats(path)) == set(tensors)


def test_sharded_checkpoint_directory_and_index(tmp_path):
    tensors = {f"layer{i}": RNG.standard_normal(300).astype(np.float32) for i in range(4)}
    st.save_sharded(tensors, tmp_path, max_shard_size=1500)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    report = st.stats(tmp_path)
    assert set(report) == set(tensors)
    for name, array in tensors.items():
        assert_matches(report[name], reference(array))
    index = next(tmp_path.glob("*.index.json"))
    assert st.stats(index).to_json() == report.to_json()


def test_a_mapped_file_truncated_after_opening_is_refused_not_read(tmp_path):
    path = tmp_path / "m.safetensors"
    st.save_file({"x": np.ones(4096, np.float32)}, path)
    with st.safe_open(path, "np") as f:
        os.truncate(path, os.path.getsize(path) - 4096)
        with pytest.raises(st.SafetensorError, match="truncated") as info:
            st.stats(f)
    assert info.value.code == "STC_ERR_FILE_CHANGED"


def test_a_file_object_that_shrinks_after_opening_is_refused(tmp_path):
    buffer = io.BytesIO()
    buffer.write(st.save({"x": np.ones(1000, np.float64)}))
    with st.safe_open(buffer, "np") as f:
        buffer.truncate(len(buffer.getvalue()) - 100)
        with pytest.raises(st.SafetensorError, match="shorter than when it was opened") as info:
            st.stats(f)
    assert info.value.code == "STC_ERR_FILE_CHANGED"


def test_bad_arguments_are_refused_before_any_read(tmp_path):
    with pytest.raises(ValueError, match="threads must be an int >= 0"):
        st.stats(tmp_path / "missing.safetensors", threads=-1)
    with pytest.raises(ValueError, match="histogram must be a number of bins from 0 to 4096"):
        st.stats(tmp_path / "missing.safetensors", histogram=5000)
    with pytest.raises(FileNotFoundError):
        st.stats(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="whole number of values"):
        _core.stats("F32", b"12345")
    with pytest.raises(ValueError, match="unknown safetensors dtype code 'F128'"):
        _core.stats("F128", b"")


# MARK: histograms and the notebook view ---------------------------------------


def test_histogram_counts_every_finite_value_as_numpy_bins_them(tmp_path):
    array = RNG.standard_normal(10000).astype(np.float64)
    array[:2] = [np.nan, -np.inf]
    got = stats_of(tmp_path, {"x": array}, histogram=16)["x"]
    finite = array[np.isfinite(array)]
    assert sum(got.histogram) == finite.size
    lo, hi = got.histogram_range
    assert hi == finite.max() and lo < finite.min()  # -inf: mean - 4 std
    want, _ = np.histogram(finite, bins=16, range=(lo, hi))
    assert np.abs(np.array(got.histogram) - want).max() <= 2  # bin edges may round apart


def test_notebook_view_escapes_names_and_draws_a_histogram_per_tensor(tmp_path):
    report = stats_of(tmp_path, {"<script>\x1b[2J": np.arange(10, dtype=np.float32),
                                 "e": np.zeros(0, np.float32)}, histogram=8)
    page = report._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;\\x1b[2J" in page
    assert page.count("<svg") == 1 and page.count("<rect") == 8
    assert "for histograms" not in page
    plain = stats_of(tmp_path, {"x": np.ones(3, np.float32)})._repr_html_()
    assert "<svg" not in plain and "histogram=16" in plain


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    st.save_file({"x": np.ones(100, np.float32)}, path)
    st.stats(path)  # stderr is not a terminal here, and the work is small
    assert capsys.readouterr().err == ""
    st.stats(path, progress=True)
    assert "stats" in capsys.readouterr().err


# MARK: the command line --------------------------------------------------------


def test_cli_inspect_stats_table_and_json(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    st.save_file({"w": np.array([1.0, np.nan, -np.inf, 0.0, 3.0], np.float32),
                  "empty": np.zeros(0, np.int32)}, path)
    assert cli.main(["inspect", str(path), "--stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "dtype", "shape", "min", "max", "mean", "std", "nan",
                                "inf", "zeros"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows["w"][3:] == ["-inf", "3", "1.33333", "1.24722", "1", "1", "1"]
    assert rows["empty"][3:] == ["-", "-", "-", "-", "0", "0", "0"]
    assert lines[-1] == "2 tensors"
    assert cli.main(["inspect", str(path), "--stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {t["name"]: t["stats"] for t in data["tensors"]}
    assert by_name["w"] == {"min": "-inf", "max": 3.0, "mean": pytest.approx(4 / 3),
                            "std": pytest.approx(1.247219128924647), "nan": 1, "inf": 1,
                            "zeros": 1}
    assert by_name["empty"] == {"min": None, "max": None, "mean": None, "std": None, "nan": 0,
                                "inf": 0, "zeros": 0}


def test_cli_inspect_stats_on_a_bad_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    assert cli.main(["inspect", str(path), "--stats"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("safetensors-c: error:") and err.count("\n") == 1
