"""A static HTTP server for stratum directories: `http://HOST:PORT/cvmfs/NAME/...`
maps to `DIR/NAME/...`, with the headers a stratum 1 sends (short expiry for
`.cvmfs*` files so proxies do not keep stale manifests, long for objects)."""

from __future__ import annotations

import email.utils
import os
import posixpath
import shutil
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .geo import GeoConfig, answer


class StratumHandler(BaseHTTPRequestHandler):
    server_version = "parrot-cvmfs-stratum"
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle holds the
    # body until the client's delayed ACK of the headers, 40 ms per object on loopback
    disable_nagle_algorithm = True
    root: str = "."

    def log_message(self, format, *args):  # noqa: A002 - quiet unless asked
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _local_path(self) -> str | None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        if not path.startswith("/cvmfs/"):
            return None
        parts = [p for p in path[len("/cvmfs/") :].split("/") if p]
        if any(p in (".", "..") for p in parts) or not parts:
            return None
        return os.path.join(self.server.root, *parts)

    def _send_file(self, head_only: bool) -> None:
        local = self._local_path()
        if local is None or not os.path.isfile(local):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            f = open(local, "rb")
        except OSError:
            self.send_error(HTTPStatus.FORBIDDEN)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            name = posixpath.basename(local)
            self.send_response(HTTPStatus.OK)
            if name.startswith(".cvmfs"):
                self.send_header("Content-Type", "application/x-cvmfs")
                self.send_header("Cache-Control", "max-age=61")
            else:
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Cache-Control", "max-age=259200")
            self.send_header("Content-Length", str(size))
            self.send_header("Date", email.utils.formatdate(usegmt=True))
            self.end_headers()
            if not head_only:
                shutil.copyfileobj(f, self.wfile, 1 << 16)

    def do_GET(self):  # noqa: N802
        geo = answer(self.server.geo, self.path)  # the Geo-API (server/geo.py)
        if geo is not None:
            self.send_response(geo[0])
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(geo[1])))
            self.end_headers()
            self.wfile.write(geo[1])
            return
        self._send_file(False)

    def do_HEAD(self):  # noqa: N802
        self._send_file(True)


class StratumServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    geo: GeoConfig | None = None  # how the Geo-API orders (None: as asked)

    def __init__(
        self,
        root: str,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        geo: GeoConfig | None = None,
    ):
        self.root = os.path.abspath(root)
        self.verbose = verbose
        self.geo = geo
        super().__init__((host, port), StratumHandler)

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (a timeout, a killed job): not our problem
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/cvmfs"

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="stratum-server", daemon=True)
        t.start()
        return t
