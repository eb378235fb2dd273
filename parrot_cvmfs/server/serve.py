"""A static HTTP/1.1 server for stratum directories: `http://HOST:PORT/cvmfs/NAME/...`
maps to `DIR/NAME/...`, answered as nginx answers a stratum 1's files: the same
headers (`.cvmfs*` files expire after 61 s so proxies do not keep stale manifests,
objects after 3 days), `Range` (206, 416, multipart/byteranges), `If-Range`, `304`
for a revalidating proxy, kept-alive connections and `sendfile` for bodies.

Every connection has its own thread, at most `max_connections` of them; every read
and write has a deadline (an idle kept-alive connection, a request head that trickles
in, a client that stops reading), and request heads are bounded in size and lines, so
a slow or hostile client holds one thread for a bounded time and never another
client's; when every slot is taken, the connection idle longest between requests is
closed to make room (as nginx does). Entries of DIR are the operator's repositories
(a symlink there is the operator's choice, as an `alias` in nginx); beneath them, no
symlink is followed.

Other answers plug in by one call: `server.add_route(prefix, handler)` answers the
requests for `/cvmfs/NAME/<prefix>...` with `handler(request) -> Answer`; the Geo-API
of a stratum 1 (server/geo.py) is one, always there, ordered by `server.geo`.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from . import geo as _geo

MAX_HEAD = 16 * 1024  # bytes of request line and headers together (nginx: 4 x 8 KiB)
MAX_HEADER_LINES = 100
MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 15.0  # seconds a kept-alive connection may wait for its next request
HEAD_DEADLINE = 10.0  # seconds from a request's first byte to the end of its head
SEND_TIMEOUT = 30.0  # seconds a client may take to accept more of an answer
# after a refusal, input still arriving is read and dropped for at most this long (nginx's
# lingering close: lingering_timeout 5 s, lingering_time 30 s; ours shorter, a thread each)
LINGER_TIME = 2.0
SMALL_BODY = 64 * 1024  # bodies up to this go out with the head in one write

OBJECT_MAX_AGE = 259200  # nginx `expires 3d`
META_MAX_AGE = 61  # `.cvmfs*` files: the manifest, whitelist, reflog...

_REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    414: "Request-URI Too Large",
    416: "Requested Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    505: "HTTP Version Not Supported",
}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_OFF_T_MAX = (1 << 63) - 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a fifo planted in the tree must not block the open; it is refused below
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def http_date(t: float) -> str:
    """`t` as an HTTP date (RFC 9110 IMF-fixdate), independent of the locale."""
    tm = time.gmtime(t)
    return (
        f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} GMT"
    )


class _Clock:
    """The current second's `Date` and the `Expires` dates after it, formatted once a
    second (a race only formats the same string twice)."""

    def __init__(self) -> None:
        self._second = -1
        self._dates: dict[int, str] = {}

    def date(self, after: int = 0) -> str:
        s = int(time.time())
        if s != self._second:
            self._dates, self._second = {}, s
        d = self._dates.get(after)
        if d is None:
            d = self._dates[after] = http_date(s + after)
        return d


_clock = _Clock()
_mtimes: dict[int, str] = {}  # Last-Modified dates of the files served, bounded below


def _last_modified(mtime: int) -> str:
    d = _mtimes.get(mtime)
    if d is None:
        if len(_mtimes) > 4096:  # a stratum's objects share few mtimes; never many kept
            _mtimes.clear()
        d = _mtimes[mtime] = http_date(mtime)
    return d


# -- ranges, as nginx's range filter reads them ----------------------------------------------


class _Unsatisfiable(Exception):
    pass


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges [start, end) a `Range` header asks of a `size`-byte file, as
    nginx reads it: None to answer the whole file (not a `bytes=` range, a range from
    0 that is empty, or ranges that add up to more than the file); `_Unsatisfiable`
    for a malformed header or one whose ranges all start beyond the end."""
    if len(value) < 7 or value[:6].lower() != "bytes=":
        return None
    ranges: list[tuple[int, int]] = []
    total = 0
    for spec in value[6:].split(","):
        first, dash, last = spec.strip(" ").partition("-")
        first, last = first.rstrip(" "), last.lstrip(" ")
        if not dash or not (first or last):
            raise _Unsatisfiable
        if not first:  # "-n": the last n bytes
            n = _offset(last)
            start, end = (size - n if n < size else 0), size
        else:
            start = _offset(first)
            end = size if not last else min(_offset(last) + 1, size)
        if start < end:
            ranges.append((start, end))
            total += end - start
        elif start == 0:
            return None
    if not ranges:
        raise _Unsatisfiable
    return None if total > size else ranges


def _offset(s: str) -> int:
    """A decimal byte offset, as an off_t holds it."""
    if not (s.isdigit() and s.isascii()) or len(s) > 19 or int(s) > _OFF_T_MAX:
        raise _Unsatisfiable
    return int(s)


# -- routes ------------------------------------------------------------------------------------


@dataclass
class Request:
    """What a route sees of a request for `/cvmfs/<repository>/<prefix><rest>`."""

    server: StratumServer
    method: str
    repository: str
    rest: str  # the decoded path below the route's prefix
    query: str  # the raw query string, "" if none
    headers: dict[str, str]  # lower-case names, the first of each


@dataclass
class Answer:
    """A route's answer: its status, body and content type (and cache lifetime)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    max_age: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


Route = Callable[[Request], Answer]


def geo_route(request: Request) -> Answer:
    """The Geo-API: the order of the names asked, as `request.server.geo` sees it."""
    path = f"/cvmfs/{request.repository}{_geo.API}{request.rest}"
    status, body = _geo.answer(request.server.geo, path) or (400, b"bad Geo-API request\n")
    return Answer(status, body)


# -- one connection ----------------------------------------------------------------------------


class _Refused(Exception):
    """A request answered with an error status (`status`)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Writer:
    """`wfile` for handlers that write an answer themselves (tests' fault injection)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


class StratumHandler:
    """One client connection: its requests, one after another (kept alive, pipelined),
    each answered from the routes or the stratum's files. Subclasses may override
    `do_GET`/`do_HEAD`/`_send_file` and answer with `send_response`, `send_header`,
    `end_headers` and `wfile`, as with `http.server`."""

    server_version = "parrot-cvmfs-stratum"

    def __init__(self, sock: socket.socket, client_address: tuple, server: StratumServer):
        self.request = self.connection = sock
        self.client_address = client_address
        self.server = server
        self.wfile = _Writer(sock)
        self._buf = bytearray()
        self.close_connection = False
        self.command = self.path = self.request_version = ""
        self.headers: dict[str, str] = {}
        self._out: list[str] = []
        self._status = 0
        self._connection_header = False
        self._request_parts: list[str] | None = None

    # -- the connection's loop ---------------------------------------------------------------

    def handle(self) -> None:
        """Answer requests until the client closes, asks to close, or times out."""
        try:
            while not self.close_connection and not self.server.closing:
                try:
                    if not self._read_request():
                        return
                except _Refused as e:
                    self.close_connection = True
                    self.connection.settimeout(self.server.send_timeout)
                    self.send_error(e.status)
                    self._linger()
                    return
                self.connection.settimeout(self.server.send_timeout)
                method = getattr(self, "do_" + self.command, None)
                if method is None:
                    self.close_connection = True
                    self.send_error(405)
                    return
                method()
        except OSError:
            pass  # the client went away, stopped reading, or timed out: nothing to answer

    def _linger(self) -> None:
        """Close after a refusal as nginx does: stop writing, then read and drop what the
        client is still sending for a moment. Closing with unread input makes the kernel
        answer with a reset, which can destroy the refusal before the client reads it."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_TIME
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:
            pass  # the client is gone or too slow: the close is all that is left

    def _read_request(self) -> bool:
        """The next request's line and headers; False when the connection is done."""
        head = self._read_head()
        if head is None:
            return False
        lines = head.split(b"\n")
        words = lines[0].rstrip(b"\r").split(b" ")
        if len(words) != 3 or not words[1]:
            raise _Refused(400)
        try:
            self.command, self.path, self.request_version = (w.decode("ascii") for w in words)
        except UnicodeDecodeError:
            raise _Refused(400) from None
        if not (self.command.isprintable() and self.path.isprintable()):
            raise _Refused(400)  # control characters: never into a path or a log line
        if self.request_version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Refused(505 if self.request_version.startswith("HTTP/") else 400)
        if len(lines) > MAX_HEADER_LINES + 1:
            raise _Refused(431)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.rstrip(b"\r").partition(b":")
            if not colon or not name or name != name.strip():
                raise _Refused(400)
            headers.setdefault(name.decode("latin-1").lower(), value.strip().decode("latin-1"))
        self.headers = headers
        self._request_parts = self._parse_target()
        if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
            raise _Refused(400)  # GET and HEAD carry no body; no guessing where one ends
        conn = headers.get("connection", "").lower()
        if self.request_version == "HTTP/1.1":
            self.close_connection = "close" in conn
        else:
            self.close_connection = "keep-alive" not in conn
        return True

    def _read_head(self) -> bytes | None:
        """Bytes up to the blank line that ends a request head (LF-only lines too)."""
        sock, buf = self.connection, self._buf
        # one deadline for all of a head from its first byte (blank lines before it count)
        deadline = time.monotonic() + self.server.head_deadline if buf else 0.0
        while True:
            if buf[:1] in (b"\r", b"\n"):  # blank lines before a request are ignored
                del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
            end, gap = buf.find(b"\r\n\r\n"), 4
            lf = buf.find(b"\n\n", 0, end if end >= 0 else len(buf))
            if lf >= 0:  # a head of LF-only lines ends first
                end, gap = lf, 2
            if end > MAX_HEAD or end < 0 and len(buf) > MAX_HEAD:
                raise _Refused(431)
            if end >= 0:
                head = bytes(buf[:end])
                del buf[: end + gap]
                return head
            if not deadline:  # between requests: the idle keep-alive limit
                if not self.server.wait_idle(sock):
                    return None  # no request in time, or closed to make room
                sock.settimeout(self.server.idle_timeout)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Refused(408)
                sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if deadline:
                    raise _Refused(408) from None
                return None
            if not data:
                return None
            if not deadline:
                deadline = time.monotonic() + self.server.head_deadline
            buf += data

    # -- answers -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        self._answer(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(True)

    def _answer(self, head_only: bool) -> None:
        parts = self._parts()
        if parts:
            rest = "/".join(parts[1:])
            for prefix, route in self.server.routes:
                if rest.startswith(prefix):
                    query = urllib.parse.urlsplit(self.path).query
                    request = Request(
                        self.server,
                        self.command,
                        parts[0],
                        rest[len(prefix) :],
                        query,
                        self.headers,
                    )
                    try:
                        answer = route(request)
                    except Exception as e:  # a route's defect costs its request, no more
                        sys.stderr.write(f"serve: {self.path}: {type(e).__name__}: {e}\n")
                        answer = Answer(500, b"500 Internal Server Error\n")
                    self._send_answer(answer, head_only)
                    return
        self._send_file(head_only)

    def _parts(self) -> list[str] | None:
        return self._request_parts

    def _parse_target(self) -> list[str] | None:
        """The path components below /cvmfs/ the request names, None if it names
        nothing we serve (outside /cvmfs/, `.` or `..`, a NUL)."""
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute form, as proxies send it
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        path = urllib.parse.unquote(target.partition("?")[0], errors="surrogateescape")
        if not path.startswith("/cvmfs/"):
            return None
        parts = [p for p in path[len("/cvmfs/") :].split("/") if p]
        if not parts or any(p in (".", "..") or "\0" in p for p in parts):
            return None
        return parts

    def _local_path(self) -> str | None:
        """The file below the served root the request names (for subclasses that
        read it themselves; the server's own answers open it with `_open`)."""
        parts = self._parts()
        return None if parts is None else os.path.join(self.server.root, *parts)

    def _open(self, parts: list[str]) -> int:
        """A descriptor of the regular file `parts` names, walked from the root one
        directory at a time without following a symlink beneath the repository's
        directory; `_Refused` (404, or 403 where the server may not read) if none."""
        if len(parts) < 2:
            raise _Refused(404)
        fds: list[int] = []
        try:
            # the root and its repository directories are the operator's: a symlink
            # there is followed; the root is opened per request, so it may be replaced
            fds.append(os.open(self.server.root, _DIR_FLAGS & ~os.O_NOFOLLOW))
            fds.append(os.open(parts[0], _DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fds[-1]))
            for p in parts[1:-1]:
                fds.append(os.open(p, _DIR_FLAGS, dir_fd=fds[-1]))
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fds[-1])
        except PermissionError:
            raise _Refused(403) from None
        except (OSError, ValueError):
            raise _Refused(404) from None
        finally:
            for d in fds:
                os.close(d)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _Refused(404)
        return fd

    def _send_file(self, head_only: bool) -> None:
        parts = self._parts()
        try:
            if parts is None:
                raise _Refused(404)
            fd = self._open(parts)
        except _Refused as e:
            self.send_error(e.status)
            return
        try:
            self._send_open_file(fd, parts[-1], head_only)
        finally:
            os.close(fd)

    def _send_open_file(self, fd: int, name: str, head_only: bool) -> None:
        st = os.fstat(fd)
        size, mtime = st.st_size, int(st.st_mtime)
        content_type = "application/x-cvmfs" if name.startswith(".cvmfs") else None
        max_age = META_MAX_AGE if content_type else OBJECT_MAX_AGE
        content_type = content_type or "application/octet-stream"
        last_modified = _last_modified(mtime)
        etag = f'"{mtime:x}-{size:x}"'  # as nginx makes it: so If-Range and proxies agree
        h = self.headers
        if self._not_modified(etag, last_modified):
            self._start(304, max_age)
            self._out += [f"Last-Modified: {last_modified}", f"ETag: {etag}"]
            self._finish(b"")
            return
        ranges = None
        if "range" in h and self._if_range_holds(etag, last_modified):
            try:
                ranges = parse_ranges(h["range"], size)
            except _Unsatisfiable:
                body = b"416 Requested Range Not Satisfiable\n"
                self._start(416)
                self._out += [
                    "Content-Type: text/plain",
                    f"Content-Length: {len(body)}",
                    f"Content-Range: bytes */{size}",
                ]
                self._finish(b"" if head_only else body)
                return
        self._start(206 if ranges else 200, max_age)
        self._out += [f"Last-Modified: {last_modified}", f"ETag: {etag}"]
        if not ranges:
            self._out += [
                f"Content-Type: {content_type}",
                f"Content-Length: {size}",
                "Accept-Ranges: bytes",
            ]
            self._send_body(fd, [(0, size)], head_only)
        elif len(ranges) == 1:
            (start, end) = ranges[0]
            self._out += [
                f"Content-Type: {content_type}",
                f"Content-Length: {end - start}",
                f"Content-Range: bytes {start}-{end - 1}/{size}",
            ]
            self._send_body(fd, ranges, head_only)
        else:
            self._send_multipart(fd, ranges, content_type, size, head_only)

    def _not_modified(self, etag: str, last_modified: str) -> bool:
        """A proxy revalidating what it holds: `If-None-Match` (the ETag, weakly
        compared) before `If-Modified-Since` (exactly the Last-Modified, nginx's rule)."""
        inm = self.headers.get("if-none-match")
        if inm is not None:
            tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
            return "*" in tags or etag in tags
        return self.headers.get("if-modified-since") == last_modified

    def _if_range_holds(self, etag: str, last_modified: str) -> bool:
        """`If-Range` names this version of the file (its ETag or its date), or is absent."""
        v = self.headers.get("if-range")
        return v is None or v == (etag if v.endswith('"') else last_modified)

    def _send_multipart(self, fd, ranges, content_type: str, size: int, head_only: bool) -> None:
        # nginx's layout: a 20-digit boundary, each part after a CRLF, the closing one too
        boundary = f"{int.from_bytes(os.urandom(8), 'big') % 10**20:020d}"
        heads = [
            (
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: bytes {s}-{e - 1}/{size}\r\n\r\n"
            ).encode()
            for s, e in ranges
        ]
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = sum(len(p) for p in heads) + sum(e - s for s, e in ranges) + len(tail)
        self._out += [
            f"Content-Type: multipart/byteranges; boundary={boundary}",
            f"Content-Length: {length}",
        ]
        head = self._head()
        if head_only:
            self.connection.sendall(head)
            return
        self.connection.sendall(head, socket.MSG_MORE)
        for part, (s, e) in zip(heads, ranges, strict=True):
            self.connection.sendall(part, socket.MSG_MORE)
            self._sendfile(fd, s, e - s)
        self.connection.sendall(tail)

    def _send_body(self, fd: int, ranges: list[tuple[int, int]], head_only: bool) -> None:
        """The head, then the one range of `fd` (small bodies in the same write)."""
        head = self._head()
        sock = self.connection
        (start, end) = ranges[0]
        if head_only or start == end:
            sock.sendall(head)
        elif end - start <= SMALL_BODY:
            body = os.pread(fd, end - start, start)
            if len(body) != end - start:
                raise OSError("the file shrank while it was sent")
            sock.sendall(head + body)
        else:
            sock.sendall(head, socket.MSG_MORE)
            self._sendfile(fd, start, end - start)

    def _sendfile(self, fd: int, offset: int, count: int) -> None:
        """`count` bytes of `fd` from `offset` to the client, copied by the kernel; each
        wait for the client to take more is bounded by the send timeout."""
        out = self.connection.fileno()
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, min(count, 1 << 30))
            except BlockingIOError:  # the socket has a timeout, so it is non-blocking
                p = select.poll()
                p.register(out, select.POLLOUT)
                if not p.poll(self.server.send_timeout * 1000):
                    raise TimeoutError("the client stopped reading") from None
                continue
            if n == 0:  # the length is promised: the connection cannot carry on
                raise OSError("the file shrank while it was sent")
            offset += n
            count -= n

    def _send_answer(self, answer: Answer, head_only: bool) -> None:
        self._start(answer.status, answer.max_age)
        self._out += [
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
        ]
        self._out += [f"{k}: {v}" for k, v in answer.headers]
        self._finish(b"" if head_only else answer.body)

    # -- writing a head ----------------------------------------------------------------------

    def _start(self, status: int, max_age: int | None = None) -> None:
        self._status = status
        self._connection_header = False
        self._out = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Server: {self.server_version}",
            f"Date: {_clock.date()}",
        ]
        if max_age is not None:
            self._out += [
                f"Expires: {_clock.date(max_age)}",
                f"Cache-Control: max-age={max_age}",
            ]

    def _head(self) -> bytes:
        if not self._connection_header:
            self._out.append("Connection: " + ("close" if self.close_connection else "keep-alive"))
        self._log()
        head = ("\r\n".join(self._out) + "\r\n\r\n").encode("latin-1")
        self._out = []
        return head

    def _finish(self, body: bytes) -> None:
        self.connection.sendall(self._head() + body)

    def send_error(self, code: int, message: str | None = None) -> None:
        """A short plain-text error answer (HEAD gets the head only)."""
        body = b"" if self.command == "HEAD" else f"{code} {_REASONS.get(code, 'Error')}\n".encode()
        self._start(code)
        self._out += ["Content-Type: text/plain", f"Content-Length: {len(body)}"]
        self._finish(body)

    # the http.server-style calls, for subclasses that write an answer themselves
    def send_response(self, code: int, message: str | None = None) -> None:
        self._start(code)

    def send_header(self, keyword: str, value: str) -> None:
        self._out.append(f"{keyword}: {value}")
        if keyword.lower() == "connection":
            self._connection_header = True
            self.close_connection = value.lower() == "close"

    def end_headers(self) -> None:
        self.connection.sendall(self._head())

    def _log(self) -> None:
        if self.server.verbose:
            sys.stderr.write(
                f'{self.client_address[0]} - - [{_clock.date()}] "{self.command} '
                f'{self.path} {self.request_version}" {self._status}\n'
            )


# -- the server --------------------------------------------------------------------------------


class StratumServer:
    """Serves the stratum directories below `root` on `host:port` (0: any free port)."""

    def __init__(
        self,
        root: str,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        geo: _geo.GeoConfig | None = None,
    ):
        self.root = os.path.abspath(root)
        self.verbose = verbose
        self.geo = geo  # how the Geo-API orders names (None: as asked)
        self.RequestHandlerClass: type[StratumHandler] = StratumHandler
        self.routes: list[tuple[str, Route]] = [(_geo.API.lstrip("/"), geo_route)]
        self.idle_timeout, self.head_deadline, self.send_timeout = (
            IDLE_TIMEOUT,
            HEAD_DEADLINE,
            SEND_TIMEOUT,
        )
        self.closing = False
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._idle: dict[socket.socket, None] = {}  # waiting between requests, oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self.socket = socket.create_server((host, port), backlog=128)
        self.server_address = self.socket.getsockname()

    def add_route(self, prefix: str, route: Route) -> None:
        """Answer `/cvmfs/<repository>/<prefix>...` with `route` (before the files;
        the first route whose prefix matches answers)."""
        self.routes.append((prefix, route))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/cvmfs"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections until `shutdown()`; each gets a thread while a slot is free."""
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                try:
                    ready, _, _ = select.select([self.socket], [], [], poll_interval)
                except OSError:
                    return
                if not ready:
                    continue
                if not self._slots.acquire(blocking=False):
                    # as nginx does when out of connections: a kept-alive connection
                    # waiting for its next request makes room for one that has a request
                    self._close_an_idle_connection()
                    # its thread ends at once: wait for it rather than close another
                    if not self._slots.acquire(timeout=max(poll_interval, 1.0)):
                        continue  # every slot busy: new clients wait in the listen backlog
                try:
                    conn = self.socket.accept()[0]
                except OSError:
                    self._slots.release()
                    continue
                threading.Thread(
                    target=self._connection, args=(conn,), name="stratum-client", daemon=True
                ).start()
        finally:
            self._stop.clear()  # a shutdown() before the loop started ends it at once
            self._stopped.set()

    def wait_idle(self, conn: socket.socket) -> bool:
        """Wait up to the idle timeout for `conn`'s next request, closable for room
        meanwhile; True when its bytes are there to read and it is no longer closable."""
        with self._lock:
            self._idle[conn] = None
        try:
            p = select.poll()
            p.register(conn, select.POLLIN)
            p.poll(self.idle_timeout * 1000)
        except (OSError, ValueError):
            pass
        with self._lock:
            # taken off the list before its bytes are read: the closer polls under this
            # lock, so it never closes a connection whose request has been consumed
            if conn not in self._idle:
                return False  # chosen to make room (and shut down)
            del self._idle[conn]
        try:
            p = select.poll()
            p.register(conn, select.POLLIN)
            return bool(p.poll(0))
        except (OSError, ValueError):
            return False

    def _close_an_idle_connection(self) -> None:
        with self._lock:
            idle = list(self._idle)  # the longest idle first: dicts keep order
            if not idle:
                return
            p = select.poll()  # one whose next request has arrived is not idle
            try:
                for c in idle:
                    p.register(c, select.POLLIN)
                busy = {fd for fd, _ in p.poll(0)}
            except (OSError, ValueError):  # one was closed meanwhile: try again next time
                return
            conn = next((c for c in idle if c.fileno() not in busy), None)
            if conn is None:
                return
            del self._idle[conn]
            try:  # under the lock: its thread sees it gone before it reads a byte
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _connection(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.add(conn)
            try:
                addr = conn.getpeername()
            except OSError:
                addr = ("?", 0)
            self.RequestHandlerClass(conn, addr, self).handle()
        finally:
            with self._lock:
                self._open.discard(conn)
                self._idle.pop(conn, None)
            try:
                conn.close()
            finally:
                self._slots.release()

    def start_background(self, poll_interval: float = 0.5) -> threading.Thread:
        t = threading.Thread(
            target=self.serve_forever, args=(poll_interval,), name="stratum-server", daemon=True
        )
        t.start()
        return t

    def shutdown(self) -> None:
        """Stop accepting (from another thread than the one serving); waits for it."""
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket and end every open connection: a server shut
        down answers no one, not even on a connection kept alive."""
        self.closing = True
        self.socket.close()
        with self._lock:
            conns = list(self._open)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
