"""Saving many small tensors fast must not cost a check: the collector's
pause in to_neutral ends on every path, the one-pass sharing test still
sends every shared storage to the full finder, and the bytes written are
the tensor's own."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, _frameworks
from safetensors_c._adapters import numpy as numpy_adapter

torch = pytest.importorskip("torch")
import safetensors_c.torch as stc_torch  # noqa: E402
from safetensors_c._adapters import torch as torch_adapter  # noqa: E402


def _collections_during(run) -> list:
    """The generations of the collections the collector starts during run()."""
    seen = []

    def count(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        run()
    finally:
        gc.callbacks.remove(count)
    return seen


def test_converting_many_tensors_starts_no_collection():
    arrays = {f"t{i}": np.zeros(4, np.float32) for i in range(20_000)}
    tensors = {name: torch.from_numpy(a) for name, a in arrays.items()}
    # 20,000 tensors make enough small objects to start dozens of collections,
    # and a full one now and then; paused, the young objects are looked at
    # once at most, when the collector is back on.
    for adapter, values in [(numpy_adapter, arrays), (torch_adapter, tensors)]:
        seen = _collections_during(lambda: _frameworks.to_neutral(adapter, values))
        assert len(seen) <= 1 and 2 not in seen, seen
    assert gc.isenabled()


@pytest.mark.parametrize("tensors, raised, message", [
    ({"ok": np.zeros(2), 5: np.zeros(2)}, TypeError, "tensor names must be str"),
    ({"ok": np.zeros(2), "__metadata__": np.zeros(2)}, ValueError, "reserved for metadata"),
    ({"ok": np.zeros(2), "bad": [1, 2]}, TypeError, "expected a numpy.ndarray"),
    ({"bad": np.zeros(2, dtype="U3")}, SafetensorError, "cannot be stored"),
])
def test_the_collector_is_back_on_after_a_refused_numpy_save(tensors, raised, message):
    assert gc.isenabled()
    with pytest.raises(raised, match=message):
        safetensors_c.save(tensors)
    assert gc.isenabled()


def test_the_collector_is_back_on_after_a_refused_torch_save():
    base = torch.zeros(8)
    with pytest.raises(RuntimeError, match="share memory"):
        stc_torch.save({"a": base[:4], "b": base[2:6]})
    assert gc.isenabled()
    with pytest.raises(ValueError, match="not contiguous"):
        stc_torch.save({"a": torch.zeros(3, 4).t()})
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_caller_stays_off():
    gc.disable()
    try:
        safetensors_c.save({"a": np.zeros(3)})
        with pytest.raises(TypeError):
            safetensors_c.save({"a": object()})
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("make", [
    lambda base: {"whole": base, "part": base[4:]},
    lambda base: {"first": base[:4], "second": base[4:]},  # apart, yet one storage
    lambda base: {"x": base[2:6], "y": base[3:7], "z": torch.ones(2)},
])
def test_tensors_of_one_storage_still_reach_the_full_finder(make):
    tensors = make(torch.arange(8.0))
    shares = len(set(t.untyped_storage().data_ptr() for t in tensors.values())) < len(tensors)
    assert shares and torch_adapter._may_share(tensors.values())


def test_overlapping_views_at_other_offsets_are_refused_as_before():
    base = torch.arange(8.0)
    with pytest.raises(RuntimeError, match="share memory"):
        stc_torch.save({"x": base[2:6], "y": base[3:7]})
    # apart in one storage: not overlapping, so saved (as the finder rules)
    loaded = stc_torch.load(stc_torch.save({"first": base[:4], "second": base[4:]}))
    assert loaded["second"].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_meta_tensors_take_the_general_rule():
    tensors = {"m": torch.empty(3, device="meta"), "c": torch.ones(2)}
    assert torch_adapter._may_share(tensors.values()) in (True, False)  # no raise
    torch_adapter.check_tensors(tensors)  # meta tensors share nothing


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int16, torch.uint16,
                                   torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
                                   torch.float64, torch.complex64])
def test_the_bytes_handed_to_the_writer_are_the_tensor_own(dtype):
    tensor = torch.ones(6, dtype=dtype).reshape(2, 3)
    if dtype.is_floating_point:
        tensor.requires_grad_(True)
    neutral = torch_adapter.from_array("t", tensor)
    assert neutral.data.dtype == np.uint8 and neutral.data.ndim == 1
    assert neutral.data.ctypes.data == tensor.data_ptr()
    assert neutral.data.nbytes == tensor.nbytes
    assert neutral.shape == (2, 3) and type(neutral.shape) is tuple
