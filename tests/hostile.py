"""A hostile stratum server on loopback: it serves a real stratum directory, except
that the paths given a mode are answered as a hostile (or broken) server would:

    endless-body          200, chunked: random bytes without end, at full speed
    huge-content-length   200, Content-Length 99999999999999, then random bytes without end
    trickle-body          200, chunked: the object's real bytes, then zeros without end,
                          at 2 KB/s (above the default low-speed limit of 1 KB/s)
    endless-zlib          200, chunked: a valid zlib stream of zeros that never ends
    trickle-headers       a status line and then header lines that never end, one byte
                          every `interval` seconds (less than the client's timeout)
    endless-headers       header lines without end at 2 KB/s: fast enough for the
                          low-speed rule, so only a deadline ends them (not in MODES)

Every other path is passed through from the stratum. A hostile answer ends when the
client goes away (or after `MAX_SECONDS`, so that a client that never stops cannot
keep the test run's server busy for ever).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import urllib.parse
import zlib

from parrot_cvmfs.server.serve import StratumHandler, StratumServer

MODES = ("endless-body", "huge-content-length", "trickle-body", "endless-zlib", "trickle-headers")
TRICKLE_RATE = 2048  # bytes per second
MAX_SECONDS = 600.0
_NOISE = os.urandom(1 << 16)


class HostileHandler(StratumHandler):
    def do_GET(self):  # noqa: N802
        srv: HostileServer = self.server
        path = urllib.parse.urlsplit(self.path).path
        with srv.lock:
            srv.requests[path] += 1
        mode = srv.mode_for(path)
        if mode is None:
            self._send_file(False)
            return
        self.close_connection = True
        self._started = time.monotonic()
        try:
            getattr(self, "_" + mode.replace("-", "_"))()
        except (ConnectionError, TimeoutError, _Enough):
            pass

    # -- the modes ------------------------------------------------------------------------------

    def _endless_body(self) -> None:
        self._chunked_head()
        while True:
            self._chunk(_NOISE)

    def _huge_content_length(self) -> None:
        self._raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 99999999999999\r\n\r\n"
        )
        while True:
            self._raw(_NOISE)

    def _trickle_body(self) -> None:
        local = self._local_path()
        with open(local, "rb") as f:
            real = f.read()
        self._chunked_head()
        step = TRICKLE_RATE // 10
        data, zeros = memoryview(real), bytes(step)
        while True:
            piece, data = (data[:step], data[step:]) if data else (zeros, data)
            self._chunk(bytes(piece))
            self._sleep(0.1)

    def _endless_zlib(self) -> None:
        self._chunked_head()
        z = zlib.compressobj()
        zeros = bytes(1 << 20)
        while True:
            self._chunk(z.compress(zeros) + z.flush(zlib.Z_SYNC_FLUSH))

    def _trickle_headers(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        line = b"X-Trickle: still coming\r\n"
        i = 0
        while True:
            at = i if i < len(head) else len(head) + (i - len(head)) % len(line)
            self._raw((head + line)[at : at + 1])
            i += 1
            self._sleep(self.server.interval)

    def _endless_headers(self) -> None:
        self._raw(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"x" * (TRICKLE_RATE // 10 - 12) + b"\r\n"
        while True:
            self._raw(line)
            self._sleep(0.1)

    # -- writing --------------------------------------------------------------------------------

    def _raw(self, data: bytes) -> None:
        if time.monotonic() - self._started > MAX_SECONDS or self.server.stopping:
            raise _Enough
        self.wfile.write(data)
        self.wfile.flush()

    def _chunked_head(self) -> None:
        self._raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

    def _chunk(self, data: bytes) -> None:
        self._raw(b"%x\r\n%s\r\n" % (len(data), data))

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Enough(Exception):
    pass


class HostileServer(StratumServer):
    """A stratum server for `root` whose `modes` (path or path suffix -> mode) answer
    hostile; `requests` counts requests by path."""

    def __init__(self, root: str, interval: float = 0.25):
        super().__init__(root)
        self.RequestHandlerClass = HostileHandler
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()
        self.modes: dict[str, str] = {}
        self.interval = interval
        self.stopping = False

    def mode_for(self, path: str) -> str | None:
        for pattern, mode in self.modes.items():
            if path == pattern or path.endswith(pattern):
                return mode
        return None

    def start_background(self) -> threading.Thread:
        # a short poll: shutdown() waits for it (the default 0.5 s, per server per test)
        t = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.stopping = True
        self.shutdown()
        self.server_close()
