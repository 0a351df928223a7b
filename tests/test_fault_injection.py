"""Faults during save: a process killed mid-write, a file system that refuses to grow.

``save_file`` writes to ``<dir>/.<name>.<random>.tmp``, fsyncs it, renames it
over the target and fsyncs the directory (README.md, "Saving is streaming,
atomic and byte-exact"). So:

(a) SIGKILL at any moment leaves the target holding either the complete old
    file or the complete new one, never a mix or a prefix. (A killed process
    cannot remove its temporary file: a stale ``.*.tmp`` may remain beside
    the target; it is never the target.)
(b) A write that fails (here: EFBIG from RLIMIT_FSIZE, with SIGXFSZ ignored,
    the same path as a full disk's ENOSPC) raises a clean ``OSError`` with the
    errno, leaves the target untouched, and removes the temporary file.
(c) A tiny tmpfs would give a real ENOSPC, but mounting one needs root:
    that variant is skipped (RLIMIT_FSIZE exercises the same error path).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import safetensors_c

ROOT = Path(__file__).resolve().parent.parent

N_TENSORS = 96
TENSOR_BYTES = 1 << 20  # 96 MiB per file

SAVER = r'''
import os, sys
sys.path.insert(0, os.environ["STC_ROOT"])
import numpy as np
import safetensors_c

path, n, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
versions = []
for v in (1, 2):
    # Every tensor of version v is filled with bytes that name the version.
    versions.append({f"t{i:03d}": np.full(nbytes // 4, v * 1000 + i, dtype=np.int32) for i in range(n)})
print("saving", flush=True)
k = 0
while True:
    safetensors_c.save_file(versions[k % 2], path, metadata={"version": str(k % 2 + 1)})
    k += 1
'''


def version_tensors(v: int) -> dict:
    n = TENSOR_BYTES // 4
    return {f"t{i:03d}": np.full(n, v * 1000 + i, dtype=np.int32) for i in range(N_TENSORS)}


def digest_of(v: int) -> str:
    blob = safetensors_c.save(version_tensors(v), metadata={"version": str(v)})
    return hashlib.sha256(blob).hexdigest()


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def temporaries(directory: Path, name: str) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.startswith(f".{name}.") and p.endswith(".tmp"))


@pytest.mark.parametrize("trials", [6])
def test_sigkill_during_save_leaves_old_or_new_file(tmp_path, trials):
    path = tmp_path / "model.safetensors"
    known = {digest_of(1): 1, digest_of(2): 2}
    # A valid target exists before the first save.
    safetensors_c.save_file(version_tensors(2), path, metadata={"version": "2"})
    rng = random.Random(20240601)
    seen_versions = []
    stale = 0
    for trial in range(trials):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(path), str(N_TENSORS), str(TENSOR_BYTES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, STC_ROOT=str(ROOT)),
        )
        try:
            assert proc.stdout.readline().strip() == b"saving"
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
        # The target is one of the two complete files, byte for byte...
        digest = file_digest(path)
        assert digest in known, f"trial {trial}: target is neither version (partial write?)"
        version = known[digest]
        seen_versions.append(version)
        # ... and opens and reads as that version.
        with safetensors_c.safe_open(path, "np") as f:
            assert f.metadata() == {"version": str(version)}
            assert len(f.keys()) == N_TENSORS
            assert int(f.get_tensor("t017")[-1]) == version * 1000 + 17
        leftovers = temporaries(tmp_path, path.name)
        stale += len(leftovers)
        # Leftover temporaries of a killed writer are never the target, and are
        # not valid files with the target's name; clear them for the next trial.
        for name in leftovers:
            os.unlink(tmp_path / name)
    assert set(os.listdir(tmp_path)) == {path.name}
    print(f"versions after each kill: {seen_versions}; stale temporaries: {stale}")


FSIZE_HELPER = r'''
import errno, json, os, resource, signal, sys
sys.path.insert(0, os.environ["STC_ROOT"])
import numpy as np
import safetensors_c

target, limit, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() returns EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
tensors = {"a": np.ones(size // 8, dtype=np.float32), "b": np.arange(size // 8, dtype=np.int32)}
try:
    safetensors_c.save_file(tensors, target, metadata={"new": "yes"})
except OSError as exc:
    print(json.dumps({"type": type(exc).__name__, "errno": exc.errno, "message": str(exc),
                      "is_safetensor_error": isinstance(exc, safetensors_c.SafetensorError)}))
except BaseException as exc:
    print(json.dumps({"type": type(exc).__name__, "errno": None, "message": str(exc),
                      "is_safetensor_error": False}))
else:
    print(json.dumps({"type": None}))
'''


DATA_SIZE = 1024 * 1024  # the helper saves two tensors of DATA_SIZE / 2 bytes


def helper_file_size() -> int:
    """The exact size of the file the helper saves (the writer is deterministic)."""
    n = DATA_SIZE // 8
    tensors = {"a": np.ones(n, dtype=np.float32), "b": np.arange(n, dtype=np.int32)}
    return len(safetensors_c.save(tensors, metadata={"new": "yes"}))


@pytest.mark.parametrize(
    "limit",
    [
        "0",  # not even the header
        "100",  # inside the header
        "65536",  # inside the data
        "full-1",  # one byte short of the whole file
    ],
)
@pytest.mark.parametrize("existing", [True, False])
def test_file_size_limit_gives_clean_efbig(tmp_path, limit, existing):
    """save_file under RLIMIT_FSIZE: OSError(EFBIG), target untouched (or
    never created), no temporary file left behind."""
    target = tmp_path / "model.safetensors"
    old = {"old": np.arange(10, dtype=np.int64)}
    if existing:
        safetensors_c.save_file(old, target, metadata={"new": "no"})
        before = target.read_bytes()
        mode_before = os.stat(target).st_mode
    limit = helper_file_size() - 1 if limit == "full-1" else int(limit)
    size = DATA_SIZE
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE_HELPER, str(target), str(limit), str(size)],
        capture_output=True,
        text=True,
        env=dict(os.environ, STC_ROOT=str(ROOT)),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] is not None, "save_file succeeded above RLIMIT_FSIZE"
    assert result["errno"] == errno.EFBIG, result
    assert not result["is_safetensor_error"], result
    assert result["type"] in ("OSError", "IOError"), result
    if existing:
        assert target.read_bytes() == before
        assert os.stat(target).st_mode == mode_before
        assert safetensors_c.load_file(target)["old"][-1] == 9
        assert sorted(os.listdir(tmp_path)) == [target.name]
    else:
        assert os.listdir(tmp_path) == []


def test_file_size_limit_save_that_fits_succeeds(tmp_path):
    """Control: the same helper under a limit the file exactly fits in
    succeeds, so the failures above come from the limit."""
    target = tmp_path / "model.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE_HELPER, str(target), str(helper_file_size()), str(DATA_SIZE)],
        capture_output=True,
        text=True,
        env=dict(os.environ, STC_ROOT=str(ROOT)),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"type": None}
    assert safetensors_c.load_file(target)["b"][-1] == DATA_SIZE // 8 - 1
    assert os.path.getsize(target) == helper_file_size()


def test_disk_full_on_tiny_tmpfs(tmp_path):
    """A real full disk: a 1 MiB tmpfs, where the new file cannot fit beside the old."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:200]}")
    try:
        target = mount_point / "model.safetensors"
        safetensors_c.save_file({"old": np.arange(1000, dtype=np.int64)}, target)
        before = target.read_bytes()
        with pytest.raises(OSError) as info:
            safetensors_c.save_file({"new": np.ones(1 << 18, np.float32)}, target)  # 1 MiB
        assert info.value.errno == errno.ENOSPC
        assert target.read_bytes() == before
        assert sorted(p.name for p in mount_point.iterdir()) == ["model.safetensors"]
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
