"""A loopback HTTP server that changes the file it serves without saying so.

It serves ``first`` until :meth:`SwitchingServer.switch` is called, then
``second``: same size, same ETag, same Last-Modified, so nothing in the
answers tells a client that the bytes are another file's. Range requests get
correct 206 answers; a request without a Range gets the whole file.
``others`` maps other file names (e.g. an index) to bytes that never change.
``requests`` records (method, Range header) of every request.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

from .loopback import RANGE, LoopbackServer

ETAG = '"same-file"'
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


class SwitchingServer(LoopbackServer):
    def __init__(self, first: bytes, second: bytes,
                 others: Optional[Dict[str, bytes]] = None) -> None:
        if len(first) != len(second):
            raise ValueError("both files must have the same size")
        self.files = (bytes(first), bytes(second))
        self.others = dict(others or {})
        self.switched = threading.Event()
        self.requests: List[Tuple[str, Optional[str]]] = []
        self._lock = threading.Lock()
        super().__init__()

    def switch(self) -> None:
        """From now on, serve the second file."""
        self.switched.set()

    def _serve(self, h) -> None:
        with self._lock:
            self.requests.append((h.command, h.headers.get("Range")))
        data = self.others.get(h.path.rsplit("/", 1)[-1])
        if data is None:
            data = self.files[1 if self.switched.is_set() else 0]
        size = len(data)
        headers = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Accept-Ranges": "bytes"}
        match = RANGE.match(h.headers.get("Range") or "")
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
