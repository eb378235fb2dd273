"""The C bulk fetcher (csrc/fetch/) as the client uses it.

It speaks plain HTTP to one place: the host and proxy a downloader is using now.
Each object is hashed as it arrives, inflated, size-checked and written to a
temporary file; whatever it cannot settle (a dead host, a 404, a corrupt object,
an algorithm not done in C) is left to the Python downloader, which knows every
host, proxy and fail-over rule. Used for preloads (many objects, many threads) and
for single objects fetched on demand (the call releases the GIL: threads that fetch
run in parallel). Each object is bounded as the Python downloader bounds it: the C
fetcher refuses a body longer than the object can be and gives up at the deadline
of `limits.transfer_budget`, obeying the low-speed rule from the request on.
"""

from __future__ import annotations

import os
import threading
import time
from collections import namedtuple
from collections.abc import Callable

from ..format.hashes import Algorithm, ContentHash
from .download import Downloader
from .limits import MAX_SMALL, transfer_budget, wire_limit

_C_ALGORITHMS = (Algorithm.SHA1, Algorithm.SHAKE128)


class Route(namedtuple("Route", "host port host_header prefix timeout low_speed_limit")):
    __slots__ = ()

    host: str  # where to connect
    port: int
    host_header: str
    prefix: str  # request target before the object path
    timeout: float  # seconds: connecting, each wait, the low-speed window
    low_speed_limit: int  # bytes per second

    def budget_ms(self, wire: int) -> int:
        """The deadline of one object of at most `wire` body bytes, in milliseconds."""
        return int(transfer_budget(wire, self.timeout, self.low_speed_limit) * 1000)


class Item(
    namedtuple("Item", "hash suffix compressed size limit tmp dest fd offset", defaults=(-1, 0))
):
    __slots__ = ()

    hash: ContentHash
    suffix: str
    compressed: bool
    size: int | None  # exact inflated size, if known
    limit: int  # the most it may inflate to (the size, if known)
    tmp: str | None  # created by the fetcher; None: written into `fd` at `offset`
    dest: str | None  # renamed to when verified; None: left at `tmp` for the caller
    fd: int  # with no `tmp`: an open file the caller discards unless the item is OK
    offset: int


def _http_parts(url: str) -> tuple[str, int, str, str] | None:
    """(host, port, netloc, path) of an http:// URL, None for anything else (by hand:
    urllib.parse, with the ipaddress module it loads, costs ~5 ms to import)."""
    if url[:7].lower() != "http://":
        return None
    netloc, slash, path = url[7:].partition("/")
    path = (slash + path).partition("#")[0].partition("?")[0]
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return None
        port_s = after[1:]
    else:
        host, _, port_s = hostport.partition(":")
    if not host or (
        port_s and not (port_s.isascii() and port_s.isdigit() and 0 < int(port_s) < 65536)
    ):
        return None
    return host.lower(), int(port_s) if port_s else 80, netloc, path


def route(downloader: Downloader | None) -> Route | None:
    """How to reach the downloader's current host, or None if C cannot (not http)."""
    if downloader is None:
        return None
    _idx, host, proxy = downloader.path.current()
    via_proxy = bool(proxy) and proxy != "DIRECT"
    h = _http_parts(host)
    p = _http_parts(proxy) if via_proxy else None
    if h is None or (via_proxy and p is None):
        return None
    connect = p or h
    s = downloader.settings
    timeout = (s.timeout if p else s.timeout_direct) or 10.0
    # through a proxy, the request names the whole URL
    return Route(connect[0], connect[1], h[2], host if p else h[3], timeout, s.low_speed_limit)


def _batch(r: Route, items, n: int, jobs: int, state) -> None:
    from .._core import lib

    lib.pc_fetch_batch(
        r.host.encode(),
        r.port,
        r.host_header.encode(),
        items,
        n,
        max(1, jobs),
        int(r.timeout * 1000),
        r.low_speed_limit,
        state,
    )


class Outcome(namedtuple("Outcome", "stored bad_data")):
    __slots__ = ()

    stored: int | None  # bytes stored; None: the Python downloader must take it
    bad_data: bool  # the server sent something that did not verify


def fetch_unverified(downloader: Downloader, path: str, tmp: str) -> bytes | None:
    """GET `path` (such as /.cvmfspublished, at most MAX_SMALL) from the downloader's
    current host into `tmp` and return its bytes, or None if C could not get it with a
    200 (the caller then uses the Python downloader). Nothing is checked here: the
    caller must (a manifest is compared with, or verified as, a signed one)."""
    r = route(downloader)
    if r is None:
        return None
    from .._core import ffi, lib

    item = ffi.new("pc_fetch_item *")
    request = ffi.new("char[]", (r.prefix + path).encode())
    tmp_c = ffi.new("char[]", tmp.encode())
    item.request, item.tmp, item.dest = request, tmp_c, ffi.NULL
    item.algorithm = lib.PC_FETCH_UNVERIFIED
    item.size, item.mode = -1, 0o600
    item.limit = item.wire_limit = MAX_SMALL
    item.budget_ms = r.budget_ms(MAX_SMALL)
    state = ffi.new("pc_fetch_progress *")
    _batch(r, item, 1, 1, state)
    if item.status != lib.PC_FETCH_OK:
        return None
    try:
        with open(tmp, "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def fetch(
    downloader: Downloader,
    items: list[Item],
    *,
    mode: int,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Fetch `items` in C with `jobs` threads, an outcome for each (a failed one's
    temporary file does not exist). `progress(done, bytes)` is called as they arrive."""
    r = route(downloader)
    if r is None:
        return [Outcome(None, False)] * len(items)
    from .._core import ffi, lib

    cdata = ffi.new("pc_fetch_item[]", len(items))
    keep = []  # the strings the items point to
    for i, o in enumerate(items):
        it = cdata[i]
        if o.hash.algorithm not in _C_ALGORITHMS:
            it.algorithm = 0  # the fetcher reports it unsupported
        else:
            it.algorithm = int(o.hash.algorithm)
            ffi.memmove(it.digest, o.hash.digest, 20)
        strings = [
            ffi.new("char[]", (r.prefix + o.hash.object_path(o.suffix)).encode()),
            ffi.new("char[]", o.tmp.encode()) if o.tmp is not None else ffi.NULL,
            ffi.new("char[]", o.dest.encode()) if o.dest is not None else ffi.NULL,
        ]
        keep.append(strings)
        it.request, it.tmp, it.dest = strings
        it.fd, it.offset = o.fd, o.offset
        it.compressed = int(o.compressed)
        it.size = -1 if o.size is None else o.size
        it.limit = o.limit
        it.wire_limit = wire_limit(o.limit, o.compressed)
        it.budget_ms = r.budget_ms(it.wire_limit)
        it.mode = mode

    def run(state) -> None:
        _batch(r, cdata, len(items), jobs, state)

    state = ffi.new("pc_fetch_progress *")
    started = time.monotonic()
    if progress is None and jobs <= 1:
        run(state)  # inline: one object on demand
    else:
        worker = threading.Thread(target=run, args=(state,), daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.1)
                if progress is not None and state.done:
                    progress(state.done, state.bytes)
        except BaseException:
            state.stop = 1  # the threads finish the object they hold, then stop
            worker.join()
            raise
    out: list[Outcome] = []
    done = nbytes = 0
    for i in range(len(items)):
        status = cdata[i].status
        if status == lib.PC_FETCH_OK:
            out.append(Outcome(cdata[i].stored, False))
            done += 1
            nbytes += cdata[i].received
        elif status == lib.PC_FETCH_PRESENT:
            out.append(Outcome(cdata[i].stored, False))
        else:
            out.append(Outcome(None, status == lib.PC_FETCH_BAD_DATA))
    downloader.record(done, nbytes, time.monotonic() - started)
    return out
