"""One bounded transfer: the failure kinds of an attempt, its budget on the wire (an
overall deadline and the low-speed rule, kept in the network backend under the HTTP
client), the sink that hashes, inflates and refuses a body longer than it can be, and
`attempt`, which makes one request and names its failure's kind."""

from __future__ import annotations

import threading
import time
import zlib

from ..format.hashes import new_hasher
from .limits import transfer_budget, wire_limit
from .network import DIRECT

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable

    from .network import DownloadSettings

# Failure kinds (cvmfs download failure classes, collapsed)
# Failure kinds (cvmfs download failure classes, collapsed)
HOST_HTTP = "host-http"
HOST_CONNECTION = "host-connection"  # transfer error: retried on the same path first
HOST_SLOW = "host-too-slow"
HOST_SHORT = "host-short-transfer"
PROXY_HTTP = "proxy-http"
PROXY_CONNECTION = "proxy-connection"
PROXY_SLOW = "proxy-too-slow"
PROXY_SHORT = "proxy-short-transfer"
BAD_DATA = "bad-data"  # corrupt, or longer than the object can be: a bad answer from the host

TRANSFER_KINDS = {HOST_CONNECTION, HOST_SLOW, HOST_SHORT, PROXY_CONNECTION, PROXY_SLOW, PROXY_SHORT}
HOST_KINDS = {HOST_HTTP, HOST_CONNECTION, HOST_SLOW, HOST_SHORT}
PROXY_KINDS = {PROXY_HTTP, PROXY_CONNECTION, PROXY_SLOW, PROXY_SHORT}


class Failure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Budget:
    """One attempt's bounds on the wire: an overall deadline, and the low-speed rule
    (at least `rate` bytes per second over every `timeout` seconds) from the moment the
    request goes out, so that headers trickled a byte at a time end as a slow body does
    (a read timeout alone restarts on every byte)."""

    __slots__ = ("deadline", "seconds", "timeout", "rate", "kind", "where", "start", "got")

    def __init__(self, seconds: float, timeout: float, rate: int, kind: str, where: str):
        now = time.monotonic()
        self.deadline = now + seconds
        self.seconds, self.timeout, self.rate = seconds, timeout, rate
        self.kind, self.where = kind, where
        self.start, self.got = now, 0  # the current low-speed window

    def wait(self) -> float:
        """How long the next socket operation may block."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.expired()
        return min(self.timeout, left)

    def expired(self) -> Failure:
        return Failure(
            self.kind, f"{self.where}: no complete answer within {round(self.seconds, 1):g} s"
        )

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    def received(self, n: int) -> None:
        self.got += n
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed >= self.timeout and self.rate > 0:
            if self.got < self.rate * elapsed:
                raise Failure(self.kind, f"{self.where}: transfer slower than {self.rate} B/s")
            self.start, self.got = now, 0


# The budget of the attempt a thread is making; the sockets below the HTTP client obey it.
active = threading.local()


class _BoundedStream:
    """A network stream of the HTTP client (httpcore's interface) whose reads, writes
    and TLS handshake wait no longer than the current attempt's budget allows."""

    def __init__(self, stream):
        self._s = stream

    def _op(self, fn, *args, timeout: float | None = None):
        b = getattr(active, "budget", None)
        if b is None:
            return fn(*args, timeout)
        try:
            return fn(*args, b.wait())
        except timeouts() as e:
            if b.over():
                raise b.expired() from e
            raise

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._op(self._s.read, max_bytes, timeout=timeout)
        b = getattr(active, "budget", None)
        if b is not None:
            b.received(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._op(self._s.write, buffer, timeout=timeout)

    def close(self) -> None:
        self._s.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _BoundedStream(
            self._op(self._s.start_tls, ssl_context, server_hostname, timeout=timeout)
        )

    def get_extra_info(self, info: str):
        return self._s.get_extra_info(info)


class BoundedBackend:
    """httpcore's synchronous network backend, its connections bounded by the budget."""

    def __init__(self):
        import httpcore

        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        b = getattr(active, "budget", None)
        t = b.wait() if b is not None else timeout
        try:
            s = self._backend.connect_tcp(host, port, t, local_address, socket_options)
        except timeouts():
            if b is not None and b.over():
                raise b.expired() from None
            raise
        return _BoundedStream(s)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _BoundedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def timeouts() -> type[Exception]:
    import httpcore

    return httpcore.TimeoutException


class Sink:
    """Receives the body: hashes the raw bytes, inflates, writes; checks at the end.

    A body longer than the object can be (more bytes than `wire`, more inflated bytes
    than the size or limit, anything after the end of the zlib stream) stops the
    transfer at once. A corrupt zlib stream stops the output but not the hashing, so
    that a tampered object of a plausible length is reported as a hash mismatch."""

    def __init__(self, expected, decompress, size, limit, out):
        self.expected = expected
        self.decompress = decompress
        self.size = size
        self.limit = size if size is not None else limit
        self.wire = wire_limit(self.limit, decompress)
        self.out = out
        self.where = ""
        self.reset()

    def reset(self) -> None:
        self.hasher = new_hasher(self.expected.algorithm) if self.expected else None
        self.inflater = zlib.decompressobj() if self.decompress else None
        self.received = 0
        self.produced = 0
        self.problem: str | None = None
        self.buf: list[bytes] = []
        if self.out is not None and self.out.tell():  # a retry: start the file over
            self.out.seek(0)
            self.out.truncate()

    def _too_long(self, text: str) -> Failure:
        return Failure(BAD_DATA, f"{self.where}: {text}")

    def announced(self, content_length: str | None) -> None:
        """A Content-Length longer than the body can be is refused before the body."""
        if content_length is not None and content_length.strip().isdigit():
            n = int(content_length)
            if n > self.wire:
                raise self._too_long(f"Content-Length {n} is longer than the object can be")

    def _emit(self, data: bytes) -> None:
        if not data or self.problem:
            return
        self.produced += len(data)
        if self.produced > self.limit:
            if self.size is not None:
                raise self._too_long(f"object is larger than its catalog size {self.size}")
            raise self._too_long(f"object is larger than {self.limit} bytes, the most it can be")
        if self.out is not None:
            self.out.write(data)
        else:
            self.buf.append(data)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.wire:
            raise self._too_long(f"body is longer than {self.wire} bytes, more than it can be")
        if self.hasher is not None:
            self.hasher.update(data)
        if self.problem:
            return
        if self.inflater is None:
            self._emit(data)
            return
        if self.inflater.eof:
            raise self._too_long("bytes after the end of the zlib stream")
        try:
            self._emit(self.inflater.decompress(data, 1 << 22))
            while self.inflater.unconsumed_tail and not self.problem:
                self._emit(self.inflater.decompress(self.inflater.unconsumed_tail, 1 << 22))
        except zlib.error as e:
            self.problem = f"corrupt zlib stream ({e})"
            return
        if self.inflater.unused_data:
            raise self._too_long("bytes after the end of the zlib stream")

    def finish(self) -> None:
        where = self.where
        if self.hasher is not None and self.hasher.digest() != self.expected.digest:
            raise Failure(BAD_DATA, f"{where}: hash mismatch (expected {self.expected.hex})")
        if self.inflater is not None and not self.problem:
            try:
                self._emit(self.inflater.flush())
            except zlib.error as e:
                self.problem = f"corrupt zlib stream ({e})"
            if not self.problem and not self.inflater.eof:
                self.problem = "truncated zlib stream"
        if not self.problem and self.size is not None and self.produced != self.size:
            self.problem = f"size {self.produced} differs from catalog size {self.size}"
        if self.problem:
            raise Failure(BAD_DATA, f"{where}: {self.problem}")
        if self.out is not None:
            self.out.flush()

    def value(self) -> bytes:
        return b"".join(self.buf)


def header_value(resp, name: bytes) -> str | None:
    """A response header's value (the first of that name), or None."""
    for k, v in resp.headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def short_reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if text.startswith("[Errno ") and "] " in text:  # the errno's text, not its repr
        text = text.partition("] ")[2]
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "Name or service not known" in text or "No address associated" in text or "nodename" in text:
        return "host name does not resolve"
    return text.splitlines()[0][:200]


def attempt(
    transport,
    s: DownloadSettings,
    url: str,
    proxy: str,
    nocache: bool,
    sink: Sink,
    headers: dict,
    received: Callable[[int], None],
) -> None:
    """One request of `url` through `transport` (via `proxy`, or DIRECT) into `sink`,
    bounded by its budget; every failure is a Failure of its kind. `received` is told
    the body bytes that arrived."""
    import httpcore

    direct = proxy == DIRECT
    h = {"User-Agent": s.user_agent, "Connection": "Keep-Alive", **headers}
    if nocache:
        h["Pragma"] = "no-cache"
        h["Cache-Control"] = "no-cache"
    timeout = s.timeout_direct if direct else s.timeout
    where = url if direct else f"{url} via proxy {proxy}"
    sink.where = where
    seconds = transfer_budget(sink.wire, timeout, s.low_speed_limit)
    slow = HOST_SLOW if direct else PROXY_SLOW
    budget = Budget(seconds, timeout, s.low_speed_limit, slow, where)
    ext = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": seconds}}
    active.budget = budget
    try:
        for _redirect in range(5):
            host = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
            request = httpcore.Request(
                "GET", url, headers=[("Host", host), *h.items()], extensions=ext
            )
            try:
                resp = transport.handle_request(request)
            except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError):
                # a kept-alive connection the server closed meanwhile fails before any
                # answer: once more at once (the pool opens a fresh one), same budget
                resp = transport.handle_request(request)
            status = resp.status
            if status in (301, 302, 303, 307, 308) and s.follow_redirects:
                location = header_value(resp, b"location")
                resp.close()
                if not location:
                    break
                import urllib.parse

                url = urllib.parse.urljoin(url, location)
                continue
            break
        else:
            raise Failure(HOST_CONNECTION, f"{where}: too many redirects")
        try:
            if status == 429:
                raise Failure(HOST_CONNECTION, f"{where}: HTTP 429 (too many requests)")
            if not 200 <= status < 300:
                squid = header_value(resp, b"x-squid-error") is not None or "error=" in (
                    header_value(resp, b"proxy-status") or ""
                )
                if squid and not direct:
                    kind = PROXY_HTTP
                elif direct or 300 <= status < 400 or status in (400, 404) or status >= 500:
                    kind = HOST_HTTP
                else:
                    kind = PROXY_HTTP
                raise Failure(kind, f"{where}: HTTP {status}")
            sink.reset()
            sink.announced(header_value(resp, b"content-length"))
            for data in resp.stream:
                sink.feed(data)
        finally:
            resp.close()
        received(sink.received)
        sink.finish()
    except Failure:
        raise
    except httpcore.TimeoutException:
        raise Failure(slow, f"{where}: timed out after {timeout:g} s") from None
    except httpcore.ProxyError as e:
        raise Failure(PROXY_CONNECTION, f"{where}: proxy error ({short_reason(e)})") from None
    except httpcore.ConnectError as e:
        # through a proxy, a refused connection is the proxy's (curl: kFailProxyConnection)
        raise Failure(
            HOST_CONNECTION if direct else PROXY_CONNECTION,
            f"{where}: cannot connect ({short_reason(e)})",
        ) from None
    except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError) as e:
        raise Failure(
            HOST_SHORT if direct else PROXY_SHORT,
            f"{where}: transfer broken ({short_reason(e)})",
        ) from None
    except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.UnsupportedProtocol) as e:
        raise Failure(
            HOST_CONNECTION if direct else PROXY_CONNECTION, f"{where}: {short_reason(e)}"
        ) from None
    finally:
        active.budget = None
