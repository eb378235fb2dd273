"""The network path: the download settings, the host chain (stratum 1s) with a current
host, and proxy groups (`a|b;c`: groups in fail-over order, proxies in a group
load-balanced) with a current proxy, shared by the requests of a downloader.

The path is settled once, before its first use (not at start-up: a warm start of
parrot_run downloads nothing), in the real client's order (`mountpoint.cc`): an
`auto` group is replaced by the proxies of the site's PAC file (`pac`), the regular
and fallback groups are installed (every DIRECT dropped when there are fallback
proxies), then with CVMFS_USE_GEOAPI a stratum 1 orders the hosts and the fallback
groups (`geo`), then CVMFS_MAX_SERVERS cuts the host list. Both the Python downloader
and the C fetcher take their host and proxy from here, so they use the same result.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple

from .._version import __version__
from ..errors import CvmfsError, DownloadError

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable

    # one bounded GET of an absolute URL through a proxy (or DIRECT), at most `limit`
    # bytes; a CvmfsError names what went wrong
    Getter = Callable[[str, str, int], bytes]

DIRECT = "DIRECT"
AUTO = "auto"  # a whole `;` group: the proxies of the site's PAC file (`pac`)

_debug_log: Callable[[str], None] | None = None


def set_debug_log(write: Callable[[str], None] | None) -> None:
    """Where the network path's debug lines go (parrot_run and parrot_cvmfs --debug)."""
    global _debug_log
    _debug_log = write


def parse_proxy_groups(spec: str | None, keep_auto: bool = False) -> list[list[str]]:
    """`a|b;c|DIRECT` -> [["http://a", "http://b"], ["http://c", "DIRECT"]]. A group
    that is just `auto` stays as [AUTO] with `keep_auto` (the real client replaces
    only a whole group); an `auto` among other proxies is no proxy name."""
    groups = []
    for g in (spec or "").split(";"):
        if g.strip().lower() == AUTO:
            if keep_auto:
                groups.append([AUTO])
            continue
        members = []
        for p in g.split("|"):
            p = p.strip()
            if not p or p.lower() == AUTO:
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


def uniform(a: float, b: float) -> float:
    import random

    return random.uniform(a, b)


class DownloadSettings(
    namedtuple(
        "DownloadSettings",
        "hosts proxy fallback_proxy timeout timeout_direct low_speed_limit max_retries backoff_init backoff_max host_reset_after proxy_reset_after follow_redirects max_servers user_agent pac_urls use_geoapi proxy_template",
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
            None,
            False,
            None,
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
    pac_urls: str | None  # CVMFS_PAC_URLS, for an `auto` proxy group
    use_geoapi: bool  # CVMFS_USE_GEOAPI: a stratum 1 orders hosts and fallback proxies
    proxy_template: str | None  # CVMFS_PROXY_TEMPLATE: the Geo-API's name of us

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
            pac_urls=s.get("CVMFS_PAC_URLS"),
            # the external data's servers are not stratum 1s: no Geo-API to ask
            use_geoapi=False if external else s.flag("CVMFS_USE_GEOAPI"),
            proxy_template=s.get("CVMFS_PROXY_TEMPLATE"),
        )


class NetworkPath:
    """The shared host chain and proxy groups, with switch-over and reset timers."""

    def __init__(self, settings: DownloadSettings, get: Getter | None = None):
        if not settings.hosts:
            raise DownloadError("no server URL configured")
        self.settings = settings
        self.notes: list[str] = []  # what settling the path found wrong (debug lines)
        self._lock = threading.Lock()
        self._get = get
        self._settle_lock = threading.Lock()
        self._problem: CvmfsError | None = None
        regular = parse_proxy_groups(settings.proxy, keep_auto=get is not None)
        self._unsettled = get is not None and ([AUTO] in regular or settings.use_geoapi)
        if self._unsettled:
            self._spec = regular
            regular = [g for g in regular if g != [AUTO]]  # until settled: without it
        self._install(list(settings.hosts), regular, parse_proxy_groups(settings.fallback_proxy))

    def _install(
        self, hosts: list[str], regular: list[list[str]], fallback: list[list[str]]
    ) -> None:
        """The host chain and the proxy groups, from the first of each on."""
        if self.settings.max_servers > 0:
            hosts = hosts[: self.settings.max_servers]
        self.hosts = hosts
        if fallback:
            regular, fallback = strip_direct(regular), strip_direct(fallback)
        self.groups = regular + fallback or [[DIRECT]]
        self.num_regular = len(self.groups) - len(fallback)  # the fallback groups follow
        self.num_proxies = sum(len(g) for g in self.groups)
        self.host_index = 0
        self._host_switched = 0.0
        self.group_index = 0
        self._burned: set[str] = set()
        self._proxy_switched = 0.0
        self.proxy = _choice(self.groups[0])

    def note(self, line: str) -> None:
        """One debug line about the network path."""
        self.notes.append(line)
        if _debug_log is not None:
            _debug_log(line)

    def settle(self) -> None:
        """Resolve `auto` and ask the Geo-API, once, before the path is first used (a
        no-op after). A failure of either leaves the configured order, with a debug
        line; only `auto` standing alone, with no PAC file giving a proxy, is an error
        (the real client then refuses to mount), for this and every later use."""
        if not self._unsettled:
            if self._problem is not None:
                raise self._problem
            return
        with self._settle_lock:
            if self._unsettled:
                try:
                    self._settle()
                except CvmfsError as e:
                    self._problem = e
                finally:
                    self._unsettled = False
        if self._problem is not None:
            raise self._problem

    def _settle(self) -> None:
        s, get = self.settings, self._get
        assert get is not None
        regular = self._spec
        if [AUTO] in regular:
            from .pac import discover

            # PAC files are fetched DIRECT: no proxy is known yet
            found = discover(
                lambda url, limit: get(url, DIRECT, limit),
                s.pac_urls,
                s.hosts,
                s.timeout_direct,
                self.note,
            )
            groups = parse_proxy_groups(found)
            regular = [g for a in regular for g in (groups if a == [AUTO] else [a])]
            if not regular:  # the real client refuses to mount, fallback proxies or not
                raise DownloadError(
                    f"CVMFS_HTTP_PROXY={s.proxy}: failed to discover HTTP proxy servers"
                    " (no PAC file of CVMFS_PAC_URLS gave a proxy)"
                )
        fallback = parse_proxy_groups(s.fallback_proxy)
        hosts = list(s.hosts)
        with self._lock:
            self._install(hosts, regular, fallback)
        if s.use_geoapi:
            from .geo import geo_order, host_name

            fallback = self.groups[self.num_regular :]
            # through the regular proxy in use, never a fallback one (it is being ordered)
            via = self.proxy if self.num_regular else DIRECT
            who = s.proxy_template or (host_name(via) if via != DIRECT else "x")
            ordered = geo_order(
                lambda url, limit: get(url, via, limit),
                who,
                hosts,
                self.num_regular == 0,
                fallback,
                self.note,
            )
            if ordered is not None:
                with self._lock:
                    self._install(ordered[0], self.groups[: self.num_regular], ordered[1])

    def current(self) -> tuple[int, str, str]:
        """(host index, host, proxy), applying the reset-after timers."""
        if self._unsettled or self._problem is not None:
            self.settle()
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
        self.settle()
        return self.hosts[self.host_index :] + self.hosts[: self.host_index]

    def proxy_list(self) -> list[str]:
        self.settle()
        return [p for g in self.groups for p in g]


def proxy_url(proxy: str) -> tuple[str, tuple[str, str] | None]:
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
