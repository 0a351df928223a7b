"""An adversary's view of the batched ``load_model`` (one ``read_batch`` call
of the core per file): models whose tensors overlap, are cast, hooked, empty
or non-contiguous; files with aliased ranges; another mapping of the file
while pages are dropped; threads loading at once, and a thread that swaps a
parameter's storage while the core, without the GIL, is writing into it.

Results are compared with the reference ``safetensors.torch.load_model``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
reference = pytest.importorskip("safetensors.torch")

import safetensors_c  # noqa: E402
import safetensors_c.torch as stc_torch  # noqa: E402
from safetensors_c import SafetensorError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 180  # seconds: "does not hang" only


def _loaded_by_both(make, path, **kwargs):
    """(reference model, ours, reference result, our result), each loaded from path."""
    theirs, ours = make(), make()
    their_result = reference.load_model(theirs, str(path), **kwargs)
    our_result = stc_torch.load_model(ours, str(path), **kwargs)
    return theirs, ours, their_result, our_result


def _assert_same_state(theirs, ours):
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


class _Transposed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, 6).t())  # non-contiguous


class _Cast(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
        self.register_buffer("i", torch.zeros(3, dtype=torch.int32))
        self.register_buffer("u", torch.zeros(3, dtype=torch.uint8))


class _Empty(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(0, 3))
        self.v = torch.nn.Parameter(torch.zeros(2))


class _Hooked(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(2, 2)
        self.register_load_state_dict_pre_hook(self._double_bias)

    @staticmethod
    def _double_bias(module, state_dict, prefix, *args):
        state_dict[prefix + "l.bias"] = state_dict[prefix + "l.bias"] * 2


def _save(path, tensors):
    reference.save_file(tensors, str(path))
    return path


# MARK: the reference's results ---------------------------------------------


def test_a_non_contiguous_parameter_is_loaded_as_the_reference_loads_it(tmp_path):
    path = _save(tmp_path / "t.safetensors", {"w": torch.arange(24.0).reshape(6, 4)})
    theirs, ours, a, b = _loaded_by_both(_Transposed, path)
    assert a == b == (set(), [])
    _assert_same_state(theirs, ours)
    assert not ours.w.is_contiguous()


def test_dtypes_are_cast_on_copy_as_the_reference_casts_them(tmp_path):
    path = _save(tmp_path / "c.safetensors", {
        "w": torch.arange(5, dtype=torch.bfloat16) * 1.5,
        "i": torch.tensor([1, -2, 3], dtype=torch.int64),
        "u": torch.tensor([True, False, True]),
    })
    theirs, ours, a, b = _loaded_by_both(_Cast, path)
    assert a == b
    _assert_same_state(theirs, ours)


@pytest.mark.parametrize("strict", [True, False])
def test_zero_element_parameters_and_extras_as_the_reference(tmp_path, strict):
    tensors = {"w": torch.zeros(0, 3), "v": torch.tensor([1.0, 2.0])}
    if not strict:
        tensors["extra"] = torch.ones(1)
    path = _save(tmp_path / "e.safetensors", tensors)
    theirs, ours, a, b = _loaded_by_both(_Empty, path, strict=strict)
    assert (set(a[0]), sorted(a[1])) == (set(b[0]), sorted(b[1]))
    _assert_same_state(theirs, ours)


def test_a_model_with_a_load_hook_gets_what_its_hook_makes(tmp_path):
    path = _save(tmp_path / "h.safetensors", {"l.weight": torch.ones(2, 2),
                                              "l.bias": torch.tensor([1.0, 3.0])})
    theirs, ours, _, _ = _loaded_by_both(_Hooked, path)
    _assert_same_state(theirs, ours)
    assert ours.l.bias.tolist() == [2.0, 6.0]


def test_a_file_tensor_larger_than_the_parameter_is_refused_before_any_write(tmp_path):
    path = _save(tmp_path / "big.safetensors", {"weight": torch.ones(5, 4), "bias": torch.ones(5)})
    model = torch.nn.Linear(4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        stc_torch.load_model(model, path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_overlapping_views_of_one_buffer_are_refused_like_the_reference(tmp_path):
    class Views(torch.nn.Module):
        def __init__(self):
            super().__init__()
            buffer = torch.zeros(20)
            self.register_buffer("a", buffer[0:10])
            self.register_buffer("b", buffer[5:15])

    path = _save(tmp_path / "v.safetensors", {"a": torch.arange(10.0), "b": torch.arange(10.0)})
    with pytest.raises(RuntimeError, match="none of them covers all of it"):
        stc_torch.load_model(Views(), path)
    with pytest.raises(RuntimeError):
        reference.load_model(Views(), str(path))


@pytest.mark.parametrize("second", [[0, 8], [4, 8]])
def test_a_file_whose_tensors_alias_one_range_is_refused(tmp_path, second):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [(second[1] - second[0]) // 4],
                    "data_offsets": second}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "alias.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + struct.pack("<2f", 1.0, 2.0))

    class AB(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("a", torch.zeros(2))
            self.register_buffer("b", torch.zeros(len(range(*second, 4))))

    with pytest.raises(SafetensorError, match="overlaps the data of another tensor"):
        stc_torch.load_model(AB(), path)


# MARK: pages, mappings and threads -------------------------------------------


def test_drop_cache_leaves_another_mapping_of_the_file_correct(tmp_path):
    source = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])
    path = tmp_path / "m.safetensors"
    stc_torch.save_model(source, path)
    expected = {k: v.detach().clone() for k, v in source.state_dict().items()}
    with safetensors_c.safe_open(str(path), "pt", backend="mmap") as f:
        views = {name: f.get_tensor(name) for name in f.keys()}
        target = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])
        stc_torch.load_model(target, path, drop_cache=True, backend="mmap")
        for name, value in expected.items():
            assert torch.equal(views[name], value), name
    _assert_same_state(source, target)


def test_threads_loading_one_model_at_once_all_succeed(tmp_path):
    source = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(20)])
    path = tmp_path / "m.safetensors"
    stc_torch.save_model(source, path)
    target = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(20)])
    errors = []

    def load():
        try:
            for _ in range(10):
                stc_torch.load_model(target, path, max_workers=2)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert errors == []
    _assert_same_state(source, target)


SWAP_WHILE_LOADING = """
    import ctypes, threading, torch
    import safetensors_c.torch as stc_torch
    N = 256 << 20
    path = {path!r}
    stc_torch.save_file({{"w": torch.ones(N // 4)}}, path)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(N // 4))

    model = Model()
    w = model.w
    early = ctypes.c_float.from_address(w.data_ptr() + N // 16)

    def swap_once_the_copy_has_begun():
        for _ in range(200_000_000):
            if early.value != 0.0:
                w.data = torch.zeros(1)  # the old storage's last owner goes
                return

    swapper = threading.Thread(target=swap_once_the_copy_has_begun)
    swapper.start()
    stc_torch.load_model(model, path, backend={backend!r}, max_workers=1, strict=False)
    swapper.join()
    print("loaded")
"""


@pytest.mark.parametrize("backend", ["pread", "mmap"])
def test_a_storage_swapped_by_another_thread_mid_load_is_kept_alive(tmp_path, backend):
    # The reference's copy_ holds the destination's storage for the copy;
    # the batch must too, or it writes into freed memory (EFAULT with
    # pread, a crash with mmap).
    code = textwrap.dedent(SWAP_WHILE_LOADING.format(path=str(tmp_path / "big.safetensors"),
                                                     backend=backend))
    result = subprocess.run([sys.executable, "-c", code],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split() == ["loaded"]
