"""The converter's expansion limit: views that share a storage may write it
up to twice over plus 64 MiB in all by default (real checkpoints keep a
fused qkv next to its q, k, v views); stride-0 and broadcast views that turn
kilobytes into gigabytes are refused before anything is copied, and
``allow_expansion=True`` / ``--allow-expansion`` lifts the limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from safetensors_c import load_file
from safetensors_c.convert import (
    EXPANSION_ALLOWANCE,
    EXPANSION_FACTOR,
    ConversionError,
    convert,
)

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "safetensors_c", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _bytes_of(t) -> bytes:
    t = t.detach().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _assert_converted(dst, expected: dict) -> None:
    out = load_file(dst)
    assert set(out) == set(expected)
    for name, t in expected.items():
        assert list(out[name].shape) == list(t.shape), name
        assert out[name].tobytes() == _bytes_of(t), name


def test_the_limit_is_twice_plus_64_mib():
    assert (EXPANSION_FACTOR, EXPANSION_ALLOWANCE) == (2, 64 * MiB)


# MARK: benign views convert by default ---------------------------------------


def test_fused_qkv_next_to_its_views_converts_by_default(tmp_path):
    d = 64
    qkv = torch.randn(3 * d, d)
    sd = {
        "attn.qkv.weight": qkv,
        "attn.q.weight": qkv[:d],
        "attn.k.weight": qkv[d:2 * d],
        "attn.v.weight": qkv[2 * d:],
        "mlp.weight": torch.randn(d, 4 * d),
    }
    src, dst = tmp_path / "qkv.pt", tmp_path / "qkv.safetensors"
    torch.save(sd, src)
    convert(src, dst)
    _assert_converted(dst, torch.load(src, weights_only=True))


def test_a_tensor_and_a_view_of_part_of_it_converts_by_default(tmp_path):
    t = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    src, dst = tmp_path / "ab.pt", tmp_path / "ab.safetensors"
    torch.save({"a": t, "b": t[1:3], "c": t.t(), "row": t[7]}, src)
    convert(src, dst)
    _assert_converted(dst, torch.load(src, weights_only=True))


def test_small_broadcasts_of_small_storages_convert_by_default(tmp_path):
    # 1 KiB stored, ~1 MiB written: far over 2x, but within the 64 MiB allowance.
    base = torch.arange(256, dtype=torch.float32)
    src, dst = tmp_path / "b.pt", tmp_path / "b.safetensors"
    torch.save({"base": base, "rows": base.expand(1024, 256)}, src)
    convert(src, dst)
    _assert_converted(dst, torch.load(src, weights_only=True))


# MARK: amplification is refused ---------------------------------------------------


def test_stride_zero_view_to_gigabytes_is_refused_fast_without_allocating(tmp_path):
    base = torch.zeros(4)
    huge = base.as_strided((1 << 16, 1 << 15), (0, 0))  # 8 GiB of float32 over 16 bytes
    src, dst = tmp_path / "bomb.pt", tmp_path / "bomb.safetensors"
    torch.save({"x": huge}, src)
    assert src.stat().st_size < 4096
    tracemalloc.start()
    began = time.monotonic()
    try:
        with pytest.raises(ConversionError, match=r"share 16 stored bytes but together would "
                           r"write 8589934592 bytes .*allow_expansion=True"):
            convert(src, dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - began < 30
    assert peak < 16 * MiB
    assert not dst.exists()


def test_expansion_spread_over_many_storages_is_refused(tmp_path):
    # Each storage alone expands by 1 MiB; the allowance is for the whole
    # checkpoint, so 100 of them (100 MiB) are refused.
    sd = {f"x{i}": torch.full((4,), float(i)).expand(1 << 16, 4) for i in range(100)}
    src, dst = tmp_path / "many.pt", tmp_path / "many.safetensors"
    torch.save(sd, src)
    with pytest.raises(ConversionError, match=r"2x the bytes each storage holds plus 64 MiB"):
        convert(src, dst)
    assert not dst.exists()


def _at_the_limit(tmp_path, extra_elements: int) -> Path:
    """A 4 KiB storage written once whole and once as a stride-0 view that
    brings the checkpoint to ``extra_elements`` float32 beyond the limit."""
    n = 1024
    base = torch.arange(n, dtype=torch.float32)
    m = n + EXPANSION_ALLOWANCE // 4 + extra_elements  # 4n + 4m = 2 * 4n + allowance + 4 * extra
    src = tmp_path / f"limit{extra_elements}.pt"
    torch.save({"base": base, "view": base[:1].as_strided((m,), (0,))}, src)
    return src


def test_expansion_at_the_limit_converts_by_default(tmp_path):
    src, dst = _at_the_limit(tmp_path, 0), tmp_path / "at.safetensors"
    convert(src, dst)
    _assert_converted(dst, torch.load(src, weights_only=True))


def test_expansion_just_above_the_limit_is_refused_naming_the_limit_and_the_flag(tmp_path):
    src, dst = _at_the_limit(tmp_path, 1), tmp_path / "above.safetensors"
    with pytest.raises(ConversionError) as info:
        convert(src, dst)
    message = str(info.value)
    assert "at most 2x the bytes each storage holds plus 64 MiB in all" in message
    assert f"goes {EXPANSION_ALLOWANCE + 4} bytes beyond 2x" in message
    assert f"the limit is {EXPANSION_ALLOWANCE} bytes" in message
    assert "allow_expansion=True (CLI: --allow-expansion)" in message
    assert "'base', 'view'" in message
    assert not dst.exists()
    convert(src, dst, allow_expansion=True)
    _assert_converted(dst, torch.load(src, weights_only=True))


def test_cli_refuses_above_the_limit_and_the_flag_allows_it(tmp_path):
    src, dst = _at_the_limit(tmp_path, 1), tmp_path / "cli.safetensors"
    proc = _cli("convert", str(src), str(dst))
    assert proc.returncode == 1
    assert "plus 64 MiB in all" in proc.stderr and "--allow-expansion" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dst.exists()
    proc = _cli("convert", str(src), str(dst), "--allow-expansion", "-q")
    assert proc.returncode == 0, proc.stderr
    out = load_file(dst)
    assert out["view"].shape == (1024 + EXPANSION_ALLOWANCE // 4 + 1,)
    assert not np.any(out["view"])
