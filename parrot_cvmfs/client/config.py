"""Repository configuration, as the cvmfs client and Parrot read it.

Sources, later ones winning:
1. built-in defaults (the client's code defaults);
2. cvmfs configuration files, sourced by /bin/sh in the real client's order
   (default.conf, default.d/*.conf, the configuration repository's files,
   domain.d/<domain>.conf, config.d/<fqrn>.conf and their .local overrides).
   The configuration repository is the copy of cvmfs-config.cern.ch shipped
   as package data, so the main domains work with no setup at all;
3. CVMFS_* variables of the environment;
4. Parrot's PARROT_CVMFS_REPO entries (`NAME:url=U1;U2,pubkey=K,proxies=P`);
5. explicit overrides (command-line options, API arguments).
Values then get `@fqrn@` and `@org@` substituted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError, CvmfsError

CONFIG_REPOSITORY = "cvmfs-config.cern.ch"
# `re` is kept off the start-up path of parrot_run (with enum, ~7 ms): names and
# options are checked with str methods.
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")

DEFAULTS: dict[str, str] = {
    "CVMFS_CONFIG_REPOSITORY": CONFIG_REPOSITORY,
    "CVMFS_DEFAULT_DOMAIN": "cern.ch",
    "CVMFS_TIMEOUT": "5",
    "CVMFS_TIMEOUT_DIRECT": "10",
    "CVMFS_LOW_SPEED_LIMIT": "1024",
    "CVMFS_MAX_RETRIES": "1",
    "CVMFS_BACKOFF_INIT": "2",
    "CVMFS_BACKOFF_MAX": "10",
    "CVMFS_PROXY_RESET_AFTER": "300",
    "CVMFS_HOST_RESET_AFTER": "1800",
    "CVMFS_QUOTA_LIMIT": "4000",
    "CVMFS_CLAIM_OWNERSHIP": "yes",
    "CVMFS_MAGIC_XATTRS_VISIBILITY": "rootonly",
    "CVMFS_KEYS_DIR": "/etc/cvmfs/keys",
    "CVMFS_BLACKLIST": "/etc/cvmfs/blacklist",
}

# The range of each numeric parameter: a value outside it is refused with its name
# (not an OverflowError where it meets C, nor a negative count of retries).
_DAY = 86400
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "TIMEOUT": (0, _DAY),
    "TIMEOUT_DIRECT": (0, _DAY),
    "LOW_SPEED_LIMIT": (0, 1 << 31),
    "MAX_RETRIES": (0, 1000),
    "BACKOFF_INIT": (0, _DAY),
    "BACKOFF_MAX": (0, _DAY),
    "HOST_RESET_AFTER": (0, 1 << 31),
    "PROXY_RESET_AFTER": (0, 1 << 31),
    "MAX_SERVERS": (0, 1 << 16),
    "QUOTA_LIMIT": (-1, 1 << 40),  # MB; -1 is unlimited
    "MAX_TTL": (0, 1 << 31),  # minutes
}

_TRUE = {"yes", "on", "1", "true"}
_FALSE = {"no", "off", "0", "false"}


def package_config_mount_dir() -> str:
    """Directory standing in for CVMFS_MOUNT_DIR: it holds the shipped config repository."""
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "config-repo"
    )


def system_config_dir(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("PARROT_CVMFS_CONFIG_DIR", "/etc/cvmfs")


def check_directory_option(option: str, value: str) -> None:
    """A directory named on the command line (`--config-dir`, `--alien-cache`, a colon
    list) must exist: a typo silently ignored would have every node of a site
    configure nothing, or download everything."""
    import stat

    for path in value.split(":"):
        if not path:
            continue
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ConfigError(f"{option} {path} does not exist") from None
        except OSError as e:
            raise ConfigError(f"{option} {path}: {e.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise ConfigError(f"{option} {path} is not a directory")


def is_on(value: str | None, default: bool = False) -> bool:
    if value is None or value.strip() == "":
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return default


def expand_templates(value: str, fqrn: str) -> str:
    """`@fqrn@` -> fqrn, `@org@` -> first label; other @x@ stay as they are."""
    return value.replace("@fqrn@", fqrn).replace("@org@", fqrn.split(".", 1)[0])


def valid_name(name: str) -> bool:
    """1 to 60 letters, digits, `_`, `.` or `-`."""
    return 0 < len(name) <= 60 and _NAME_CHARS.issuperset(name)


def normalize_name(name: str, default_domain: str) -> str:
    """Append the default domain to a dot-less name and validate it."""
    if not valid_name(name):
        raise ConfigError(f"invalid repository name {name!r}")
    if "." not in name and default_domain:
        name = f"{name}.{default_domain}"
    if not valid_name(name):
        raise ConfigError(f"invalid repository name {name!r}")
    return name


# --- cvmfs configuration files ---------------------------------------------------------------


def assigned_names(text: str) -> list[str]:
    """Parameters assigned in a config file, by the client's line rules."""
    import re

    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        name = line.split("=", 1)[0]
        for prefix in ("readonly ", "export ", "eval "):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        name = name.strip()
        if (
            name
            and " " not in name
            and "\t" not in name
            and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name)
        ):
            names.append(name)
    return names


def config_files(fqrn: str, sysdir: str, config_repo_etc: str | None) -> list[str]:
    """The files the client sources for `fqrn`, in order (missing ones included)."""
    domain = fqrn.split(".", 1)[1] if "." in fqrn else ""
    files = [os.path.join(sysdir, "default.conf")]
    try:
        dropins = os.listdir(os.path.join(sysdir, "default.d"))
    except OSError:
        dropins = []
    files += sorted(
        os.path.join(sysdir, "default.d", n)
        for n in dropins
        if n.endswith(".conf") and not n.startswith(".")
    )
    if config_repo_etc:
        files.append(os.path.join(config_repo_etc, "default.conf"))
    files.append(os.path.join(sysdir, "default.local"))
    if domain:
        if config_repo_etc:
            files.append(os.path.join(config_repo_etc, "domain.d", f"{domain}.conf"))
        files.append(os.path.join(sysdir, "domain.d", f"{domain}.conf"))
        files.append(os.path.join(sysdir, "domain.d", f"{domain}.local"))
    if config_repo_etc:
        files.append(os.path.join(config_repo_etc, "config.d", f"{fqrn}.conf"))
    files.append(os.path.join(sysdir, "config.d", f"{fqrn}.conf"))
    files.append(os.path.join(sysdir, "config.d", f"{fqrn}.local"))
    return files


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# Identifier characters; everything else becomes a word separator.
_WORDS = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")})
# Shell words that read something other than the environment and the files' own text.
_READERS = {"source", "read", "eval", "exec", "mapfile", "readarray"}


def _memo_key(
    fqrn: str, texts: list[tuple[str, str]], seed: Mapping[str, str], sh_env: Mapping[str, str]
) -> str | None:
    """A digest of everything the shell's answer depends on, or None when the files may
    run commands or read other files (their answer could change with nothing here
    changing). The environment counts by the variables the files name."""
    words: set[str] = set()
    for _, text in texts:
        lines = [line.split(" #", 1)[0].strip() for line in text.splitlines()]
        code = "\n".join(line for line in lines if not line.startswith("#"))
        if "`" in code or "<" in code or "$(" in code.replace("$((", ""):
            return None
        if any(line.startswith(". ") for line in lines) or " . " in code or "\t. " in code:
            return None
        found = set(code.translate(_WORDS).split())
        if found & _READERS:
            return None
        words |= found
    from .hashes import md5_digest

    parts = [fqrn, "\0".join(f"{k}={v}" for k, v in seed.items())]
    parts += [f"{path}\0{text}" for path, text in texts]
    parts += [f"{w}={sh_env[w]}" for w in sorted(words) if w in sh_env]
    blob = "\0\1".join(parts).encode("utf-8", "surrogateescape")
    return md5_digest(blob).hex()


def _memo_name(key: str) -> str:
    return f"{key}.{os.getuid()}"


def _memo_read(memo_dir: str, key: str) -> bytes | None:
    """The stored answer, if this user wrote it (a shared cache's other users cannot
    hand us parameters) and nobody else can change it. Nothing is followed as a link,
    the directory included."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dfd = os.open(memo_dir, flags | os.O_DIRECTORY)
        try:
            fd = os.open(_memo_name(key), flags, dir_fd=dfd)
        finally:
            os.close(dfd)
    except OSError:
        return None
    try:
        s = os.fstat(fd)
        if s.st_uid != os.getuid() or s.st_mode & 0o022:
            return None
        return os.read(fd, max(s.st_size, 1) + 1)
    finally:
        os.close(fd)


def _memo_write(memo_dir: str, key: str, data: bytes) -> None:
    from ..atomic import write_atomic_at  # a miss: off the start-up path
    from .cache import open_subdir

    try:
        dfd = open_subdir(memo_dir)
        try:
            write_atomic_at(dfd, _memo_name(key), data, 0o644)
        finally:
            os.close(dfd)
    except (OSError, CvmfsError):
        pass  # not kept: evaluated again next time


def _parse_shell_output(out: bytes) -> tuple[dict[str, str], int]:
    """(parameters, number of files completely evaluated) from the script's output."""
    params: dict[str, str] = {}
    done = 0
    for item in out.split(b"\0"):
        if not item:
            continue
        text = item.decode("utf-8", "surrogateescape")
        if text.startswith("@@FILE "):
            from .values import decimal

            index = decimal(text[7:], 1 << 20)
            if index is None:
                return {}, 0  # not what our script prints (a damaged memo): evaluate again
            done = index + 1
            continue
        k, _, v = text.partition("=")
        params[k] = v
    return params, done


def evaluate_config_files(
    fqrn: str,
    files: list[str],
    seed: Mapping[str, str],
    env: Mapping[str, str],
    memo_dir: str | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Source the existing files in one /bin/sh, each from its own directory, and
    record the value of every parameter the file assigns. Returns (params, files read).

    With `memo_dir`, the shell's answer is kept there under a digest of the files'
    text, the seed and the environment variables they name, and reused while those
    stay the same (a shell costs ~10 ms of every parrot_run start)."""
    existing = [f for f in files if os.path.isfile(f)]
    if not existing:
        return {}, []
    texts = []
    for path in existing:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                texts.append((path, f.read()))
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
    sh_env = {k: v for k, v in env.items() if not k.startswith("CVMFS_")}
    sh_env.setdefault("PATH", "/usr/bin:/bin")
    key = _memo_key(fqrn, texts, seed, sh_env) if memo_dir else None
    if key is not None:
        stored = _memo_read(memo_dir, key)
        if stored is not None:
            params, done = _parse_shell_output(stored)
            if done == len(existing):
                return params, existing
    script = ["set +e"]
    for k, v in seed.items():
        script.append(f"{k}={_sh_quote(v)}")
    script.append(f"CVMFS_FQRN={_sh_quote(fqrn)}")
    for i, (path, text) in enumerate(texts):
        script.append(f"cd {_sh_quote(os.path.dirname(path) or '/')} && . {_sh_quote(path)}")
        script.append(f"printf '@@FILE %s\\000' {i}")
        for n in assigned_names(text):
            script.append(f"printf '%s=%s\\000' {n} \"${{{n}}}\"")
    import subprocess

    try:
        out = subprocess.run(
            ["/bin/sh", "-s"],
            input="\n".join(script).encode("utf-8", "surrogateescape"),
            capture_output=True,
            env=sh_env,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot evaluate cvmfs configuration files with /bin/sh: {e}") from None
    params, done = _parse_shell_output(out.stdout)
    if done < len(existing):
        bad = existing[done]
        msg = out.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {msg[-1]}" if msg else ""
        raise ConfigError(f"configuration file {bad} failed to evaluate{detail}")
    if key is not None:
        _memo_write(memo_dir, key, out.stdout)
    return params, existing


# --- PARROT_CVMFS_REPO ---------------------------------------------------------------------------

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


# --- putting it together ------------------------------------------------------------------------


class RepositorySettings:
    """The resolved parameters of one repository."""

    __slots__ = ("fqrn", "params", "files")

    def __init__(self, fqrn: str, params: dict[str, str], files: list[str] | None = None):
        self.fqrn = fqrn
        self.params = params
        self.files = files or []

    def get(self, key: str, default: str | None = None) -> str | None:
        v = self.params.get(key)
        return default if v is None or v == "" else v

    def flag(self, key: str, default: bool = False) -> bool:
        return is_on(self.params.get(key), default)

    def number(self, key: str, default: float) -> float:
        """A numeric parameter, within its range (NUMBER_RANGES, by the name after
        `CVMFS_` or `CVMFS_EXTERNAL_`); a ConfigError names it otherwise."""
        v = self.get(key)
        if v is None:
            return default
        try:
            n = float(v)
        except ValueError:
            raise ConfigError(f"{key}={v!r} for {self.fqrn} is not a number") from None
        base = key.removeprefix("CVMFS_").removeprefix("EXTERNAL_")
        lo, hi = NUMBER_RANGES.get(base, (-float(1 << 53), float(1 << 53)))
        if not lo <= n <= hi:  # NaN compares false: refused too
            raise ConfigError(f"{key}={v!r} for {self.fqrn} is out of range ({lo:g} to {hi:g})")
        return n

    @property
    def server_urls(self) -> list[str]:
        urls = self.get("CVMFS_SERVER_URL")
        if not urls:
            raise ConfigError(f"unknown repository {self.fqrn}: no CVMFS_SERVER_URL configured")
        return self.urls("CVMFS_SERVER_URL")

    def urls(self, key: str) -> list[str]:
        """A `;` list of http(s) URLs (trailing `/` dropped); a ConfigError names a
        malformed one."""
        from .values import url_problem

        out = []
        for u in (self.get(key) or "").split(";"):
            u = u.strip().rstrip("/")
            if not u:
                continue
            problem = url_problem(u)
            if problem is not None:
                raise ConfigError(f"{key} of {self.fqrn}: {u[:80]!r} {problem}")
            out.append(u)
        return out

    @property
    def public_key_files(self) -> list[str]:
        from .signature import public_key_files

        return public_key_files(self.get("CVMFS_PUBLIC_KEY"), self.get("CVMFS_KEYS_DIR"))


class Configuration:
    """Resolves RepositorySettings for repository names."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        config_dir: str | None = None,
        overrides: Mapping[str, str] | None = None,
        parrot_repos: str | None = None,
    ):
        self.env = dict(os.environ if env is None else env)
        self.sysdir = config_dir or system_config_dir(self.env)
        self.overrides = dict(overrides or {})
        spec = parrot_repos if parrot_repos is not None else self.env.get("PARROT_CVMFS_REPO", "")
        self.parrot_entries = parse_parrot_repos(spec) if spec else []
        self._cache: dict[str, RepositorySettings] = {}
        # where the shell's answers for the configuration files are kept (parrot_run
        # sets it inside its cache; None: evaluate every time)
        self.memo_dir: str | None = None

    @property
    def default_domain(self) -> str:
        return self.overrides.get("CVMFS_DEFAULT_DOMAIN") or self.env.get(
            "CVMFS_DEFAULT_DOMAIN", DEFAULTS["CVMFS_DEFAULT_DOMAIN"]
        )

    def canonical_name(self, name: str) -> str:
        return normalize_name(name, self.default_domain)

    def configured_names(self) -> list[str]:
        """Repositories named explicitly: PARROT_CVMFS_REPO entries and CVMFS_REPOSITORIES."""
        names = [e.pattern for e in self.parrot_entries if not e.is_wildcard]
        for n in (self.env.get("CVMFS_REPOSITORIES") or "").split(","):
            if n.strip():
                names.append(self.canonical_name(n.strip()))
        return list(dict.fromkeys(names))

    def _http_proxy_seed(self) -> str:
        for k in ("CVMFS_HTTP_PROXY", "http_proxy", "HTTP_PROXY"):
            v = self.env.get(k)
            if v:
                return v
        return "DIRECT"

    def settings(self, name: str) -> RepositorySettings:
        """All parameters for a repository (cached per name)."""
        fqrn = self.canonical_name(name)
        cached = self._cache.get(fqrn)
        if cached is not None:
            return cached
        params = dict(DEFAULTS)
        mount_dir = package_config_mount_dir()
        seed = dict(DEFAULTS)
        seed["CVMFS_MOUNT_DIR"] = mount_dir
        seed["CVMFS_HTTP_PROXY"] = self._http_proxy_seed()
        config_repo = self.env.get("CVMFS_CONFIG_REPOSITORY", CONFIG_REPOSITORY)
        repo_etc = os.path.join(mount_dir, config_repo, "etc", "cvmfs")
        if not os.path.isdir(repo_etc) or config_repo == fqrn:
            repo_etc = None
        files = config_files(fqrn, self.sysdir, repo_etc)
        file_params, read = evaluate_config_files(fqrn, files, seed, self.env, self.memo_dir)
        params.update(file_params)
        params.setdefault("CVMFS_HTTP_PROXY", seed["CVMFS_HTTP_PROXY"])
        for k, v in self.env.items():
            if k.startswith("CVMFS_") and k != "CVMFS_MOUNT_DIR":
                params[k] = v
        matched = False
        for entry in self.parrot_entries:  # later entries take precedence
            opts = entry.match(fqrn)
            if opts is not None:
                params.update(opts)
                matched = True
        params.update(self.overrides)
        if not params.get("CVMFS_HTTP_PROXY"):
            params["CVMFS_HTTP_PROXY"] = self._http_proxy_seed()
        params = {k: expand_templates(v, fqrn) for k, v in params.items()}
        settings = RepositorySettings(
            fqrn, params, read + (["PARROT_CVMFS_REPO"] if matched else [])
        )
        self._cache[fqrn] = settings
        return settings

    def variant_env(self, settings: RepositorySettings) -> dict[str, str]:
        """Values for `$(VAR)` symlinks: the client's parameters, then its environment."""
        env = dict(settings.params)
        env.update(self.env)
        return env
