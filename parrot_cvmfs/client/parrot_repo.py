"""Parrot's PARROT_CVMFS_REPO: `NAME:url=U1;U2,pubkey=K,proxies=P` entries, wildcards
included, as Parrot parses them."""

from __future__ import annotations

from ..errors import ConfigError

_PARROT_OPTION_MAP = {
    "url": "CVMFS_SERVER_URL",
    "proxies": "CVMFS_HTTP_PROXY",
    "fallback_proxies": "CVMFS_FALLBACK_PROXY",
    "pubkey": "CVMFS_PUBLIC_KEY",
    "blacklist": "CVMFS_BLACKLIST",
    "timeout": "CVMFS_TIMEOUT",
    "timeout_direct": "CVMFS_TIMEOUT_DIRECT",
    "quota_limit": "CVMFS_QUOTA_LIMIT",
    "max_ttl": "CVMFS_MAX_TTL",
    "alien_cachedir": "CVMFS_ALIEN_CACHE",
}
# Accepted by libcvmfs but without effect, as in Parrot.
_PARROT_IGNORED = {
    "repo_name",
    "mountpoint",
    "deep_mount",
    "tracefile",
    "allow_unsigned",
    "try_local_filesystem",
}


class ParrotEntry:
    __slots__ = ("pattern", "options")

    def __init__(self, pattern: str, options: str):
        self.pattern = pattern  # a name, or "*suffix" for a wildcard entry
        self.options = options  # raw option string, `\` escapes kept

    @property
    def is_wildcard(self) -> bool:
        return self.pattern.startswith("*")

    def match(self, fqrn: str) -> dict[str, str] | None:
        """Parameters this entry gives `fqrn`, or None if it does not apply."""
        if self.is_wildcard:
            suffix = self.pattern[1:]
            if not fqrn.endswith(suffix) or len(fqrn) == len(suffix):
                return None
            star = fqrn[: len(fqrn) - len(suffix)]
        elif self.pattern == fqrn:
            star = ""
        else:
            return None
        return parse_parrot_options(self.options, star, fqrn)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    """`\\x` -> `x` (a backslash before a newline stays)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand_star(value: str, star: str) -> str:
    """Each unescaped `*` -> `star`; escaped pairs are kept for _unescape."""
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] != "\n":
            out.append(value[i : i + 2])
            i += 2
            continue
        out.append(star if c == "*" else c)
        i += 1
    return "".join(out)


def _split_words(spec: str) -> list[str]:
    """Split at runs of whitespace whose first character is not backslash-escaped."""
    words, cur, i, n = [], [], 0, len(spec)
    while i < n:
        c = spec[i]
        if c.isspace() and (i == 0 or spec[i - 1] != "\\"):
            words.append("".join(cur))
            cur = []
            while i < n and spec[i].isspace():
                i += 1
            continue
        cur.append(c)
        i += 1
    words.append("".join(cur))
    return words


def parse_parrot_options(options: str, star: str, fqrn: str) -> dict[str, str]:
    """libcvmfs legacy repository options -> CVMFS_* parameters ('*' -> matched prefix)."""
    params: dict[str, str] = {}
    for item in _split_unescaped(options, ","):
        if not item:
            continue
        key, eq, value = item.partition("=")
        # an unescaped '*' stands for the part of the name the wildcard matched
        value = _expand_star(value, star)
        key, value = _unescape(key).strip(), _unescape(value)
        if key in _PARROT_OPTION_MAP:
            if not eq or not value.strip():
                raise ConfigError(
                    f"PARROT_CVMFS_REPO: option {key!r} for repository {fqrn} has no value"
                    f" (expected {key}=VALUE)"
                )
            params[_PARROT_OPTION_MAP[key]] = value
        elif key in _PARROT_IGNORED:
            continue
        elif key.startswith("CVMFS_") and eq:
            params[key] = value
        else:
            raise ConfigError(f"PARROT_CVMFS_REPO: unknown option {key!r} for repository {fqrn}")
    return params


def parse_parrot_repos(spec: str) -> list[ParrotEntry]:
    """Whitespace-separated `[*]name[/subpath]:options` entries (later entries win)."""
    entries: list[ParrotEntry] = []
    for token in _split_words(spec.strip()):
        if not token:
            continue
        head_opts = _split_unescaped(token, ":")
        head = head_opts[0]
        options = ":".join(head_opts[1:])
        if head == "<default-repositories>":
            for pattern in ("*.cern.ch", "*.opensciencegrid.org", "*.egi.eu", "*.eessi.io"):
                entries.append(ParrotEntry(pattern, options))
            continue
        head = _unescape(head)
        if "/" in head:
            raise ConfigError(f"PARROT_CVMFS_REPO: deep mounts ({head}) are not supported")
        entries.append(ParrotEntry(head, options))
    return entries
