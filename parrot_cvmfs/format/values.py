"""Values read from hostile input (manifests, whitelists, catalogs, configuration):
repository names, numbers in ASCII digits only, text columns, URLs, and how a value is shown in a
message. Checked with str methods: `re` and `urllib.parse` stay off parrot_run's
start-up path."""

from __future__ import annotations

# a repository name's letters (checked with str methods, not `re`)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def valid_name(name: str) -> bool:
    """A repository name: 1 to 60 letters, digits, `_`, `.` or `-`."""
    return 0 < len(name) <= 60 and _NAME_CHARS.issuperset(name)


def decimal(text: str, limit: int = 1 << 63) -> int | None:
    """A non-negative decimal number below `limit` in ASCII digits only, else None
    (int() would also take signs, blanks, underscores and other scripts' digits, and
    str.isdigit() says yes to '²', which int() refuses)."""
    if not (0 < len(text) <= 20 and text.isascii() and text.isdigit()):
        return None
    n = int(text)
    return n if n < limit else None


def shown(value, limit: int = 60) -> str:
    """A value from a hostile source, for a message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def column_text(value) -> str | None:
    """A TEXT column's value (a BLOB is read as its bytes, as sqlite3_column_text does;
    bytes that are not UTF-8 become surrogate escapes); TypeError for other types."""
    if value is None or type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    raise TypeError


def url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL a download can use, or None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not url.isprintable() or " " in url:
        return "holds blanks or control characters"
    netloc = rest.partition("/")[0].partition("?")[0].partition("#")[0]
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return "has a malformed [IPv6] host"
        port = after[1:]
    else:
        host, _, port = hostport.partition(":")
    if not host:
        return "names no host"
    if port and not 0 < (decimal(port) or 0) < 65536:
        return f"has port {port!r}, not 1 to 65535"
    return None
