"""Concurrent use of one handle from several threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, safe_open

N_THREADS = 8


@pytest.fixture(scope="module")
def thread_file(tmp_path_factory):
    rng = np.random.default_rng(77)
    tensors = {f"t{i:02d}": rng.standard_normal((64, 33)).astype(np.float32) for i in range(16)}
    tensors["ints"] = np.arange(10_000, dtype=np.int64).reshape(100, 100)
    path = tmp_path_factory.mktemp("threads") / "t.safetensors"
    safetensors_c.save_file(tensors, path, metadata={"m": "1"})
    return path, tensors


def run_threads(target, n=N_THREADS):
    errors = []
    barrier = threading.Barrier(n)

    def wrapper(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_concurrent_reads_on_one_handle(thread_file, backend):
    path, tensors = thread_file
    names = sorted(tensors)
    with safe_open(path, "np", backend=backend) as f:

        def work(i):
            rng = np.random.default_rng(i)
            for _ in range(150):
                name = names[rng.integers(len(names))]
                expected = tensors[name]
                op = rng.integers(4)
                if op == 0:
                    got = f.get_tensor(name)
                    assert np.array_equal(got, expected)
                elif op == 1:
                    lo = int(rng.integers(0, expected.shape[0]))
                    step = int(rng.integers(1, 4))
                    got = f.get_slice(name)[lo::step, ::-step]
                    assert np.array_equal(got, expected[lo::step, ::-step])
                elif op == 2:
                    assert f.keys() == names
                    assert sorted(f.offset_keys()) == names
                    assert f.metadata() == {"m": "1"}
                else:
                    got = f.get_slice(name)[int(rng.integers(-5, 5))]
                    assert got.shape == expected.shape[1:]

        errors = run_threads(work)
    assert errors == []


def test_concurrent_get_tensors(thread_file, backend):
    path, tensors = thread_file
    with safe_open(path, "np", backend=backend) as f:
        results = [None] * N_THREADS

        def work(i):
            results[i] = f.get_tensors()

        assert run_threads(work) == []
    for result in results:
        assert list(result) == list(safetensors_c.load_file(path))
        for name, expected in tensors.items():
            assert np.array_equal(result[name], expected)


def test_concurrent_opens(thread_file, backend):
    path, tensors = thread_file

    def work(i):
        for _ in range(20):
            loaded = safetensors_c.load_file(path, backend=backend)
            assert np.array_equal(loaded["ints"], tensors["ints"])

    assert run_threads(work) == []


def test_close_while_reading(thread_file, backend):
    path, tensors = thread_file
    names = sorted(tensors)
    for _ in range(5):
        f = safe_open(path, "np", backend=backend)
        outcomes = {"ok": 0, "closed": 0}
        lock = threading.Lock()

        def work(i):
            if i == 0:
                f.close()
                return
            for k in range(200):
                name = names[(i + k) % len(names)]
                try:
                    if k % 2:
                        got = f.get_tensor(name)
                        expected = tensors[name]
                    else:
                        got = f.get_slice(name)[1:3]
                        expected = tensors[name][1:3]
                except SafetensorError as exc:
                    assert "closed" in str(exc)
                    with lock:
                        outcomes["closed"] += 1
                    return
                assert np.array_equal(got, expected)
                with lock:
                    outcomes["ok"] += 1

        errors = run_threads(work)
        assert errors == []
        # Every reader ended by seeing the closed handle (or finished first).
        assert outcomes["closed"] + outcomes["ok"] > 0
        with pytest.raises(SafetensorError, match="closed"):
            f.keys()


def test_arrays_stay_valid_while_other_threads_close_handles(thread_file):
    path, tensors = thread_file
    arrays = []
    lock = threading.Lock()

    def work(i):
        with safe_open(path, "np") as f:
            a = f.get_tensor("ints")
        with lock:
            arrays.append(a)

    assert run_threads(work) == []
    for a in arrays:
        assert np.array_equal(a, tensors["ints"])
