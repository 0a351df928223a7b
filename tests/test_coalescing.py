"""One coalescing rule (`_remote.coalesce`) for every reader: the remote
planner, the remote source's overlap clusters and the strided reads of the
neutral reader all merge runs through it. Checked against a plain model of
the rule, on hostile run lists (overlaps, duplicates, runs inside runs,
zero gaps, ties between gaps, huge offsets)."""

from __future__ import annotations

import random

import numpy as np
import pytest

import safetensors_c
from safetensors_c import _reader, _remote
from safetensors_c._reader import SourceReader, TensorSlice


def model(runs, gap, max_spans=None):
    """Spans of sorted runs, one run at a time: join a run when at most
    ``gap`` bytes separate it from what came before; then bridge the
    smallest separations (earliest first) until at most max_spans remain."""
    separations, reach = [], None
    for start, end in runs:
        if reach is not None:
            separations.append(start - reach)
        reach = end if reach is None else max(reach, end)
    join = [s <= gap for s in separations]
    if max_spans is not None:
        apart = sorted((s, i) for i, s in enumerate(separations) if not join[i])
        for _, i in apart[:max(0, 1 + join.count(False) - max_spans)]:
            join[i] = True
    owner, spans = [], []
    for k, (start, end) in enumerate(runs):
        if k == 0 or not join[k - 1]:
            spans.append([start, end])
        spans[-1][1] = max(spans[-1][1], end)
        owner.append(len(spans) - 1)
    return owner, [tuple(s) for s in spans]


def hostile_runs(rng: random.Random, n: int, far: int = 1 << 50):
    runs = []
    for _ in range(n):
        kind = rng.random()
        if runs and kind < 0.2:  # a duplicate
            runs.append(rng.choice(runs))
        elif runs and kind < 0.4:  # inside another run
            s, e = rng.choice(runs)
            a = rng.randint(s, e - 1)
            runs.append((a, rng.randint(a + 1, e)))
        elif runs and kind < 0.5:  # touching another run
            s, e = rng.choice(runs)
            runs.append((e, e + rng.randint(1, 50)))
        else:
            start = rng.choice([rng.randint(0, 1000), rng.randint(0, far)])
            runs.append((start, start + rng.randint(1, 300)))
    return sorted(runs)


@pytest.mark.parametrize("seed", range(40))
def test_coalesce_follows_the_rule(seed):
    rng = random.Random(seed)
    runs = hostile_runs(rng, rng.randint(1, 60))
    gap = rng.choice([-1, 0, 1, 7, 64, 4096])
    max_spans = rng.choice([None, 1, 2, 5, 1000])
    owner, lows, highs = _remote.coalesce([r[0] for r in runs], [r[1] for r in runs], gap,
                                          max_spans)
    want_owner, want_spans = model(runs, gap, max_spans)
    assert owner.tolist() == want_owner
    assert list(zip(lows.tolist(), highs.tolist())) == want_spans


def test_coalesce_of_nothing():
    owner, lows, highs = _remote.coalesce([], [], 0, 3)
    assert owner.size == lows.size == highs.size == 0


def test_ties_bridge_the_earliest_gap_first():
    runs = [(0, 10), (20, 30), (40, 50), (60, 70)]  # three gaps of 10
    _, lows, highs = _remote.coalesce(*zip(*runs), 0, 3)
    assert list(zip(lows.tolist(), highs.tolist())) == [(0, 30), (40, 50), (60, 70)]


@pytest.mark.parametrize("seed", range(20))
def test_plan_reads_is_the_rule(seed):
    rng = random.Random(100 + seed)
    runs = hostile_runs(rng, rng.randint(1, 40), far=1 << 20)  # parts stay few
    ranges = [(s, e - s) for s, e in runs] + [(5, 0)]  # an empty range needs nothing
    rng.shuffle(ranges)
    gap, cap = rng.choice([0, 10, 100]), rng.choice([1, 3, 256])
    spans, parts = _remote.plan_reads(ranges, coalesce_gap=gap, max_requests=cap,
                                      block_size=4096)
    assert spans == model(runs, gap, cap)[1]
    assert [p for p in parts] == [(s, min(s + 4096, e)) for a, e in spans
                                  for s in range(a, e, 4096)]


class RecordingSource:
    """A byte source that serves read_ranges and records each call."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.name = data, len(data), "<recording>"
        self.calls: list = []

    def read_at(self, offset, length):
        return self.data[offset:offset + length]

    def read_ranges(self, ranges):
        self.calls.append(list(ranges))
        return [bytearray(self.data[o:o + n]) for o, n in ranges]


def test_strided_reads_merge_runs_by_the_same_rule():
    """Rows of a column slice closer than _GAP share a read; farther ones
    do not; the values are the tensor's either way."""
    rows = 64
    for width in (_reader._GAP // 4 + 16, 64):  # rows farther apart than _GAP, then close
        array = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
        source = RecordingSource(safetensors_c.save({"a": array}))
        reader = SourceReader(source)
        got = TensorSlice(reader, "a", reader.info("a"))[::3, :4]
        np.testing.assert_array_equal(got, array[::3, :4])
        starts = [o for call in source.calls[-1:] for o, _ in call]
        run_starts = [reader.data_start + r * 3 * width * 4 for r in range(len(got))]
        separation = 3 * width * 4 - 16
        expected = _remote.coalesce(run_starts, [s + 16 for s in run_starts], _reader._GAP)[1]
        assert starts == expected.tolist()
        assert (len(starts) == 1) == (separation <= _reader._GAP)
