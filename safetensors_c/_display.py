"""Notebook display: HTML tables and short text for handles, slices and dicts.

Every piece of text that comes from a file (tensor names, dtypes, metadata,
file names) is shown with its control characters as visible escapes (see
``_terminal``: a name may hold ESC sequences or a bidi override) and, in HTML,
then HTML-escaped: a tensor may be named ``<script>``. Long tables stop after
``max_rows`` rows with a "… N more" row.
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Mapping

import numpy as np

from . import _dtypes
from ._terminal import escape_name, escape_prose

__all__ = [
    "MAX_ROWS",
    "format_bytes",
    "format_stat",
    "histogram_svg",
    "safe_open_html",
    "safe_open_text",
    "slice_html",
    "slice_text",
    "stats_html",
    "tensors_html",
    "tensors_text",
]

MAX_ROWS = 30
_MAX_CELL = 200  # characters of one metadata value shown


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _e(value: Any) -> str:
    """A name, dtype or path as HTML text."""
    return html.escape(escape_name(str(value)), quote=True)


def _e_prose(value: Any) -> str:
    """A metadata value as HTML text."""
    return html.escape(escape_prose(str(value)), quote=True)


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _table(header: list[str], rows: list[list[str]], total: int, caption: str) -> str:
    """rows hold already-escaped cells; total counts every row, shown or not."""
    parts = [
        '<table class="safetensors-c">',
        f"<caption>{caption}</caption>",
        "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    if total > len(rows):
        parts.append(
            f'<tr><td colspan="{len(header)}">… {total - len(rows)} more</td></tr>'
        )
    parts.append("</tbody></table>")
    return "".join(parts)


def _metadata_html(metadata: Mapping[str, str] | None, max_rows: int) -> str:
    if not metadata:
        return ""
    items = list(metadata.items())
    rows = []
    for key, value in items[:max_rows]:
        text = str(value)
        if len(text) > _MAX_CELL:
            text = text[:_MAX_CELL] + "…"
        rows.append([f"<code>{_e(key)}</code>", _e_prose(text)])
    return _table(["key", "value"], rows, len(items), "metadata")


# MARK: safe_open handles ---------------------------------------------------


def _handle_rows(handle) -> tuple[list[tuple[str, str, list[int], int]], Any]:
    file = handle.reader
    rows = []
    for name in file.offset_keys():
        code, shape, _numpy_shape, begin, end = file.info(name)
        rows.append((name, code, list(shape), end - begin))
    return rows, file


def safe_open_html(handle, max_rows: int = MAX_ROWS) -> str:
    """An HTML table of an open ``safe_open`` handle: tensors, then metadata."""
    if handle.closed:
        return "<p><code>safetensors_c.safe_open</code> (closed)</p>"
    rows, file = _handle_rows(handle)
    total_bytes = sum(r[3] for r in rows)
    caption = (
        f"<code>{_e(file.filename)}</code>: {len(rows)} tensors, {_e(format_bytes(total_bytes))}"
    )
    cells = [
        [f"<code>{_e(n)}</code>", _e(c), _e(_shape(s)), _e(format_bytes(b))]
        for n, c, s, b in rows[:max_rows]
    ]
    return _table(["name", "dtype", "shape", "size"], cells, len(rows), caption) + (
        _metadata_html(file.metadata(), max_rows)
    )


def safe_open_text(handle, max_rows: int = 10) -> str:
    """A few lines describing an open handle."""
    if handle.closed:
        return "safe_open (closed)"
    rows, file = _handle_rows(handle)
    lines = [f"{escape_name(file.filename)}: {len(rows)} tensors, "
             f"{format_bytes(sum(r[3] for r in rows))}"]
    for n, c, s, b in rows[:max_rows]:
        lines.append(f"  {escape_name(n)}: {escape_name(c)} {_shape(s)} ({format_bytes(b)})")
    if len(rows) > max_rows:
        lines.append(f"  … {len(rows) - max_rows} more")
    metadata = file.metadata()
    if metadata:
        lines.append(f"  metadata: {len(metadata)} entries")
    return "\n".join(lines)


def sharded_html(handle, max_rows: int = MAX_ROWS) -> str:
    """An HTML table of an open ``safe_open_sharded`` handle: every tensor with
    its shard, then the metadata."""
    if handle.closed:
        return "<p><code>safetensors_c.safe_open_sharded</code> (closed)</p>"
    shards = handle.shards
    rows = []
    for shard_name, shard in shards.items():
        shard_rows, _ = _handle_rows(shard)
        rows.extend((n, c, s, b, shard_name) for n, c, s, b in shard_rows)
    total_bytes = sum(r[3] for r in rows)
    caption = (
        f"<code>{_e(handle.directory)}</code>: {len(rows)} tensors in "
        f"{len(shards)} shards, {_e(format_bytes(total_bytes))}"
    )
    cells = [
        [f"<code>{_e(n)}</code>", _e(c), _e(_shape(s)), _e(format_bytes(b)), _e(f)]
        for n, c, s, b, f in rows[:max_rows]
    ]
    return _table(["name", "dtype", "shape", "size", "shard"], cells, len(rows), caption) + (
        _metadata_html(handle.metadata(), max_rows)
    )


# MARK: slices ------------------------------------------------------------------


def slice_html(tensor_slice) -> str:
    """An HTML summary of one TensorSlice."""
    row = [
        f"<code>{_e(tensor_slice.name)}</code>",
        _e(tensor_slice.get_dtype()),
        _e(_shape(tensor_slice.get_shape())),
        _e(format_bytes(tensor_slice.nbytes)),
    ]
    return _table(["name", "dtype", "shape", "size"], [row], 1, "TensorSlice")


def slice_text(tensor_slice) -> str:
    return (
        f"TensorSlice {tensor_slice.name!r}: {tensor_slice.get_dtype()} "
        f"{_shape(tensor_slice.get_shape())} ({format_bytes(tensor_slice.nbytes)})"
    )


# MARK: tensor statistics -------------------------------------------------------


def format_stat(value: Any) -> str:
    """A statistic as table text: "-" when undefined, ints exactly, floats to
    6 significant digits ("inf", "-inf" as such)."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def histogram_svg(counts: Iterable[int], span: tuple[float, float] | None,
                  width: int = 96, height: int = 24) -> str:
    """A small inline SVG bar chart of histogram counts (linear heights; a
    non-empty bin is at least 1 pixel high), titled with its range."""
    counts = list(counts)
    peak = max(counts, default=0)
    if peak == 0:
        return ""
    step = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        if count:
            h = max(1.0, height * count / peak)
            bars.append(f'<rect x="{i * step:.2f}" y="{height - h:.2f}" '
                        f'width="{max(step - 0.5, 0.5):.2f}" height="{h:.2f}"/>')
    title = f"{format_stat(span[0])} .. {format_stat(span[1])}" if span else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img"><title>{_e(title)}</title>'
            f'<g fill="currentColor">{"".join(bars)}</g></svg>')


_STATS_FIELDS = ("min", "max", "mean", "std", "nan", "inf", "zeros")


def stats_html(report, max_rows: int = MAX_ROWS) -> str:
    """An HTML table of a ``safetensors_c.stats`` report: a row per tensor,
    with its histogram when one was computed."""
    items = list(report.items())
    drawn = any(s.histogram is not None for _, s in items)
    header = ["name", "dtype", "shape", *_STATS_FIELDS] + (["histogram"] if drawn else [])
    cells = []
    for name, s in items[:max_rows]:
        row = [f"<code>{_e(name)}</code>", _e(s.dtype), _e(_shape(s.shape))]
        row += [_e(format_stat(getattr(s, field))) for field in _STATS_FIELDS]
        if drawn:
            row.append(histogram_svg(s.histogram or (), s.histogram_range))
        cells.append(row)
    caption = f"<code>{_e(report.source_name)}</code>: statistics of {len(items)} tensors"
    if not drawn:
        caption += " (for histograms: <code>stats(..., histogram=16)</code>)"
    return _table(header, cells, len(items), caption)


# MARK: dicts of arrays --------------------------------------------------------


def _array_row(array: Any) -> tuple[str, list[int], int]:

    if isinstance(array, np.ndarray):
        if isinstance(array, _dtypes.PackedArray) and array.format_dtype:
            return array.format_dtype, list(array.logical_shape), array.nbytes
        code = _dtypes.code_for_dtype(array.dtype) or str(array.dtype)
        return code, list(array.shape), array.nbytes
    dtype = getattr(array, "dtype", type(array).__name__)
    shape = list(getattr(array, "shape", ()))
    nbytes = getattr(array, "nbytes", None)
    if nbytes is None:
        nbytes = getattr(array, "element_size", lambda: 0)() * getattr(array, "numel", lambda: 0)()
    return str(dtype), shape, int(nbytes)


def tensors_html(tensors: Mapping[str, Any], max_rows: int = MAX_ROWS) -> str:
    """An HTML table of a dict of arrays (e.g. what ``load_file`` returns)."""
    items = list(tensors.items())
    total = sum(_array_row(a)[2] for _, a in items)
    cells = []
    for name, array in items[:max_rows]:
        code, shape, nbytes = _array_row(array)
        cells.append([f"<code>{_e(name)}</code>", _e(code), _e(_shape(shape)),
                      _e(format_bytes(nbytes))])
    caption = f"{len(items)} tensors, {_e(format_bytes(total))}"
    return _table(["name", "dtype", "shape", "size"], cells, len(items), caption)


def tensors_text(tensors: Mapping[str, Any], max_rows: int = 10) -> str:
    items = list(tensors.items())
    lines = [f"{len(items)} tensors, {format_bytes(sum(_array_row(a)[2] for _, a in items))}"]
    for name, array in items[:max_rows]:
        code, shape, nbytes = _array_row(array)
        lines.append(f"  {escape_name(name)}: {escape_name(code)} {_shape(shape)} "
                     f"({format_bytes(nbytes)})")
    if len(items) > max_rows:
        lines.append(f"  … {len(items) - max_rows} more")
    return "\n".join(lines)


class TensorDict(dict):
    """The dict ``load_file`` and ``load`` return: a plain ``dict`` of name to
    array that also displays as a table in Jupyter."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        return tensors_html(self)


def scan_report_html(report, max_rows: int = MAX_ROWS) -> str:
    """A ScanReport as a notebook table: the verdict, then one row per finding
    (each distinct safe one once). Every value is escaped."""
    rows, seen = [], set()
    for f in report.findings:
        key = (f.kind, f.name, f.where, f.safe)
        if key in seen:
            continue
        seen.add(key)
        status = "ok" if f.safe else ("UNKNOWN" if f.kind in ("error", "unknown") else "UNSAFE")
        rows.append([_e(status), _e(f.kind), _e(f.name), _e(f.where or ""), _e(f.offset),
                     _e_prose(f.note or "")])
    caption = (f"<b>{_e(report.verdict)}</b>: {_e(report.path)} ({_e(report.kind)}), "
               f"{len(report.findings)} finding{'' if len(report.findings) == 1 else 's'}")
    return _table(["status", "kind", "name", "where", "byte", "note"], rows[:max_rows],
                  len(rows), caption)
