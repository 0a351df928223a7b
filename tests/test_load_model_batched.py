"""One batched core call for every copy of a load (issue 21 item 2, issue 20
item 4), seen by an adversary.

- The binding's ``read_batch`` takes raw destination addresses, so it is the
  last line of defence: an address that is not writable memory of this
  process, a length that is not the tensor's, two destinations that overlap,
  one inside the file's own data, lists that disagree, a name the file lacks:
  each is refused before a single byte is written, anywhere.
- A file cut short under the load, or a direct descriptor of another file,
  fails with STC_ERR_FILE_CHANGED (the latter before a byte is written).
- A tensor handed out from a writable mapping and then written through its
  view is read from the file, never from the scribbled mapping.
- load_model reads a whole file in one call (no per-tensor read_into), gives
  the reference's result on a model of many tensors, and keeps its semantics
  where the direct path must not be taken (state-dict hooks, extra state,
  non-persistent buffers, a submodule shared under two names).
- A ``bytes`` filename is a path for load_file, load_model and load_into.
- ``safe_open.reader`` is the public way to the neutral reader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safetensors_c.numpy as snp  # noqa: E402
import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import _core, _into, safe_open  # noqa: E402
from safetensors_c._core import SafetensorError  # noqa: E402
from conftest import BACKENDS  # noqa: E402

try:
    import safetensors.torch as reference
except ImportError:  # pragma: no cover - the reference is installed in CI
    reference = None

needs_reference = pytest.mark.skipif(reference is None, reason="needs the reference package")


class Many(torch.nn.Module):
    def __init__(self, count: int, size: int = 64) -> None:
        super().__init__()
        for i in range(count):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.randn(size)))


def _values(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def small_file(tmp_path):
    tensors = {"a": np.arange(16, dtype=np.float32), "b": np.arange(8, dtype=np.int64) * 3,
               "c": np.full(1000, 7, np.uint8)}
    path = str(tmp_path / "small.safetensors")
    snp.save_file(tensors, path)
    return path, tensors


def _destinations(tensors):
    out = {k: np.zeros_like(v) for k, v in tensors.items()}
    names = list(out)
    return out, names, [out[n].ctypes.data for n in names], [out[n].nbytes for n in names]


def _untouched(out):
    return all(not v.any() for v in out.values())


# MARK: the binding refuses before writing --------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_copies_every_tensor(small_file, backend):
    path, tensors = small_file
    f = _core.open(path, backend, 0)
    out, names, addresses, lengths = _destinations(tensors)
    assert f.read_batch(names, addresses, lengths, threads=2) == 0
    for name, want in tensors.items():
        assert out[name].tobytes() == want.tobytes(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_other_than_the_tensor_is_refused(small_file, backend):
    path, tensors = small_file
    f = _core.open(path, backend, 0)
    out, names, addresses, lengths = _destinations(tensors)
    lengths[1] += 8  # a lying caller: "my buffer is larger"
    with pytest.raises(SafetensorError, match=r"tensor 'b' holds 64 bytes; its destination "
                                              r"has 72") as info:
        f.read_batch(names, addresses, lengths)
    assert info.value.code == "STC_ERR_SIZE_MISMATCH"
    assert _untouched(out)


def test_overlapping_destinations_are_refused(small_file):
    path, tensors = small_file
    f = _core.open(path, "pread", 0)
    out, names, addresses, lengths = _destinations(tensors)
    addresses[1] = addresses[0] + 8  # 'b' written over the tail of 'a'
    with pytest.raises(ValueError, match=r"share memory"):
        f.read_batch(names, addresses, lengths)
    assert _untouched(out)


def test_destination_inside_the_files_own_mapping_is_refused(small_file):
    path, tensors = small_file
    f = _core.open(path, "mmap", 0)
    view = f.tensor("c")  # the private, writable mapping itself
    out, names, addresses, lengths = _destinations(tensors)
    addresses[0] = view.ctypes.data
    with pytest.raises(ValueError, match=r"inside the file's own data"):
        f.read_batch(names, addresses, lengths)
    assert _untouched(out)


def test_lists_that_disagree_are_refused(small_file):
    path, tensors = small_file
    f = _core.open(path, "pread", 0)
    out, names, addresses, lengths = _destinations(tensors)
    with pytest.raises(ValueError, match=r"3 names, 2 addresses and 3 lengths"):
        f.read_batch(names, addresses[:2], lengths)
    with pytest.raises(TypeError, match=r"names must be a list"):
        f.read_batch(tuple(names), addresses, lengths)
    assert _untouched(out)


def test_a_name_the_file_lacks_is_refused_before_any_write(small_file):
    path, tensors = small_file
    f = _core.open(path, "pread", 0)
    out, names, addresses, lengths = _destinations(tensors)
    names[2] = "nope"
    with pytest.raises(SafetensorError, match=r"no tensor named 'nope'") as info:
        f.read_batch(names, addresses, lengths)
    assert info.value.code == "STC_ERR_NO_SUCH_TENSOR"
    assert _untouched(out)


def _run_isolated(code: str) -> subprocess.CompletedProcess:
    """A bad address must raise, not crash: run where a crash cannot take
    the test run down with it."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("where", ["read-only mapping", "unmapped", "null"])
def test_an_address_that_is_not_writable_memory_is_refused(small_file, where):
    path, _ = small_file
    result = _run_isolated(f"""
        import ctypes, mmap, numpy as np
        from safetensors_c import _core
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        page = mmap.PAGESIZE
        addr = libc.mmap(None, 4 * page, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                         -1, 0)
        where = {where!r}
        if where == "unmapped":
            libc.munmap(addr, 4 * page)
        if where == "null":
            addr = 0
        f = _core.open({path!r}, "pread", 0)
        good = np.zeros(8, np.int64)
        try:
            f.read_batch(["b", "a"], [good.ctypes.data, addr], [64, 64])
        except Exception as exc:
            print(type(exc).__name__, getattr(exc, "code", None), exc)
        print("good untouched:", not good.any())
    """)
    assert result.returncode == 0, result.stderr
    assert "SafetensorError STC_ERR_INVALID_ARGUMENT" in result.stdout
    assert "'a'" in result.stdout
    assert "good untouched: True" in result.stdout


def test_a_file_cut_short_under_the_batch_fails_with_file_changed(tmp_path):
    path = str(tmp_path / "cut.safetensors")
    big = np.arange(1 << 20, dtype=np.float32)
    snp.save_file({"big": big, "tail": np.ones(16, np.float32)}, path)
    f = _core.open(path, "pread", 0)
    data_start = f.data_start
    with open(path, "r+b") as fh:  # another process truncates the file after opening
        fh.truncate(data_start + big.nbytes // 2)
    out = {"big": np.zeros_like(big), "tail": np.zeros(16, np.float32)}
    names = ["big", "tail"]
    with pytest.raises(SafetensorError, match=r"shorter than when it was opened") as info:
        f.read_batch(names, [out[n].ctypes.data for n in names], [out[n].nbytes for n in names],
                     threads=2, chunk_size=1 << 16)
    assert info.value.code == "STC_ERR_FILE_CHANGED"
    # The partial-load contract: what was read is the file's, the rest untouched.
    got = out["big"]
    assert np.array_equal(got[got != 0], big[got != 0])
    assert not out["tail"].any()


def test_a_mapped_file_cut_short_is_refused_before_any_copy(tmp_path):
    path = str(tmp_path / "cut.safetensors")
    snp.save_file({"x": np.ones(4096, np.float32)}, path)
    f = _core.open(path, "mmap", 0)
    with open(path, "r+b") as fh:
        fh.truncate(f.data_start + 8)
    out = np.zeros(4096, np.float32)
    with pytest.raises(SafetensorError, match=r"truncated") as info:
        f.read_batch(["x"], [out.ctypes.data], [out.nbytes])
    assert info.value.code == "STC_ERR_FILE_CHANGED"
    assert not out.any()


def test_a_direct_descriptor_of_another_file_is_refused_in_a_batch(tmp_path):
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    snp.save_file({"x": np.ones(1 << 16, np.float32)}, a)
    snp.save_file({"x": np.full(1 << 16, 2, np.float32)}, b)  # same size and layout
    f = _core.open(a, "pread", 0)
    fd = os.open(b, os.O_RDONLY)
    try:
        out = np.zeros(1 << 16, np.float32)
        with pytest.raises(SafetensorError, match=r"another file than the one opened") as info:
            f.read_batch(["x"], [out.ctypes.data], [out.nbytes], direct_fd=fd)
        assert info.value.code == "STC_ERR_FILE_CHANGED"
        assert not out.any()
    finally:
        os.close(fd)


def test_a_scribbled_mapping_is_not_what_a_batch_reads(small_file):
    path, tensors = small_file
    f = _core.open(path, "mmap", 0)
    if not f.writable:
        pytest.skip("the system refused a writable mapping")
    view = f.tensor("a")  # handed out: a writable view of the private mapping
    view[:] = -1
    out, names, addresses, lengths = _destinations(tensors)
    f.read_batch(names, addresses, lengths)
    assert out["a"].tobytes() == tensors["a"].tobytes()


@pytest.mark.parametrize("threads", [1, 2, 7])
def test_large_tensors_split_over_threads_land_whole(tmp_path, threads):
    rng = np.random.default_rng(3)
    tensors = {"big": rng.standard_normal(300_001).astype(np.float32),
               "odd": rng.integers(0, 255, 12_345, dtype=np.uint8),
               **{f"s{i}": rng.standard_normal(17).astype(np.float32) for i in range(50)}}
    path = str(tmp_path / "mixed.safetensors")
    snp.save_file(tensors, path)
    for backend in BACKENDS:
        f = _core.open(path, backend, 0)
        out = {k: np.zeros_like(v) for k, v in tensors.items()}
        names = list(out)[::-1]  # any order
        f.read_batch(names, [out[n].ctypes.data for n in names], [out[n].nbytes for n in names],
                     threads=threads, chunk_size=4096 * 3)
        for name, want in tensors.items():
            assert out[name].tobytes() == want.tobytes(), (backend, name)


# MARK: load_model over the batch ------------------------------------------------------


class _CountingReader:
    """A file object that counts how it is read."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = {"read_batch": 0, "read_into": 0}

    def read_batch(self, *args, **kwargs):
        self.calls["read_batch"] += 1
        return self.inner.read_batch(*args, **kwargs)

    def read_into(self, *args, **kwargs):
        self.calls["read_into"] += 1
        return self.inner.read_into(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __contains__(self, name):
        return name in self.inner


@pytest.fixture
def counted(monkeypatch):
    """Every reader load_model opens, counting how it is read."""
    readers = []

    def counting_open(filename, backend="mmap"):
        readers.append(_CountingReader(_core.open(os.fspath(filename), backend, 0)))
        return readers[-1]

    monkeypatch.setattr(ct, "open_source", counting_open)
    return readers


def test_load_model_reads_a_file_in_one_call(tmp_path, counted):
    source = Many(300)
    path = str(tmp_path / "many.safetensors")
    ct.save_model(source, path)
    target = Many(300)
    assert ct.load_model(target, path) == (set(), [])
    assert [r.calls for r in counted] == [{"read_batch": 1, "read_into": 0}]
    for name, want in _values(source).items():
        assert torch.equal(target.state_dict()[name], want), name


@needs_reference
@pytest.mark.parametrize("count", [1, 2000])
def test_many_tensors_load_as_the_reference_loads_them(tmp_path, count, counted):
    source = Many(count)
    path = str(tmp_path / "many.safetensors")
    reference.save_model(source, path)
    ours_model, theirs_model = Many(count), Many(count)
    assert ct.load_model(ours_model, path) == reference.load_model(theirs_model, path)
    assert [r.calls["read_batch"] for r in counted] == [1]
    theirs = _values(theirs_model)
    for name, value in _values(ours_model).items():
        assert torch.equal(value, theirs[name]), name


class WithBuffers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = torch.nn.Linear(4, 4)
        self.again = self.shared  # one submodule under two names
        self.register_buffer("kept", torch.zeros(4))
        self.register_buffer("transient", torch.zeros(4), persistent=False)


@needs_reference
def test_shared_submodules_and_non_persistent_buffers_match_the_reference(tmp_path, counted):
    torch.manual_seed(0)
    source = WithBuffers()
    with torch.no_grad():
        source.kept.normal_()
        source.transient.fill_(5)
    path = str(tmp_path / "buffers.safetensors")
    reference.save_model(source, path)
    ours, theirs = WithBuffers(), WithBuffers()
    assert ct.load_model(ours, path) == reference.load_model(theirs, path)
    assert [r.calls["read_batch"] for r in counted] == [1]  # the direct path was taken
    assert torch.equal(ours.kept, source.kept)
    assert not ours.transient.any()  # never saved, never loaded
    assert ours.again.weight is ours.shared.weight
    assert torch.equal(ours.shared.weight, source.shared.weight)


class CopyingStateDict(torch.nn.Linear):
    """A state_dict hook that hands out copies: writing into them would load nothing."""

    def __init__(self) -> None:
        super().__init__(4, 4)
        self._register_state_dict_hook(self._copies)

    @staticmethod
    def _copies(module, state, prefix, local_metadata):
        for key in list(state):
            state[key] = state[key].clone()
        return state


class WithExtraState(torch.nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 4)
        self.loaded_extra = None

    def get_extra_state(self):
        return {"note": 1}

    def set_extra_state(self, state):
        self.loaded_extra = state


def test_a_model_whose_state_dict_hands_out_copies_is_still_loaded(tmp_path):
    torch.manual_seed(1)
    source = torch.nn.Linear(4, 4)
    path = str(tmp_path / "lin.safetensors")
    ct.save_model(source, path)
    target = CopyingStateDict()
    assert ct._live_state(target) is None  # its state_dict() is not its memory
    assert ct._live_state(torch.nn.Linear(4, 4)) is not None
    ct.load_model(target, path)
    assert torch.equal(target.weight, source.weight)
    assert torch.equal(target.bias, source.bias)


def test_extra_state_makes_load_model_go_through_state_dict(tmp_path):
    source = torch.nn.Linear(4, 4)
    path = str(tmp_path / "lin.safetensors")
    ct.save_file({k: v.detach() for k, v in source.state_dict().items()}, path)
    target = WithExtraState()
    # state_dict() holds "_extra_state", which the file lacks: strict names it.
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "_extra_state"'):
        ct.load_model(target, path)
    missing, unexpected = ct.load_model(target, path, strict=False)
    assert missing == {"_extra_state"} and unexpected == []
    assert torch.equal(target.weight, source.weight)


def test_drop_cache_with_assign_is_refused(tmp_path):
    path = str(tmp_path / "lin.safetensors")
    ct.save_model(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"assign=True copies nothing"):
        ct.load_model(torch.nn.Linear(2, 2), path, assign=True, drop_cache=True)


# MARK: bytes filenames and the reader accessor ---------------------------------------


def test_a_bytes_filename_is_a_path_everywhere(tmp_path):
    """Not UTF-8 on purpose: only a path reading can open it."""
    path = os.fsencode(tmp_path) + b"/w\xff.safetensors"
    torch.manual_seed(2)
    source = torch.nn.Linear(3, 3)
    ct.save_model(source, path)
    loaded = ct.load_file(path)
    assert torch.equal(loaded["weight"], source.weight.detach())
    target = torch.nn.Linear(3, 3)
    assert ct.load_model(target, path) == (set(), [])
    assert torch.equal(target.weight, source.weight)
    into = {"bias": torch.zeros(3)}
    ct.load_into(into, path)
    assert torch.equal(into["bias"], source.bias.detach())


def test_a_file_image_is_not_a_filename(tmp_path):
    path = str(tmp_path / "w.safetensors")
    ct.save_model(torch.nn.Linear(3, 3), path)
    with open(path, "rb") as fh:
        image = fh.read()
    for call in (lambda: ct.load_file(image),
                 lambda: ct.load_model(torch.nn.Linear(3, 3), image),
                 lambda: ct.load_into({"bias": torch.zeros(3)}, image)):
        with pytest.raises(ValueError, match=r"null"):  # a path with NUL bytes in it
            call()


def test_safe_open_reader_is_the_neutral_reader(small_file):
    path, tensors = small_file
    with safe_open(path, "np") as f:
        reader = f.reader
        assert reader.keys() == ["a", "b", "c"]
        assert reader.tensor("b").tobytes() == tensors["b"].tobytes()
    with pytest.raises(SafetensorError) as info:
        f.reader
    assert info.value.code == "STC_ERR_CLOSED"


def test_table_lists_every_tensor_in_data_order(small_file):
    path, _ = small_file
    f = _core.open(path, "pread", 0)
    rows = f.table()
    assert [row[0] for row in rows] == f.offset_keys()
    for name, code, shape, begin, end in rows:
        assert (code, shape, begin, end) == tuple(f.info(name)[i] for i in (0, 1, 3, 4))


# MARK: save_model over the model's own tensors ---------------------------------------


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("transient", torch.ones(3), persistent=False)


def _spy_state_dict(monkeypatch, model):
    calls = []
    original = model.state_dict

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "state_dict", spy)
    return calls


@needs_reference
@pytest.mark.parametrize("make", [lambda: Many(50), Tied, WithBuffers])
def test_save_model_writes_the_reference_bytes_without_state_dict(tmp_path, monkeypatch, make):
    torch.manual_seed(4)
    model = make()
    ours, theirs = str(tmp_path / "ours.safetensors"), str(tmp_path / "theirs.safetensors")
    reference.save_model(model, theirs)
    calls = _spy_state_dict(monkeypatch, model)
    ct.save_model(model, ours)
    assert calls == []  # no detached copy of every tensor was made
    assert _header_and_data(ours) == _header_and_data(theirs)


def _header_and_data(path):
    """The header as JSON (metadata keys in any order) and the data bytes."""
    with open(path, "rb") as fh:
        raw = fh.read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


class Halving(torch.nn.Linear):
    """A state-dict hook that changes what is saved: it must be honoured."""

    def __init__(self) -> None:
        super().__init__(3, 3)
        self._register_state_dict_hook(self._halve)

    @staticmethod
    def _halve(module, state, prefix, local_metadata):
        for key in list(state):
            state[key] = state[key] / 2
        return state


def test_save_model_honours_state_dict_hooks(tmp_path, monkeypatch):
    model = Halving()
    calls = _spy_state_dict(monkeypatch, model)
    path = str(tmp_path / "halved.safetensors")
    ct.save_model(model, path)
    assert calls == [1]
    assert ct._live_state(model) is None
    saved = ct.load_file(path)
    assert torch.equal(saved["weight"], model.weight.detach() / 2)
