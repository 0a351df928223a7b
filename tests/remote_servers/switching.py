"""A loopback HTTP server that changes the file it serves without saying so.

It serves ``first`` until :meth:`SwitchingServer.switch` is called, then
``second``: same size, same ETag, same Last-Modified, so nothing in the
answers tells a client that the bytes are another file's. Range requests get
correct 206 answers; a request without a Range gets the whole file.
``others`` maps other file names (e.g. an index) to bytes that never change. ``requests`` records (method, Range header) of every request.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
ETAG = '"same-file"'
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


class SwitchingServer:
    def __init__(self, first: bytes, second: bytes,
                 others: Optional[Dict[str, bytes]] = None) -> None:
        if len(first) != len(second):
            raise ValueError("both files must have the same size")
        self.files = (bytes(first), bytes(second))
        self.others = dict(others or {})
        self.switched = threading.Event()
        self.requests: List[Tuple[str, Optional[str]]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_HEAD(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/model.safetensors"

    def switch(self) -> None:
        """From now on, serve the second file."""
        self.switched.set()

    def __enter__(self) -> "SwitchingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def _handle(self, h) -> None:
        with self._lock:
            self.requests.append((h.command, h.headers.get("Range")))
        data = self.others.get(h.path.rsplit("/", 1)[-1])
        if data is None:
            data = self.files[1 if self.switched.is_set() else 0]
        size = len(data)
        headers = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Accept-Ranges": "bytes"}
        match = _RANGE.match(h.headers.get("Range") or "")
        if match is None:
            status, body = 200, data
        else:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1 if match.group(2) else size, size)
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status, body = 206, data[start:end]
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(len(body))
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
