"""Zero-copy loading: mmap views, private writes, memory that stays untouched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import safetensors_c
from safetensors_c import safe_open

from conftest import ROOT, assert_same_array


def base_chain(array):
    chain = []
    obj = array
    while obj is not None:
        chain.append(obj)
        obj = getattr(obj, "base", None)
    return chain


@pytest.fixture
def two_tensor_file(tmp_path):
    path = tmp_path / "zc.safetensors"
    tensors = {
        "a": np.arange(64, dtype=np.float32).reshape(8, 8),
        "b": np.arange(10, dtype=np.int64),
    }
    safetensors_c.save_file(tensors, path)
    return path, tensors


def test_mmap_first_accesses_are_views_of_one_mapping(two_tensor_file):
    path, tensors = two_tensor_file
    with safe_open(path, "np", backend="mmap") as f:
        x = f.get_tensor("a")
        other = f.get_tensor("b")
        y = f.get_tensor("a")
        assert x is not y
        assert not x.flags.owndata
        assert not np.shares_memory(x, other)
        # The base chain of each first access ends at the owner of the
        # mapping, the same for all.
        owner_x = base_chain(x)[-1]
        owner_other = base_chain(other)[-1]
        assert owner_x is owner_other
        assert isinstance(owner_x, safetensors_c._core._File)
        assert owner_x.mapped
        # A second access of the same tensor is a fresh read, not a view of
        # the memory the first one may have written (tests/test_independent_arrays.py).
        assert not np.shares_memory(x, y)
        assert base_chain(y)[-1] is not owner_x


def test_mmap_arrays_are_writable_and_private(two_tensor_file):
    path, tensors = two_tensor_file
    before = path.read_bytes()
    with safe_open(path, "np", backend="mmap") as f:
        x = f.get_tensor("a")
        y = f.get_tensor("a")
        assert x.flags.writeable and y.flags.writeable
        x[0, 0] = 1234.5
        x[7] = -1
        # Neither the other array of the handle sees the write ...
        assert_same_array(y, tensors["a"])
        assert_same_array(f.get_tensor("a"), tensors["a"])
        # ... nor the file on disk.
    assert path.read_bytes() == before
    # Nor does a fresh open, with either backend.
    for backend in ("mmap", "pread"):
        assert_same_array(safetensors_c.load_file(path, backend=backend)["a"], tensors["a"])


def test_load_file_arrays_writable_and_file_unchanged(two_tensor_file):
    path, tensors = two_tensor_file
    before = path.read_bytes()
    loaded = safetensors_c.load_file(path)
    for array in loaded.values():
        assert array.flags.writeable
        array[...] = 0
    assert path.read_bytes() == before


def test_separate_opens_do_not_share_memory(two_tensor_file):
    path, _ = two_tensor_file
    a = safetensors_c.load_file(path)["a"]
    b = safetensors_c.load_file(path)["a"]
    a[0, 0] = 99
    assert b[0, 0] == 0
    assert not np.shares_memory(a, b)


def test_pread_arrays_own_their_memory(two_tensor_file):
    path, tensors = two_tensor_file
    with safe_open(path, "np", backend="pread") as f:
        x = f.get_tensor("a")
        y = f.get_tensor("a")
        assert x.flags.owndata
        assert x.base is None
        assert x.flags.writeable
        assert not np.shares_memory(x, y)
        x[0, 0] = 5
        assert y[0, 0] == 0
        sliced = f.get_slice("a")[2:4]
        assert sliced.flags.owndata
        assert_same_array(sliced, tensors["a"][2:4])
    for array in safetensors_c.load_file(path, backend="pread").values():
        assert array.flags.owndata


def test_mmap_slices_are_views(two_tensor_file):
    path, tensors = two_tensor_file
    with safe_open(path, "np", backend="mmap") as f:
        part = f.get_slice("a")[2:4, ::3]
        assert not part.flags.owndata
        assert isinstance(base_chain(part)[-1], safetensors_c._core._File)
        assert_same_array(part, tensors["a"][2:4, ::3])
        # The slice was the tensor's first access: the full tensor asked for
        # afterwards is a read of its own.
        full = f.get_tensor("a")
        assert not np.shares_memory(full, part)
        assert_same_array(full[2:4, ::3], part)


def test_load_bytearray_is_zero_copy():
    tensors = {"a": np.arange(16, dtype=np.int32), "b": np.ones(3, np.float64)}
    image = bytearray(safetensors_c.save(tensors))
    loaded = safetensors_c.load(image)
    buffer = np.frombuffer(image, dtype=np.uint8)
    assert np.shares_memory(loaded["a"], buffer)
    assert np.shares_memory(loaded["b"], buffer)
    # 'a' (I32) is written after 'b' (F64), so its 64 bytes end the image.
    image[-64:-60] = np.int32(77).tobytes()
    assert loaded["a"][0] == 77
    assert_same_array(loaded["b"], tensors["b"])


def test_load_bytearray_arrays_are_writable():
    tensors = {"a": np.arange(16, dtype=np.int32)}
    image = bytearray(safetensors_c.save(tensors))
    a = safetensors_c.load(image)["a"]
    assert a.flags.writeable
    a[0] = 77
    assert bytes(image[-64:-60]) == np.int32(77).tobytes()


def test_load_bytes_does_not_alias_the_bytes_object():
    tensors = {"a": np.arange(16, dtype=np.int32)}
    data = safetensors_c.save(tensors)
    loaded = safetensors_c.load(data)
    assert not np.shares_memory(loaded["a"], np.frombuffer(data, dtype=np.uint8))
    assert_same_array(loaded["a"], tensors["a"])


def test_load_bytes_gives_writable_arrays():
    tensors = {"a": np.arange(16, dtype=np.int32)}
    data = safetensors_c.save(tensors)
    snapshot = bytes(data)
    loaded = safetensors_c.load(data)
    assert loaded["a"].flags.writeable
    loaded["a"][:] = -1
    assert data == snapshot  # bytes are immutable: never written through
    assert_same_array(safetensors_c.load(data)["a"], tensors["a"])


_RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    import safetensors_c

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    path = {path!r}
    before = rss_kib()
    loaded = safetensors_c.load_file(path)
    after_load = rss_kib()
    total = sum(a.nbytes for a in loaded.values())
    # Touch one page of every tensor only.
    touched = sum(int(a.reshape(-1)[0]) for a in loaded.values())
    after_touch = rss_kib()
    # Touch everything.
    everything = sum(int(a.sum()) for a in loaded.values())
    after_all = rss_kib()
    print(before, after_load, after_touch, after_all, total, touched, everything)
    """
)


def test_load_file_does_not_read_the_data_until_touched(tmp_path):
    mib = 1 << 20
    size = 256 * mib
    path = tmp_path / "big.safetensors"
    # Non-zero data, so the file is really written (not sparse).
    ones = np.ones(size // 2, dtype=np.uint8)
    safetensors_c.save_file({"a": ones, "b": ones}, path)
    del ones
    assert path.stat().st_size > size
    script = _RSS_SCRIPT.format(root=str(ROOT), path=str(path))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    before, after_load, after_touch, after_all, total, touched, everything = map(
        int, out.stdout.split()
    )
    assert total == size
    assert touched == 2
    assert everything == size
    kib = 1024
    assert (after_load - before) * kib < 16 * mib, (before, after_load)
    assert (after_touch - before) * kib < 16 * mib, (before, after_touch)
    # Sanity check that the measurement sees real page-ins: reading all of
    # the data maps it in (page cache pages count towards RSS when mapped).
    assert (after_all - before) * kib > size // 2, (before, after_all)
