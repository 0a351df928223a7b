"""drop_cache=True leaves the page cache as it was (issue 21 item 5).

What is measured is the kernel's own view: mincore on a fresh, untouched
mapping of the file says which of its pages are in the page cache. A file
is warmed first (read in full), then loaded; with drop_cache the pages of
the copied tensors must be gone, without it they stay (the control that
shows the measurement can see them). The values loaded are checked too:
dropping pages must never change what is read.

Adversarial cases: a checkpoint of many small tensors whose pages are
shared between neighbours, the mmap backend (whose mapping would keep pages
cached whatever the advice says), a sharded checkpoint, load_into, and a
partial load (only the tensors asked for are dropped).
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safetensors_c.numpy as snp  # noqa: E402
import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import _core, _into  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
PAGE = mmap.PAGESIZE
# Pages the kernel has just added to the cache wait in a small per-CPU batch
# (15 pages) before they reach the lists that advice can drop them from; a
# batch filled on another CPU can outlive the advice. So a few pages per CPU
# may stay behind whatever the loader does: far fewer than any file here has.
LEFT_BEHIND = 15 * (os.cpu_count() or 1) + 1


def cached_pages(path: str, begin: int = 0, end: int = None) -> int:
    """How many pages of file bytes [begin, end) are in the page cache now,
    by mincore on a mapping that is never touched (so measuring reads
    nothing in)."""
    size = os.path.getsize(path)
    end = size if end is None else end
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            first, last = begin // PAGE, (end + PAGE - 1) // PAGE
            return sum(b & 1 for b in vec.raw[first:last])
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def warm(path: str) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 20):
            pass


def evictable(path: str) -> bool:
    """Whether this file system drops clean pages on advice at all (tmpfs
    keeps them: its pages are the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        warm(path)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return cached_pages(path) == 0


def data_range(path: str):
    f = _core.open(path, "pread", 0)
    return f.data_start, f.file_size


def synced(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped: write them first
    finally:
        os.close(fd)
    if not evictable(path):
        pytest.skip("this file system keeps its pages whatever the advice")
    return path


class Many(torch.nn.Module):
    def __init__(self, count: int, size: int) -> None:
        super().__init__()
        for i in range(count):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.randn(size)))


@pytest.fixture
def big_model_file(tmp_path):
    torch.manual_seed(0)
    model = Many(16, 64 * 1024)  # 16 tensors of 256 KiB: 4 MiB, 1024 pages
    path = str(tmp_path / "big.safetensors")
    ct.save_model(model, path)
    return model, synced(path)


@pytest.fixture
def small_model_file(tmp_path):
    torch.manual_seed(1)
    model = Many(16000, 40)  # 160-byte tensors: about 25 share each page
    path = str(tmp_path / "small.safetensors")
    ct.save_model(model, path)
    return model, synced(path)


def _same(model, other) -> bool:
    theirs = other.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("backend", [None, "pread", "mmap"])
@pytest.mark.parametrize("which", ["big_model_file", "small_model_file"])
def test_load_model_drops_the_pages_it_copied(request, which, backend):
    source, path = request.getfixturevalue(which)
    begin, end = data_range(path)
    pages = (end - begin) // PAGE
    assert pages > 4 * LEFT_BEHIND
    target = Many(len(list(source.parameters())), source.p0.numel())
    # The control: without the flag a load leaves the warm file cached, so
    # the measurement below can see pages.
    warm(path)
    ct.load_model(target, path, backend=backend)
    assert cached_pages(path, begin, end) >= pages - 1
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    ct.load_model(target, path, backend=backend, drop_cache=True)
    assert _same(target, source)
    assert cached_pages(path, begin, end) <= LEFT_BEHIND


def test_a_cold_file_stays_out_of_the_cache(big_model_file):
    source, path = big_model_file
    begin, end = data_range(path)
    assert cached_pages(path, begin, end) <= LEFT_BEHIND  # evicted by the fixture
    target = Many(16, 64 * 1024)
    ct.load_model(target, path, drop_cache=True, max_workers=2)
    assert _same(target, source)
    assert cached_pages(path, begin, end) <= LEFT_BEHIND


def test_torch_load_into_drops_only_what_it_read(big_model_file):
    source, path = big_model_file
    f = _core.open(path, "pread", 0)
    warm(path)
    into = {"p3": torch.zeros(64 * 1024), "p9": torch.zeros(64 * 1024)}
    ct.load_into(into, path, drop_cache=True)
    assert torch.equal(into["p3"], source.p3.detach())
    assert torch.equal(into["p9"], source.p9.detach())
    for name in ("p3", "p9"):
        _, _, _, b, e = f.info(name)
        assert cached_pages(path, f.data_start + b, f.data_start + e) <= LEFT_BEHIND, name
    _, _, _, b, e = f.info("p5")  # not asked for: still cached
    assert cached_pages(path, f.data_start + b, f.data_start + e) >= (e - b) // PAGE - 1


def test_neutral_load_into_drops_pages_too(tmp_path):
    tensors = {f"t{i}": np.full(100_000, i, np.float32) for i in range(8)}  # 780 pages
    path = str(tmp_path / "np.safetensors")
    snp.save_file(tensors, path)
    synced(path)
    begin, end = data_range(path)
    warm(path)
    reader = _core.open(path, "mmap", 0)
    out = {k: np.zeros_like(v) for k, v in tensors.items()}
    _into.load_into(reader, out, drop_cache=True, max_workers=2)
    for name, want in tensors.items():
        assert np.array_equal(out[name], want), name
    assert cached_pages(path, begin, end) <= LEFT_BEHIND


def test_a_sharded_checkpoint_is_dropped_shard_by_shard(tmp_path):
    torch.manual_seed(2)
    source = Many(8, 256 * 1024)  # 8 MiB in shards of 2 MiB
    directory = tmp_path / "ckpt"
    ct.save_sharded({k: v.detach() for k, v in source.state_dict().items()}, directory,
                    max_shard_size=2_200_000)
    shards = sorted(str(p) for p in directory.glob("*.safetensors"))
    assert len(shards) > 1
    for shard in shards:
        synced(shard)
        warm(shard)
    target = Many(8, 256 * 1024)
    ct.load_model(target, str(directory), drop_cache=True)
    assert _same(target, source)
    for shard in shards:
        begin, end = data_range(shard)
        assert cached_pages(shard, begin, end) <= LEFT_BEHIND, shard
