"""The results as Markdown (results.md) and as a short table for stdout."""

from __future__ import annotations

from checkpoints import format_bytes
from stats import find, format_ratio, format_spread, format_time, ratio

_LOAD_ACTIONS = ("load", "keys", "slice", "memory", "seqread")


def _cell(row, metric) -> str:
    median, spread = row.median(metric), row.spread(metric)
    if median is None:
        return "—"
    if len(row.values(metric)) == 1:
        return format_time(median)
    return format_spread(median, *spread)


def _rate(row) -> str:
    nbytes, total = row.median("read_bytes"), row.median("total")
    if not nbytes or not total:
        return "—"
    rate = nbytes / total / 1e9
    return f"{rate:.2f}" if rate >= 0.01 else "<0.01"


def _mem(row, metric) -> str:
    value = row.peak(metric)
    return "—" if value is None else format_bytes(max(value, 0))


def _label(row) -> str:
    label = row.label + (" [cold]" if row.cold else "")
    return f"*{label}*" if row.limit else label


def _load_table(rows: list) -> list:
    lines = [
        "| competitor | load | vs st_c | load + read every byte | vs st_c | read GB/s "
        "| extra RSS after load | after read | runs |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if row.note and not row.samples:
            continue
        has_open = row.action not in ("memory", "seqread")
        lines.append(
            f"| {_label(row)} | {_cell(row, 'open') if has_open else '—'} "
            f"| {format_ratio(ratio(rows, row, 'open')) if has_open else '—'} "
            f"| {_cell(row, 'total')} | {format_ratio(ratio(rows, row, 'total'))} "
            f"| {_rate(row)} | {_mem(row, 'rss_open') if has_open else '—'} "
            f"| {_mem(row, 'rss_total')} | {len(row.samples)} |")
    return lines


def _save_table(rows: list) -> list:
    lines = [
        "| writer | save | vs st_c save_file | write GB/s | extra RSS (peak) | runs |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if row.note and not row.samples:
            continue
        median = row.median("open")
        rate = f"{row.file_bytes / median / 1e9:.2f}" if median and row.file_bytes else "—"
        lines.append(
            f"| {_label(row)} | {_cell(row, 'open')} | {format_ratio(ratio(rows, row, 'open'))} "
            f"| {rate} | {_mem(row, 'rss_open')} | {len(row.samples)} |")
    return lines


def markdown(rows, specs, verdicts, machine_rows, notes, settings) -> str:
    out = ["# safetensors_c benchmarks", ""]
    out.append(f"Command: `{settings['command']}`  ")
    out.append(f"Page cache: **{'cold' if settings['cold'] else 'warm'}**; up to "
               f"{settings['repeat']} timed runs per row (median, with min–max in brackets); "
               f"every row in a fresh process. \"vs st_c\" = this row's median / "
               f"safetensors_c's (load_file, get_slice, safe_open+keys or save_file): "
               f"above 1x is slower than safetensors_c. Rows in *italics* are physical limits. "
               f"See benchmarks/README.md.")
    out += ["", "## Targets", "", "| # | target | measured | required | result | note |",
            "|--:|---|---|---|---|---|"]
    for i, v in enumerate(verdicts, 1):
        out.append(f"| {i} | {v.target} | {v.measured} | {v.required} | {v.status} | {v.why} |")
    met = sum(v.met is True for v in verdicts)
    judged = sum(v.met is not None for v in verdicts)
    out += ["", f"**{met} of {judged} measured targets met.**", ""]

    for kind, spec in specs.items():
        mine = [r for r in rows if r.kind == kind]
        out += [f"## {kind}: {spec.describe()}", ""]
        if kind in ("llm", "llm_bf16", "big"):
            name, shape = spec.largest
            out += [f"get_slice rows: `{name}`{list(shape)}[:{shape[0] // 8}]", ""]
        loads = [r for r in mine if r.action in _LOAD_ACTIONS]
        saves = [r for r in mine if r.action == "save"]
        if loads:
            out += ["### Load", ""] + _load_table(loads) + [""]
        if saves:
            out += ["### Save", ""] + _save_table(saves) + [""]
        skipped = [r for r in mine if r.note and not r.samples]
        for r in skipped:
            out.append(f"- skipped {r.label}{' [cold]' if r.cold else ''}: {r.note}")
        if skipped:
            out.append("")

    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine_rows]
    return "\n".join(out) + "\n"


# -- the short table for stdout ----------------------------------------------

_SUMMARY_ROWS = (
    ("stc.load_file", "safetensors_c load_file"),
    ("ref.load_file", "safetensors (reference)"),
    ("torch.load_mmap", "torch.load(mmap=True)"),
    ("torch.load", "torch.load"),
    ("pickle.load", "pickle.load"),
    ("np.npz", "np.load(.npz)"),
)


def summary(rows, specs, verdicts, notes, out_path) -> str:
    kinds = [k for k in ("llm", "small", "wide") if k in specs]
    headers = ["load time (median)"] + [f"{k} {_short(specs[k])}" for k in kinds]
    if "llm" in specs:
        headers.append("llm load+read all")
    table = []
    for key, label in _SUMMARY_ROWS:
        cells = [label]
        present = False
        for kind in kinds:
            row = find(rows, kind, key)
            cells.append(_summary_cell(rows, row, "open"))
            present |= row is not None
        if "llm" in specs:
            cells.append(_summary_cell(rows, find(rows, "llm", key), "total"))
        if present:
            table.append(cells)
    memory = find(rows, "llm", "limit.memory")
    if memory:
        table.append(["(limit) in-memory read"] + ["" for _ in kinds]
                     + [format_time(memory.median("total"))])
    widths = [max(len(r[i]) for r in [headers] + table) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))))
    lines += ["", "(xN) = N times slower than safetensors_c load_file"]
    lines += [f"note: {n}" for n in notes]
    lines.append(_verdict(rows, specs, verdicts))
    lines.append(f"full tables: {out_path}")
    return "\n".join(lines)


def _short(spec) -> str:
    if spec.kind in ("small", "wide"):
        return f"{spec.n_tensors:,}t"
    return format_bytes(spec.nbytes)


def _summary_cell(rows, row, metric) -> str:
    if row is None:
        return "—"
    text = format_time(row.median(metric))
    if row.key != "stc.load_file":
        r = ratio(rows, row, metric)
        text += f" (x{r:,.0f})" if r and r >= 10 else (f" (x{r:.2g})" if r else "")
    return text


def _verdict(rows, specs, verdicts) -> str:
    parts = []
    for key, label in (("ref.load_file", "safetensors"), ("torch.load_mmap", "torch mmap"),
                       ("pickle.load", "pickle"), ("np.npz", "np.load")):
        row = find(rows, "llm", key)
        r = ratio(rows, row, "open") if row else None
        if r:
            parts.append(f"{r:,.0f}x faster than {label}" if r >= 1.5 else f"{r:.2g}x {label}")
    met = sum(v.met is True for v in verdicts)
    judged = sum(v.met is not None for v in verdicts)
    head = "verdict: safetensors_c load_file"
    if "llm" in specs:
        head += f" on llm ({format_bytes(specs['llm'].nbytes)})"
    line = f"{head}: {', '.join(parts) or 'no competitor measured'}; targets met {met}/{judged}."
    if "llm" in specs and specs["llm"].nbytes < 1 << 30:
        line += (f"\n(the targets are set for the full run's 1 GiB checkpoint; at "
                 f"{format_bytes(specs['llm'].nbytes)} fixed costs weigh more, so a missed "
                 f"target here says little: run `python benchmarks/run.py` to judge them)")
    return line
