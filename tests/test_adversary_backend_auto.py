"""An adversary's view of ``backend="auto"`` and ``SAFETENSORS_C_BACKEND``:
a hostile value of the variable reaching any entry point, FIFOs, devices and
/proc files opened under "auto", and a symlink swapped under an open reader.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
import safetensors_c.numpy as stc_numpy
from safetensors_c import SafetensorError
from safetensors_c._checks import BACKEND_ENV

torch = pytest.importorskip("torch")
import safetensors_c.torch as stc_torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60  # seconds: "does not hang" only


@pytest.fixture
def files(tmp_path):
    path = tmp_path / "m.safetensors"
    stc_torch.save_model(torch.nn.Linear(4, 4), path)
    shards = tmp_path / "shards"
    stc_torch.save_sharded({"a": torch.ones(100), "b": torch.ones(100)}, shards,
                           max_shard_size=500)
    return path, shards


ENTRY_POINTS = {
    "safe_open": lambda p, s: safetensors_c.safe_open(str(p), "np", backend="auto"),
    "numpy.load_file": lambda p, s: stc_numpy.load_file(p, backend="auto"),
    "torch.load_file": lambda p, s: stc_torch.load_file(p, backend="auto"),
    "torch.load_into": lambda p, s: stc_torch.load_into(
        {"weight": torch.zeros(4, 4), "bias": torch.zeros(4)}, p, backend="auto"),
    "load_model": lambda p, s: stc_torch.load_model(torch.nn.Linear(4, 4), p, backend="auto"),
    "load_model_assign": lambda p, s: stc_torch.load_model(torch.nn.Linear(4, 4), p,
                                                           backend="auto", assign=True),
    "load_model_sharded": lambda p, s: stc_torch.load_model(torch.nn.Module(), s,
                                                            backend="auto", strict=False),
    "load_sharded": lambda p, s: stc_torch.load_sharded(s, backend="auto"),
}


@pytest.mark.parametrize("value", ["bogus", "MMAP", "mmap ", "auto\x01"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_hostile_environment_value_is_refused_by_every_entry_point(
        monkeypatch, files, entry, value):
    monkeypatch.setenv(BACKEND_ENV, value)
    with pytest.raises(SafetensorError, match=f"environment variable {BACKEND_ENV}=") as info:
        ENTRY_POINTS[entry](*files)
    assert info.value.code == "STC_ERR_INVALID_ARGUMENT"


def test_a_fifo_under_auto_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        import safetensors_c
        try:
            safetensors_c.safe_open({str(fifo)!r}, "np", backend="auto")
        except safetensors_c.SafetensorError as error:
            print(error.code)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=DEADLINE)
    assert result.stdout.split() == ["STC_ERR_NOT_REGULAR_FILE"], result.stderr


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_under_auto_is_refused(device):
    with pytest.raises(SafetensorError, match="character device, not a regular file") as info:
        safetensors_c.safe_open(device, "np", backend="auto")
    assert info.value.code == "STC_ERR_NOT_REGULAR_FILE"


def test_a_proc_file_under_auto_is_refused():
    with pytest.raises(SafetensorError) as info:
        safetensors_c.safe_open("/proc/self/status", "np", backend="auto")
    assert info.value.code.startswith("STC_ERR_")


def test_a_symlink_swapped_to_a_fifo_under_an_open_reader_changes_nothing(tmp_path):
    real = tmp_path / "real.safetensors"
    stc_numpy.save_file({"x": np.arange(6, dtype=np.float32)}, real)
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with safetensors_c.safe_open(str(link), "np", backend="auto") as f:
        link.unlink()
        link.symlink_to(fifo)
        assert f.get_tensor("x").tolist() == list(range(6))
    with pytest.raises(SafetensorError, match="FIFO"):
        safetensors_c.safe_open(str(link), "np", backend="auto")
