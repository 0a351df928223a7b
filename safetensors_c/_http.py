"""The HTTP(S) byte source: :class:`HTTPSource` speaks HTTP/1.1 itself.

It uses the standard library's ``http.client`` (keep-alive connections in
a small pool, one thread per concurrent range request) and needs no
third-party package. This module holds everything HTTP-specific: the
storage options it understands, which caller headers and credentials go
where, timeouts and the watchdog that bounds each request, and the strict
checking of every answer (status, ``Content-Range``, size, validator,
length). The shared range logic is :class:`._sources._RangeSource`.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import itertools
import math
import numbers
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

from . import error_codes
from ._sources import (
    _DEFAULT_OPTIONS,
    RemoteError,
    RemoteOptions,
    _is_http,
    _RangeSource,
    display_url,
)

DEFAULT_TIMEOUT = 30.0  # seconds without a byte (connect, and each read)
MAX_TIMEOUT = 86400.0  # a day: larger values are mistakes (and overflow the socket layer)
MIN_RATE = 64 << 10  # bytes per second every request must average (its deadline)
_GROW_FIRST = 256 << 10  # a body's buffer starts this large, then doubles as bytes arrive
_MAX_REDIRECTS = 5
_MAX_ATTEMPTS = 3  # per request: a stale keep-alive connection or a 502/503/504
_MAX_DRAIN = 64 << 10  # bytes of an error or redirect body read to keep the connection

# What a request line cannot carry: http.client refuses it with a message that
# quotes the whole target, query string (a signed URL's secret) included.
_URL_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF, NUL, ... (tab is fine)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


def _timeout_error(message: str) -> TimeoutError:
    """A ``TimeoutError`` (what callers catch for a slow network) with our
    code, ``STC_ERR_REMOTE_TIMEOUT``."""
    exc = TimeoutError(message)
    exc.code = error_codes.REMOTE_TIMEOUT  # type: ignore[attr-defined]
    return exc


# ---------------------------------------------------------------------------
# MARK: HTTP


_HTTP_OPTIONS = (
    "headers", "client_kwargs", "auth", "timeout", "ssl",
    "allow_insecure_redirects", "forward_headers",
)


class _HTTPOptions:
    """The checked storage options of an HTTP source."""

    def __init__(self, storage_options: Optional[Dict[str, Any]], url: str) -> None:
        options = dict(storage_options or {})
        unknown = sorted(set(options) - set(_HTTP_OPTIONS))
        if unknown:
            raise TypeError(
                f"storage_options {unknown} are not supported for HTTP URLs; safetensors_c "
                "reads http(s) itself and understands " + ", ".join(map(repr, _HTTP_OPTIONS))
            )
        self.headers = _caller_headers(options, url)
        self.timeout = _check_timeout(options.get("timeout", DEFAULT_TIMEOUT))
        context = options.get("ssl")
        if context is False:
            context = ssl._create_unverified_context()
        elif context is not None and not isinstance(context, ssl.SSLContext):
            raise TypeError("storage_options['ssl'] must be an ssl.SSLContext or False")
        self.ssl: Optional[ssl.SSLContext] = context
        insecure = options.get("allow_insecure_redirects", False)
        if not isinstance(insecure, bool):
            raise TypeError(
                "storage_options['allow_insecure_redirects'] must be True or False, not "
                f"{type(insecure).__name__}"
            )
        self.allow_insecure_redirects = insecure
        forward = options.get("forward_headers", ())
        if isinstance(forward, (str, bytes)) or not all(
            isinstance(name, str) for name in _iterable(forward, "forward_headers")
        ):
            raise TypeError("storage_options['forward_headers'] must be a list of header names")
        self.forward_headers = frozenset(name.strip().lower() for name in forward)


def _iterable(value: Any, what: str):
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"storage_options[{what!r}] must be a list of header names") from None


def _caller_headers(options: Dict[str, Any], url: str) -> Dict[str, str]:
    """Every header the caller supplies: ``headers``, ``client_kwargs``'
    ``headers``, and ``Authorization`` from ``auth`` or the URL's
    ``user:password@``."""
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
    for key, value in headers.items():
        _check_header(key, value)
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
    return headers


def _check_header(name: str, value: str) -> None:
    """Refuses a header that http.client would refuse later, quoting the value
    (a credential) in its message, or that would end the header line early."""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(
            f"storage_options header name {name[:80]!r} is not a valid HTTP header name "
            "(letters, digits and !#$%&'*+-.^_`|~ only)"
        )
    bad = _HEADER_VALUE_BAD.search(value)
    if bad is not None:
        raise ValueError(
            f"storage_options header {name!r}: its value contains the control character "
            f"{bad.group()!r} (a line break would end the header and start another); the "
            "value is not shown"
        )
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"storage_options header {name!r}: its value has characters HTTP headers cannot "
            "carry (only Latin-1; encode it, e.g. as base64); the value is not shown"
        ) from None


def _check_timeout(timeout: Any) -> float:
    """The timeout in seconds: a finite number in (0, MAX_TIMEOUT]."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    value = float(timeout)
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise ValueError(
            f"timeout must be a finite number of seconds above 0 and at most {MAX_TIMEOUT:g} "
            f"(a day), not {timeout!r}"
        )
    return value


def _origin(url: str) -> Tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the port made explicit."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def request_deadline(timeout: float, length: int) -> float:
    """Seconds one HTTP request for ``length`` body bytes may take in all,
    connecting and every interim answer included: ``2 x timeout + length /
    MIN_RATE`` (64 KiB/s)."""
    return 2 * timeout + length / MIN_RATE


# ---------------------------------------------------------------------------
# MARK: request deadlines


class _Watch:
    """One request under the watchdog: its connection, and whether its
    deadline passed."""

    __slots__ = ("conn", "done", "fired")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn: Optional[http.client.HTTPConnection] = conn
        self.done = False
        self.fired = False


class _Watchdog:
    """Ends every request that runs past its deadline. One daemon thread
    shuts down the socket of a request still running at its deadline,
    which wakes the read it is blocked in (or spinning through): a
    per-read socket timeout alone cannot bound a request, since
    ``http.client`` reads ``100 Continue`` answers and chunked trailer
    lines in loops without a limit, and a server sending one byte before
    each timeout keeps any read alive."""

    _RECHECK = 0.05  # seconds: a request whose socket does not exist yet is looked at again

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def watch(self, conn: http.client.HTTPConnection, seconds: float) -> _Watch:
        watch = _Watch(conn)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="safetensors_c-http-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return watch

    def end(self, watch: _Watch) -> bool:
        """Marks the request finished; True when its deadline had passed
        (its socket was shut down: the connection must not be reused)."""
        with self._cond:
            watch.done = True
            watch.conn = None
            return watch.fired

    def _run(self) -> None:
        with self._cond:
            while True:  # a daemon thread: it waits while nothing is watched
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, watch = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                watch.fired = True
                sock = watch.conn.sock if watch.conn is not None else None
                if sock is None:  # still connecting (bounded by the timeout), or closed
                    item = (time.monotonic() + self._RECHECK, next(self._order), watch)
                    heapq.heappush(self._heap, item)
                    continue
                try:
                    # The plain socket's shutdown, also for TLS: SSLSocket's own
                    # would drop its state under the thread still reading it.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._heap = []
        self._thread = None


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHDOG._after_fork)


# ---------------------------------------------------------------------------
# MARK: HTTP sources


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
    Last-Modified; every later answer must name the same size and the same
    validator (one that drops, changes or only then adds it fails the read
    with code ``STC_ERR_FILE_CHANGED``), so one read never mixes two versions.

    Redirects: at most 5 per request; the last location is where later
    requests go. An https -> http redirect is refused
    (``STC_ERR_INSECURE_REDIRECT``) unless the storage option
    ``allow_insecure_redirects=True``. A request to any other origin
    (scheme, host or port) than the URL's carries none of the caller's
    headers (``headers``, ``Authorization`` from ``auth`` or the URL,
    cookies, API keys, anything) except those named in the storage option
    ``forward_headers`` (case-insensitive).

    Time: ``timeout`` (30 s) bounds connecting and each wait for bytes,
    and each request as a whole ends within :func:`request_deadline`:
    ``2 x timeout + n / 64 KiB/s`` for ``n`` body bytes, after which its
    connection is shut down and closed and ``TimeoutError`` raised (code
    ``STC_ERR_REMOTE_TIMEOUT``). One range read makes at most 3 attempts
    and follows at most 5 redirects, so it ends within 8 such deadlines
    (plus under 2 s of back-off).
    """

    def __init__(
        self,
        url: str,
        storage_options: Optional[Dict[str, Any]] = None,
        options: RemoteOptions = _DEFAULT_OPTIONS,
    ) -> None:
        super().__init__(display_url(url), options)
        self.url = url
        if not _is_http(url) or not urllib.parse.urlsplit(url).hostname:
            raise ValueError(f"{self.name}: not an http(s) URL with a host")
        if _URL_UNSENDABLE.search(url):
            raise ValueError(
                f"{self.name}: the URL contains a space or control character; percent-encode "
                "it (e.g. with urllib.parse.quote)"
            )
        options = _HTTPOptions(storage_options, url)
        self._headers = options.headers
        self.timeout = options.timeout
        self._ssl = options.ssl
        self._allow_insecure = options.allow_insecure_redirects
        self._forward = options.forward_headers
        self._origin = _origin(url)
        self._location = url  # where the last redirect led
        self._pool: List[Tuple[Tuple[str, str, int], http.client.HTTPConnection]] = []
        self._pool_lock = threading.Lock()
        self._pool_pid = os.getpid()  # a forked child must not share these sockets
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
        key = _origin(url)
        scheme, _, port = key
        self._leave_parent_pool()
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

    def _leave_parent_pool(self) -> None:
        """In a process forked after connections were pooled (a DataLoader
        worker, say): forgets the parent's connections. Parent and child
        sending on one socket would read each other's answers. Closing them
        here closes only this process's descriptors; the parent's stay."""
        if self._pool_pid == os.getpid():
            return
        self._pool_lock = threading.Lock()  # the parent's may have been held at the fork
        self._pool_pid = os.getpid()
        pool, self._pool = self._pool, []
        for _, conn in pool:
            conn.close()

    def _release(self, key, conn, response) -> None:
        if response.will_close or response.isclosed() is False:
            conn.close()
            return
        self._leave_parent_pool()
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

    def _fail(self, start: int, end: int, message: str, code: str = error_codes.REMOTE) -> RemoteError:
        return RemoteError(f"{self._where(start, end)}: {message}", code=code)

    def _follow(self, url: str, location: str, start: int, end: int) -> str:
        """The next URL of a redirect from ``url``, if it may be followed."""
        try:
            target = urllib.parse.urljoin(url, location)
            scheme, host, _ = _origin(target)
        except ValueError:  # unbalanced brackets, or a port that is not a number
            target, scheme, host = location, "", ""
        if scheme not in ("http", "https") or not host or _URL_UNSENDABLE.search(target):
            raise self._fail(
                start, end, f"cannot follow a redirect to {display_url(target)}",
                error_codes.BAD_REDIRECT,
            )
        if scheme == "http" and _origin(url)[0] == "https" and not self._allow_insecure:
            raise self._fail(
                start, end,
                f"refused a redirect from https to plain http ({display_url(target)}); pass "
                "storage_options={'allow_insecure_redirects': True} to follow it (the "
                "caller's headers are not sent there)",
                error_codes.INSECURE_REDIRECT,
            )
        return target

    def _get(self, start: int, end: int, probe: bool = False) -> bytearray:
        """The bytes [start, end), in a buffer that grew as they arrived.
        With ``probe`` the file's size is learnt (and the answer may be
        shorter)."""
        url = self._location
        redirects = 0
        attempts = 0
        while True:  # bounded: each pass raises, returns, or spends a redirect/attempt
            try:
                return self._get_once(url, start, end, probe, attempts)
            except _Redirect as redirect:
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise self._fail(
                        start, end, f"more than {_MAX_REDIRECTS} redirects",
                        error_codes.BAD_REDIRECT,
                    ) from None
                url = self._follow(url, redirect.location, start, end)
                self._location = url
            except _Retry as retry:
                attempts += 1
                if retry.backoff:
                    time.sleep(min(0.05 * 2**attempts, 1.0))

    def _request_headers(self, url: str, start: int, end: int) -> Dict[str, str]:
        headers = {
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
            "User-Agent": "safetensors_c",
        }
        same_origin = _origin(url) == self._origin
        for name, value in self._headers.items():
            # The caller's headers go where the caller sent them, nowhere else.
            if same_origin or name.strip().lower() in self._forward:
                headers[name] = value
        return headers

    def _get_once(self, url, start, end, probe, attempts) -> bytearray:
        key, conn, reused = self._connection(url)
        seconds = request_deadline(self.timeout, end - start)
        watch = _WATCHDOG.watch(conn, seconds)
        try:
            response = self._send(conn, reused, url, start, end, attempts + 1 >= _MAX_ATTEMPTS)
            data = self._receive(response, url, start, end, probe, attempts + 1 >= _MAX_ATTEMPTS)
        except BaseException:
            conn.close()
            if _WATCHDOG.end(watch):
                raise self._overdue(start, end, seconds) from None
            raise
        if _WATCHDOG.end(watch):
            conn.close()
            raise self._overdue(start, end, seconds)
        self._release(key, conn, response)
        return data

    def _overdue(self, start: int, end: int, seconds: float) -> TimeoutError:
        return _timeout_error(
            f"{self._where(start, end)}: the request did not finish within its deadline of "
            f"{seconds:.3g} s (2 x timeout {self.timeout:g} s + {end - start} bytes at "
            f"{MIN_RATE >> 10} KiB/s); the connection was closed"
        )

    def _send(self, conn, reused, url, start, end, last):
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers=self._request_headers(url, start, end))
            return conn.getresponse()
        except (socket.timeout, TimeoutError):
            conn.close()
            raise _timeout_error(
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

    def _receive(self, response, url, start, end, probe, last) -> bytearray:
        status = response.status
        if status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            self._drain(response)
            if not location:
                raise self._fail(
                    start, end, f"HTTP {status} redirect without a Location",
                    error_codes.BAD_REDIRECT,
                )
            raise _Redirect(location)
        if status in (502, 503, 504) and not last:
            self._drain(response)
            raise _Retry(backoff=True)
        if status == 416 and probe:
            match = _UNSATISFIED_RANGE.match(response.getheader("Content-Range") or "")
            self._drain(response)
            if match is None or int(match.group(1)) > start:
                raise self._fail(start, end, "HTTP 416 without a valid 'Content-Range: bytes */N'")
            self._learn(response, int(match.group(1)), start, end)
            return bytearray()
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
        buf = bytearray()
        got = 0
        try:
            while got < length:  # bounded: each pass reads >= 1 byte or stops
                if got == len(buf):  # grow with the bytes (at most twice them), never to the claim
                    buf += bytes(min(length - got, max(_GROW_FIRST, len(buf))))
                view = memoryview(buf)[got:]
                try:
                    n = response.readinto(view)
                finally:
                    view.release()
                if not n:
                    break
                got += n
            if got == length and declared is None and response.read(1):
                raise self._fail(start, end, "the body is longer than the range")
        except (socket.timeout, TimeoutError):
            raise _timeout_error(
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
        return buf

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
                error_codes.FILE_CHANGED,
            )
        for header, known in (("ETag", self._etag), ("Last-Modified", self._last_modified)):
            now = response.getheader(header)
            # The first answer named the version (or named none): every later
            # one must name the same, or two versions of the file could be
            # mixed. A validator that appears only later is a change too: the
            # answers that carry it could name two versions, and nothing
            # ties the first answer to either.
            if now != known:
                raise self._fail(
                    start, end,
                    f"the file changed between requests ({header} "
                    f"{known if known is not None else 'none'} -> "
                    f"{now if now is not None else 'none'})",
                    error_codes.FILE_CHANGED,
                )

    # -- reading --------------------------------------------------------

    def _probe(self) -> None:
        self._prefix = memoryview(self._get(0, self.prefetch, probe=True)).toreadonly()

    def _fetch_parts(self, parts, deliver) -> None:
        if len(parts) <= 1 or self.max_concurrency == 1:
            for i, (start, end) in enumerate(parts):
                deliver(i, self._get(start, end))
            return
        workers = min(self.max_concurrency, len(parts))
        with ThreadPoolExecutor(workers, thread_name_prefix="safetensors_c-http") as pool:
            futures: List[Any] = [pool.submit(self._get, s, e) for s, e in parts]
            try:
                for i in range(len(futures)):
                    data = futures[i].result()
                    futures[i] = None  # the answer is held once: by its target
                    deliver(i, data)
            except BaseException:
                for future in futures:
                    if future is not None:
                        future.cancel()
                raise
