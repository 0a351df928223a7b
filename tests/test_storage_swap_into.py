"""load_into while another thread swaps the destination's storage: the
core writes without the GIL, so the memory it writes into must stay owned
until the batch returns (a freed storage would be EFAULT with pread, a
crash with mmap). A swap in the instant between the loader reading a
tensor's storage and its address is refused, never written through."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 180  # seconds: "does not hang" only

SWAP_DURING_LOAD_INTO = """
    import ctypes, threading, torch
    import safetensors_c.torch as stc_torch
    N = 256 << 20
    path = {path!r}
    stc_torch.save_file({{"w": torch.ones(N // 4)}}, path)
    holder = {{"w": torch.zeros(N // 4)}}
    w = holder["w"]
    early = ctypes.c_float.from_address(w.data_ptr() + N // 16)

    def swap_once_the_copy_has_begun():
        for _ in range(200_000_000):
            if early.value != 0.0:
                {swap}
                return

    swapper = threading.Thread(target=swap_once_the_copy_has_begun)
    swapper.start()
    stc_torch.load_into(holder, path, backend={backend!r}, max_workers=1)
    swapper.join()
    print("loaded", w.numel())
"""


@pytest.mark.parametrize("swap", ["w.data = torch.zeros(1)", "w.set_(torch.zeros(1))"])
@pytest.mark.parametrize("backend", ["pread", "mmap"])
def test_load_into_keeps_a_swapped_storage_alive(tmp_path, backend, swap):
    code = textwrap.dedent(SWAP_DURING_LOAD_INTO.format(
        path=str(tmp_path / "big.safetensors"), backend=backend, swap=swap))
    result = subprocess.run([sys.executable, "-c", code],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    # The swap happened (w now has one element) and the load finished.
    assert result.stdout.split() == ["loaded", "1"]


SWAP_DURING_LOAD_MODEL = """
    import ctypes, threading, torch
    import safetensors_c.torch as stc_torch
    N = 256 << 20
    path = {path!r}
    stc_torch.save_file({{"w": torch.ones(N // 4)}}, path)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(N // 4))
    w = model.w
    early = ctypes.c_float.from_address(w.data_ptr() + N // 16)

    def swap_once_the_copy_has_begun():
        for _ in range(200_000_000):
            if early.value != 0.0:
                w.set_(torch.zeros(1))  # the old storage's last owner goes
                return

    swapper = threading.Thread(target=swap_once_the_copy_has_begun)
    swapper.start()
    stc_torch.load_model(model, path, backend={backend!r}, max_workers=1)
    swapper.join()
    print("loaded", w.numel())
"""


@pytest.mark.parametrize("backend", ["pread", "mmap"])
def test_load_model_keeps_a_buffer_storage_swapped_by_set_alive(tmp_path, backend):
    code = textwrap.dedent(SWAP_DURING_LOAD_MODEL.format(
        path=str(tmp_path / "big.safetensors"), backend=backend))
    result = subprocess.run([sys.executable, "-c", code],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split() == ["loaded", "1"]


class SwappedBetweenItsReads:
    """A tensor whose storage another thread swaps in the instant between
    the loader reading its storage and reading its address: the race
    ``_held_memory`` guards, made to happen every time."""

    def __init__(self, tensor, replacement):
        self.tensor, self.replacement = tensor, replacement

    def untyped_storage(self):
        storage = self.tensor.untyped_storage()
        self.tensor.set_(self.replacement)
        return storage

    def data_ptr(self):
        return self.tensor.data_ptr()

    @property
    def nbytes(self):
        return self.tensor.nbytes


def test_held_memory_holds_each_storage_and_its_address():
    from safetensors_c.torch import _held_memory

    base = torch.zeros(100)
    view = base[10:30]
    storages, addresses, lengths = _held_memory(["a", "b"], [base, view])
    assert [s.data_ptr() for s in storages] == [base.data_ptr()] * 2
    assert addresses == [base.data_ptr(), base.data_ptr() + 10 * 4]
    assert lengths == [400, 80]


def test_a_storage_swapped_between_its_two_reads_is_refused():
    from safetensors_c.torch import _held_memory

    name = "w\x1b[2J"
    tensor = torch.zeros(64)
    with pytest.raises(RuntimeError, match=r"its storage changed while loading") as info:
        _held_memory(["ok", name], [torch.zeros(3), SwappedBetweenItsReads(tensor, torch.ones(64))])
    message = str(info.value)
    assert "\x1b" not in message and "w\\x1b[2J" in message  # the name, shown escaped
    assert tensor.eq(1).all()  # the swap did happen between the two reads
