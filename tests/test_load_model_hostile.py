"""load_model and load_into under attack (issue 18, section 4).

- A model on the meta device loaded without assign=True keeps no data: that
  is never silent (a UserWarning says to pass assign=True, as torch does).
- Every write into a parameter or buffer is an in-place modification for
  autograd: the version counter moves, so a graph built before the load fails
  on backward instead of using the new values with stale saved tensors.
- strict=True with a missing or an unexpected name changes nothing, on every
  path: the direct fast path, assign=True, models with their own loading
  hooks, sharded checkpoints and load_into.
- A direct-read descriptor must be the very file that was opened (same device
  and inode): a file of the same size and layout swapped in under the path is
  refused, never read.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safetensors_c.numpy as snp  # noqa: E402
import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import _core, _into  # noqa: E402
from safetensors_c._core import SafetensorError  # noqa: E402
from conftest import BACKENDS  # noqa: E402

try:
    import safetensors.torch as reference
except ImportError:  # pragma: no cover - the reference is installed in CI
    reference = None

needs_reference = pytest.mark.skipif(reference is None, reason="needs the reference package")


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.register_buffer("scale", torch.ones(8))


def filled(seed: int, cls=Small) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():
        for t in model.state_dict().values():
            t.normal_()
    return model


def values(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def objects(model):
    return {k: id(v) for k, v in list(model.named_parameters()) + list(model.named_buffers())}


def same_values(model, before) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


@pytest.fixture
def saved(tmp_path):
    src = filled(1)
    p = str(tmp_path / "small.safetensors")
    ct.save_model(src, p)
    return src, p


# MARK: 1. meta models ------------------------------------------------------

def test_meta_model_without_assign_warns_and_names_assign_true(saved):
    _, p = saved
    with torch.device("meta"):
        model = Small()
    with pytest.warns(UserWarning, match=r"meta device.*assign=True") as record:
        assert ct.load_model(model, p) == (set(), [])
    text = " ".join(str(w.message) for w in record)
    assert "lin.weight" in text
    # Nothing pretends otherwise: the parameters are still on meta.
    assert model.lin.weight.is_meta


def test_partly_meta_model_names_only_the_meta_tensors(saved):
    src, p = saved
    model = filled(2)
    model.norm.to_empty(device="meta")  # norm.weight and norm.bias have no data
    with pytest.warns(UserWarning, match="assign=True") as record:
        ct.load_model(model, p, backend="pread")
    text = " ".join(str(w.message) for w in record)
    assert "norm.weight" in text and "norm.bias" in text and "lin.weight" not in text
    # The real tensors were still loaded.
    assert torch.equal(model.lin.weight, src.lin.weight)


@needs_reference
def test_meta_model_warns_like_the_reference(saved):
    _, p = saved
    with torch.device("meta"):
        theirs = Small()
    with pytest.warns(UserWarning, match="assign=True"):
        reference.load_model(theirs, p)


def test_meta_model_with_hooks_warns_too(saved):
    _, p = saved
    with torch.device("meta"):
        model = Small()
    model.register_load_state_dict_post_hook(lambda module, keys: None)
    with pytest.warns(UserWarning, match="assign=True"):
        ct.load_model(model, p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_model_with_assign_gets_the_file(saved, backend):
    src, p = saved
    with torch.device("meta"):
        model = Small()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ct.load_model(model, p, assign=True, backend=backend) == (set(), [])
    for name, tensor in model.state_dict().items():
        assert not tensor.is_meta, name
        assert torch.equal(tensor, src.state_dict()[name]), name


def test_meta_sharded_checkpoint_warns(tmp_path):
    src = filled(3)
    d = str(tmp_path / "ckpt")
    ct.save_sharded(src.state_dict(), d, max_shard_size=300, progress=False)
    with torch.device("meta"):
        model = Small()
    with pytest.warns(UserWarning, match="assign=True"):
        ct.load_model(model, d)


# MARK: 2. autograd sees the writes -----------------------------------------

def _graph_on(param):
    # mul saves both of its inputs: backward needs the parameter as it was.
    return (param * param).sum()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [1, 2])
def test_load_model_moves_the_version_counter(saved, backend, workers):
    _, p = saved
    model = filled(4)
    loss = _graph_on(model.lin.weight) + _graph_on(model.scale.requires_grad_(False).float())
    versions = {k: v._version for k, v in model.state_dict(keep_vars=True).items()}
    ct.load_model(model, p, backend=backend, max_workers=workers)
    for name, tensor in model.state_dict(keep_vars=True).items():
        assert tensor._version > versions[name], name
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@needs_reference
def test_reference_fails_the_same_backward(saved):
    _, p = saved
    model = filled(4)
    loss = _graph_on(model.lin.weight)
    reference.load_model(model, p)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_cast_path_moves_the_version_counter_too(saved):
    _, p = saved
    model = filled(5).double()  # the file holds F32: every tensor is cast on copy
    loss = _graph_on(model.lin.weight)
    before = model.lin.weight._version
    ct.load_model(model, p)
    assert model.lin.weight._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_sharded_load_moves_the_version_counter(tmp_path):
    src = filled(6)
    d = str(tmp_path / "ckpt")
    ct.save_sharded(src.state_dict(), d, max_shard_size=300, progress=False)
    model = filled(7)
    loss = _graph_on(model.norm.weight)
    ct.load_model(model, d)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_load_into_moves_the_version_counter(saved, backend):
    _, p = saved
    want = ct.load_file(p)
    dest = {k: torch.zeros_like(v) for k, v in want.items()}
    weight = dest["lin.weight"].requires_grad_(True)
    loss = _graph_on(weight)
    before = {k: v._version for k, v in dest.items()}
    ct.load_into(dest, p, backend=backend)
    for name, tensor in dest.items():
        assert tensor._version > before[name], name
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_load_after_backward_is_fine(saved):
    # The counter is moved, not the graph broken: a fresh graph works.
    src, p = saved
    model = filled(8)
    ct.load_model(model, p)
    loss = _graph_on(model.lin.weight)
    loss.backward()
    assert torch.equal(model.lin.weight.grad, 2 * src.lin.weight)


# MARK: 3. strict=True changes nothing --------------------------------------

class Wider(Small):
    def __init__(self) -> None:
        super().__init__()
        self.extra = torch.nn.Linear(2, 2)  # names the file lacks


def _strict_cases(tmp_path, src):
    """(label, path): a file that lacks names, one with extra names."""
    lacking = str(tmp_path / "lacking.safetensors")
    state = {k: v for k, v in src.state_dict().items() if k != "norm.bias"}
    ct.save_file(state, lacking)
    extra = str(tmp_path / "extra.safetensors")
    state = dict(src.state_dict())
    state["stray.weight"] = torch.ones(3)
    ct.save_file(state, extra)
    return [("missing", lacking, r'Missing key\(s\) in state_dict: "norm.bias"\.'),
            ("unexpected", extra, r'Unexpected key\(s\) in state_dict: "stray.weight"\.')]


def _assert_refused_and_untouched(model, path, pattern, **kwargs):
    before, ids = values(model), objects(model)
    with pytest.raises(RuntimeError, match=pattern) as info:
        ct.load_model(model, path, **kwargs)
    assert "Error(s) in loading state_dict for" in str(info.value)
    assert same_values(model, before)
    assert objects(model) == ids
    return info


@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_direct_path_changes_nothing(tmp_path, backend):
    src = filled(9)
    for _, path, pattern in _strict_cases(tmp_path, src):
        _assert_refused_and_untouched(filled(10), path, pattern, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strict_assign_changes_nothing(tmp_path, backend):
    src = filled(11)
    for _, path, pattern in _strict_cases(tmp_path, src):
        _assert_refused_and_untouched(filled(12), path, pattern, assign=True, backend=backend)


def test_strict_assign_on_meta_changes_nothing(tmp_path):
    src = filled(13)
    for _, path, pattern in _strict_cases(tmp_path, src):
        with torch.device("meta"):
            model = Small()
        ids = objects(model)
        with pytest.raises(RuntimeError, match=pattern):
            ct.load_model(model, path, assign=True)
        assert objects(model) == ids
        assert all(t.is_meta for t in model.state_dict().values())


def test_strict_with_missing_names_of_the_model(saved):
    _, p = saved
    _assert_refused_and_untouched(filled(14, Wider), p,
                                  r'Missing key\(s\) in state_dict: "extra.bias", "extra.weight"')
    _assert_refused_and_untouched(filled(14, Wider), p, "Missing key", assign=True)


def test_strict_with_loading_hooks_changes_nothing(tmp_path):
    src = filled(15)
    calls = []
    for _, path, pattern in _strict_cases(tmp_path, src):
        for assign in (False, True):
            model = filled(16)
            model._register_load_state_dict_pre_hook(
                lambda *args, **kwargs: calls.append("pre"))
            model.register_load_state_dict_post_hook(lambda module, keys: calls.append("post"))
            _assert_refused_and_untouched(model, path, pattern, assign=assign)
    assert calls == []  # refused before load_state_dict ran at all


def test_strict_with_own_load_from_state_dict_changes_nothing(tmp_path):
    class Custom(Small):
        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    src = filled(17)
    for _, path, pattern in _strict_cases(tmp_path, src):
        _assert_refused_and_untouched(filled(18, Custom), path, pattern)


def test_hooks_still_run_when_the_names_agree(saved):
    src, p = saved
    calls = []
    model = filled(19)
    model._register_load_state_dict_pre_hook(lambda *args, **kwargs: calls.append("pre"))
    model.register_load_state_dict_post_hook(lambda module, keys: calls.append("post"))
    assert ct.load_model(model, p) == (set(), [])
    assert calls == ["pre", "post"]
    assert same_values(model, values(src))


@pytest.mark.parametrize("assign", [False, True])
def test_strict_sharded_changes_nothing(tmp_path, assign):
    src = filled(20)
    state = dict(src.state_dict())
    state["stray.weight"] = torch.ones(3)
    d = str(tmp_path / "ckpt")
    ct.save_sharded(state, d, max_shard_size=300, progress=False)
    assert len([n for n in os.listdir(d) if n.endswith(".safetensors")]) >= 2
    _assert_refused_and_untouched(filled(21), d, r'Unexpected key\(s\) in state_dict: '
                                  r'"stray.weight"', assign=assign)
    _assert_refused_and_untouched(filled(21, Wider), d, "Missing key", assign=assign)


def test_strict_size_mismatch_with_assign_changes_nothing(tmp_path):
    p = str(tmp_path / "lin.safetensors")
    ct.save_model(torch.nn.Linear(3, 4), p)
    model = torch.nn.Linear(2, 4)  # the bias fits, the weight does not
    before, ids = values(model), objects(model)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: the file holds shape "
                                           r"\[4, 3\]"):
        ct.load_model(model, p, assign=True, strict=False)
    assert same_values(model, before) and objects(model) == ids


def test_non_strict_assign_still_loads_what_matches(tmp_path):
    src = filled(22)
    path = _strict_cases(tmp_path, src)[1][1]
    model = filled(23)
    missing, unexpected = ct.load_model(model, path, strict=False, assign=True)
    assert missing == set() and unexpected == ["stray.weight"]
    assert same_values(model, values(src))


def test_load_into_with_a_name_the_file_lacks_changes_nothing(saved):
    _, p = saved
    dest = {k: torch.zeros_like(v) for k, v in ct.load_file(p).items()}
    dest["stray"] = torch.zeros(3)
    versions = {k: v._version for k, v in dest.items()}
    with pytest.raises(SafetensorError, match="no tensor named 'stray'") as info:
        ct.load_into(dest, p)
    assert info.value.code == "STC_ERR_NO_SUCH_TENSOR"
    assert all(not v.any() for v in dest.values())
    assert {k: v._version for k, v in dest.items()} == versions


# MARK: 4. the direct descriptor is the opened file -------------------------

@pytest.fixture
def twins(tmp_path):
    """Two files of the same size and layout, different values."""
    rng = np.random.default_rng(3)
    first = {"big": rng.standard_normal((64, 1024)).astype(np.float32),
             "small": np.arange(10, dtype=np.int64)}
    second = {k: v + 1 for k, v in first.items()}
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    snp.save_file(first, a)
    snp.save_file(second, b)
    assert os.path.getsize(a) == os.path.getsize(b)
    return a, b, first, second


@pytest.mark.parametrize("backend", BACKENDS)
def test_descriptor_of_an_equal_sized_file_is_refused(twins, backend):
    a, b, first, _ = twins
    f = _core.open(a, backend, 0)
    fd = os.open(b, os.O_RDONLY)
    try:
        out = np.full(first["big"].nbytes, 7, dtype=np.uint8)
        with pytest.raises(SafetensorError, match="another file than the one opened") as info:
            f.read_into("big", out, direct_fd=fd)
        assert info.value.code == "STC_ERR_FILE_CHANGED"
        assert (out == 7).all()
    finally:
        os.close(fd)


def test_descriptor_of_the_same_file_through_another_path_works(twins, tmp_path):
    a, _, first, _ = twins
    link = str(tmp_path / "hard.safetensors")
    os.link(a, link)
    f = _core.open(a, "pread", 0)
    fd = os.open(link, os.O_RDONLY)
    try:
        out = np.zeros_like(first["big"])
        f.read_into("big", out, direct_fd=fd)
        assert out.tobytes() == first["big"].tobytes()
    finally:
        os.close(fd)


def _aligned_like(array: np.ndarray, file_offset: int) -> np.ndarray:
    """A zeroed array whose address agrees with file_offset modulo 4096, so
    the middle of the read can go through O_DIRECT."""
    block = np.zeros(array.nbytes + 2 * 4096, dtype=np.uint8)
    shift = (file_offset - block.ctypes.data) % 4096
    return block[shift:shift + array.nbytes].view(array.dtype).reshape(array.shape)


def test_file_swapped_after_open_is_never_read(twins):
    a, b, first, _ = twins
    f = _core.open(a, "pread", 0)
    os.replace(b, a)  # the path now names a file of the same size and layout
    fd = _into.open_direct(a, f)
    if fd is None:  # no O_DIRECT here: a plain descriptor opened by path
        fd = os.open(a, os.O_RDONLY)
    try:
        begin = f.info("big")[3]
        dest = {"big": _aligned_like(first["big"], f.data_start + begin),
                "small": np.zeros_like(first["small"])}
        try:
            _into.load_into(f, dest, direct_fd=fd, chunk_size=4096 * 4, max_workers=2)
        except SafetensorError as exc:
            assert exc.code == "STC_ERR_FILE_CHANGED"
            assert not dest["big"].any() and not dest["small"].any()
        else:
            for name, want in first.items():  # the inode that was opened
                assert dest[name].tobytes() == want.tobytes(), name
    finally:
        os.close(fd)


def test_open_direct_refuses_a_swapped_file(twins):
    a, b, _, _ = twins
    f = _core.open(a, "pread", 0)
    fd = _into.open_direct(a, f)
    if fd is None:
        pytest.skip("no O_DIRECT on this file system")
    os.close(fd)
    os.replace(b, a)
    fd = _into.open_direct(a, f)
    if fd is not None:
        try:
            with pytest.raises(SafetensorError, match="another file") as info:
                f.read_into("big", np.zeros(64 * 1024, np.float32), direct_fd=fd)
            assert info.value.code == "STC_ERR_FILE_CHANGED"
        finally:
            os.close(fd)
