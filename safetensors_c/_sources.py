"""The shared ground of every remote byte source: errors, URLs, read
planning, options, and the range-reading logic the sources share.

A byte source is what :func:`safetensors_c._reader.open_source` accepts for
anything that is not a local path: an object with ``name`` (str), ``size``
(int), ``read_at(offset, length)`` and ``read_ranges([(offset, length),
...])``, both returning bytes-like objects of exactly the lengths asked for
(or raising). :class:`_RangeSource` is that object minus the transport: a
subclass (HTTP in :mod:`._http`, fsspec in :mod:`._remote`) only fetches
``(start, end)`` parts. Reads are planned by :func:`plan_reads`: nearby runs
coalesced, long runs split into ``block_size`` parts.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import error_codes

# The speculative first read of every byte source (remote or not; the
# reader's too): most headers fit in it, so that opening costs one request
# (two when the header is larger).
DEFAULT_PREFETCH = 256 << 10
DEFAULT_BLOCK_SIZE = 16 << 20  # the largest single range request
DEFAULT_COALESCE_GAP = 64 << 10  # runs closer than this are read as one
DEFAULT_MAX_REQUESTS = 256  # per read_ranges call, after coalescing (before splitting)
MAX_CONCURRENCY = 64
_MAX_BUFFER_OPTION = 1 << 30  # block_size, prefetch, coalesce_gap: at most 1 GiB
_DIRECT_MIN = 1 << 20  # clusters this large (on average) are read into buffers of their own

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


class RemoteError(OSError):
    """A remote server or file system answered in a way that cannot be
    trusted to give the right bytes (wrong status, wrong range, short body,
    a file that changed while being read, a redirect that is refused).

    ``code`` names the failure: ``STC_ERR_FILE_CHANGED`` (size, ETag or
    Last-Modified differ between answers), ``STC_ERR_INSECURE_REDIRECT``
    (https -> http without ``allow_insecure_redirects``),
    ``STC_ERR_BAD_REDIRECT`` (too many, or to a place that is not http(s)),
    ``STC_ERR_REMOTE`` (any other answer that breaks the protocol)."""

    def __init__(self, message: str, *, code: str = error_codes.REMOTE) -> None:
        super().__init__(message)
        self.code = code



# ---------------------------------------------------------------------------
# MARK: URLs


def is_url(source: Any) -> bool:
    """True for a str naming a URL (``scheme://...``) or an fsspec chain
    (``simplecache::s3://...``); False for local paths and everything else."""
    if not isinstance(source, str):
        return False
    return bool(_URL_SCHEME.match(source)) or ("::" in source and "://" in source)


def _is_http(url: str) -> bool:
    return url[:7].lower() == "http://" or url[:8].lower() == "https://"


def display_url(url: str) -> str:
    """The URL for messages: no user name or password, no query string
    (signed URLs carry their secrets there)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # unbalanced brackets, or a port that is not a number
        return "<unparsable URL>"
    netloc = parts.hostname or ""
    if port is not None:
        netloc += f":{port}"
    if parts.hostname and ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + (f":{port}" if port else "")
    query = "?..." if parts.query else ""
    if not parts.scheme or (not netloc and not parts.path):
        return url.split("?", 1)[0]
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def join_url(base: str, name: str) -> str:
    """``name`` (a plain file name) inside the directory URL ``base``."""
    head, sep, query = base.partition("?")
    if not head.endswith("/"):
        head += "/"
    return head + urllib.parse.quote(name) + (sep + query if sep else "")


def _check_range_args(ranges: Sequence[Tuple[int, int]], size: int, name: str) -> None:
    for item in ranges:
        offset, length = item
        if isinstance(offset, bool) or isinstance(length, bool):
            raise TypeError("offsets and lengths must be integers")
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(
                f"{name}: bytes {offset}..{offset + length} are outside the file "
                f"({size} bytes)"
            )


# ---------------------------------------------------------------------------
# MARK: read planning


def coalesce(starts: Any, ends: Any, gap: int, max_spans: Optional[int] = None):
    """The one coalescing rule of every reader: runs ``[starts[i], ends[i])``,
    sorted by start, share a span when at most ``gap`` bytes separate a run
    from the bytes before it (``gap=-1``: only overlapping runs; ``0``:
    touching ones too); when more than ``max_spans`` spans remain, the
    smallest separations are bridged too (the first of equal ones first).

    Returns ``(span_of_run, lows, highs)`` as int64 arrays: the span of each
    run, and each span's ``[low, high)``."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    reach = np.maximum.accumulate(ends)  # the bytes covered up to each run
    separation = starts[1:] - reach[:-1]
    join = separation <= gap
    if max_spans is not None:
        excess = 1 + int(np.count_nonzero(~join)) - max_spans
        if excess > 0:
            apart = np.flatnonzero(~join)
            closest = apart[np.argsort(separation[apart], kind="stable")[:excess]]
            join[closest] = True
    new_span = np.concatenate(([True], ~join))
    span_of_run = np.cumsum(new_span) - 1
    heads = np.flatnonzero(new_span)
    lows = starts[heads]
    tails = np.concatenate((heads[1:], [starts.size])) - 1
    highs = reach[tails]
    return span_of_run, lows, highs


def plan_reads(
    ranges: Sequence[Tuple[int, int]],
    *,
    coalesce_gap: int = DEFAULT_COALESCE_GAP,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """Plans the requests for ``ranges`` (pairs of offset, length).

    Returns ``(spans, parts)``: ``spans`` are the byte ranges ``(start,
    end)`` to hold in memory, sorted and disjoint: runs whose gap is at most
    ``coalesce_gap`` share a span, and when more than ``max_requests`` spans
    remain the smallest gaps are merged too (see :func:`coalesce`).
    ``parts`` are the requests ``(start, end)``, each span cut into pieces
    of at most ``block_size``. Empty ranges need no bytes and are left out.
    """
    runs = sorted((o, o + n) for o, n in ranges if n > 0)
    _, lows, highs = coalesce([r[0] for r in runs], [r[1] for r in runs], coalesce_gap,
                              max_requests)
    spans = list(zip(lows.tolist(), highs.tolist()))
    parts = []
    for start, end in spans:
        for s in range(start, end, block_size):
            parts.append((s, min(s + block_size, end)))
    return spans, parts


def _positive_int(value: Any, what: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} must be {bound}, not {value}")
    return value


@dataclasses.dataclass(frozen=True)
class RemoteOptions:
    """How a remote source reads, checked when made: at most
    ``max_concurrency`` requests at once (1..64), each of at most
    ``block_size`` bytes (4 KiB..1 GiB); the first ``prefetch`` bytes
    (8..1 GiB) read when the source opens; runs at most ``coalesce_gap``
    bytes apart (0..1 GiB) read as one."""

    max_concurrency: int = 8
    block_size: int = DEFAULT_BLOCK_SIZE
    prefetch: int = DEFAULT_PREFETCH
    coalesce_gap: int = DEFAULT_COALESCE_GAP

    def __post_init__(self) -> None:
        _positive_int(self.max_concurrency, "max_concurrency", 1, MAX_CONCURRENCY)
        _positive_int(self.block_size, "block_size", 4096, _MAX_BUFFER_OPTION)
        _positive_int(self.prefetch, "prefetch", 8, _MAX_BUFFER_OPTION)
        _positive_int(self.coalesce_gap, "coalesce_gap", 0, _MAX_BUFFER_OPTION)


_DEFAULT_OPTIONS = RemoteOptions()


# ---------------------------------------------------------------------------
# MARK: the shared source logic


class _RangeSource:
    """Prefix cache, range planning and parallel fetching; a subclass
    provides ``_fetch_parts(parts, deliver)``."""

    name: str
    size: int

    def __init__(self, name: str, options: RemoteOptions) -> None:
        if not isinstance(options, RemoteOptions):
            raise TypeError(f"options must be a RemoteOptions, not {type(options).__name__}")
        self.name = name
        self.options = options
        self.max_concurrency = options.max_concurrency
        self.block_size = options.block_size
        self.prefetch = options.prefetch
        self.coalesce_gap = options.coalesce_gap
        self._prefix = memoryview(b"")
        self._stats_lock = threading.Lock()
        self.requests = 0  # range requests sent (for tests and benchmarks)
        self.bytes_received = 0  # body bytes received

    def _count(self, received: int) -> None:
        with self._stats_lock:
            self.requests += 1
            self.bytes_received += received

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.size} bytes>"

    def read_at(self, offset: int, length: int):
        """Exactly ``length`` bytes at ``offset`` (bytes-like)."""
        return self.read_ranges([(offset, length)])[0]

    def read_ranges(self, ranges: Sequence[Tuple[int, int]]) -> list:
        """The bytes of each ``(offset, length)``, in the order given, fetched
        with as few requests as :func:`plan_reads` allows. A large range
        comes back as a ``bytearray`` of its own (writable, no copy needed);
        a small one, or one inside the prefetched start, as a view.

        Nothing is allocated ahead of the bytes: each request's body grows
        as it arrives, so a server that announces gigabytes and sends
        nothing costs no memory."""
        ranges = [(int(o), int(n)) for o, n in ranges]
        _check_range_args(ranges, self.size, self.name)
        known = len(self._prefix)
        prefix = self._prefix
        # Ranges that overlap are fetched once, as a cluster with one buffer.
        wanted = sorted({(o, o + n) for o, n in ranges if n and o + n > known})
        owner, lows, highs = coalesce([w[0] for w in wanted], [w[1] for w in wanted], -1)
        # [start, end, members]
        clusters: List[List[Any]] = [[lo, hi, []] for lo, hi in zip(lows.tolist(),
                                                                     highs.tolist())]
        for k, member in zip(owner.tolist(), wanted):
            clusters[k][2].append(member)
        fetch = [(max(start, known), end) for start, end, _ in clusters]
        spans, _ = plan_reads(
            [(s, e - s) for s, e in fetch],
            coalesce_gap=self.coalesce_gap,
            block_size=self.block_size,
        )
        # A span of large, adjacent clusters (a whole-file load) fills one
        # buffer per cluster, handed out without a copy. Any other span
        # (small pieces, or gaps from coalescing) fills one buffer of its
        # own, and the pieces are views of it.
        targets: List[Tuple[int, int]] = []  # (start, end) of each buffer to fill
        own: Dict[int, int] = {}  # cluster -> its target
        in_span: Dict[int, int] = {}  # cluster -> the target of its span
        k = 0
        for span_start, span_end in spans:
            first = k
            while k < len(fetch) and fetch[k][0] < span_end:
                k += 1
            adjacent = all(
                fetch[j][0] == (fetch[j - 1][1] if j > first else span_start)
                for j in range(first, k)
            )
            if adjacent and span_end - span_start >= _DIRECT_MIN * (k - first):
                for j in range(first, k):
                    own[j] = len(targets)
                    targets.append((clusters[j][0], clusters[j][1]))
            else:
                for j in range(first, k):
                    in_span[j] = len(targets)
                targets.append((span_start, span_end))
        filled = self._fill(targets, spans)
        buffers: List[Any] = [None] * len(clusters)
        for j, t in own.items():
            buffers[j] = filled[t]
        for j, t in in_span.items():
            c_start, c_end, members = clusters[j]
            span_start = targets[t][0]
            view = memoryview(filled[t])[fetch[j][0] - span_start : fetch[j][1] - span_start]
            if c_start >= known and len(members) == 1:
                buffers[j] = view
            else:
                buf = bytearray(c_end - c_start)  # every byte of it has arrived
                head = max(0, known - c_start)
                buf[:head] = prefix[c_start : c_start + head]
                buf[head:] = view
                buffers[j] = buf
        by_range: Dict[Tuple[int, int], Any] = {}
        for (start, _, members), buf in zip(clusters, buffers):
            if len(members) == 1:
                by_range[members[0]] = buf
            else:
                for s, e in members:
                    by_range[(s, e)] = bytearray(buf[s - start : e - start])
        out = []
        for offset, length in ranges:
            if length == 0:
                out.append(b"")
            elif offset + length <= known:
                out.append(prefix[offset : offset + length])
            else:
                out.append(by_range[(offset, offset + length)])
        return out

    def _fill(self, targets: List[Tuple[int, int]], spans) -> List[bytearray]:
        """The bytes of each target ``(start, end)`` (sorted, disjoint; the
        part before the prefetched start comes from it): the spans are cut
        into requests of at most ``block_size`` bytes, and each answer, in
        order, goes to the targets it covers. A target one answer fills
        alone is that answer's buffer (no copy); any other is allocated once
        half its bytes have arrived (memory stays within twice the bytes
        received), and its pieces are copied in."""
        known = len(self._prefix)
        out: List[Any] = [None] * len(targets)
        held: List[List[Tuple[int, Any]]] = [[] for _ in targets]  # (offset, bytes) to place
        arrived = [0] * len(targets)
        for t, (start, _) in enumerate(targets):
            if start < known:
                held[t].append((0, self._prefix[start:known]))
                arrived[t] = known - start
        parts: List[Tuple[int, int]] = []
        pieces: List[List[Tuple[int, int, int]]] = []  # per part: (target, lo, hi) in the part
        t = 0
        for span_start, span_end in spans:
            for s in range(span_start, span_end, self.block_size):
                e = min(s + self.block_size, span_end)
                mine = []
                while t < len(targets) and max(targets[t][0], known) < e:
                    lo, hi = max(targets[t][0], known, s), min(targets[t][1], e)
                    mine.append((t, lo - s, hi - s))
                    if targets[t][1] <= e:
                        t += 1
                    else:
                        break
                parts.append((s, e))
                pieces.append(mine)

        def deliver(i: int, data: Any) -> None:
            start = parts[i][0]
            if len(data) != parts[i][1] - start:  # the fetchers check it; never trust
                raise RemoteError(f"{self.name}: a {len(data)}-byte answer for part {parts[i]}")
            for target, lo, hi in pieces[i]:
                t_start, t_end = targets[target]
                offset = start + lo - t_start
                piece = memoryview(data)[lo:hi]
                arrived[target] += len(piece)
                if out[target] is not None:
                    out[target][offset : offset + len(piece)] = piece
                elif len(piece) == len(data) == t_end - t_start and isinstance(data, bytearray):
                    out[target] = data  # the answer is the target: no copy
                else:
                    held[target].append((offset, piece))
                    if 2 * arrived[target] >= t_end - t_start:
                        buf = bytearray(t_end - t_start)
                        for at, chunk in held[target]:
                            buf[at : at + len(chunk)] = chunk
                        out[target], held[target] = buf, []

        self._fetch_parts(parts, deliver)
        for (start, end), buf, n in zip(targets, out, arrived):
            if buf is None or len(buf) != end - start or n != end - start:
                raise RemoteError(f"{self.name}: bytes {start}-{end - 1} were not all read")
        return out

    def _fetch_parts(self, parts: List[Tuple[int, int]], deliver) -> None:
        """Fetches each ``(start, end)`` and calls ``deliver(index, bytes)``
        for each, in order."""
        raise NotImplementedError

    def close(self) -> None:
        self._prefix = memoryview(b"")
