"""Parrot's variables: PARROT_CVMFS_REPO (`NAME:url=U1;U2,pubkey=K,proxies=P` entries,
wildcards included, as Parrot parses them) and PARROT_CVMFS_CONFIG (libcvmfs's global
options, `cvmfs_init` in cvmfs's libcvmfs_legacy.cc)."""

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


# PARROT_CVMFS_CONFIG: libcvmfs's global options (and the repository options Parrot
# users put there), each mapped to what does the same here, or refused with why.
# value: ("param", CVMFS_X) a parameter of every repository; ("global", key) a
# setting of the whole run (ParrotGlobals); ("flag", key) the same without a value;
# ("ignored", "") accepted without effect (a tweak of libcvmfs's own process);
# ("refused", why).
_GLOBAL_OPTIONS: dict[str, tuple[str, str]] = {
    "cache_directory": ("global", "cache_dir"),
    "cachedir": ("global", "cache_dir"),
    "alien_cachedir": ("global", "alien_cache"),
    "alien_cache": ("flag", "alien_cache"),
    "quota_limit": ("param", "CVMFS_QUOTA_LIMIT"),
    "timeout": ("param", "CVMFS_TIMEOUT"),
    "timeout_direct": ("param", "CVMFS_TIMEOUT_DIRECT"),
    "max_ttl": ("param", "CVMFS_MAX_TTL"),
    "proxies": ("param", "CVMFS_HTTP_PROXY"),
    "logfile": ("global", "debug_file"),
    "log_file": ("global", "debug_file"),
    "lock_directory": ("ignored", ""),
    "change_to_cache_directory": ("ignored", ""),
    "log_prefix": ("ignored", ""),
    "rebuild_cachedb": ("ignored", ""),
    "quota_threshold": (
        "refused",
        "the cache always cleans up down to half of quota_limit (libcvmfs ignores it too)",
    ),
    "nofiles": (
        "refused",
        "cached files are opened by the job itself, so its own limit applies (ulimit -n)",
    ),
    "max_open_files": (
        "refused",
        "cached files are opened by the job itself, so its own limit applies (ulimit -n)",
    ),
    "syslog_level": (
        "refused",
        "nothing is logged to syslog (--debug-file FILE keeps a debug log)",
    ),
    "log_syslog_level": (
        "refused",
        "nothing is logged to syslog (--debug-file FILE keeps a debug log)",
    ),
}


class ParrotGlobals:
    """What PARROT_CVMFS_CONFIG sets for the whole run: `params` for every repository
    (below PARROT_CVMFS_REPO's own), and the run's cache, alien cache and debug log."""

    __slots__ = ("params", "cache_dir", "alien_cache", "debug_file")

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.cache_dir: str | None = None
        self.alien_cache: str | None = None
        self.debug_file: str | None = None


def parse_parrot_config(options: str) -> ParrotGlobals:
    """PARROT_CVMFS_CONFIG (`opt=value,opt,...`, `\\` escapes, libcvmfs's syntax);
    a ConfigError names an unknown or refused option, or one missing its value."""
    out = ParrotGlobals()
    alien_flag = False
    for item in _split_unescaped(options.strip(), ","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = _unescape(key).strip(), _unescape(value)
        kind, target = _GLOBAL_OPTIONS.get(key, ("", ""))
        if not kind:
            raise ConfigError(
                f"PARROT_CVMFS_CONFIG: unknown option {key!r} (libcvmfs global options:"
                f" {', '.join(sorted(_GLOBAL_OPTIONS))})"
            )
        if kind == "refused":
            raise ConfigError(f"PARROT_CVMFS_CONFIG: option {key} is not supported: {target}")
        if kind == "flag":
            if eq:
                raise ConfigError(f"PARROT_CVMFS_CONFIG: option {key} takes no value")
            alien_flag = True
            continue
        if kind == "ignored":
            continue
        if not eq or not value.strip():
            raise ConfigError(
                f"PARROT_CVMFS_CONFIG: option {key!r} has no value (expected {key}=VALUE)"
            )
        if kind == "param":
            out.params[target] = value
        else:
            setattr(out, target, value)
    if alien_flag:
        # libcvmfs: the cache directory is an alien cache. Here an alien cache is read
        # as a tier before our own writable cache (which stays the default one).
        if out.cache_dir is None:
            raise ConfigError("PARROT_CVMFS_CONFIG: alien_cache needs cache_directory=DIR")
        out.alien_cache = out.alien_cache or out.cache_dir
        out.cache_dir = None
    return out
