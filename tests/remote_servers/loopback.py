"""The scaffolding every test HTTP server here shares: a threaded server on
127.0.0.1 (a free port), quiet, keep-alive (HTTP/1.1), optionally https,
started and stopped by ``with``.

A subclass answers each GET and HEAD in ``_serve(h)`` (``h`` is the
``BaseHTTPRequestHandler`` of the request) and may override
``_server_error`` (what to do with an exception a handler let out; the
standard library's default prints it) and ``__exit__`` (to release what
its answers wait on before the server shuts down).
"""

from __future__ import annotations

import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple

#: a Range header of the one form these servers answer: ``bytes=START-[END]``
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class LoopbackServer:
    #: the path ``url`` names (every path gets the same answers unless the
    #: subclass looks at ``h.path``)
    path = "/model.safetensors"

    def __init__(self, *, tls: Optional[Tuple[str, str]] = None) -> None:
        self.scheme = "https" if tls else "http"
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._serve(self)

            def do_HEAD(self) -> None:
                server._serve(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                server._server_error(self, request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}{self.path}"

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _server_error(self, httpd: ThreadingHTTPServer, request, client_address) -> None:
        ThreadingHTTPServer.handle_error(httpd, request, client_address)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
