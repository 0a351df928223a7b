"""The issue's performance targets, checked against one run's rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from checkpoints import format_bytes
from stats import find, format_ratio

MiB = 1 << 20


@dataclass
class Verdict:
    target: str
    measured: str
    required: str
    met: Optional[bool]  # None: not measured in this run
    why: str = ""

    @property
    def status(self) -> str:
        return {True: "met", False: "**missed**", None: "n/a"}[self.met]


def _speedup(rows, kind, theirs, ours, metric, title, at_least) -> Verdict:
    a, b = find(rows, kind, theirs), find(rows, kind, ours)
    required = f">= {at_least:g}x faster"
    if a is None or b is None:
        missing = theirs if a is None else ours
        return Verdict(title, "—", required, None, f"{missing} not measured on {kind}")
    value = a.median(metric) / b.median(metric)
    return Verdict(title, f"{format_ratio(value)} faster", required, value >= at_least)


def _at_most(value, title, limit, measured, required) -> Verdict:
    if value is None:
        return Verdict(title, "—", required, None, "not measured")
    return Verdict(title, measured, required, value <= limit)


def evaluate(rows: list, sizes: dict) -> list:
    out = []
    llm = "llm"
    out.append(_speedup(rows, llm, "ref.load_file", "stc.load_file", "open",
                        "load_file llm vs safetensors.numpy.load_file", 100))
    out.append(_speedup(rows, llm, "torch.load_mmap", "stc.load_file", "open",
                        "load_file llm vs torch.load(mmap=True, weights_only=True)", 50))
    out.append(_speedup(rows, llm, "pickle.load", "stc.load_file", "open",
                        "load_file llm vs pickle.load", 1000))

    ours, memory = find(rows, llm, "stc.load_file"), find(rows, llm, "limit.memory")
    value = ours.median("total") / memory.median("total") if ours and memory else None
    out.append(_at_most(value, "load_file llm + read every byte vs reading in-memory arrays",
                        1.2, f"{value:.2f}x the time" if value else "—", "<= 1.2x"))

    out.append(_speedup(rows, "small", "ref.load_file", "stc.load_file", "open",
                        "load_file small vs safetensors.numpy.load_file", 5))
    out.append(_speedup(rows, "wide", "ref.keys", "stc.keys", "open",
                        "safe_open+keys wide vs safetensors safe_open+keys", 2))

    slice_kind = "big" if find(rows, "big", "stc.slice") else llm
    title = f"get_slice 1/8 rows of the largest tensor ({slice_kind}) vs safetensors get_slice"
    verdict = _speedup(rows, slice_kind, "ref.slice", "stc.slice", "open", title, 100)
    ours = find(rows, slice_kind, "stc.slice")
    if ours is not None:
        extra, nbytes = ours.peak("rss_open"), ours.median("read_bytes")
        zero_copy = extra is not None and nbytes and extra < 0.1 * nbytes
        verdict.measured += (f"; {'zero-copy' if zero_copy else 'COPIES'} "
                             f"(+{format_bytes(extra)} RSS for a {format_bytes(nbytes)} slice)")
        verdict.required += " and zero-copy"
        if verdict.met is not None:
            verdict.met = verdict.met and bool(zero_copy)
    out.append(verdict)

    ours, ref = find(rows, llm, "stc.save_file"), find(rows, llm, "ref.save_file")
    value = ours.median("open") / ref.median("open") if ours and ref else None
    out.append(_at_most(value, "save_file llm vs safetensors.numpy.save_file (which skips fsync)",
                        1.0, f"{value:.2f}x the time" if value else "—", "<= 1.0x"))
    plain = find(rows, llm, "limit.write_fsync")
    value = ours.median("open") / plain.median("open") if ours and plain else None
    out.append(_at_most(value, "save_file llm vs plain sequential write + fsync", 1.1,
                        f"{value:.2f}x the time" if value else "—", "<= 1.1x"))
    value = ours.peak("rss_open") if ours else None
    out.append(_at_most(value, "save_file llm extra RSS (peak)", 32 * MiB,
                        format_bytes(value) if value is not None else "—", "<= 32 MiB"))

    to_bytes = find(rows, llm, "stc.save")
    data = to_bytes.file_bytes if to_bytes else None
    value = to_bytes.peak("rss_open") / data if to_bytes and data else None
    out.append(_at_most(value, "save (to bytes) llm peak extra RSS", 1.0 + 16 * MiB / (data or 1),
                        f"{value:.2f} copies of the file" if value else "—",
                        "<= 1 copy (+16 MiB)"))

    ours, plain = find(rows, llm, "stc.load_file", cold=True), find(rows, llm, "limit.seqread",
                                                                    cold=True)
    if ours and plain:
        value = (ours.median("read_bytes") / ours.median("total")) / (
            plain.median("read_bytes") / plain.median("total"))
        out.append(Verdict("cold cache: load_file llm + read every byte vs plain read() throughput",
                           f"{value:.2f}x the throughput", ">= 0.9x", value >= 0.9))
    else:
        out.append(Verdict("cold cache: load_file llm + read every byte vs plain read() throughput",
                           "—", ">= 0.9x", None, "no cold rows in this run"))

    full = sizes.get("llm", 0) >= (1 << 30) - (64 << 20)
    if not full:
        for verdict in out:
            verdict.why = (verdict.why + "; " if verdict.why else "") + (
                "targets are set for the 1 GiB llm: indicative only at this size")
    return out
