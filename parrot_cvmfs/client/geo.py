"""CVMFS_USE_GEOAPI: a stratum 1 orders the host chain and the fallback proxy groups,
nearest first, as the real client asks it (`download.cc`: ProbeGeo, GeoSortServers,
ValidateGeoReply; the spec's §9.6).

The names sent are the host names of the stratum 1s (sorted, as the real client
sorts them), then `+PXYSEP+` when there are only fallback proxies, then the first
proxy of each fallback group: `<host>/api/v1.0/geo/<proxy>/<name>,<name>,...`, where
`<proxy>` is the host name of the regular proxy the request goes through, or
CVMFS_PROXY_TEMPLATE, or `x` without one. Up to three stratum 1s, in random order,
are asked. The answer must be exactly a permutation of 1..n (1-based indices of the
names, comma-separated, one optional newline) of bounded size; anything else, or no
answer at all, leaves the configured order, with a debug line.
"""

from __future__ import annotations

from ..errors import CvmfsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .pac import Fetch

PROXY_SEPARATOR = "+PXYSEP+"
MAX_NAMES = 256  # names in one request: more hosts than that keep their order
MAX_ASKED = 3  # stratum 1s asked
_DIGITS = frozenset("0123456789")


def host_name(url: str) -> str:
    """The host name in a server or proxy URL (without scheme, credentials, port)."""
    from .pac import host_name as name

    return name(url)


def parse_reply(reply: bytes, n: int) -> list[int] | None:
    """The 0-based order a Geo-API answer gives to `n` names, or None if it is not
    exactly a permutation of 1..n (`2,1\\n` -> [1, 0])."""
    limit = n * (len(str(n)) + 1) + 1  # every index with its comma, and the newline
    if not reply or len(reply) > limit:
        return None
    text = reply.decode("ascii", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    parts = text.split(",")
    if len(parts) != n or any(not p or not set(p) <= _DIGITS or len(p) > 6 for p in parts):
        return None
    order = [int(p) - 1 for p in parts]
    if sorted(order) != list(range(n)):
        return None
    return order


def geo_order(
    fetch: Fetch,
    who: str,
    hosts: list[str],
    only_fallback: bool,
    fallback: list[list[str]],
    note: Callable[[str], None],
) -> tuple[list[str], list[list[str]]] | None:
    """(hosts, fallback groups) in the order a stratum 1 gives, or None (with a debug
    line) to keep the configured order. `fetch` goes through the proxy `who` names
    (`only_fallback`: there are no regular proxy groups)."""
    if len(hosts) < 2 and len(fallback) < 2:
        return None
    if len(hosts) + len(fallback) + 1 > MAX_NAMES:
        note(f"Geo-API: {len(hosts) + len(fallback)} names are too many to ask about")
        return None
    by_name = sorted(hosts, key=host_name)  # stable: equal names keep their order
    names = [host_name(h) for h in by_name]
    last_host = len(names)
    if only_fallback and len(names) > 1:
        # only fallback proxies: the servers are ordered from the nearest of those
        names.append(PROXY_SEPARATOR)
    first_fallback = len(names)
    names += [host_name(g[0]) for g in fallback]
    import random

    asked = random.sample(hosts, min(len(hosts), MAX_ASKED))
    for host in asked:
        url = f"{host}/api/v1.0/geo/{who}/{','.join(names)}"
        try:
            reply = fetch(url, len(names) * 8 + 16)
        except CvmfsError as e:
            note(f"Geo-API: request {url} failed: {e}")
            continue
        order = parse_reply(reply, len(names))
        if order is None:
            note(f"Geo-API: invalid answer from {host}: {reply[:80]!r}")
            continue
        new_hosts = [by_name[i] for i in order if i < last_host]
        new_fallback = [fallback[i - first_fallback] for i in order if i >= first_fallback]
        note(f"Geo-API: order {','.join(str(i + 1) for i in order)} from {host}")
        return new_hosts, new_fallback
    note("Geo-API: no stratum 1 gave an order, the configured order is kept")
    return None
