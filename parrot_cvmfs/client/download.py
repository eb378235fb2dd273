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
it), both kept by `Budget` in the network backend under the HTTP client.

The rooms: `network` (settings, hosts and proxies), `transfer` (one bounded attempt),
`limits` (what a body may be); this module is the fail-over loop over them. `transfer`
is imported with the first download: a warm start of parrot_run makes none.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ..errors import DownloadError
from ..format.hashes import ContentHash
from .limits import MAX_SMALL
from .network import (
    DIRECT,
    DownloadSettings,
    NetworkPath,
    proxy_url,
    uniform,
)

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from typing import BinaryIO

    import httpcore

    from .transfer import Sink


class Downloader:
    """Fetches repository paths (`/.cvmfspublished`, `/data/...`) through the network path."""

    def __init__(self, settings: DownloadSettings, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.path = NetworkPath(settings, self.get)
        self._clients: dict[str, httpcore.ConnectionPool] = {}
        self._clients_lock = threading.Lock()
        self._sleep = sleep
        self.n_downloads = 0
        self.bytes_received = 0
        self.n_failures = 0
        self.transfer_seconds = 0.0  # time spent in transfers (user.speed)
        self.failures: deque[tuple[float, str]] = deque(maxlen=10)  # (time, message)
        self._stats_lock = threading.Lock()

    def record(self, downloads: int, nbytes: int, seconds: float = 0.0) -> None:
        """Count transfers made on this downloader's behalf (by the C bulk fetcher)."""
        with self._stats_lock:
            self.n_downloads += downloads
            self.bytes_received += nbytes
            self.transfer_seconds += seconds

    def _transport(self, proxy: str) -> httpcore.ConnectionPool:
        import httpcore  # imported on first download: a warm start never needs it

        from .transfer import BoundedBackend

        # httpcore directly: httpx's request/response models cost several hundred
        # microseconds per object, more than the transfer itself; and its network
        # backend is where every socket operation meets the attempt's budget.
        with self._clients_lock:
            t = self._clients.get(proxy)
            if t is None:
                limits = {"max_connections": 64, "max_keepalive_connections": 32}
                backend = BoundedBackend()
                if proxy == DIRECT:
                    t = httpcore.ConnectionPool(network_backend=backend, **limits)
                else:
                    url, auth = proxy_url(proxy)
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

    def _attempt(self, url: str, proxy: str, nocache: bool, sink: Sink, headers: dict) -> None:
        from .transfer import attempt

        attempt(
            self._transport(proxy),
            self.settings,
            url,
            proxy,
            nocache,
            sink,
            headers,
            self._received,
        )

    def get(self, url: str, proxy: str, limit: int) -> bytes:
        """One bounded GET of the absolute `url` through `proxy` (or DIRECT), at most
        `limit` bytes, outside the fail-over loop (the network path settling itself:
        PAC files, the Geo-API); a DownloadError names what went wrong."""
        from .transfer import Failure, Sink

        sink = Sink(None, False, None, limit, None)
        try:
            self._attempt(url, proxy, False, sink, {})
        except Failure as f:
            raise DownloadError(f.message) from None
        return sink.value()

    def _received(self, n: int) -> None:
        with self._stats_lock:
            self.bytes_received += n

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
        # one bounded attempt's code is loaded with the first download, off the start path
        from .transfer import (
            BAD_DATA,
            HOST_HTTP,
            HOST_KINDS,
            PROXY_KINDS,
            TRANSFER_KINDS,
            Failure,
            Sink,
        )

        sink = Sink(expected, decompress, size, limit, out)
        s = self.settings
        used_hosts = used_proxies = 1
        retries = 0
        nocache = bad_data_seen
        backoff = 0.0
        errors: list[str] = ["the first attempt's data did not verify"] if bad_data_seen else []
        while True:
            host_idx, host, proxy = self.path.current()
            url = url_for(host) if url_for else host + rel_path
            started = time.monotonic()
            try:
                self._attempt(url, proxy, nocache, sink, headers or {})
                with self._stats_lock:
                    self.n_downloads += 1
                    self.transfer_seconds += time.monotonic() - started
                return None if out is not None else sink.value()
            except Failure as f:
                kind = f.kind
                errors.append(f.message)
                with self._stats_lock:
                    self.transfer_seconds += time.monotonic() - started
            if kind in TRANSFER_KINDS and retries < s.max_retries and not nocache:
                retries += 1
                backoff = (
                    uniform(0, s.backoff_init) if backoff == 0 else min(backoff * 2, s.backoff_max)
                )
                self._sleep(backoff)
                continue
            if kind == BAD_DATA:
                if not nocache:
                    nocache = True
                    continue
                kind = HOST_HTTP
            retries, backoff, nocache = 0, 0.0, False
            if kind in PROXY_KINDS:
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
            if kind in HOST_KINDS and used_hosts < len(self.path.hosts):
                self.path.switch_host(host_idx)
                used_hosts += 1
                continue
            break
        last = errors[-1] if errors else "no attempt"
        tried = f" ({len(errors)} attempts)" if len(errors) > 1 else ""
        message = f"cannot download {what}: {last}{tried}"
        with self._stats_lock:
            self.n_failures += 1
            self.failures.append((time.time(), message))
        raise DownloadError(message)
