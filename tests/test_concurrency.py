"""Races: a handle closed while many threads use it; saves racing with loads.

tests/test_threads.py covers concurrent reads, opens and a close that
happens immediately. This file adds: 16 threads running every kind of call
(get_tensor, get_tensors, get_slice with basic and advanced indices, keys,
offset_keys, metadata, ``in``, ``len``; packed and ml_dtypes tensors) on one
handle, of both backends, while another thread closes it at a random point,
a few hundred times over. The checks:

- no crash and no hang;
- no torn result: every array returned, before or during the close, equals
  the expected values exactly;
- after the close, calls on the handle raise only ``SafetensorError`` whose
  message mentions "closed", and once a thread has seen that, it never sees
  a successful call again;
- slice objects taken before the close keep working (they hold the file);
- several threads closing at once is harmless.

And: threads saving different versions of one file over each other (atomic
renames) while other threads load it: every load sees one whole version.
"""

from __future__ import annotations

import random
import threading

import ml_dtypes
import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open

N_THREADS = 16
ROUNDS = 150  # per backend


@pytest.fixture(scope="module")
def race_file(tmp_path_factory):
    rng = np.random.default_rng(2024)
    tensors = {f"w{i}": rng.standard_normal((8, 16)).astype(np.float32) for i in range(6)}
    tensors["ids"] = np.arange(200, dtype=np.int64).reshape(10, 20)
    tensors["bf"] = rng.standard_normal(32).astype(ml_dtypes.bfloat16)
    tensors["mask"] = rng.integers(0, 2, 50).astype(bool)
    tensors["f4"] = safetensors_c.packed(
        rng.integers(0, 256, 8).astype(np.uint8), "F4", [16]
    )
    tensors["empty"] = np.zeros((0, 5), dtype=np.float64)
    path = tmp_path_factory.mktemp("race") / "race.safetensors"
    safetensors_c.save_file(tensors, path, metadata={"m": "race"})
    return path, tensors


def same(actual, expected) -> bool:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    return (
        actual.dtype == expected.dtype
        and actual.shape == expected.shape
        and actual.tobytes() == expected.tobytes()
    )


def one_round(path, tensors, backend: str, seed: int) -> dict:
    names = sorted(tensors)
    rng = random.Random(seed)
    close_after = rng.randint(0, 120)  # close once this many calls have completed
    extra_closers = rng.randint(0, 2)
    f = safe_open(path, "np", backend=backend)
    early_slice = f.get_slice("ids")
    barrier = threading.Barrier(N_THREADS + 1 + extra_closers)
    lock = threading.Lock()
    calls = [0]
    finished = [0]  # readers that returned, for whatever reason
    closed_event = threading.Event()
    stats = {"ok": 0, "closed": 0, "errors": []}

    def count():
        with lock:
            calls[0] += 1
            n = calls[0]
        return n

    def closer():
        barrier.wait()
        while calls[0] < close_after and finished[0] < N_THREADS and not closed_event.is_set():
            # Wait for the readers to get going, without timing.
            threading.Event().wait(0.0001)
        f.close()
        closed_event.set()

    def reader(i):
        try:
            read(i)
        finally:
            with lock:
                finished[0] += 1

    def read(i):
        local = random.Random(seed * 100 + i)
        seen_closed = False
        barrier.wait()
        for _ in range(60):
            name = local.choice(names)
            expected = tensors[name]
            op = local.randrange(9)
            try:
                if op == 0:
                    ok = same(f.get_tensor(name), expected)
                elif op == 1:
                    got = f.get_tensors()
                    ok = list(got) == f_order and all(same(got[n], tensors[n]) for n in got)
                elif op == 2:
                    ok = same(f.get_slice(name)[1:], expected[1:])
                elif op == 3:
                    ok = same(f.get_slice(name)[..., ::-1], expected[..., ::-1]) if expected.ndim else True
                elif op == 4:
                    idx = [0, -1] if expected.shape and expected.shape[0] else []
                    ok = same(f.get_slice(name)[idx], expected[idx]) if expected.ndim else True
                elif op == 5:
                    ok = f.keys() == names
                elif op == 6:
                    ok = f.metadata() == {"m": "race"} and sorted(f.offset_keys()) == names
                elif op == 7:
                    ok = (name in f) and len(f) == len(names)
                else:
                    s = f.get_slice(name)
                    ok = s.get_shape() == list(getattr(expected, "logical_shape", expected.shape))
            except SafetensorError as exc:
                if "closed" not in str(exc):
                    with lock:
                        stats["errors"].append(f"unexpected SafetensorError: {exc}")
                    return
                seen_closed = True
                with lock:
                    stats["closed"] += 1
                count()
                continue
            except BaseException as exc:  # any other type is a failure
                with lock:
                    stats["errors"].append(f"{type(exc).__name__}: {exc}")
                return
            if seen_closed:
                with lock:
                    stats["errors"].append(f"op {op} succeeded after this thread saw 'closed'")
                return
            if not ok:
                with lock:
                    stats["errors"].append(f"torn or wrong result: op {op} on {name!r}")
                return
            with lock:
                stats["ok"] += 1
            count()
        # A slice taken before the close keeps reading its file.
        if not same(early_slice[2:4, ::3], tensors["ids"][2:4, ::3]):
            with lock:
                stats["errors"].append("early slice read wrong values")

    f_order = safetensors_c.safe_open(path, "np").offset_keys()
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(N_THREADS)]
    threads += [threading.Thread(target=closer) for _ in range(1 + extra_closers)]
    for t in threads:
        t.daemon = True  # a hung thread fails the test below, not the interpreter's exit
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    # Closed for good, from every thread's point of view.
    with pytest.raises(SafetensorError, match="closed"):
        f.get_tensor(names[0])
    with pytest.raises(SafetensorError, match="closed"):
        f.keys()
    return stats


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_close_races_with_every_call(race_file, backend):
    path, tensors = race_file
    totals = {"ok": 0, "closed": 0}
    for seed in range(ROUNDS):
        stats = one_round(path, tensors, backend, seed)
        assert stats["errors"] == [], (seed, stats["errors"][:5])
        totals["ok"] += stats["ok"]
        totals["closed"] += stats["closed"]
    # Both sides of the race happened (over all rounds, not in any one).
    assert totals["ok"] > 0 and totals["closed"] > 0, totals


def test_saves_racing_with_loads_see_whole_versions(tmp_path):
    """Writers replace the file with their own version while readers load it
    (both backends): each load is one complete version, never a mix."""
    path = tmp_path / "shared.safetensors"
    n_versions = 6

    def version(v):
        return {
            f"t{i}": np.full((64, 64), v * 10 + i, dtype=np.int32) for i in range(4)
        } | {"tag": np.array([v], dtype=np.uint8)}

    safetensors_c.save_file(version(0), path, metadata={"v": "0"})
    errors = []
    seen = set()
    lock = threading.Lock()
    stop = threading.Event()
    barrier = threading.Barrier(n_versions + 6)

    def writer(v):
        try:
            barrier.wait()
            for _ in range(8):
                safetensors_c.save_file(version(v), path, metadata={"v": str(v)})
        except BaseException as exc:
            errors.append(f"writer {v}: {type(exc).__name__}: {exc}")

    def reader(i):
        backend = ("mmap", "pread")[i % 2]
        barrier.wait()
        try:
            k = 0
            while not stop.is_set() or k < 20:
                k += 1
                with safe_open(path, "np", backend=backend) as f:
                    v = int(f.metadata()["v"])
                    got = f.get_tensors()
                expected = version(v)
                if set(got) != set(expected):
                    errors.append(f"reader {i}: names {sorted(got)} in version {v}")
                    return
                for name, array in expected.items():
                    if not same(got[name], array):
                        errors.append(f"reader {i}: tensor {name} is not version {v}")
                        return
                with lock:
                    seen.add(v)
        except BaseException as exc:
            errors.append(f"reader {i}: {type(exc).__name__}: {exc}")

    writers = [threading.Thread(target=writer, args=(v,)) for v in range(1, n_versions + 1)]
    readers = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in writers + readers), "a thread hung"
    assert errors == [], errors[:5]
    assert seen, "no load completed"
    print(f"versions seen by readers: {sorted(seen)}")
    # Nothing but the target is left in the directory.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
