"""backend="auto": the read strategy follows the storage the file is on.

The core asks fstatfs of the opened descriptor which file system holds the
file: network, cluster and FUSE file systems are read with large preads (a
mapping's page faults there are each a round trip), everything else is
mapped. SAFETENSORS_C_BACKEND overrides "auto", never an explicit backend.

The decision is tested per magic number (injected through the core's pure
function) and on the file systems this machine can make: tmpfs, a
loop-mounted ext4 image and a FUSE mount (bindfs), each skipped with the
reason when it cannot be made here.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, _core
from safetensors_c._checks import BACKEND_ENV, check_backend
from safetensors_c.numpy import load_file, save_file

MMAP, PREAD = 0, 1  # stc_backend's values (csrc/core/stc.h)

# f_type magics that must be read with pread (linux/magic.h and the clients).
REMOTE_MAGICS = {
    "NFS": 0x6969,
    "SMB": 0x517B,
    "CIFS": 0xFF534D42,
    "SMB2": 0xFE534D42,
    "FUSE": 0x65735546,
    "9p": 0x01021997,
    "Ceph": 0x00C36400,
    "Lustre": 0x0BD00BD0,
    "GPFS": 0x47504653,
    "BeeGFS": 0x19830326,
    "OrangeFS": 0x20030528,
    "PanFS": 0xAAD7AAEA,
    "AFS": 0x5346414F,
    "kAFS": 0x6B414653,
    "Coda": 0x73757245,
    "NCP": 0x564C,
}
LOCAL_MAGICS = {
    "ext4": 0xEF53,
    "tmpfs": 0x01021994,
    "XFS": 0x58465342,
    "Btrfs": 0x9123683E,
    "overlayfs": 0x794C7630,
    "ZFS": 0x2FC12FC1,
    "fusectl": 0x65735543,
    "zero": 0,
    "unknown": 0x12345678,
    "all ones": 2**64 - 1,
}

TENSORS = {
    "weight": np.arange(4096, dtype=np.float32).reshape(64, 64),
    "bias": np.arange(7, dtype=np.int16),
}


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def _core_library():
    library = ctypes.CDLL(_core.__file__)
    function = library.stc_backend_for_filesystem
    function.argtypes = [ctypes.c_uint64]
    function.restype = ctypes.c_int
    return function


def _write(directory: Path) -> Path:
    path = directory / "model.safetensors"
    save_file(TENSORS, str(path))
    return path


def _assert_loads(path: Path, backend: str) -> None:
    loaded = load_file(str(path), backend=backend)
    assert sorted(loaded) == sorted(TENSORS)
    for name, expected in TENSORS.items():
        np.testing.assert_array_equal(loaded[name], expected)


def _resolved(path: Path, backend: str = "auto") -> str:
    """The backend the core gave the file, through every way of opening it."""
    with safetensors_c.safe_open(str(path), "np", backend=backend) as f:
        shown = repr(f)
    by_path = _core.open(str(path), check_backend(backend), 0)
    with open(path, "rb") as handle:
        by_fd = _core.open_fd(handle.fileno(), check_backend(backend), 0, str(path))
        assert by_fd.backend == by_path.backend
    assert f"backend={by_path.backend!r}" in shown
    assert by_path.mapped == (by_path.backend == "mmap")
    return by_path.backend


# MARK: the decision per file system -------------------------------------


@pytest.mark.parametrize("name", sorted(REMOTE_MAGICS))
def test_network_and_fuse_file_systems_are_read_with_pread(name):
    assert _core_library()(REMOTE_MAGICS[name]) == PREAD


@pytest.mark.parametrize("name", sorted(LOCAL_MAGICS))
def test_local_and_unknown_file_systems_are_mapped(name):
    assert _core_library()(LOCAL_MAGICS[name]) == MMAP


def test_a_sign_extended_magic_gets_the_same_verdict():
    # A 32-bit long holds CIFS's f_type as a negative number.
    assert _core_library()(0xFFFFFFFF00000000 | REMOTE_MAGICS["CIFS"]) == PREAD


# MARK: real file systems ------------------------------------------------


def test_tmpfs_is_mapped():
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.statvfs(shm).f_bsize == 0:
        pytest.skip("no /dev/shm on this machine")
    directory = shm / f"stc_auto_{uuid.uuid4().hex}"
    directory.mkdir()
    try:
        path = _write(directory)
        assert _resolved(path) == "mmap"
        _assert_loads(path, "auto")
    finally:
        shutil.rmtree(directory)


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def mount_root():
    """A directory of its own for mounts: not under pytest's basetemp, which
    other pytest runs rotate (rename, then delete) while a test may still
    have something mounted there."""
    root = Path(tempfile.mkdtemp(prefix="stc_backend_mounts_"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _unmount(mount_point: Path, *commands: tuple) -> None:
    # Descriptors a failed test's traceback still holds keep the mount busy:
    # collect them first, and fall back to a lazy unmount.
    gc.collect()
    for command in commands + (("umount", "-l"),):
        if _run(*command, str(mount_point)).returncode == 0:
            return


@pytest.fixture
def ext4_mount(mount_root):
    if os.geteuid() != 0:
        pytest.skip("mounting a loop image needs root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    image, mount_point = mount_root / "ext4.img", mount_root / "ext4"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 * 2**20)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop", str(image), str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"mount -o loop is not possible here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        _unmount(mount_point, ("umount",))


@pytest.fixture
def fuse_mount(mount_root):
    """A FUSE file system: bindfs mirroring a directory (apt package bindfs)."""
    if shutil.which("bindfs") is None:
        pytest.skip("bindfs is not installed (apt-get install bindfs) for a FUSE mount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    source, mount_point = mount_root / "fuse_source", mount_root / "fuse"
    source.mkdir()
    mount_point.mkdir()
    mounted = _run("bindfs", str(source), str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"bindfs cannot mount here: {mounted.stderr.strip()}")
    try:
        yield source, mount_point
    finally:
        _unmount(mount_point, ("fusermount", "-u"), ("umount",))


def test_loop_mounted_ext4_is_mapped(ext4_mount):
    path = _write(ext4_mount)
    assert _resolved(path) == "mmap"
    _assert_loads(path, "auto")


def test_fuse_is_read_with_pread(fuse_mount):
    _, mount_point = fuse_mount
    path = _write(mount_point)
    assert _resolved(path) == "pread"
    _assert_loads(path, "auto")
    # An explicit backend is kept, whatever the file system.
    assert _resolved(path, "mmap") == "mmap"
    _assert_loads(path, "mmap")


def test_the_choice_follows_the_descriptor_not_the_path(fuse_mount, tmp_path):
    # A symlink on a local disk that points into the FUSE mount: what is read
    # is the FUSE file, so it is read with pread.
    _, mount_point = fuse_mount
    target = _write(mount_point)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    assert _resolved(link) == "pread"
    _assert_loads(link, "auto")


def test_the_same_file_mapped_locally_and_preaded_through_fuse(fuse_mount):
    source, mount_point = fuse_mount
    _write(source)
    assert _resolved(source / "model.safetensors") == "mmap"
    assert _resolved(mount_point / "model.safetensors") == "pread"


def test_a_file_replaced_through_fuse_after_opening_is_noticed(fuse_mount):
    # Read with pread, a file truncated under the reader is an error, never
    # stale or foreign bytes.
    source, mount_point = fuse_mount
    path = _write(mount_point)
    with safetensors_c.safe_open(str(path), "np", backend="auto") as f:
        with open(source / "model.safetensors", "r+b") as raw:
            raw.truncate(200)
        with pytest.raises(SafetensorError, match="shorter than when it was opened") as info:
            f.get_tensor("weight")
    code, info = info.value.code, None  # the traceback holds the descriptor
    assert code == "STC_ERR_FILE_CHANGED"


# MARK: the environment variable -----------------------------------------


@pytest.fixture
def local_file(tmp_path):
    return _write(tmp_path)


@pytest.mark.parametrize("value", ["mmap", "pread"])
def test_the_environment_overrides_auto(monkeypatch, local_file, value):
    monkeypatch.setenv(BACKEND_ENV, value)
    assert check_backend("auto") == value
    assert _resolved(local_file) == value
    _assert_loads(local_file, "auto")


def test_the_environment_overrides_auto_on_fuse(monkeypatch, fuse_mount):
    _, mount_point = fuse_mount
    path = _write(mount_point)
    monkeypatch.setenv(BACKEND_ENV, "mmap")
    assert _resolved(path) == "mmap"


@pytest.mark.parametrize("explicit, value", [("mmap", "pread"), ("pread", "mmap")])
def test_the_environment_never_overrides_an_explicit_backend(
    monkeypatch, local_file, explicit, value
):
    monkeypatch.setenv(BACKEND_ENV, value)
    assert check_backend(explicit) == explicit
    assert _resolved(local_file, explicit) == explicit


def test_the_environment_set_to_auto_or_empty_leaves_the_choice_to_the_file_system(
    monkeypatch, local_file
):
    for value in ("auto", ""):
        monkeypatch.setenv(BACKEND_ENV, value)
        assert check_backend("auto") == "auto"
        assert _resolved(local_file) == "mmap"  # tmp_path is on a local disk here


@pytest.mark.parametrize("value", ["MMAP", "fuse", "direct", " pread", "pread\n", "1"])
def test_an_invalid_environment_value_is_a_clear_error(monkeypatch, local_file, value):
    monkeypatch.setenv(BACKEND_ENV, value)
    with pytest.raises(SafetensorError, match=f"environment variable {BACKEND_ENV}=") as info:
        safetensors_c.safe_open(str(local_file), "np", backend="auto")
    assert info.value.code == "STC_ERR_INVALID_ARGUMENT"
    assert repr(value) in str(info.value)
    assert "'auto', 'mmap', 'pread'" in str(info.value)
    # An explicit backend does not read the variable, so it is not an error.
    _assert_loads(local_file, "mmap")


# MARK: the argument -----------------------------------------------------


@pytest.mark.parametrize("bad", ["Auto", "AUTO", "automatic", "", None, 0, b"auto"])
def test_a_backend_argument_that_is_not_one_of_three_is_refused(local_file, bad):
    with pytest.raises(SafetensorError, match="is not supported; use one of 'auto', 'mmap'") as info:
        safetensors_c.safe_open(str(local_file), "np", backend=bad)
    assert info.value.code == "STC_ERR_INVALID_ARGUMENT"


def test_the_binding_accepts_auto_and_rejects_other_spellings(local_file):
    assert _core.open(str(local_file), "auto", 0).backend == "mmap"
    with pytest.raises(ValueError, match='"mmap", "pread" or "auto"'):
        _core.open(str(local_file), "Auto", 0)


def test_a_file_image_reports_its_backend():
    image = _core.open_buffer(safetensors_c.numpy.save(TENSORS), 0)
    assert image.backend == "mmap"


def test_load_model_with_auto_on_fuse(fuse_mount):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors_c.torch")

    _, mount_point = fuse_mount
    path = mount_point / "model.safetensors"
    source = torch.nn.Linear(64, 32)
    st_torch.save_model(source, str(path))
    for assign in (False, True):
        target = torch.nn.Linear(64, 32)
        assert st_torch.load_model(target, str(path), backend="auto", assign=assign) == (set(), [])
        assert torch.equal(target.weight, source.weight)
        assert torch.equal(target.bias, source.bias)
