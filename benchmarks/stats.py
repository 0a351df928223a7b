"""Measured rows and their summaries: medians, spreads, ratios."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Row:
    """One competitor on one checkpoint: its samples or why there are none."""

    kind: str
    key: str
    label: str
    action: str
    limit: bool = False
    cold: bool = False
    samples: list = field(default_factory=list)
    note: Optional[str] = None  # why skipped or failed
    file_bytes: Optional[int] = None

    def values(self, metric: str) -> list:
        return [s[metric] for s in self.samples if s.get(metric) is not None]

    def median(self, metric: str) -> Optional[float]:
        values = self.values(metric)
        return statistics.median(values) if values else None

    def spread(self, metric: str) -> Optional[tuple]:
        values = self.values(metric)
        return (min(values), max(values)) if values else None

    def peak(self, metric: str) -> Optional[float]:
        values = self.values(metric)
        return max(values) if values else None

    def to_json(self) -> dict:
        return self.__dict__.copy()


# The row each ratio is taken against, per action.
BASELINE = {
    "load": "stc.load_file", "memory": "stc.load_file", "seqread": "stc.load_file",
    "keys": "stc.keys", "slice": "stc.slice", "save": "stc.save_file",
}


def find(rows: list, kind: str, key: str, cold: bool = False) -> Optional[Row]:
    for row in rows:
        if row.kind == kind and row.key == key and row.cold == cold and row.samples:
            return row
    return None


def ratio(rows: list, row: Row, metric: str) -> Optional[float]:
    """``row``'s median over its baseline's median (>1: slower than safetensors_c)."""
    base = find(rows, row.kind, BASELINE[row.action], row.cold)
    if base is None:
        return None
    mine, theirs = row.median(metric), base.median(metric)
    if mine is None or not theirs:
        return None
    return mine / theirs


def format_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_spread(median: float, low: float, high: float) -> str:
    """'12.3 ms (11.9–13.0)': the range in the median's unit."""
    scale, unit = (1e6, "µs") if median < 1e-3 else (1e3, "ms") if median < 1 else (1, "s")
    return f"{median * scale:.3g} {unit} ({low * scale:.3g}–{high * scale:.3g})"


def format_ratio(value: Optional[float]) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.3g}x"
