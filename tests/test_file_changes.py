"""Files that change on disk while they are open.

A mapping reflects the file: when another process truncates it, touching a
mapped page past the new end kills the process with SIGBUS, and a process
that writes the file in place changes what untouched mapped pages show.
safetensors_c therefore re-checks the file's size and modification time
(st_mtim, in nanoseconds) on every read through a mapped handle
(``get_tensor``, ``get_tensors``, ``get_slice(...)[...]``) and raises
``SafetensorError`` with ``code == "STC_ERR_FILE_CHANGED"`` instead
(README.md, "Files that change on disk"). What it cannot protect is an array
obtained *before* the truncation: it is a view of the mapping, and touching
its lost pages raises SIGBUS. That is the documented limit, and the reason
for ``backend="pread"``, whose arrays own their memory.

What the tests establish:

- mmap backend: once the file is shorter than when it was opened (by any
  amount, even if the tensor asked for lies before the new end), every read
  through the handle raises FILE_CHANGED; the header (``keys``, ``metadata``)
  stays available. The risky part runs in a subprocess, which must exit
  normally (a SIGBUS would kill it).
- pread backend: a read that reaches past the new end raises FILE_CHANGED
  ("the file is shorter than when it was opened"); tensors wholly before the
  new end still read correctly. Concurrent truncation from another thread
  never crashes it.
- mmap backend: a file rewritten in place (same size, other bytes), grown,
  or merely given a new mtime after it was opened makes every read through
  the handle raise FILE_CHANGED ("modified on disk after it was opened").
  A writer that restores the mtime afterwards is not seen (the documented
  limit of a check that costs one fstat).
- A file replaced atomically (renamed over, as ``save_file`` does) leaves the
  open handle and earlier arrays on the old contents, with no error.
- The documented limit is true: an mmap array obtained before the truncation,
  touched after it, kills its process with SIGBUS (checked in a subprocess);
  the same sequence with ``backend="pread"``, or with a copy, is harmless.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open

ROOT = Path(__file__).resolve().parent.parent

HELPER = r'''
import json, os, subprocess, sys, threading
sys.path.insert(0, os.environ["STC_ROOT"])
import numpy as np
import safetensors_c
from safetensors_c import SafetensorError, safe_open

mode, path = sys.argv[1], sys.argv[2]
arg = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
TENSORS = {
    "big": np.arange(256 * 1024, dtype=np.float32).reshape(512, 512),
    "ids": np.arange(1000, dtype=np.int64),
    "small": np.arange(6, dtype=np.int16).reshape(2, 3),
    "empty": np.zeros((0, 4), dtype=np.uint8),
}
META = {"k": "v"}


def write():
    safetensors_c.save_file(TENSORS, path, metadata=META)


def expect_changed(fn, *args):
    try:
        fn(*args)
    except SafetensorError as exc:
        if exc.code != "STC_ERR_FILE_CHANGED":
            raise AssertionError(f"code {exc.code}: {exc}")
        return str(exc)
    raise AssertionError(f"{fn} returned after truncation")


def truncate(size, other_process):
    if other_process:
        subprocess.run([sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))",
                        path, str(size)], check=True)
    else:
        os.truncate(path, size)


if mode == "mmap_truncated":
    # arg: list of [size or "header", other_process]
    out = []
    for size, other in arg:
        write()
        with safe_open(path, "np") as f:
            data_start = f._file.data_start
            full = os.path.getsize(path)
            n = {"header": data_start, "minus1": full - 1, "half": (data_start + full) // 2}.get(size, size)
            truncate(n, other)
            assert f.keys() == sorted(TENSORS) and f.metadata() == META
            assert "big" in f and len(f) == len(TENSORS)
            for name in TENSORS:
                expect_changed(f.get_tensor, name)
                s = f.get_slice(name)
                assert s.get_shape() == list(TENSORS[name].shape)
                expect_changed(s.__getitem__, slice(None))
                expect_changed(s.__getitem__, Ellipsis)
                expect_changed(s.__getitem__, ([0],) if TENSORS[name].size else (slice(0, 0),))
            msg = expect_changed(f.get_tensors)
            out.append(msg)
        # A fresh open of the truncated file is an ordinary validation error.
        try:
            safe_open(path, "np")
        except SafetensorError as exc:
            out.append(exc.code)
        else:
            raise AssertionError("the truncated file opened")
    print(json.dumps(out))

elif mode == "pread_truncated":
    write()
    with safe_open(path, "np", backend="pread") as f:
        order = f.offset_keys()
        # Keep the first tensor (in file order) and arg bytes of the second.
        cut = f._file.data_start + TENSORS[order[0]].nbytes + arg
        os.truncate(path, cut)
        out = {}
        for name in TENSORS:
            try:
                a = f.get_tensor(name)
            except SafetensorError as exc:
                out[name] = exc.code
                s = f.get_slice(name)
                expect_changed(s.__getitem__, slice(None))
            else:
                assert np.array_equal(a, TENSORS[name]), name
                out[name] = "ok"
        try:
            f.get_tensors()
            out["*"] = "ok"
        except SafetensorError as exc:
            out["*"] = exc.code
        out["order"] = order
    print(json.dumps(out))

elif mode == "pread_concurrent":
    write()
    with open(path, "rb") as fh:
        original = fh.read()
    stop = threading.Event()

    def shrink_and_restore():
        k = 0
        while not stop.is_set():
            k += 1
            os.truncate(path, (k * 7919) % len(original))
            with open(path, "r+b") as fh:
                fh.seek(0, 2)
                fh.write(original[fh.tell():])

    outcomes = {"ok": 0, "changed": 0}
    with safe_open(path, "np", backend="pread") as f:
        t = threading.Thread(target=shrink_and_restore)
        t.start()
        try:
            for i in range(3000):
                name = ("big", "ids", "small")[i % 3]
                try:
                    if i % 2:
                        a = f.get_tensor(name)
                        assert a.shape == TENSORS[name].shape and a.dtype == TENSORS[name].dtype
                    else:
                        a = f.get_slice(name)[1:2]
                        assert a.shape == TENSORS[name][1:2].shape
                    a.sum()
                    outcomes["ok"] += 1
                except SafetensorError as exc:
                    assert exc.code == "STC_ERR_FILE_CHANGED", exc.code
                    outcomes["changed"] += 1
        finally:
            stop.set()
            t.join()
    print(json.dumps(outcomes))

elif mode == "touch_after_truncate":
    # arg: [backend, copy]
    backend, copy = arg
    write()
    with safe_open(path, "np", backend=backend) as f:
        a = f.get_tensor("big")
        if copy:
            a = a.copy()
        data_start = f._file.data_start
    os.truncate(path, data_start)
    print("truncated", flush=True)
    total = float(a.sum())  # mmap: these pages are gone from the file -> SIGBUS
    assert total == float(TENSORS["big"].sum())
    print("survived", flush=True)
'''


def run_helper(mode: str, path, arg=None, check: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", HELPER, mode, str(path)]
    if arg is not None:
        argv.append(json.dumps(arg))
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=dict(os.environ, STC_ROOT=str(ROOT)),
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, (
            f"helper {mode} exited with {proc.returncode}"
            + (f" ({signal.Signals(-proc.returncode).name})" if proc.returncode < 0 else "")
            + f":\n{proc.stderr[-3000:]}"
        )
    return proc


def test_mmap_reads_after_truncation_raise_file_changed(tmp_path):
    """Every read through a mapped handle of a file that shrank raises
    FILE_CHANGED, whether the file lost everything, its data, one byte or
    half its data, and whether this or another process truncated it."""
    cases = [
        [0, False],
        [8, False],
        ["header", False],
        ["half", True],
        ["minus1", True],
    ]
    proc = run_helper("mmap_truncated", tmp_path / "m.safetensors", cases)
    out = json.loads(proc.stdout)
    messages, reopen_codes = out[0::2], out[1::2]
    assert all("truncated on disk after it was opened" in m for m in messages), messages
    # Reopening validates from scratch: the shrunken file is just invalid.
    assert reopen_codes == [
        "STC_ERR_HEADER_TOO_SMALL",
        "STC_ERR_HEADER_LENGTH",
        "STC_ERR_TRUNCATED_DATA",
        "STC_ERR_TRUNCATED_DATA",
        "STC_ERR_TRUNCATED_DATA",
    ]


def test_pread_truncation_gives_clean_errors(tmp_path):
    """With backend="pread", reading past the new end raises FILE_CHANGED;
    a tensor wholly before the new end still reads correctly."""
    proc = run_helper("pread_truncated", tmp_path / "p.safetensors", 3)
    out = json.loads(proc.stdout)
    assert out["order"] == ["ids", "big", "small", "empty"]
    assert out["ids"] == "ok"  # before the cut
    assert out["big"] == out["small"] == "STC_ERR_FILE_CHANGED"
    assert out["empty"] == "ok"  # nothing to read
    assert out["*"] == "STC_ERR_FILE_CHANGED"


def run_tensors():
    return {
        "big": np.arange(256 * 1024, dtype=np.float32).reshape(512, 512),
        "ids": np.arange(1000, dtype=np.int64),
        "small": np.arange(6, dtype=np.int16).reshape(2, 3),
        "empty": np.zeros((0, 4), dtype=np.uint8),
    }


def test_pread_survives_concurrent_truncation(tmp_path):
    """Another thread shrinks and restores the file as fast as it can while
    reads go on: every read gives a whole array or FILE_CHANGED, and the
    process does not crash."""
    proc = run_helper("pread_concurrent", tmp_path / "c.safetensors")
    out = json.loads(proc.stdout)
    assert out["ok"] + out["changed"] == 3000


@pytest.mark.parametrize("backend", ["mmap", "pread"])
@pytest.mark.parametrize("how", ["save_file", "os.replace_smaller"])
def test_atomic_replacement_keeps_old_contents(tmp_path, backend, how):
    """A file renamed over the open one (an atomic save) does not disturb the
    handle: it keeps reading the old file, and earlier arrays keep their
    values. A new open sees the new file."""
    path = tmp_path / "r.safetensors"
    old = run_tensors()
    safetensors_c.save_file(old, path, metadata={"v": "old"})
    f = safe_open(path, "np", backend=backend)
    early = f.get_tensor("big")
    if how == "save_file":
        new = {"big": -np.ones((512, 512), dtype=np.float32), "other": np.zeros(3, np.int8)}
        safetensors_c.save_file(new, path, metadata={"v": "new"})
    else:
        new = {"tiny": np.ones(1, dtype=np.uint8)}
        other = tmp_path / "other.safetensors"
        safetensors_c.save_file(new, other, metadata={"v": "new"})
        os.replace(other, path)
    assert os.path.getsize(path) < f._file.file_size or how == "save_file"
    try:
        assert f.keys() == sorted(old)
        assert f.metadata() == {"v": "old"}
        for name, expected in old.items():
            assert np.array_equal(f.get_tensor(name), expected)
            assert np.array_equal(f.get_slice(name)[:1], expected[:1])
        assert np.array_equal(early, old["big"])
        assert set(f.get_tensors()) == set(old)
    finally:
        f.close()
    with safe_open(path, "np") as g:
        assert g.keys() == sorted(new)
        assert g.metadata() == {"v": "new"}
    assert np.array_equal(early, old["big"])


def test_touching_an_old_mmap_array_after_truncation_is_sigbus(tmp_path):
    """The documented limit, proved: an array from a mapped file, touched
    after the file was truncated under it, kills the process with SIGBUS."""
    proc = run_helper(
        "touch_after_truncate", tmp_path / "s.safetensors", ["mmap", False], check=False
    )
    assert "truncated" in proc.stdout
    assert "survived" not in proc.stdout
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize("backend, copy", [("pread", False), ("mmap", True)])
def test_pread_or_copied_arrays_survive_truncation(tmp_path, backend, copy):
    """The remedies the documentation gives: backend="pread", or a copy."""
    proc = run_helper("touch_after_truncate", tmp_path / "s.safetensors", [backend, copy])
    assert "survived" in proc.stdout


def test_handle_of_shrunken_file_still_reports_header_in_process(tmp_path):
    """In-process and safe (nothing mapped is touched): after truncation the
    handle still answers header questions and raises on data."""
    path = tmp_path / "h.safetensors"
    safetensors_c.save_file(run_tensors(), path, metadata={"a": "b"})
    with safe_open(path, "np") as f:
        os.truncate(path, 8)
        assert f.metadata() == {"a": "b"}
        assert f.get_slice("big").get_dtype() == "F32"
        with pytest.raises(SafetensorError) as info:
            f.get_tensor("small")
        assert info.value.code == "STC_ERR_FILE_CHANGED"


# MARK: rewritten in place ----------------------------------------------------

OLD_MTIME_NS = 10**18  # 2001: any later write moves the mtime past it


def saved_with_old_mtime(path):
    safetensors_c.save_file(run_tensors(), path, metadata={"v": "old"})
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def rewrite_in_place(path):
    """The same layout with other values, written through the same inode."""
    new = {name: (-value if value.dtype.kind != "u" else value + 1)
           for name, value in run_tensors().items()}
    data = safetensors_c.save(new, metadata={"v": "old"})
    assert len(data) == os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.write(data)
    return new


def assert_every_read_changed(f):
    reads = []
    for name in run_tensors():
        reads += [lambda n=name: f.get_tensor(n), lambda n=name: f.get_slice(n)[:1]]
    reads.append(f.get_tensors)
    for read in reads:
        with pytest.raises(SafetensorError, match="modified on disk after it was opened; "
                                                  "reopen it") as info:
            read()
        assert info.value.code == "STC_ERR_FILE_CHANGED"


@pytest.mark.parametrize("accessed_before", [False, True])
def test_file_rewritten_in_place_raises_file_changed(tmp_path, accessed_before):
    """Same size, new values, mtime moved: with the mmap backend every read
    after the rewrite raises rather than hand out the new bytes (or a mix of
    old and new pages); the header stays readable; a new open reads the new
    file."""
    path = tmp_path / "w.safetensors"
    saved_with_old_mtime(path)
    with safe_open(path, "np") as f:
        if accessed_before:
            early = f.get_tensor("big")
            assert np.array_equal(early, run_tensors()["big"])
        new = rewrite_in_place(path)
        assert os.path.getsize(path) == f._file.file_size
        assert_every_read_changed(f)
        assert f.keys() == sorted(run_tensors()) and f.metadata() == {"v": "old"}
    with safe_open(path, "np") as g:
        assert np.array_equal(g.get_tensor("big"), new["big"])


def test_file_rewritten_in_place_from_another_process(tmp_path):
    path = tmp_path / "o.safetensors"
    saved_with_old_mtime(path)
    with safe_open(path, "np") as f:
        f.get_tensor("ids")
        subprocess.run(
            [sys.executable, "-c",
             "import sys; fh = open(sys.argv[1], 'r+b'); fh.seek(-8, 2); fh.write(b'x' * 8)",
             str(path)],
            check=True, timeout=60,
        )
        assert_every_read_changed(f)


@pytest.mark.parametrize("change", ["appended", "mtime only"])
def test_grown_or_touched_file_raises_file_changed(tmp_path, change):
    """Cheap means conservative: a file that grew, or whose mtime moved with
    no byte changed, is reported too."""
    path = tmp_path / "g.safetensors"
    saved_with_old_mtime(path)
    with safe_open(path, "np") as f:
        assert np.array_equal(f.get_tensor("small"), run_tensors()["small"])
        if change == "appended":
            with open(path, "ab") as fh:
                fh.write(b"\0" * 16)
        else:
            os.utime(path, ns=(OLD_MTIME_NS + 1, OLD_MTIME_NS + 1))
        assert_every_read_changed(f)


def test_metadata_change_without_a_write_is_harmless(tmp_path):
    """chmod moves ctime, not mtime: nothing was written, nothing is
    reported (ctime would also move on every rename over the path)."""
    path = tmp_path / "c.safetensors"
    saved_with_old_mtime(path)
    with safe_open(path, "np") as f:
        os.chmod(path, 0o600)
        assert np.array_equal(f.get_tensor("big"), run_tensors()["big"])
        assert set(f.get_tensors()) == set(run_tensors())


def test_pread_backend_does_not_check_the_mtime(tmp_path):
    """The check guards mappings; the pread backend reads what the file
    holds at each read (a shorter file still raises, as above)."""
    path = tmp_path / "p.safetensors"
    saved_with_old_mtime(path)
    with safe_open(path, "np", backend="pread") as f:
        new = rewrite_in_place(path)
        assert np.array_equal(f.get_tensor("big"), new["big"])


def test_writer_restoring_the_mtime_is_not_detected(tmp_path):
    """The documented limit: a writer that puts the old mtime back after
    writing the same number of bytes is not seen, and untouched mapped pages
    show its bytes. Files others may write belong with backend="pread" or
    verify_digests."""
    path = tmp_path / "l.safetensors"
    saved_with_old_mtime(path)
    with safe_open(path, "np") as f:
        new = rewrite_in_place(path)
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
        assert np.array_equal(f.get_tensor("big"), new["big"])
