"""A small threaded HTTP server on loopback that misbehaves on purpose.

It serves one virtual file (bytes in memory, or a header followed by a
claimed size that is never materialised) and answers range requests in the
way ``mode`` says:

    ok            correct 206 answers (the baseline)
    ignore-range  200 OK with the whole file, whatever the Range
    wrong-range   206 with a Content-Range one byte off from the one asked for
    no-range      206 without a Content-Range header
    short         206 with the right headers, then half the body and a close
    long          206 whose Content-Length is larger than the range
    grow          the file's size changes after the first request
    etag          the ETag changes after the first request
    stall         the headers, then nothing (until the test ends)
    stall-body    the headers and part of the body, then nothing
    status:N      every request answered with status N
    chunked       correct 206 answers, sent with chunked transfer encoding
    chunked-long  chunked 206 answers with more bytes than the range
    drop-idle     correct 206 answers, then the connection is closed without
                  a "Connection: close" (a keep-alive connection gone stale)
    redirect-loop every request redirected to itself
    redirect      every request redirected to ``server.location`` (a URL)
    redirect-chain:N  ``?hop=k`` redirected to ``?hop=k+1`` until N, then ok
    headers-only  206 with the right headers, then a close before any byte
    trickle       a status line and headers one byte per ``delay`` seconds,
                  never ending
    trickle-body  the right headers, then the body one byte per ``delay``
    continue-flood  ``100 Continue`` interim answers, one after the other,
                  never a final answer
    trailer-flood a correct chunked body, then trailer lines without end
    no-etag       the ETag is left out after the first request
    lm-change     no ETag; the Last-Modified changes after the first request
    lm-drop       no ETag; the Last-Modified is left out after the first

``requests`` records (method, path, Range header) of every request; the
``after`` option makes the misbehaviour start only after that many correct
answers (so opening can succeed and a later tensor read fail). ``tls`` (a
certificate and key file) serves https. The endless modes give up after
``give_up`` seconds (a client that never stops them still ends), and
``wait_finished`` tells when every request's handler has ended (the
client closed its connection).
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.parse
from typing import List, Optional, Tuple

from .loopback import RANGE, LoopbackServer

_LAST_MODIFIED = ("Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT")



class VirtualFile:
    """``head`` bytes, then zeros up to ``size`` (never stored)."""

    def __init__(self, head: bytes, size: Optional[int] = None) -> None:
        self.head = bytes(head)
        self.size = len(self.head) if size is None else size

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if start >= end:
            return b""
        data = self.head[start:end]
        return data + bytes((end - start) - len(data))


class HostileServer(LoopbackServer):
    def __init__(
        self,
        file: VirtualFile,
        mode: str = "ok",
        *,
        after: int = 0,
        tls: Optional[Tuple[str, str]] = None,
        delay: float = 0.2,
        give_up: float = 10.0,
    ) -> None:
        self.file = file
        self.mode = mode
        self.after = after
        self.delay = delay
        self.give_up = give_up
        self.location = ""  # where mode "redirect" sends every request
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.headers: List[dict] = []  # every request's headers
        self.peers: List[Tuple[str, int]] = []  # every request's client address
        self.errors: List[BaseException] = []  # what handlers let out
        self.bytes_sent = 0
        self.finished = 0  # handlers that have ended
        self.release = threading.Event()  # ends stalls
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        super().__init__(tls=tls)

    def _server_error(self, httpd, request, client_address) -> None:
        # A client that gives up on a misbehaving answer resets the
        # connection: expected here, and kept for inspection.
        self.errors.append(sys.exc_info()[1])

    def wait_finished(self, timeout: float) -> bool:
        """Whether every request received so far has had its handler end
        (its connection closed by the client, or answered) within
        ``timeout`` seconds."""
        with self._ended:
            return self._ended.wait_for(lambda: self.finished >= len(self.requests), timeout)

    def __exit__(self, *exc) -> None:
        self.release.set()
        super().__exit__(*exc)

    # -- answers --------------------------------------------------------

    def _send_head(self, h, status: int, headers: dict) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, str(value))
        h.end_headers()

    def _send(self, h, status: int, headers: dict, body: bytes = b"") -> None:
        self._send_head(h, status, headers)
        if body and h.command != "HEAD":
            h.wfile.write(body)
            with self._lock:
                self.bytes_sent += len(body)

    def _serve(self, h) -> None:
        try:
            self._handle(h)
        except OSError:  # the client closed the connection
            h.close_connection = True
        finally:
            with self._ended:
                self.finished += 1
                self._ended.notify_all()

    def _drip(self, h, data: bytes, forever: bytes = b"") -> None:
        """``data``, then ``forever`` again and again, one byte per
        ``delay`` seconds, until the client leaves or ``give_up`` passes."""
        h.close_connection = True
        stop = time.monotonic() + self.give_up
        stream = iter(data)
        while time.monotonic() < stop and not self.release.is_set():
            byte = next(stream, None)
            if byte is None:
                if not forever:
                    return
                stream = iter(forever)
                continue
            h.wfile.write(bytes((byte,)))
            h.wfile.flush()
            self.release.wait(self.delay)

    def _flood(self, h, head: bytes, line: bytes) -> None:
        """``head``, then ``line`` again and again (quickly), until the
        client leaves or ``give_up`` passes."""
        h.close_connection = True
        h.wfile.write(head)
        stop = time.monotonic() + self.give_up
        while time.monotonic() < stop and not self.release.is_set():
            h.wfile.write(line * 16)
            h.wfile.flush()
            time.sleep(0.002)

    def _handle(self, h) -> None:
        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
            self.headers.append(dict(h.headers.items()))
            self.peers.append(h.client_address)
            count = len(self.requests)
        mode = self.mode if count > self.after else "ok"
        size = self.file.size
        if mode == "grow" and count > 1:
            size += 8
        etag: Optional[str] = '"v1"' if mode != "etag" or count <= 1 else '"v2"'
        last_modified: Optional[str] = None
        if mode == "no-etag" and count > 1:
            etag = None
        elif mode in ("lm-change", "lm-drop"):
            etag = None
            last_modified = _LAST_MODIFIED[0]
            if count > 1:
                last_modified = _LAST_MODIFIED[1] if mode == "lm-change" else None
        if mode == "continue-flood":
            self._flood(h, b"", b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        if mode == "trickle":
            self._drip(h, b"HTTP/1.1 206 Partial Content\r\n", b"X-Pad: ")
            return
        if mode == "redirect":
            self._send(h, 302, {"Location": self.location, "Content-Length": 0})
            return
        if mode.startswith("redirect-chain:"):
            hops = int(mode.split(":", 1)[1])
            path, _, query = h.path.partition("?")
            hop = int(urllib.parse.parse_qs(query).get("hop", ["0"])[0])
            if hop < hops:
                self._send(h, 302, {"Location": f"{path}?hop={hop + 1}", "Content-Length": 0})
                return
        if mode.startswith("status:"):
            status = int(mode.split(":", 1)[1])
            self._send(h, status, {"Content-Length": 2}, b"no")
            return
        if mode == "redirect-loop":
            self._send(h, 302, {"Location": h.path, "Content-Length": 0})
            return
        match = RANGE.match(h.headers.get("Range") or "")
        if mode == "ignore-range" or match is None:
            # The whole file, streamed in pieces (a client that stops reading
            # makes the write fail; never more than a small buffer in memory).
            whole = {"Content-Length": size}
            if etag is not None:
                whole["ETag"] = etag
            self._send_head(h, 200, whole)
            try:
                for start in range(0, size, 1 << 16):
                    h.wfile.write(self.file.read(start, min(start + (1 << 16), size)))
                    with self._lock:
                        self.bytes_sent += min(1 << 16, size - start)
            except OSError:
                pass
            return
        start = int(match.group(1))
        end = int(match.group(2)) + 1 if match.group(2) else size
        end = min(end, size)
        if start >= size:
            self._send(h, 416, {"Content-Range": f"bytes */{size}", "Content-Length": 0})
            return
        headers = {
            "Content-Range": f"bytes {start}-{end - 1}/{size}",
            "Content-Length": end - start,
            "Accept-Ranges": "bytes",
        }
        if etag is not None:
            headers["ETag"] = etag
        if last_modified is not None:
            headers["Last-Modified"] = last_modified
        if mode in ("headers-only", "stall", "trickle-body"):  # no body made: it may be huge
            self._send_head(h, 206, headers)
            h.wfile.flush()
            if mode == "headers-only":
                h.close_connection = True
            elif mode == "trickle-body":
                self._drip(h, self.file.read(start, min(end, start + (1 << 16))))
            else:
                self.release.wait(30)
                h.close_connection = True
            return
        body = self.file.read(start, end)
        if mode == "wrong-range":
            headers["Content-Range"] = f"bytes {start + 1}-{end}/{size}"
        elif mode == "no-range":
            del headers["Content-Range"]
        elif mode == "long":
            headers["Content-Length"] = len(body) + 100
            body += bytes(100)
        elif mode in ("chunked", "chunked-long", "trailer-flood"):
            if mode == "chunked-long":
                body += bytes(10)
            del headers["Content-Length"]
            self._send_head(h, 206, {**headers, "Transfer-Encoding": "chunked"})
            for i in range(0, len(body), 1000):
                piece = body[i : i + 1000]
                h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if mode == "trailer-flood":
                self._flood(h, b"0\r\n", b"X-Trailer: more\r\n")
                return
            h.wfile.write(b"0\r\n\r\n")
            with self._lock:
                self.bytes_sent += len(body)
            return
        elif mode == "drop-idle":
            self._send(h, 206, headers, body)
            h.wfile.flush()
            h.close_connection = True
            return
        elif mode == "short":
            self._send_head(h, 206, {**headers, "Connection": "close"})
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        elif mode == "stall-body":
            self._send_head(h, 206, headers)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            self.release.wait(30)
            h.close_connection = True
            return
        self._send(h, 206, headers, body)
