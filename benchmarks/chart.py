"""chart.png: log-scale bars of load time per competitor, one panel per checkpoint."""

from __future__ import annotations

from typing import Optional

from stats import format_time


def draw(rows: list, specs: dict, path: str) -> Optional[str]:
    """Writes the chart; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"

    panels = []
    for kind, spec in specs.items():
        bars = [(r.label + (" [cold]" if r.cold else ""), r.median("open"), r.key)
                for r in rows
                if r.kind == kind and r.samples and r.action in ("load", "keys", "slice")
                and r.median("open")]
        if bars:
            panels.append((f"{kind}: {spec.describe()}", bars))
    if not panels:
        return "no load rows measured: no chart"

    heights = [0.28 * len(bars) + 0.9 for _, bars in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, bars) in zip(axes[:, 0], panels):
        labels = [b[0] for b in bars]
        values = [b[1] for b in bars]
        colors = ["tab:green" if b[2].startswith("stc.") else "tab:gray" for b in bars]
        ax.barh(range(len(bars)), values, color=colors)
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="x", which="both", alpha=0.3)
        for i, v in enumerate(values):
            ax.text(v, i, f" {format_time(v)}", va="center", fontsize=7)
    axes[-1, 0].set_xlabel("load time, seconds (median, log scale; shorter is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None

