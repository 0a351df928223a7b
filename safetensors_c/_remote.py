"""Remote files as *byte sources*: range reads over HTTP(S) and fsspec.

A byte source is what :func:`safetensors_c._reader.open_source` accepts for
anything that is not a local path: an object with ``name`` (str), ``size``
(int), ``read_at(offset, length)`` and ``read_ranges([(offset, length),
...])``, both returning bytes-like objects of exactly the lengths asked for
(or raising). The reader validates the header with the C core before it
asks for any tensor byte.

Two kinds live here:

- :class:`HTTPSource` speaks HTTP/1.1 itself (the standard library's
  ``http.client``, keep-alive connections in a small pool, one thread per
  concurrent range request). It needs no third-party package. Every
  response is checked strictly: a range request must be answered
  ``206 Partial Content`` with exactly the ``Content-Range`` asked for,
  the file's total size and validator (ETag / Last-Modified) must not
  change between requests, and the body must have exactly the expected
  length. Anything else raises :class:`RemoteError` (an ``OSError``) naming
  the URL and the byte range; a silent server raises ``TimeoutError``.
- :class:`FsspecSource` reads any other protocol fsspec knows (``s3://``,
  ``gs://``, ``memory://``, ``file://``, chained URLs, ...) through
  ``fs.cat_file`` / ``fs.cat_ranges``, checking every length. fsspec is
  optional: ``pip install "safetensors_c[remote]"``.

Both read the first ``prefetch`` bytes (256 KiB) in one request when
opened, so the header normally costs one request and never more than two;
reads are planned by :func:`plan_reads`: nearby runs coalesced, long runs
split into ``block_size`` parts fetched ``max_concurrency`` at a time.
Every loop here is bounded: retries, redirects, parts, bytes read.
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "RemoteError",
    "HTTPSource",
    "FsspecSource",
    "is_url",
    "open_url",
    "open_fsspec_file",
    "is_fsspec_file",
    "exists",
    "join_url",
    "plan_reads",
    "REMOTE_EXTRA",
]

REMOTE_EXTRA = 'pip install "safetensors_c[remote]"'

DEFAULT_PREFETCH = 256 << 10  # the speculative first read: most headers fit in it
DEFAULT_BLOCK_SIZE = 16 << 20  # the largest single range request
DEFAULT_COALESCE_GAP = 64 << 10  # runs closer than this are read as one
DEFAULT_MAX_REQUESTS = 256  # per read_ranges call, after coalescing (before splitting)
DEFAULT_TIMEOUT = 30.0  # seconds without a byte (connect, and each read)
MAX_CONCURRENCY = 64
_DIRECT_MIN = 1 << 20  # clusters this large (on average) are read into buffers of their own
_MAX_REDIRECTS = 5
_MAX_ATTEMPTS = 3  # per request: a stale keep-alive connection or a 502/503/504
_MAX_DRAIN = 64 << 10  # bytes of an error or redirect body read to keep the connection

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


class RemoteError(OSError):
    """A remote server or file system answered in a way that cannot be
    trusted to give the right bytes (wrong status, wrong range, short body,
    a file that changed while being read)."""


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
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.hostname and ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
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
    remain the smallest gaps are merged too. ``parts`` are the requests
    ``(start, end)``, each span cut into pieces of at most ``block_size``.
    Empty ranges need no bytes and are left out.
    """
    runs = sorted((o, o + n) for o, n in ranges if n > 0)
    merged: List[List[int]] = []
    for start, end in runs:
        if merged and start <= merged[-1][1]:  # overlapping or touching
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if merged:
        gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
        join = [g <= coalesce_gap for g in gaps]
        spans_left = 1 + join.count(False)
        if spans_left > max_requests:
            # Merge the smallest remaining gaps until the count fits.
            order = sorted((g, i) for i, g in enumerate(gaps) if not join[i])
            for _, i in order[: spans_left - max_requests]:
                join[i] = True
        spans = [[merged[0][0], merged[0][1]]]
        for i, (start, end) in enumerate(merged[1:]):
            if join[i]:
                spans[-1][1] = end
            else:
                spans.append([start, end])
    else:
        spans = []
    parts = []
    for start, end in spans:
        for s in range(start, end, block_size):
            parts.append((s, min(s + block_size, end)))
    return [(s, e) for s, e in spans], parts


def _first_bytes(views: List[memoryview], length: int) -> List[memoryview]:
    """The views cut to hold exactly the first ``length`` bytes."""
    out = []
    for view in views:
        if length <= 0:
            break
        out.append(view[:length])
        length -= len(out[-1])
    return out


def _positive_int(value: Any, what: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} must be {bound}, not {value}")
    return value


# ---------------------------------------------------------------------------
# MARK: the shared source logic


class _RangeSource:
    """Prefix cache, range planning and parallel fetching; a subclass
    provides ``_fetch_parts(parts, buffers)``."""

    name: str
    size: int

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int,
        block_size: int,
        prefetch: int,
        coalesce_gap: int,
    ) -> None:
        self.name = name
        self.max_concurrency = _positive_int(
            max_concurrency, "max_concurrency", 1, MAX_CONCURRENCY
        )
        self.block_size = _positive_int(block_size, "block_size", 4096)
        self.prefetch = _positive_int(prefetch, "prefetch", 8)
        self.coalesce_gap = _positive_int(coalesce_gap, "coalesce_gap", 0)
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
        a small one, or one inside the prefetched start, as a view."""
        ranges = [(int(o), int(n)) for o, n in ranges]
        _check_range_args(ranges, self.size, self.name)
        known = len(self._prefix)
        prefix = self._prefix
        # Ranges that overlap are fetched once, as a cluster with one buffer.
        wanted = sorted({(o, o + n) for o, n in ranges if n and o + n > known})
        clusters: List[List[Any]] = []  # [start, end, members]
        for start, end in wanted:
            if clusters and start < clusters[-1][1]:
                clusters[-1][1] = max(clusters[-1][1], end)
                clusters[-1][2].append((start, end))
            else:
                clusters.append([start, end, [(start, end)]])
        fetch = [(max(start, known), end) for start, end, _ in clusters]
        spans, _ = plan_reads(
            [(s, e - s) for s, e in fetch],
            coalesce_gap=self.coalesce_gap,
            block_size=self.block_size,
        )
        # A span of large, adjacent clusters (a whole-file load) is read
        # straight into one buffer per cluster, handed out without a copy.
        # Any other span (small pieces, or gaps from coalescing) is read into
        # one buffer of its own, in large reads, and the pieces are views.
        buffers: List[Any] = [None] * len(clusters)
        in_span: Dict[int, memoryview] = {}
        segments: List[Tuple[int, int, memoryview]] = []
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
                    c_start, c_end, _ = clusters[j]
                    buf = bytearray(c_end - c_start)
                    if c_start < known:  # the part already fetched with the header
                        buf[: known - c_start] = prefix[c_start:known]
                    buffers[j] = buf
                    s, e = fetch[j]
                    segments.append((s, e, memoryview(buf)[s - c_start :]))
            else:
                span = memoryview(bytearray(span_end - span_start))
                segments.append((span_start, span_end, span))
                for j in range(first, k):
                    in_span[j] = span[fetch[j][0] - span_start : fetch[j][1] - span_start]
        self._fetch_segments(segments, spans)
        for j, view in in_span.items():
            c_start, c_end, members = clusters[j]
            if c_start >= known and len(members) == 1:
                buffers[j] = view
            else:
                buf = bytearray(c_end - c_start)
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

    def _fetch_segments(self, segments, spans) -> None:
        """Cuts the spans into requests of at most ``block_size`` bytes, each
        with the list of segment views its body fills, and fetches them."""
        parts = []  # (start, end, [views])
        i = 0
        for span_start, span_end in spans:
            for s in range(span_start, span_end, self.block_size):
                e = min(s + self.block_size, span_end)
                views = []
                while i < len(segments) and segments[i][0] < e:
                    seg_start, seg_end, view = segments[i]
                    lo, hi = max(seg_start, s), min(seg_end, e)
                    views.append(view[lo - seg_start : hi - seg_start])
                    if seg_end <= e:
                        i += 1
                    else:
                        break
                parts.append((s, e, views))
        self._fetch_parts(parts)

    def _fetch_parts(self, parts: List[Tuple[int, int, List[memoryview]]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._prefix = memoryview(b"")


# ---------------------------------------------------------------------------
# MARK: HTTP


_HTTP_OPTIONS = ("headers", "client_kwargs", "auth", "timeout", "ssl")


def _http_options(storage_options: Optional[Dict[str, Any]], url: str):
    """(headers, timeout, ssl_context) from fsspec-style storage_options."""
    options = dict(storage_options or {})
    unknown = sorted(set(options) - set(_HTTP_OPTIONS))
    if unknown:
        raise TypeError(
            f"storage_options {unknown} are not supported for HTTP URLs; safetensors_c "
            "reads http(s) itself and understands " + ", ".join(map(repr, _HTTP_OPTIONS))
        )
    headers: Dict[str, str] = {}
    client = options.get("client_kwargs") or {}
    if not isinstance(client, dict):
        raise TypeError("storage_options['client_kwargs'] must be a dict")
    bad = sorted(set(client) - {"headers", "auth"})
    if bad:
        raise TypeError(
            f"storage_options['client_kwargs'] {bad} are not supported; use 'headers' or 'auth'"
        )
    for source in (client.get("headers"), options.get("headers")):
        if source is None:
            continue
        if not isinstance(source, dict):
            raise TypeError("HTTP headers in storage_options must be a dict of str to str")
        for key, value in source.items():
            headers[str(key)] = str(value)
    auth = options.get("auth", client.get("auth"))
    parts = urllib.parse.urlsplit(url)
    if auth is None and parts.username is not None:
        auth = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    if auth is not None:
        if hasattr(auth, "login"):  # aiohttp.BasicAuth
            auth = (auth.login, auth.password or "")
        if not (isinstance(auth, (tuple, list)) and len(auth) == 2):
            raise TypeError("auth must be a (user, password) pair")
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode("utf-8")).decode("ascii")
        headers["Authorization"] = "Basic " + token
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    context = options.get("ssl")
    if context is False:
        context = ssl._create_unverified_context()
    elif context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError("storage_options['ssl'] must be an ssl.SSLContext or False")
    return headers, float(timeout), context


class _Retry(Exception):
    def __init__(self, backoff: bool) -> None:
        self.backoff = backoff


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class HTTPSource(_RangeSource):
    """A file on an HTTP(S) server that answers range requests.

    Opening sends one request (the first ``prefetch`` bytes), which also
    gives the file's size and validator from its ``Content-Range``, ETag and
    Last-Modified. Redirects are followed (at most 5) and the final location
    is reused for later requests.
    """

    def __init__(
        self,
        url: str,
        storage_options: Optional[Dict[str, Any]] = None,
        *,
        max_concurrency: int = 8,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefetch: int = DEFAULT_PREFETCH,
        coalesce_gap: int = DEFAULT_COALESCE_GAP,
    ) -> None:
        super().__init__(
            display_url(url),
            max_concurrency=max_concurrency,
            block_size=block_size,
            prefetch=prefetch,
            coalesce_gap=coalesce_gap,
        )
        self.url = url
        self._headers, self.timeout, self._ssl = _http_options(storage_options, url)
        self._location = url  # where the last redirect led
        self._netloc = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
        self._pool: List[Tuple[Tuple[str, str, int], http.client.HTTPConnection]] = []
        self._pool_lock = threading.Lock()
        self._etag: Optional[str] = None
        self._last_modified: Optional[str] = None
        self.size = -1
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

    # -- connections ----------------------------------------------------

    def _connection(self, url: str):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"{self.name}: cannot follow a redirect to {display_url(url)}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        with self._pool_lock:
            for i in range(len(self._pool) - 1, -1, -1):
                if self._pool[i][0] == key:
                    return key, self._pool.pop(i)[1], True
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, port, timeout=self.timeout,
                context=self._ssl or ssl.create_default_context(),
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout)
        return key, conn, False

    def _release(self, key, conn, response) -> None:
        if response.will_close or response.isclosed() is False:
            conn.close()
            return
        with self._pool_lock:
            if len(self._pool) < self.max_concurrency:
                self._pool.append((key, conn))
                return
        conn.close()

    def _drop_pool(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for _, conn in pool:
            conn.close()

    def close(self) -> None:
        self._drop_pool()
        super().close()

    def __del__(self) -> None:
        # Readers drop their source without closing it: close the sockets
        # here rather than leave it to each socket's finaliser.
        pool = getattr(self, "_pool", None)
        if pool:
            self._drop_pool()

    # -- one request ----------------------------------------------------

    def _where(self, start: int, end: int) -> str:
        return f"{self.name} (bytes {start}-{end - 1})"

    def _fail(self, start: int, end: int, message: str) -> RemoteError:
        return RemoteError(f"{self._where(start, end)}: {message}")

    def _get(self, start: int, end: int, into: List[memoryview], probe: bool = False) -> int:
        """GET bytes [start, end) into the views ``into`` (filled in turn);
        returns the body length. With ``probe`` the file's size is learnt
        (and the answer may be shorter)."""
        redirects = 0
        attempts = 0
        while True:  # bounded: each pass raises, returns, or spends a redirect/attempt
            try:
                return self._get_once(self._location, start, end, into, probe, attempts)
            except _Redirect as redirect:
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise self._fail(start, end, f"more than {_MAX_REDIRECTS} redirects")
                self._location = redirect.location
            except _Retry as retry:
                attempts += 1
                if retry.backoff:
                    time.sleep(min(0.05 * 2**attempts, 1.0))

    def _get_once(self, url, start, end, into, probe, attempts) -> int:
        last = attempts + 1 >= _MAX_ATTEMPTS
        key, conn, reused = self._connection(url)
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
            "User-Agent": "safetensors_c",
        }
        same_host = parts.netloc.rpartition("@")[2] == self._netloc
        for key_, value in self._headers.items():
            if same_host or key_.lower() != "authorization":  # never leak credentials
                headers[key_] = value
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
        except (socket.timeout, TimeoutError):
            conn.close()
            raise TimeoutError(
                f"{self._where(start, end)}: no answer within {self.timeout:g} s"
            ) from None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            if reused:
                # A keep-alive connection the server had closed: the others
                # in the pool are likely stale too.
                self._drop_pool()
            if not last:
                raise _Retry(backoff=not reused) from None
            raise RemoteError(f"{self._where(start, end)}: connection lost ({exc})") from None
        except http.client.HTTPException as exc:
            conn.close()
            raise self._fail(start, end, f"invalid HTTP response ({exc!r})") from None
        except OSError as exc:
            conn.close()
            message = f"{self._where(start, end)}: {exc.strerror or exc}"
            try:  # keep the precise type (ConnectionRefusedError, ...) with our message
                replacement = type(exc)(exc.errno, message)
            except Exception:
                replacement = RemoteError(message)
            raise replacement from None
        try:
            return self._receive(response, url, start, end, into, probe, last)
        except BaseException:
            conn.close()
            raise
        finally:
            if conn.sock is not None:
                self._release(key, conn, response)

    def _receive(self, response, url, start, end, into, probe, last) -> int:
        status = response.status
        if status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            self._drain(response)
            if not location:
                raise self._fail(start, end, f"HTTP {status} redirect without a Location")
            raise _Redirect(urllib.parse.urljoin(url, location))
        if status in (502, 503, 504) and not last:
            self._drain(response)
            raise _Retry(backoff=True)
        if status == 416 and probe:
            match = _UNSATISFIED_RANGE.match(response.getheader("Content-Range") or "")
            self._drain(response)
            if match is None or int(match.group(1)) > start:
                raise self._fail(start, end, "HTTP 416 without a valid 'Content-Range: bytes */N'")
            self._learn(response, int(match.group(1)), start, end)
            return 0
        if status != 206:
            self._drain(response)
            if status == 200:
                raise self._fail(
                    start, end,
                    "the server answered 200 OK (the whole file) to a range request instead "
                    "of 206 Partial Content; it must support HTTP range requests",
                )
            if status in (404, 410):
                raise FileNotFoundError(f"{self.name}: not found (HTTP {status})")
            if status in (401, 403):
                raise PermissionError(
                    f"{self.name}: access denied (HTTP {status} {response.reason})"
                )
            raise self._fail(start, end, f"HTTP {status} {response.reason}")
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise self._fail(start, end, f"the body is encoded ({encoding}); expected raw bytes")
        content_range = response.getheader("Content-Range")
        if content_range is None:
            raise self._fail(start, end, "206 Partial Content without a Content-Range header")
        match = _CONTENT_RANGE.match(content_range.strip())
        if match is None:
            raise self._fail(start, end, f"malformed Content-Range {content_range!r}")
        first, final, total = match.groups()
        if total == "*":
            raise self._fail(start, end, f"Content-Range {content_range!r} hides the file size")
        first, final, total = int(first), int(final), int(total)
        if probe:
            self._learn(response, total, start, end)
            end = min(end, total)
        else:
            self._check_same_file(response, total, start, end)
        if first != start or final != end - 1 or final >= total:
            raise self._fail(
                start, end, f"the server sent Content-Range {content_range!r} instead"
            )
        length = end - start
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip() != str(length):
            raise self._fail(
                start, end, f"Content-Length {declared.strip()} for a {length}-byte range"
            )
        got = 0
        try:
            for view in _first_bytes(into, length):
                filled = 0
                while filled < len(view):  # bounded: each pass reads >= 1 byte or stops
                    n = response.readinto(view[filled:])
                    if not n:
                        break
                    filled += n
                    got += n
                if filled < len(view):
                    break
            if got == length and declared is None and response.read(1):
                raise self._fail(start, end, "the body is longer than the range")
        except (socket.timeout, TimeoutError):
            raise TimeoutError(
                f"{self._where(start, end)}: stalled: no data for {self.timeout:g} s "
                f"before all {length} bytes arrived"
            ) from None
        except http.client.IncompleteRead as exc:
            got += len(exc.partial)
        except (ConnectionError, http.client.HTTPException) as exc:
            raise self._fail(start, end, f"connection lost after {got} of {length} bytes "
                             f"({exc!r})") from None
        self._count(got)
        if got != length:
            raise self._fail(start, end, f"short body: {got} of {length} bytes")
        return length

    def _drain(self, response) -> None:
        """Reads a small error body so the connection can be reused; a large
        one closes the connection instead (never reads much)."""
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) <= _MAX_DRAIN:
            try:
                response.read(int(declared))
                return
            except (OSError, http.client.HTTPException):
                pass
        response.close()

    def _learn(self, response, total: int, start: int, end: int) -> None:
        self.size = total
        self._etag = response.getheader("ETag")
        self._last_modified = response.getheader("Last-Modified")

    def _check_same_file(self, response, total: int, start: int, end: int) -> None:
        if total != self.size:
            raise self._fail(
                start, end,
                f"the file changed size between requests ({self.size} bytes, now {total})",
            )
        for header, known in (("ETag", self._etag), ("Last-Modified", self._last_modified)):
            now = response.getheader(header)
            if known is not None and now is not None and now != known:
                raise self._fail(
                    start, end, f"the file changed between requests ({header} {known} -> {now})"
                )

    # -- reading --------------------------------------------------------

    def _probe(self) -> None:
        buffer = bytearray(self.prefetch)
        got = self._get(0, self.prefetch, [memoryview(buffer)], probe=True)
        del buffer[got:]
        self._prefix = memoryview(bytes(buffer))

    def _fetch_parts(self, parts) -> None:
        if len(parts) <= 1 or self.max_concurrency == 1:
            for start, end, view in parts:
                self._get(start, end, view)
            return
        workers = min(self.max_concurrency, len(parts))
        with ThreadPoolExecutor(workers, thread_name_prefix="safetensors_c-http") as pool:
            futures = [pool.submit(self._get, s, e, v) for s, e, v in parts]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


# ---------------------------------------------------------------------------
# MARK: fsspec


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            f"reading URLs other than http(s) needs fsspec: {REMOTE_EXTRA}"
        ) from None
    return fsspec


class FsspecSource(_RangeSource):
    """A file of any fsspec file system, read with ``cat_file`` /
    ``cat_ranges`` (concurrent for asynchronous file systems such as s3fs);
    every answer's length is checked."""

    def __init__(
        self,
        fs,
        path: str,
        name: Optional[str] = None,
        *,
        size: Optional[int] = None,
        max_concurrency: int = 8,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefetch: int = DEFAULT_PREFETCH,
        coalesce_gap: int = DEFAULT_COALESCE_GAP,
    ) -> None:
        super().__init__(
            display_url(name) if name else path,
            max_concurrency=max_concurrency,
            block_size=block_size,
            prefetch=prefetch,
            coalesce_gap=coalesce_gap,
        )
        self.fs = fs
        self.path = path
        if size is None:
            try:
                size = fs.size(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.name}: no such file") from None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RemoteError(f"{self.name}: the file system gave no size ({size!r})")
        self.size = size
        first = min(self.prefetch, size)
        if first:
            view = memoryview(bytearray(first))
            self._fetch_parts([(0, first, [view])])
            self._prefix = memoryview(bytes(view))

    def _cat(self, start: int, end: int):
        try:
            return self.fs.cat_file(self.path, start=start, end=end)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.name}: no such file") from None

    def _fetch_parts(self, parts) -> None:
        if getattr(self.fs, "async_impl", False) and len(parts) > 1:
            results = self.fs.cat_ranges(
                [self.path] * len(parts),
                [s for s, _, _ in parts],
                [e for _, e, _ in parts],
                batch_size=self.max_concurrency,
                on_error="return",
            )
        else:
            results = [self._cat(s, e) for s, e, _ in parts]
        for (start, end, views), data in zip(parts, results):
            if isinstance(data, BaseException):
                if isinstance(data, FileNotFoundError):
                    raise FileNotFoundError(f"{self.name}: no such file")
                raise RemoteError(f"{self.name} (bytes {start}-{end - 1}): {data!r}") from data
            self._count(len(data))
            if len(data) != end - start:
                raise RemoteError(
                    f"{self.name} (bytes {start}-{end - 1}): short read, {len(data)} of "
                    f"{end - start} bytes (the file changed or is shorter than it said)"
                )
            position = 0
            for view in views:
                view[:] = data[position : position + len(view)]
                position += len(view)


def is_fsspec_file(obj: Any) -> bool:
    """True for an fsspec file object (it knows its file system and path)."""
    fsspec = sys.modules.get("fsspec")
    if fsspec is None:  # not imported: nothing can be one of its files
        return False
    fs = getattr(obj, "fs", None)
    return isinstance(fs, fsspec.AbstractFileSystem) and isinstance(getattr(obj, "path", None), str)


def open_fsspec_file(file, **options) -> FsspecSource:
    """A byte source over an open fsspec file object: reads go through its
    file system's range calls (concurrent where it is asynchronous), not
    through the file object's own read-ahead cache."""
    size = getattr(file, "size", None)
    if not isinstance(size, int) or isinstance(size, bool):
        size = None
    fs = file.fs
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    name = file.path if "://" in file.path else f"{protocol}://{file.path}"
    return FsspecSource(fs, file.path, name, size=size, **options)


# ---------------------------------------------------------------------------
# MARK: entry points


def open_url(
    url: str,
    storage_options: Optional[Dict[str, Any]] = None,
    *,
    max_concurrency: int = 8,
    block_size: int = DEFAULT_BLOCK_SIZE,
    prefetch: int = DEFAULT_PREFETCH,
    coalesce_gap: int = DEFAULT_COALESCE_GAP,
) -> _RangeSource:
    """A byte source for ``url``: :class:`HTTPSource` for http(s), else an
    :class:`FsspecSource` (fsspec required). ``storage_options`` go to
    fsspec (for http(s): ``headers``, ``client_kwargs={"headers", "auth"}``,
    ``auth``, ``timeout``, ``ssl``). The first ``prefetch`` bytes are read
    now."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(
            f"storage_options must be a dict, not {type(storage_options).__name__}"
        )
    options = dict(
        max_concurrency=max_concurrency,
        block_size=block_size,
        prefetch=prefetch,
        coalesce_gap=coalesce_gap,
    )
    if _is_http(url):
        return HTTPSource(url, storage_options, **options)
    fsspec = _fsspec()
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return FsspecSource(fs, path, url, **options)


def exists(url: str, storage_options: Optional[Dict[str, Any]] = None) -> bool:
    """Whether ``url`` names an existing file (one small request)."""
    try:
        source = open_url(url, storage_options, prefetch=8)
    except FileNotFoundError:
        return False
    source.close()
    return True
