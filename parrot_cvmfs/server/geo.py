"""The Geo-API of a stratum 1 (`/cvmfs/<fqrn>/api/v1.0/geo/<proxy>/<name>,<name>,...`):
which of the names is nearest, as comma-separated 1-based indices (`2,1\\n`).

Pure: the order comes from a small configuration, either a fixed preference (names
listed first, in that order; the others after them, as asked) or coordinates per
host name (great-circle distance from the asking proxy's coordinates, or those of
`client`; names without coordinates last). The names after `+PXYSEP+` (fallback
proxies) are ordered among themselves, the separator keeps its place.
"""

from __future__ import annotations

import math

API = "/api/v1.0/geo/"
SEPARATOR = "+PXYSEP+"
MAX_NAMES = 256
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]+")


class GeoConfig:
    """How this server orders names: `order` (preferred names) or `places` (name ->
    (latitude, longitude) in degrees)."""

    def __init__(
        self, order: list[str] | None = None, places: dict[str, tuple[float, float]] | None = None
    ):
        self.order = order or []
        self.places = places or {}

    @classmethod
    def parse_places(cls, text: str) -> GeoConfig:
        """`NAME LATITUDE LONGITUDE` a line (`#` comments); a ValueError names a bad line."""
        places: dict[str, tuple[float, float]] = {}
        for n, line in enumerate(text.splitlines(), 1):
            words = line.partition("#")[0].split()
            if not words:
                continue
            try:
                name, lat, lon = words[0], float(words[1]), float(words[2])
            except (IndexError, ValueError):
                raise ValueError(f"line {n}: expected NAME LATITUDE LONGITUDE") from None
            if len(words) != 3 or not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"line {n}: expected NAME LATITUDE LONGITUDE")
            places[name.lower()] = (lat, lon)
        return cls(places=places)

    def rank(self, names: list[str], proxy: str) -> list[int]:
        """0-based indices of `names` (no separator), nearest first."""
        if self.places:
            here = self.places.get(proxy.lower()) or self.places.get("client")

            def key(i: int) -> tuple[float, int]:
                there = self.places.get(names[i].lower())
                if here is None or there is None:
                    return (math.inf, i)
                return (_distance(here, there), i)

            return sorted(range(len(names)), key=key)
        preferred = {n.lower(): k for k, n in enumerate(self.order)}
        return sorted(
            range(len(names)), key=lambda i: (preferred.get(names[i].lower(), 1 << 30), i)
        )


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * math.asin(min(1.0, math.sqrt(h)))


def answer(config: GeoConfig | None, path: str) -> tuple[int, bytes] | None:
    """(HTTP status, body) for a request path of the Geo-API, None for any other path
    (no `config`: the order asked)."""
    config = config or GeoConfig()
    base, api, rest = path.partition("?")[0].partition(API)
    if not api or not base.startswith("/cvmfs/"):
        return None
    proxy, slash, listed = rest.partition("/")
    names = listed.split(",") if listed else []
    if (
        not slash
        or not proxy
        or not names
        or len(names) > MAX_NAMES
        or any(not n or not set(n) <= _NAME_CHARS for n in names)
        or names.count(SEPARATOR) > 1
    ):
        return 400, b"bad Geo-API request\n"
    cut = names.index(SEPARATOR) if SEPARATOR in names else len(names)
    servers, proxies = names[:cut], names[cut + 1 :]
    order = config.rank(servers, proxy)
    if cut < len(names):
        order.append(cut)
        order += [cut + 1 + i for i in config.rank(proxies, proxy)]
    return 200, (",".join(str(i + 1) for i in order) + "\n").encode()


def geo_config(order: str | None, places_file: str | None) -> GeoConfig:
    """The configuration `parrot_cvmfs serve --geo-order`/`--geo-places` give (none:
    every answer is the order asked); a CvmfsError names a bad one."""
    from ..errors import CvmfsError

    if places_file is not None:
        try:
            with open(places_file, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError as e:
            raise CvmfsError(f"--geo-places {places_file}: {e.strerror}") from None
        try:
            return GeoConfig.parse_places(text)
        except ValueError as e:
            raise CvmfsError(f"--geo-places {places_file}: {e}") from None
    return GeoConfig(order=[n for n in (order or "").split(",") if n])
