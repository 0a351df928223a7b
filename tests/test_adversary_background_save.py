"""An adversary's view of background saves (``save_file(..., background=True)``
and ``save_model(..., background=True)``): the caller mutates, frees or
resizes its tensors at once, changes directory, races a foreground save to
the same path, fills the disk, kills or forks the process, or exits while
the save runs.

The writer is gated where the order of events matters: ``_writer.write``
(which the background thread looks up at write time) is wrapped so that it
waits for an event the test sets, which makes "the save is still queued"
deterministic without sleeps.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import safetensors_c.numpy as stc_numpy
from safetensors_c import _writer

torch = pytest.importorskip("torch")
import safetensors_c.torch as stc_torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 120  # seconds: "does not hang" only


@pytest.fixture
def gate(monkeypatch):
    """Holds every write of the writer until ``gate.set()`` (and lets it go
    at teardown, so that no thread is left waiting)."""
    released = threading.Event()
    real_write = _writer.write

    def held_write(*args, **kwargs):
        assert released.wait(DEADLINE), "the test never released the writer"
        return real_write(*args, **kwargs)

    monkeypatch.setattr(_writer, "write", held_write)
    yield released
    released.set()


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=DEADLINE)


# MARK: the snapshot --------------------------------------------------------


def test_torch_tensors_mutated_resized_and_freed_after_the_call_are_saved_as_they_were(tmp_path):
    path = tmp_path / "m.safetensors"
    weight = torch.arange(1000, dtype=torch.float32)
    other = torch.arange(64, dtype=torch.int64).reshape(8, 8)
    handle = stc_torch.save_file({"weight": weight, "other": other}, path, background=True)
    weight.zero_()
    weight.resize_(3)
    other.fill_(-1)
    del other
    gc.collect()
    handle.wait(DEADLINE)
    loaded = stc_torch.load_file(path)
    assert torch.equal(loaded["weight"], torch.arange(1000, dtype=torch.float32))
    assert torch.equal(loaded["other"], torch.arange(64, dtype=torch.int64).reshape(8, 8))


def test_save_model_in_background_writes_the_foreground_bytes_with_ties(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied
    stc_torch.save_model(model, tmp_path / "fg.safetensors")
    handle = stc_torch.save_model(model, tmp_path / "bg.safetensors", background=True)
    with torch.no_grad():
        model[0].weight.fill_(7.0)  # after the call: not in the file
    handle.wait(DEADLINE)
    assert (tmp_path / "bg.safetensors").read_bytes() == (tmp_path / "fg.safetensors").read_bytes()


HOSTILE_ARRAYS = {
    "big_endian": {"x": np.arange(6, dtype=">f4")},
    "big_endian_strided": {"x": np.arange(12, dtype=">i4")[::2]},
    "fortran_order": {"x": np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 6))},
    "negative_strides": {"x": np.arange(24, dtype=np.float64).reshape(4, 6)[::-1, ::-2]},
    "broadcast_zero_stride": {"x": np.broadcast_to(np.arange(3, dtype=np.int16), (4, 3))},
    "zero_dim": {"x": np.array(3.5)},
    "empty": {"x": np.zeros((0, 5), np.float32), "y": np.ones(2, np.uint8)},
    "one_array_twice": {"x": np.arange(4.0), "y": np.arange(4.0)},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARRAYS))
def test_background_numpy_save_writes_the_same_bytes_as_a_foreground_save(tmp_path, case):
    arrays = HOSTILE_ARRAYS[case]
    stc_numpy.save_file(arrays, tmp_path / "fg.safetensors")
    stc_numpy.save_file(arrays, tmp_path / "bg.safetensors", background=True).wait(DEADLINE)
    assert (tmp_path / "bg.safetensors").read_bytes() == (tmp_path / "fg.safetensors").read_bytes()


def test_background_digests_equal_the_foreground_digests(tmp_path):
    arrays = {"a": np.arange(10, dtype=np.float32), "b": np.arange(6, dtype=">i2")[::2]}
    stc_numpy.save_file(arrays, tmp_path / "fg.safetensors", digests=True)
    handle = stc_numpy.save_file(arrays, tmp_path / "bg.safetensors", digests=True,
                                 background=True)
    arrays["a"][:] = -1
    handle.wait(DEADLINE)
    assert (tmp_path / "bg.safetensors").read_bytes() == (tmp_path / "fg.safetensors").read_bytes()


# MARK: where and in which order the file lands ------------------------------


def test_background_save_to_a_relative_path_lands_where_the_call_was_made(
        tmp_path, monkeypatch, gate):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    handle = stc_numpy.save_file({"a": np.ones(3, np.float32)}, "rel.safetensors",
                                 background=True)
    os.chdir(elsewhere)  # the caller goes on with its life
    gate.set()
    handle.wait(DEADLINE)
    assert (tmp_path / "rel.safetensors").exists()
    assert not (elsewhere / "rel.safetensors").exists()


def test_foreground_save_after_a_background_save_to_one_path_leaves_the_later_file(
        tmp_path, monkeypatch):
    path = tmp_path / "race.safetensors"
    released = threading.Event()
    real_write = _writer.write
    background_thread = []

    def held_in_background(*args, **kwargs):
        if threading.current_thread().name.startswith("safetensors_c background save"):
            background_thread.append(True)
            assert released.wait(DEADLINE)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(_writer, "write", held_in_background)
    # The background writer is held until a second after the foreground save
    # is called: however the two are scheduled, the later call's file must win.
    timer = threading.Timer(1.0, released.set)
    try:
        handle = stc_numpy.save_file({"old": np.zeros(2)}, path, background=True)
        timer.start()
        stc_numpy.save_file({"new": np.ones(2)}, path)  # called later, in the foreground
    finally:
        released.set()
        timer.cancel()
    handle.wait(DEADLINE)
    assert background_thread
    assert list(stc_numpy.load_file(path)) == ["new"]


def test_two_background_saves_to_one_path_land_in_call_order(tmp_path, gate):
    path = tmp_path / "order.safetensors"
    first = stc_numpy.save_file({"first": np.zeros(1 << 20, np.uint8)}, path, background=True)
    second = stc_numpy.save_file({"second": np.zeros(1, np.uint8)}, str(path), background=True)
    gate.set()
    second.wait(DEADLINE)
    first.wait(DEADLINE)
    assert list(stc_numpy.load_file(path)) == ["second"]


# MARK: the handle ------------------------------------------------------------


def test_wait_and_exception_with_a_timeout_raise_timeout_error_while_queued(tmp_path, gate):
    handle = stc_numpy.save_file({"a": np.ones(3)}, tmp_path / "q.safetensors", background=True)
    assert not handle.done()
    assert "queued" in repr(handle) or "writing" in repr(handle)
    with pytest.raises(TimeoutError, match="still running"):
        handle.wait(0)
    with pytest.raises(TimeoutError, match="still running"):
        handle.exception(0.01)
    gate.set()
    assert handle.exception(DEADLINE) is None
    assert handle.done()
    assert "saved" in repr(handle)


def test_a_failed_save_is_raised_by_wait_and_named_by_repr(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "x.safetensors"
    handle = stc_numpy.save_file({"a": np.ones(3)}, missing, background=True)
    error = handle.exception(DEADLINE)
    assert isinstance(error, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        handle.wait(DEADLINE)
    assert "failed: FileNotFoundError" in repr(handle)


def test_a_handle_cannot_be_pickled(tmp_path):
    handle = stc_numpy.save_file({"a": np.ones(3)}, tmp_path / "p.safetensors", background=True)
    handle.wait(DEADLINE)
    with pytest.raises(TypeError):
        pickle.dumps(handle)


# MARK: hostile environments (each in its own process) --------------------------


def test_file_size_limit_fails_the_save_in_wait_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "full.safetensors"
    stc_numpy.save_file({"old": np.zeros(3, np.float32)}, path)
    result = _run(f"""
        import resource, signal
        import numpy as np
        import safetensors_c.numpy as stc_numpy
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        handle = stc_numpy.save_file({{"a": np.ones(4 << 20, np.uint8)}}, {str(path)!r},
                                     background=True)
        error = handle.exception({DEADLINE})
        print(type(error).__name__, error.errno)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OSError", "27"]
    assert list(stc_numpy.load_file(path)) == ["old"]
    assert os.listdir(tmp_path) == ["full.safetensors"]  # no temporary file left


def test_sigkill_mid_save_leaves_the_old_or_the_whole_new_file_at_path(tmp_path):
    path = tmp_path / "k.safetensors"
    stc_numpy.save_file({"old": np.zeros(3, np.float32)}, path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import numpy as np
        import safetensors_c.numpy as stc_numpy
        handle = stc_numpy.save_file({{"new": np.ones(256 << 20, np.uint8)}}, {str(path)!r},
                                     background=True)
        print("started", flush=True)
        handle.wait()
    """)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        seen_temporary = False
        for _ in range(2_000_000):  # until the temporary file shows (bounded)
            if any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
                seen_temporary = True
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE)
    loaded = stc_numpy.load_file(path)  # never a partial file at path
    if seen_temporary and list(loaded) != ["old"]:
        assert loaded["new"].nbytes == 256 << 20
    assert list(loaded) in (["old"], ["new"])


def test_a_child_forked_while_a_save_runs_gets_runtime_error_and_the_parent_writes(tmp_path):
    path = tmp_path / "fork.safetensors"
    result = _run(f"""
        import os, threading
        import numpy as np
        from safetensors_c import _writer
        import safetensors_c.numpy as stc_numpy
        released = threading.Event()
        real_write = _writer.write
        def held(*args):
            released.wait({DEADLINE})
            return real_write(*args)
        _writer.write = held
        handle = stc_numpy.save_file({{"a": np.arange(5.0)}}, {str(path)!r}, background=True)
        pid = os.fork()
        if pid == 0:
            try:
                handle.wait(5)
                print("child: waited")
            except RuntimeError as error:
                print("child: RuntimeError", "forked" in str(error))
            os._exit(0)
        os.waitpid(pid, 0)
        released.set()
        handle.wait({DEADLINE})
        print("parent: saved")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child: RuntimeError True", "parent: saved"]
    assert stc_numpy.load_file(path)["a"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_interpreter_exit_with_a_save_queued_finishes_the_file(tmp_path):
    path = tmp_path / "exit.safetensors"
    result = _run(f"""
        import time
        import numpy as np
        from safetensors_c import _writer
        import safetensors_c.numpy as stc_numpy
        real_write = _writer.write
        def slow(*args):
            time.sleep(0.5)  # the main thread is gone by then
            return real_write(*args)
        _writer.write = slow
        stc_numpy.save_file({{"a": np.arange(7.0)}}, {str(path)!r}, background=True)
    """)
    assert result.returncode == 0, result.stderr
    assert stc_numpy.load_file(path)["a"].tolist() == list(np.arange(7.0))
