"""HTTP downloads with the cvmfs client's host and proxy fail-over.

The network path is shared state: an ordered host chain (stratum 1s) with a
current host, and proxy groups (`a|b;c`: groups in fail-over order, proxies
in a group load-balanced) with a current proxy. Each request keeps its own
counters and, after a failure, either retries the same path (transfer errors,
with back-off), switches proxy (proxy errors), or switches host (host errors,
or once every proxy failed). Corrupted data is retried once with no-cache
headers, then treated as a host error. Nothing unverified is ever returned.

Every attempt is bounded before it starts: a body is refused the moment it is longer
than the object it claims to be can be (`wire_limit` of its recorded size or a fixed
cap), and every connect, read and write of the attempt, response headers included,
obeys a deadline derived from that length (`transfer_budget`) and the low-speed rule
(at least CVMFS_LOW_SPEED_LIMIT bytes in every CVMFS_TIMEOUT seconds, as curl applies
it), both kept by `_Budget` in the network backend under the HTTP client.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import namedtuple
from collections.abc import Callable

from .._version import __version__
from ..errors import DownloadError
from ..format.hashes import ContentHash, new_hasher

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from typing import BinaryIO

    import httpcore

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

_TRANSFER = {HOST_CONNECTION, HOST_SLOW, HOST_SHORT, PROXY_CONNECTION, PROXY_SLOW, PROXY_SHORT}
_HOST = {HOST_HTTP, HOST_CONNECTION, HOST_SLOW, HOST_SHORT}
_PROXY = {PROXY_HTTP, PROXY_CONNECTION, PROXY_SLOW, PROXY_SHORT}

DIRECT = "DIRECT"

# -- what a body may be ----------------------------------------------------------------------

# A manifest, whitelist, certificate or metainfo: a few KB each in practice (the real
# client allows 1 MiB in memory; 64 KiB keeps one trickled at 2 KB/s to half a minute).
MAX_SMALL = 64 << 10
MAX_DATABASE = 1 << 30  # a catalog or history database whose size nothing records


def database_limit(recorded: int | None) -> int:
    """The most bytes a catalog (or history database) may inflate to: the size its parent
    catalog, the manifest (`B`) or a tag records, capped at MAX_DATABASE, which is also
    the limit where none is recorded (schema 2.5 revision 0, 2.4 and older)."""
    if not isinstance(recorded, int) or recorded <= 0:
        return MAX_DATABASE
    return min(recorded, MAX_DATABASE)


def object_limit(suffix: str) -> int:
    """The most bytes an object of no recorded size may inflate to, by its suffix."""
    return MAX_SMALL if suffix in ("X", "M") else MAX_DATABASE


def wire_limit(limit: int, compressed: bool) -> int:
    """The most body bytes an object that stores at most `limit` bytes may arrive as.
    Deflate's worst case for incompressible data is 5 bytes per stored block of up to
    64 KiB plus 6 of zlib framing (zlib's compressBound allows n/4096 + n/16384 + 13);
    n/256 + 1 KiB leaves room for any encoder."""
    return limit + (limit >> 8) + 1024 if compressed else limit


def transfer_budget(wire: int, timeout: float, low_speed_limit: int) -> float:
    """Seconds one attempt may take in all: a timeout to connect, one for the response
    headers, one of slack, and `wire` body bytes at the low-speed limit (what a transfer
    that never trips the low-speed rule needs at most). The deadline of the Python
    downloader and of the C fetcher alike."""
    return 3 * timeout + wire / max(low_speed_limit, 1)


def parse_proxy_groups(spec: str | None) -> list[list[str]]:
    """`a|b;c|DIRECT` -> [["http://a", "http://b"], ["http://c", "DIRECT"]]."""
    groups = []
    for g in (spec or "").split(";"):
        members = []
        for p in g.split("|"):
            p = p.strip()
            if not p or p.lower() == "auto":  # WPAD/PAC discovery is not supported
                continue
            if p.upper() == DIRECT:
                members.append(DIRECT)
            else:
                members.append(p if "://" in p else "http://" + p)
        if members:
            groups.append(members)
    return groups


def strip_direct(groups: list[list[str]]) -> list[list[str]]:
    out = [[p for p in g if p != DIRECT] for g in groups]
    return [g for g in out if g]


def _choice(items: list[str]) -> str:
    """random.choice, importing random only when there is a choice to make."""
    if len(items) == 1:
        return items[0]
    import random

    return random.choice(items)


def _uniform(a: float, b: float) -> float:
    import random

    return random.uniform(a, b)


class DownloadSettings(
    namedtuple(
        "DownloadSettings",
        "hosts proxy fallback_proxy timeout timeout_direct low_speed_limit max_retries backoff_init backoff_max host_reset_after proxy_reset_after follow_redirects max_servers user_agent",
        defaults=(
            DIRECT,
            None,
            5.0,
            10.0,
            1024,
            1,
            2.0,
            10.0,
            1800.0,
            300.0,
            False,
            0,
            f"cvmfs parrot-cvmfs {__version__}",
        ),
    )
):
    __slots__ = ()

    hosts: list[str]
    proxy: str | None
    fallback_proxy: str | None
    timeout: float
    timeout_direct: float
    low_speed_limit: int
    max_retries: int
    backoff_init: float
    backoff_max: float
    host_reset_after: float
    proxy_reset_after: float
    follow_redirects: bool
    max_servers: int
    user_agent: str

    @classmethod
    def from_settings(
        cls, s, hosts: list[str] | None = None, external: bool = False
    ) -> DownloadSettings:
        """Build from RepositorySettings (the CVMFS_* parameters)."""
        pre = "CVMFS_EXTERNAL_" if external else "CVMFS_"
        if hosts is None:
            hosts = s.server_urls
        proxy = s.get(pre + "HTTP_PROXY", DIRECT if external else s.get("CVMFS_HTTP_PROXY"))
        return cls(
            hosts=hosts,
            proxy=proxy,
            fallback_proxy=s.get(pre + "FALLBACK_PROXY"),
            timeout=s.number(pre + "TIMEOUT", s.number("CVMFS_TIMEOUT", 5)),
            timeout_direct=s.number(pre + "TIMEOUT_DIRECT", s.number("CVMFS_TIMEOUT_DIRECT", 10)),
            low_speed_limit=int(s.number("CVMFS_LOW_SPEED_LIMIT", 1024)),
            max_retries=int(s.number("CVMFS_MAX_RETRIES", 1)),
            backoff_init=s.number("CVMFS_BACKOFF_INIT", 2),
            backoff_max=s.number("CVMFS_BACKOFF_MAX", 10),
            host_reset_after=s.number("CVMFS_HOST_RESET_AFTER", 1800),
            proxy_reset_after=s.number("CVMFS_PROXY_RESET_AFTER", 300),
            follow_redirects=s.flag("CVMFS_FOLLOW_REDIRECTS"),
            max_servers=int(s.number(pre + "MAX_SERVERS", 0)),
        )


class _Failure(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Budget:
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

    def expired(self) -> _Failure:
        return _Failure(
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
                raise _Failure(self.kind, f"{self.where}: transfer slower than {self.rate} B/s")
            self.start, self.got = now, 0


# The budget of the attempt a thread is making; the sockets below the HTTP client obey it.
_active = threading.local()


class _BoundedStream:
    """A network stream of the HTTP client (httpcore's interface) whose reads, writes
    and TLS handshake wait no longer than the current attempt's budget allows."""

    def __init__(self, stream):
        self._s = stream

    def _op(self, fn, *args, timeout: float | None = None):
        b = getattr(_active, "budget", None)
        if b is None:
            return fn(*args, timeout)
        try:
            return fn(*args, b.wait())
        except _timeouts() as e:
            if b.over():
                raise b.expired() from e
            raise

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._op(self._s.read, max_bytes, timeout=timeout)
        b = getattr(_active, "budget", None)
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


class _BoundedBackend:
    """httpcore's synchronous network backend, its connections bounded by the budget."""

    def __init__(self):
        import httpcore

        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        b = getattr(_active, "budget", None)
        t = b.wait() if b is not None else timeout
        try:
            s = self._backend.connect_tcp(host, port, t, local_address, socket_options)
        except _timeouts():
            if b is not None and b.over():
                raise b.expired() from None
            raise
        return _BoundedStream(s)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _BoundedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _timeouts() -> type[Exception]:
    import httpcore

    return httpcore.TimeoutException


class NetworkPath:
    """The shared host chain and proxy groups, with switch-over and reset timers."""

    def __init__(self, settings: DownloadSettings):
        hosts = list(settings.hosts)
        if settings.max_servers > 0:
            hosts = hosts[: settings.max_servers]
        if not hosts:
            raise DownloadError("no server URL configured")
        self.hosts = hosts
        regular = parse_proxy_groups(settings.proxy)
        fallback = parse_proxy_groups(settings.fallback_proxy)
        if fallback:
            regular, fallback = strip_direct(regular), strip_direct(fallback)
        self.groups = regular + fallback or [[DIRECT]]
        self.num_proxies = sum(len(g) for g in self.groups)
        self.settings = settings
        self._lock = threading.Lock()
        self.host_index = 0
        self._host_switched = 0.0
        self.group_index = 0
        self._burned: set[str] = set()
        self._proxy_switched = 0.0
        self.proxy = _choice(self.groups[0])

    def current(self) -> tuple[int, str, str]:
        """(host index, host, proxy), applying the reset-after timers."""
        with self._lock:
            now = time.monotonic()
            s = self.settings
            if (
                self.host_index
                and s.host_reset_after > 0
                and now - self._host_switched > s.host_reset_after
            ):
                self.host_index = 0
            if (
                self.group_index
                and s.proxy_reset_after > 0
                and now - self._proxy_switched > s.proxy_reset_after
            ):
                self._reset_proxies()
            return self.host_index, self.hosts[self.host_index], self.proxy

    def switch_host(self, used_index: int) -> None:
        with self._lock:
            if used_index == self.host_index:  # another request may have switched already
                self.host_index = (self.host_index + 1) % len(self.hosts)
                self._host_switched = time.monotonic()

    def switch_proxy(self, used: str) -> None:
        with self._lock:
            if used != self.proxy:
                return
            self._burned.add(used)
            group = self.groups[self.group_index]
            left = [p for p in group if p not in self._burned]
            if not left:
                self.group_index = (self.group_index + 1) % len(self.groups)
                self._burned.clear()
                left = self.groups[self.group_index]
            self.proxy = _choice(left)
            self._proxy_switched = time.monotonic()

    def reset_proxies(self) -> None:
        with self._lock:
            self._reset_proxies()

    def _reset_proxies(self) -> None:
        self.group_index = 0
        self._burned.clear()
        self.proxy = _choice(self.groups[0])

    def host_list(self) -> list[str]:
        return self.hosts[self.host_index :] + self.hosts[: self.host_index]

    def proxy_list(self) -> list[str]:
        return [p for g in self.groups for p in g]


class Downloader:
    """Fetches repository paths (`/.cvmfspublished`, `/data/...`) through the network path."""

    def __init__(self, settings: DownloadSettings, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.path = NetworkPath(settings)
        self._clients: dict[str, httpcore.ConnectionPool] = {}
        self._clients_lock = threading.Lock()
        self._sleep = sleep
        self.n_downloads = 0
        self.bytes_received = 0
        self.n_failures = 0
        self._stats_lock = threading.Lock()

    def record(self, downloads: int, nbytes: int) -> None:
        """Count transfers made on this downloader's behalf (by the C bulk fetcher)."""
        with self._stats_lock:
            self.n_downloads += downloads
            self.bytes_received += nbytes

    def _transport(self, proxy: str) -> httpcore.ConnectionPool:
        import httpcore  # imported on first download: a warm start never needs it

        # httpcore directly: httpx's request/response models cost several hundred
        # microseconds per object, more than the transfer itself; and its network
        # backend is where every socket operation meets the attempt's budget.
        with self._clients_lock:
            t = self._clients.get(proxy)
            if t is None:
                limits = {"max_connections": 64, "max_keepalive_connections": 32}
                backend = _BoundedBackend()
                if proxy == DIRECT:
                    t = httpcore.ConnectionPool(network_backend=backend, **limits)
                else:
                    url, auth = _proxy_url(proxy)
                    t = httpcore.HTTPProxy(
                        proxy_url=url, proxy_auth=auth, network_backend=backend, **limits
                    )
                self._clients[proxy] = t
            return t

    def close(self) -> None:
        with self._clients_lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()

    # -- one attempt -----------------------------------------------------------------------

    def _attempt(self, url: str, proxy: str, nocache: bool, sink: _Sink, headers: dict) -> None:
        import httpcore

        s = self.settings
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
        budget = _Budget(seconds, timeout, s.low_speed_limit, slow, where)
        ext = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": seconds}}
        transport = self._transport(proxy)
        _active.budget = budget
        try:
            for _redirect in range(5):
                host = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
                resp = transport.handle_request(
                    httpcore.Request(
                        "GET", url, headers=[("Host", host), *h.items()], extensions=ext
                    )
                )
                status = resp.status
                if status in (301, 302, 303, 307, 308) and s.follow_redirects:
                    location = _header(resp, b"location")
                    resp.close()
                    if not location:
                        break
                    import urllib.parse

                    url = urllib.parse.urljoin(url, location)
                    continue
                break
            else:
                raise _Failure(HOST_CONNECTION, f"{where}: too many redirects")
            try:
                if status == 429:
                    raise _Failure(HOST_CONNECTION, f"{where}: HTTP 429 (too many requests)")
                if not 200 <= status < 300:
                    squid = _header(resp, b"x-squid-error") is not None or "error=" in (
                        _header(resp, b"proxy-status") or ""
                    )
                    if squid and not direct:
                        kind = PROXY_HTTP
                    elif direct or 300 <= status < 400 or status in (400, 404) or status >= 500:
                        kind = HOST_HTTP
                    else:
                        kind = PROXY_HTTP
                    raise _Failure(kind, f"{where}: HTTP {status}")
                sink.reset()
                sink.announced(_header(resp, b"content-length"))
                for data in resp.stream:
                    sink.feed(data)
            finally:
                resp.close()
            with self._stats_lock:
                self.bytes_received += sink.received
            sink.finish()
        except _Failure:
            raise
        except httpcore.TimeoutException:
            raise _Failure(slow, f"{where}: timed out after {timeout:g} s") from None
        except httpcore.ProxyError as e:
            raise _Failure(PROXY_CONNECTION, f"{where}: proxy error ({_short(e)})") from None
        except httpcore.ConnectError as e:
            # through a proxy, a refused connection is the proxy's (curl: kFailProxyConnection)
            raise _Failure(
                HOST_CONNECTION if direct else PROXY_CONNECTION,
                f"{where}: cannot connect ({_short(e)})",
            ) from None
        except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError) as e:
            raise _Failure(
                HOST_SHORT if direct else PROXY_SHORT, f"{where}: transfer broken ({_short(e)})"
            ) from None
        except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.UnsupportedProtocol) as e:
            raise _Failure(
                HOST_CONNECTION if direct else PROXY_CONNECTION, f"{where}: {_short(e)}"
            ) from None
        finally:
            _active.budget = None

    # -- the fail-over loop --------------------------------------------------------------------

    def fetch(
        self,
        rel_path: str,
        *,
        what: str,
        expected: ContentHash | None = None,
        decompress: bool = False,
        size: int | None = None,
        limit: int = MAX_SMALL,
        out: BinaryIO | None = None,
        headers: dict | None = None,
        url_for: Callable[[str], str] | None = None,
        bad_data_seen: bool = False,
    ) -> bytes | None:
        """Download `rel_path` below the current host; verify the hash of the received
        bytes if `expected`, inflate if `decompress`, check the inflated `size` if given.
        Without a `size`, the object may inflate to `limit` bytes at most (a body longer
        than that is a bad answer from that host, as a corrupt one is).
        `bad_data_seen`: a first attempt (by the C fetcher) got bad data from the current
        host, so this one asks proxies for a fresh copy, as the retry would.
        Writes to `out` (truncated and rewritten on retries) or returns the bytes."""
        sink = _Sink(expected, decompress, size, limit, out)
        s = self.settings
        used_hosts = used_proxies = 1
        retries = 0
        nocache = bad_data_seen
        backoff = 0.0
        errors: list[str] = ["the first attempt's data did not verify"] if bad_data_seen else []
        while True:
            host_idx, host, proxy = self.path.current()
            url = url_for(host) if url_for else host + rel_path
            try:
                self._attempt(url, proxy, nocache, sink, headers or {})
                with self._stats_lock:
                    self.n_downloads += 1
                return None if out is not None else sink.value()
            except _Failure as f:
                kind = f.kind
                errors.append(f.message)
            if kind in _TRANSFER and retries < s.max_retries and not nocache:
                retries += 1
                backoff = (
                    _uniform(0, s.backoff_init) if backoff == 0 else min(backoff * 2, s.backoff_max)
                )
                self._sleep(backoff)
                continue
            if kind == BAD_DATA:
                if not nocache:
                    nocache = True
                    continue
                kind = HOST_HTTP
            retries, backoff, nocache = 0, 0.0, False
            if kind in _PROXY:
                if used_proxies < self.path.num_proxies:
                    self.path.switch_proxy(proxy)
                    used_proxies += 1
                    continue
                if used_hosts < len(self.path.hosts):  # every proxy failed: maybe the host
                    self.path.reset_proxies()
                    used_proxies = 1
                    self.path.switch_host(host_idx)
                    used_hosts += 1
                    continue
                break
            if kind in _HOST and used_hosts < len(self.path.hosts):
                self.path.switch_host(host_idx)
                used_hosts += 1
                continue
            break
        with self._stats_lock:
            self.n_failures += 1
        last = errors[-1] if errors else "no attempt"
        tried = f" ({len(errors)} attempts)" if len(errors) > 1 else ""
        raise DownloadError(f"cannot download {what}: {last}{tried}")


class _Sink:
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

    def _too_long(self, text: str) -> _Failure:
        return _Failure(BAD_DATA, f"{self.where}: {text}")

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
            raise _Failure(BAD_DATA, f"{where}: hash mismatch (expected {self.expected.hex})")
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
            raise _Failure(BAD_DATA, f"{where}: {self.problem}")
        if self.out is not None:
            self.out.flush()

    def value(self) -> bytes:
        return b"".join(self.buf)


def _header(resp, name: bytes) -> str | None:
    """A response header's value (the first of that name), or None."""
    for k, v in resp.headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _proxy_url(proxy: str) -> tuple[str, tuple[str, str] | None]:
    """A proxy URL without its credentials, and those (user, password) if any."""
    scheme, sep, rest = proxy.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return proxy, None
    import urllib.parse

    user, _, password = userinfo.partition(":")
    auth = (urllib.parse.unquote(user), urllib.parse.unquote(password))
    return f"{scheme}{sep}{hostport}{slash}{path}", auth


def _short(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if text.startswith("[Errno ") and "] " in text:  # the errno's text, not its repr
        text = text.partition("] ")[2]
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "Name or service not known" in text or "No address associated" in text or "nodename" in text:
        return "host name does not resolve"
    return text.splitlines()[0][:200]
