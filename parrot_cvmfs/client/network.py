"""The network path: the download settings, the host chain (stratum 1s) with a current
host, and proxy groups (`a|b;c`: groups in fail-over order, proxies in a group
load-balanced) with a current proxy, shared by the requests of a downloader."""

from __future__ import annotations

import threading
import time
from collections import namedtuple

from .._version import __version__
from ..errors import DownloadError

DIRECT = "DIRECT"


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


def uniform(a: float, b: float) -> float:
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
