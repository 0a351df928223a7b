"""save_file(..., background=True): a snapshot at call time, written on a
thread, atomically, with every error reaching the handle.

The adversary is the caller itself (it changes, frees and resizes its tensors
the moment the call returns), the file system (a directory removed under the
save, a file size limit), the operating system (SIGKILL mid-save, interpreter
exit, fork) and a second save racing the first to the same path. Where a test
needs the save to be "still running", the writer is held on an Event (the
real writer runs once released): no test depends on timing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import _background, _writer, integrity
from safetensors_c._background import SaveHandle

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60  # seconds; only "does not hang" bounds


@pytest.fixture
def held_writer(monkeypatch):
    """The background writer waits for ``release.set()`` before it writes;
    ``started`` is set once a save has reached the writer."""
    release, started = threading.Event(), threading.Event()
    real_write = _writer.write

    def write(tensors, metadata, path):
        started.set()
        assert release.wait(DEADLINE), "the test never released the writer"
        return real_write(tensors, metadata, path)

    monkeypatch.setattr(_writer, "write", write)
    yield release, started
    release.set()


def _model(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((256, 128)).astype(np.float32),
        "b": np.arange(1000, dtype=np.int64),
        "strided": np.arange(600, dtype=np.float64).reshape(20, 30)[:, ::2],
        "scalar": np.array(7, dtype=np.int16),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "flag": np.array([True, False, True]),
    }


# MARK: the snapshot -------------------------------------------------------------


def test_numpy_tensors_changed_after_the_call_are_saved_as_they_were(tmp_path, held_writer):
    release, started = held_writer
    tensors = _model()
    expected = {k: v.copy() for k, v in tensors.items()}
    path = tmp_path / "m.safetensors"
    handle = safetensors_c.save_file(tensors, path, metadata={"step": "1"}, background=True)
    assert isinstance(handle, SaveHandle)
    assert started.wait(DEADLINE)
    # The caller reuses everything at once: in place, through views, and the dict itself.
    tensors["w"][:] = -1
    tensors["b"] += 5
    base = tensors["strided"].base
    base[...] = 0
    tensors["flag"][0] = False
    tensors.clear()
    del base
    release.set()
    handle.wait(DEADLINE)
    loaded = safetensors_c.load_file(path)
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert path.read_bytes() == safetensors_c.save(expected, metadata={"step": "1"})


def test_torch_tensors_changed_freed_and_resized_after_the_call(tmp_path, held_writer):
    torch = pytest.importorskip("torch")
    import safetensors_c.torch as st_torch

    release, started = held_writer
    tensors = {
        "a": torch.arange(10_000, dtype=torch.float32),
        "b": torch.ones(64, 64, dtype=torch.bfloat16),
        "c": torch.full((3,), 5, dtype=torch.int8),
        "param": torch.nn.Parameter(torch.zeros(8)),
    }
    expected = {k: v.detach().clone() for k, v in tensors.items()}
    path = tmp_path / "t.safetensors"
    handle = st_torch.save_file(tensors, path, background=True)
    assert started.wait(DEADLINE)
    tensors["a"].mul_(-3)
    tensors["b"].resize_(0)  # frees its storage's bytes from the tensor
    tensors["c"].set_()  # points it at an empty storage
    with torch.no_grad():
        tensors["param"].add_(1)
    del tensors
    release.set()
    handle.wait(DEADLINE)
    loaded = st_torch.load_file(path)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


def test_torch_save_model_in_the_background_then_training_goes_on(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors_c.torch as st_torch

    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = tmp_path / "model.safetensors"
    handle = st_torch.save_model(model, path, background=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):  # training changes every weight while the file is written
        optimizer.zero_grad()
        model(torch.randn(16, 32)).square().sum().backward()
        optimizer.step()
    handle.wait(DEADLINE)
    assert handle.done() and handle.exception() is None
    loaded = st_torch.load_file(path)
    assert set(loaded) == set(before)
    for name, value in before.items():
        assert torch.equal(loaded[name], value), name
    assert not torch.equal(model.state_dict()["0.weight"], before["0.weight"])


def test_background_bytes_equal_a_foreground_save_with_digests(tmp_path):
    tensors = _model(3)
    fg, bg = tmp_path / "fg.safetensors", tmp_path / "bg.safetensors"
    safetensors_c.save_file(tensors, fg, metadata={"k": "v"}, digests=True)
    handle = safetensors_c.save_file(tensors, bg, metadata={"k": "v"}, digests=True,
                                     background=True)
    handle.wait(DEADLINE)
    assert bg.read_bytes() == fg.read_bytes()
    assert integrity.verify_digests(bg) == []


def test_digests_describe_the_snapshot_not_the_changed_tensors(tmp_path, held_writer):
    release, started = held_writer
    tensors = _model(4)
    expected = {k: v.copy() for k, v in tensors.items()}
    path = tmp_path / "d.safetensors"
    handle = safetensors_c.save_file(tensors, path, digests=True, background=True)
    assert started.wait(DEADLINE)
    tensors["w"][0, 0] = 12345.0
    release.set()
    handle.wait(DEADLINE)
    assert integrity.verify_digests(path) == []
    np.testing.assert_array_equal(safetensors_c.load_file(path)["w"], expected["w"])


def test_metadata_dict_changed_after_the_call_is_saved_as_it_was(tmp_path, held_writer):
    release, started = held_writer
    metadata = {"epoch": "1"}
    path = tmp_path / "meta.safetensors"
    handle = safetensors_c.save_file({"x": np.ones(3)}, path, metadata=metadata, background=True)
    metadata["epoch"] = "2"
    metadata["extra"] = "x"
    release.set()
    handle.wait(DEADLINE)
    with safetensors_c.safe_open(path, "np") as f:
        assert f.metadata() == {"epoch": "1"}


def test_bad_arguments_fail_at_the_call_not_in_the_thread(tmp_path):
    path = tmp_path / "never.safetensors"
    with pytest.raises(TypeError, match="metadata must map str to str"):
        safetensors_c.save_file({"x": np.ones(2)}, path, metadata={"k": 1}, background=True)
    with pytest.raises(TypeError, match="expected a numpy.ndarray"):
        safetensors_c.save_file({"x": [1, 2]}, path, background=True)
    with pytest.raises(TypeError, match="filename must be a str"):
        safetensors_c.save_file({"x": np.ones(2)}, 42, background=True)
    assert os.listdir(tmp_path) == []


# MARK: the handle -----------------------------------------------------------------


def test_handle_states_wait_timeout_done_and_repr(tmp_path, held_writer):
    release, started = held_writer
    path = tmp_path / "h.safetensors"
    handle = safetensors_c.save_file({"x": np.arange(4)}, path, background=True)
    assert started.wait(DEADLINE)
    assert not handle.done()
    assert repr(handle) == f"<SaveHandle {str(path)!r} writing>"
    with pytest.raises(TimeoutError, match="still running after 0.05 s"):
        handle.wait(timeout=0.05)
    with pytest.raises(TimeoutError):
        handle.exception(timeout=0)
    assert not path.exists()  # nothing at the target before the rename
    release.set()
    assert handle.wait(DEADLINE) is None
    assert handle.done()
    assert handle.exception() is None
    assert repr(handle) == f"<SaveHandle {str(path)!r} saved>"
    assert handle.path == str(path)
    np.testing.assert_array_equal(safetensors_c.load_file(path)["x"], np.arange(4))
    assert _background._running == set()


def test_missing_directory_is_raised_by_wait_and_returned_by_exception(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "m.safetensors"
    handle = safetensors_c.save_file({"x": np.ones(2)}, path, background=True)
    with pytest.raises(FileNotFoundError) as info:
        handle.wait(DEADLINE)
    assert info.value.errno == errno.ENOENT
    assert handle.exception() is info.value
    assert handle.done()
    assert repr(handle).startswith(f"<SaveHandle {str(path)!r} failed: FileNotFoundError")
    with pytest.raises(FileNotFoundError):  # every wait raises it again
        handle.wait()


def test_directory_removed_under_a_running_save(tmp_path, held_writer):
    release, started = held_writer
    directory = tmp_path / "ckpt"
    directory.mkdir()
    path = directory / "m.safetensors"
    handle = safetensors_c.save_file(_model(), path, background=True)
    assert started.wait(DEADLINE)
    shutil.rmtree(directory)
    release.set()
    exc = handle.exception(DEADLINE)
    assert isinstance(exc, FileNotFoundError), repr(exc)
    assert not directory.exists()
    assert _background._running == set()


def test_failed_save_leaves_old_file_and_releases_its_snapshot(tmp_path, held_writer):
    """After a failure the handle keeps the exception but not the snapshot
    (the traceback's frames are cleared)."""
    release, started = held_writer
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "m.safetensors"
    handle = safetensors_c.save_file({"big": np.ones(1 << 20, np.float32)}, path,
                                     background=True)
    assert started.wait(DEADLINE)
    shutil.rmtree(directory)
    release.set()
    exc = handle.exception(DEADLINE)
    assert isinstance(exc, FileNotFoundError)
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            assert not (isinstance(value, np.ndarray) and value.nbytes >= 1 << 22), \
                f"a frame of the kept traceback holds the snapshot ({tb.tb_frame.f_code.co_name})"
        tb = tb.tb_next


# MARK: two saves to one path --------------------------------------------------------


def test_two_saves_to_one_path_land_in_call_order(tmp_path, held_writer):
    """The first save is large and held; the second is tiny. The file left
    at the end is the second call's."""
    release, started = held_writer
    path = tmp_path / "race.safetensors"
    first = safetensors_c.save_file({"v": np.full(1 << 20, 1, np.int32)}, path,
                                    background=True)
    assert started.wait(DEADLINE)
    second = safetensors_c.save_file({"v": np.full(4, 2, np.int32)}, path, background=True)
    assert repr(second).endswith("queued>")
    release.set()
    second.wait(DEADLINE)
    assert first.done()  # the second waited for the first
    first.wait(DEADLINE)
    np.testing.assert_array_equal(safetensors_c.load_file(path)["v"], np.full(4, 2, np.int32))
    assert os.listdir(tmp_path) == [path.name]


def test_the_same_file_through_another_spelling_is_the_same_path(tmp_path, held_writer):
    release, started = held_writer
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.safetensors"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "sub")
    first = safetensors_c.save_file({"v": np.zeros(1 << 18)}, path, background=True)
    assert started.wait(DEADLINE)
    second = safetensors_c.save_file({"v": np.ones(2)}, str(link / "." / "m.safetensors"),
                                     background=True)
    release.set()
    second.wait(DEADLINE)
    first.wait(DEADLINE)
    np.testing.assert_array_equal(safetensors_c.load_file(path)["v"], np.ones(2))


def test_a_failed_first_save_does_not_stop_the_second(tmp_path, monkeypatch):
    real_write = _writer.write
    calls = []

    def write(tensors, metadata, path):
        calls.append(metadata)
        if metadata == {"n": "1"}:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_write(tensors, metadata, path)

    monkeypatch.setattr(_writer, "write", write)
    path = tmp_path / "m.safetensors"
    first = safetensors_c.save_file({"v": np.ones(2)}, path, metadata={"n": "1"},
                                    background=True)
    second = safetensors_c.save_file({"v": np.zeros(2)}, path, metadata={"n": "2"},
                                     background=True)
    second.wait(DEADLINE)
    with pytest.raises(OSError, match="injected"):
        first.wait(DEADLINE)
    assert calls == [{"n": "1"}, {"n": "2"}]
    np.testing.assert_array_equal(safetensors_c.load_file(path)["v"], np.zeros(2))


# MARK: the process ends ---------------------------------------------------------------

_CHILD_PRELUDE = r'''
import os, sys, time
sys.path.insert(0, os.environ["STC_ROOT"])
import numpy as np
import safetensors_c
from safetensors_c import _writer
'''


def _run_child(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD_PRELUDE + code, *args],
                          capture_output=True, text=True, timeout=DEADLINE,
                          env=dict(os.environ, STC_ROOT=str(ROOT)), **kwargs)


EXIT_CHILD = r'''
real = _writer.write
def slow(tensors, metadata, path):
    time.sleep(0.5)  # still running when the main thread ends (not an assertion)
    return real(tensors, metadata, path)
_writer.write = slow
h = safetensors_c.save_file({"x": np.arange(1 << 22, dtype=np.int64)}, sys.argv[1],
                            background=True)
print("done at exit:", h.done(), flush=True)
if sys.argv[2] == "sys.exit":
    sys.exit(3)
if sys.argv[2] == "exception":
    raise RuntimeError("the training script crashed")
'''


@pytest.mark.parametrize("how, code", [("return", 0), ("sys.exit", 3), ("exception", 1)])
def test_a_running_save_finishes_when_the_interpreter_exits(tmp_path, how, code):
    path = tmp_path / "exit.safetensors"
    proc = _run_child(EXIT_CHILD, str(path), how)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "done at exit: False" in proc.stdout
    loaded = safetensors_c.load_file(path)
    np.testing.assert_array_equal(loaded["x"], np.arange(1 << 22, dtype=np.int64))
    assert os.listdir(tmp_path) == [path.name]


KILL_CHILD = r'''
tensors = {f"t{i}": np.full(1 << 22, i, dtype=np.float32) for i in range(24)}  # 384 MiB
h = safetensors_c.save_file(tensors, sys.argv[1], metadata={"v": "new"}, background=True)
print("returned", flush=True)
while True:
    time.sleep(1)
'''


@pytest.mark.parametrize("existing", [True, False])
def test_sigkill_mid_save_never_leaves_a_partial_file(tmp_path, existing):
    path = tmp_path / "k.safetensors"
    if existing:
        safetensors_c.save_file({"old": np.arange(5)}, path, metadata={"v": "old"})
        old = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_PRELUDE + KILL_CHILD, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, STC_ROOT=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "returned"
        deadline = time.monotonic() + DEADLINE
        # Kill as soon as the temporary file is being written.
        while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "no temporary file appeared"
            assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(tmp_path) if n != path.name]
    assert all(n.startswith(f".{path.name}.") and n.endswith(".tmp") for n in leftovers)
    if path.exists() and path.read_bytes() != (old if existing else None):
        # The rename won the race with the kill: then the file must be whole.
        with safetensors_c.safe_open(path, "np") as f:
            assert f.metadata() == {"v": "new"}
            assert f.get_tensor("t23")[-1] == 23.0
    elif existing:
        assert path.read_bytes() == old
    else:
        assert not path.exists()


FSIZE_CHILD = r'''
import json, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
h = safetensors_c.save_file({f"t{i}": np.ones(1 << 16, np.float32) for i in range(64)},
                            sys.argv[1], background=True)
exc = h.exception(60)
try:
    h.wait()
except OSError as again:
    same = again is exc
print(json.dumps({"type": type(exc).__name__, "errno": getattr(exc, "errno", None),
                  "same": same, "repr": repr(h)}))
'''


@pytest.mark.parametrize("limit", [0, 100, 5 << 20])
def test_full_disk_is_an_oserror_from_wait_and_the_old_file_stays(tmp_path, limit):
    path = tmp_path / "f.safetensors"
    safetensors_c.save_file({"old": np.arange(3)}, path)
    before = path.read_bytes()
    proc = _run_child(FSIZE_CHILD, str(path), str(limit))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr  # the thread printed nothing
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] == "OSError" and result["errno"] == errno.EFBIG, result
    assert result["same"], result
    assert "failed: OSError" in result["repr"], result
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


FORK_CHILD = r'''
import threading
release = threading.Event()
real = _writer.write
def held(tensors, metadata, path):
    release.wait(60)
    return real(tensors, metadata, path)
_writer.write = held
h = safetensors_c.save_file({"x": np.arange(10)}, sys.argv[1], background=True)
pid = os.fork()
if pid == 0:
    try:
        h.wait(30)
        os._exit(10)  # must not succeed: the child has no writer thread
    except RuntimeError as exc:
        ok = "forked" in str(exc)
    _writer.write = real
    h2 = safetensors_c.save_file({"y": np.arange(3)}, sys.argv[1] + ".child", background=True)
    h2.wait(30)  # not queued behind the parent's save
    os._exit(0 if ok else 11)
_, status = os.waitpid(pid, 0)
release.set()
h.wait(30)
print("child", os.waitstatus_to_exitcode(status), flush=True)
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_wait_forever_for_the_parents_save(tmp_path):
    path = tmp_path / "p.safetensors"
    proc = _run_child(FORK_CHILD, str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "child 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    np.testing.assert_array_equal(safetensors_c.load_file(path)["x"], np.arange(10))
    np.testing.assert_array_equal(safetensors_c.load_file(str(path) + ".child")["y"],
                                  np.arange(3))
