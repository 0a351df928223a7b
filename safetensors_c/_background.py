"""Saving on a background thread: the tensors are snapshotted, then written
atomically while the caller goes on.

Every framework's ``save_file(..., background=True)`` (and torch's
``save_model``) ends in :func:`save` with the writer's tensors.

What a background save promises:

- **A snapshot at call time.** Before :func:`save` returns, every tensor's
  bytes are copied, once, into one buffer this module allocates. The caller
  may change, free or reuse its tensors at once; the file holds the values
  they had at the call. The extra memory is the bytes of the tensors (plus,
  briefly, one C-ordered copy of a strided array), and it is released when
  the file is written or the save fails.
- **Written off the caller's thread, atomically.** A thread writes the file
  through the same writer as a foreground save: a temporary file beside the
  target, flushed to disk, then renamed over it. The core releases the GIL
  while it plans and writes, so the caller's Python code keeps running.
  ``path`` holds the old file or the complete new one at every moment, also
  when the process is killed mid-save (a killed save can leave its
  temporary ``.<name>.<random>.tmp`` file in the directory, never a partial
  file at ``path``).
- **Saves to one path land in call order.** A second background save to the
  same path waits for the first to finish before writing, so the file left
  at the end is the later call's, whichever snapshot is larger.
- **Errors reach the caller.** Anything the save raises (a full disk, a
  directory that was removed, a bad tensor) is kept and raised by
  :meth:`SaveHandle.wait` and returned by :meth:`SaveHandle.exception`;
  nothing is printed by the thread.
- **At interpreter exit a running save finishes.** The thread is not a
  daemon: Python waits for it before it exits (before ``atexit`` handlers
  run). A process ended by a signal or ``os._exit`` keeps the guarantee
  above: no partial file at ``path``.
- **Forked children.** A child forked while a save runs does not inherit the
  thread: its copies of the running handles fail with ``RuntimeError``
  instead of waiting forever.
"""

from __future__ import annotations

import os
import threading
import traceback
from typing import Any, Dict, List, Mapping, Optional, Set

import numpy as np

from . import _writer
from ._checks import check_metadata
from ._digests import add_digests

__all__ = ["SaveHandle", "save"]

_QUEUED, _WRITING, _SAVED, _FAILED = "queued", "writing", "saved", "failed"


class SaveHandle:
    """The handle of a save running in the background (see ``save_file(...,
    background=True)``).

    ``wait(timeout=None)`` returns once the file is in place and raises what
    the save raised; ``done()`` tells whether the save has ended;
    ``exception(timeout=None)`` is the save's exception, or None.
    """

    __slots__ = ("path", "_state", "_exception", "_finished")

    def __init__(self, path: str) -> None:
        self.path = path
        self._state = _QUEUED
        self._exception: Optional[BaseException] = None
        self._finished = threading.Event()

    def done(self) -> bool:
        """True once the save has ended, written or failed."""
        return self._finished.is_set()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Blocks until the save has ended (at most ``timeout`` seconds, then
        ``TimeoutError``); raises the save's exception if it failed."""
        exc = self.exception(timeout)
        if exc is not None:
            raise exc

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The exception the save raised, or None once it has succeeded;
        waits like :meth:`wait` (``TimeoutError`` after ``timeout`` seconds)."""
        if not self._finished.wait(timeout):
            raise TimeoutError(
                f"the background save to {self.path!r} is still running after {timeout} s"
            )
        return self._exception

    def __repr__(self) -> str:
        state = self._state
        if state == _FAILED:
            state = f"failed: {type(self._exception).__name__}: {self._exception}"
        return f"<SaveHandle {self.path!r} {state}>"

    def _finish(self, exc: Optional[BaseException]) -> None:
        self._exception = exc
        self._state = _SAVED if exc is None else _FAILED
        self._finished.set()


# The latest save to each target (saves to one path land in call order),
# and every save not yet ended (for forked children).
_lock = threading.Lock()
_latest_by_target: Dict[str, SaveHandle] = {}
_running: Set[SaveHandle] = set()


def _forget_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    inherited = list(_running)
    _running.clear()
    _latest_by_target.clear()
    for handle in inherited:
        handle._finish(RuntimeError(
            f"the background save to {handle.path!r} was running in the parent process "
            "when this process was forked; only the parent writes it"))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _snapshot(arrays: List[np.ndarray], sizes: List[int]) -> np.ndarray:
    """One new buffer holding every array's bytes, in C order, one after the
    other. A strided array is copied straight into its place (no temporary)."""
    buffer = np.empty(sum(sizes), np.uint8)
    start = 0
    for array, size in zip(arrays, sizes):
        if size:
            place = buffer[start:start + size]
            if array.flags.c_contiguous:
                place[...] = array.reshape(-1).view(np.uint8)
            else:
                np.copyto(place.view(array.dtype).reshape(array.shape), array)
        start += size
    return buffer


def save(tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]], path: str, *,
         digests: bool = False) -> SaveHandle:
    """Snapshots ``tensors`` (name -> the writer's Tensor) and writes them to
    ``path`` on a background thread; returns the :class:`SaveHandle`.

    Extra memory: one copy of the tensors' bytes, held until the save ends.
    With ``digests=True`` the digest entry is computed from the snapshot, on
    the background thread.
    """
    metadata = check_metadata(metadata)  # checked, and copied: the caller may change its own
    names = list(tensors)
    values = list(tensors.values())
    sizes = [tensor.data.nbytes for tensor in values]
    buffer = _snapshot([tensor.data for tensor in values], sizes)
    parts = [(tensor.code, tuple(tensor.shape)) for tensor in values]
    handle = SaveHandle(path)
    # Both resolved now: a later os.chdir() of the caller must not move the file.
    destination = os.path.abspath(path)
    target = os.path.realpath(path)
    with _lock:
        previous = _latest_by_target.get(target)
        _latest_by_target[target] = handle
        _running.add(handle)
    thread = threading.Thread(
        target=_write,
        args=(handle, previous, destination, target, names, parts, sizes, buffer, metadata,
              digests),
        name=f"safetensors_c background save to {path}",
        daemon=False,  # the interpreter waits for the file at exit
    )
    try:
        thread.start()
    except BaseException as exc:
        _ended(handle, target, exc)
        raise
    return handle


def _write(handle: SaveHandle, previous: Optional[SaveHandle], destination: str, target: str,
           names: List[str], parts: List[tuple], sizes: List[int], buffer: np.ndarray,
           metadata: Optional[Dict[str, str]], digests: bool) -> None:
    exc: Optional[BaseException] = None
    try:
        if previous is not None:
            previous._finished.wait()  # its outcome is its own caller's to see
        handle._state = _WRITING
        tensors = {}
        start = 0
        for name, (code, shape), size in zip(names, parts, sizes):
            tensors[name] = _writer.Tensor(code, shape, buffer[start:start + size])
            start += size
        if digests:
            metadata = add_digests(tensors, metadata)
        _writer.write(tensors, metadata, destination)
    except BaseException as error:  # kept for wait(), never printed by the thread
        exc = error
        # The frames' locals would keep the snapshot alive as long as the
        # handle keeps the exception; the traceback's lines stay.
        traceback.clear_frames(error.__traceback__)
    finally:
        tensors = buffer = None  # the snapshot's memory goes before the handle says done
    _ended(handle, target, exc)


def wait_for_pending(path: str) -> None:
    """Returns once every background save to ``path`` has ended, so that a
    foreground save called after them lands after them too (their outcomes
    are their own callers' to see)."""
    if not _latest_by_target:  # the common case: no save is running
        return
    with _lock:
        previous = _latest_by_target.get(os.path.realpath(path))
    if previous is not None:
        previous._finished.wait()


def _ended(handle: SaveHandle, target: str, exc: Optional[BaseException]) -> None:
    with _lock:
        if _latest_by_target.get(target) is handle:
            del _latest_by_target[target]
        _running.discard(handle)
    handle._finish(exc)
