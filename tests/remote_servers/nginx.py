"""A real nginx (Debian's ``nginx-light``) on a loopback port, for tests.

Everything it writes lives under a temporary directory: the configuration,
pid file, logs and the temp paths nginx insists on. The access log records,
per request, the method, path, status, the ``Range`` header asked for and
``$body_bytes_sent``, so a test can count exactly what crossed the wire.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")


def nginx_binary() -> Optional[str]:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def serving_nginx(base: Path, fill: Callable[[Path], None], *,
                  tls: bool = False) -> Iterator["Nginx"]:
    """The body of a test file's ``nginx`` fixture (``yield from`` it): an
    nginx serving ``base/www`` once ``fill(root)`` has written the files,
    its log read up to here; stopped afterwards. Skips when nginx is not
    installed. With ``tls`` it serves https too (when openssl can make a
    certificate)."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx-light)")
    server = Nginx(binary, base, tls=make_certificate(base) if tls else None).start()
    try:
        fill(server.root)
        server.log()
        yield server
    finally:
        server.stop()


@dataclass
class LogEntry:
    method: str
    path: str
    status: int
    range: str  # "-" when the request had no Range header
    sent: int  # body bytes sent


_CONFIG = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 128; }}
http {{
    log_format bytes '$request_method\\t$uri\\t$status\\t$http_range\\t$body_bytes_sent';
    access_log {base}/access.log bytes;
    client_body_temp_path {base}/tmp/body;
    proxy_temp_path {base}/tmp/proxy;
    fastcgi_temp_path {base}/tmp/fastcgi;
    uwsgi_temp_path {base}/tmp/uwsgi;
    scgi_temp_path {base}/tmp/scgi;
    default_type application/octet-stream;
    types {{ application/json json; }}
    sendfile on;
    keepalive_requests 10000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        location / {{ }}
        location /__mark_ {{ return 204; }}
    }}
{tls_server}}}
"""

_TLS_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
        location / {{ }}
    }}
"""


def make_certificate(directory: Path) -> Optional[Tuple[Path, Path]]:
    """A self-signed certificate for 127.0.0.1 (openssl's CLI), or None."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """``Nginx(binary, base).start()`` serves ``base/www`` on 127.0.0.1."""

    def __init__(self, binary: str, base: Path, tls: Optional[Tuple[Path, Path]] = None) -> None:
        self.binary = binary
        self.base = Path(base)
        self.root = self.base / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.base / "tmp").mkdir(exist_ok=True)
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self.tls = tls  # (certificate, key): also serve https on tls_port
        self.tls_port = 0
        self._marks = 0
        self._consumed = 0  # log lines already handed out

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def url_of(self, name: str) -> str:
        return f"{self.url}/{urllib.parse.quote(name)}"

    def start(self) -> "Nginx":
        user = ""
        if os.geteuid() == 0:
            # Workers would otherwise drop to "nobody", who cannot read tmp_path.
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name};"
        for _ in range(5):  # bounded: another process may take the port first
            self.port = _free_port()
            tls_server = ""
            if self.tls is not None:
                self.tls_port = _free_port()
                tls_server = _TLS_SERVER.format(
                    port=self.tls_port, cert=self.tls[0], key=self.tls[1], root=self.root
                )
            config = self.base / "nginx.conf"
            config.write_text(
                _CONFIG.format(user=user, base=self.base, port=self.port, root=self.root,
                               tls_server=tls_server)
            )
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.base), "-c", str(config),
                 "-e", str(self.base / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"nginx did not start: {self.error_log()}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            self.log()  # drops nothing yet; makes sure the log exists
            return True
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def error_log(self) -> str:
        try:
            return (self.base / "error.log").read_text()
        except OSError:
            return ""

    def _lines(self) -> List[str]:
        try:
            return (self.base / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def log(self) -> List[LogEntry]:
        """The requests served since the last call (complete: a marker
        request is sent and awaited, and nginx logs requests in order)."""
        self._marks += 1
        marker = f"/__mark_{self._marks}"
        urllib.request.urlopen(self.url + marker, timeout=5).read()
        entries: List[LogEntry] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = self._lines()
            fields = [line.split("\t") for line in lines[self._consumed :]]
            ends = [i for i, f in enumerate(fields) if len(f) > 1 and f[1] == marker]
            if ends:
                for f in fields[: ends[0]]:
                    entries.append(LogEntry(f[0], f[1], int(f[2]), f[3], int(f[4])))
                self._consumed += ends[0] + 1
                return entries
            time.sleep(0.02)
        raise RuntimeError(f"nginx never logged the marker request {marker}")
