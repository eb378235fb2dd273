"""Repository configuration, as the cvmfs client and Parrot read it.

Sources, later ones winning:
1. built-in defaults (the client's code defaults);
2. cvmfs configuration files, sourced by /bin/sh in the real client's order
   (default.conf, default.d/*.conf, the configuration repository's files,
   domain.d/<domain>.conf, config.d/<fqrn>.conf and their .local overrides).
   The configuration repository is the copy of cvmfs-config.cern.ch shipped
   as package data, so the main domains work with no setup at all;
3. CVMFS_* variables of the environment (and PARROT_CVMFS_OFFLINE, PARROT_CVMFS_PREFETCH);
4. Parrot's PARROT_CVMFS_CONFIG (libcvmfs global options: the parameters of every
   repository), then its PARROT_CVMFS_REPO entries (`NAME:url=U1;U2,pubkey=K,proxies=P`,
   or `-r` of parrot_run);
5. explicit overrides (command-line options, API arguments).
Values then get `@fqrn@` and `@org@` substituted.

What is not per repository (the repositories listed in /cvmfs, the default domain)
comes from the same layers without the domain and repository files: `global_params`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError
from ..format.values import valid_name
from .config_files import assigns, config_files, default_config_files, evaluate_config_files
from .parrot_repo import ParrotGlobals, parse_parrot_config, parse_parrot_repos

CONFIG_REPOSITORY = "cvmfs-config.cern.ch"

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
    # the package's default.conf: the config repository's default.conf replaces it by
    # its list of site WPAD URLs only while it is this one
    "CVMFS_PAC_URLS": "http://wpad/wpad.dat",
    "CVMFS_USE_GEOAPI": "no",
}

# Parameters of the environment the configuration files see (not only override after
# them): common.conf decides the proxies, the CDN and the server URLs from them.
SHELL_SEEDED = ("CVMFS_CLIENT_PROFILE", "CVMFS_USE_CDN", "CVMFS_PAC_URLS")

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
    "PARROT_CVMFS_PREFETCH": (0, 1 << 20),  # MiB
}

# The variables the client reads, for the --help (and man page) of both commands: one
# list, next to where they are read. (parrot_run adds its own: PARROT_CVMFS_MODE.)
ENVIRONMENT_HELP = """\
  PARROT_CVMFS_REPO     repositories and their options, Parrot's syntax:
                        NAME:url=U1;U2,pubkey=KEY,proxies=P ... (* wildcards)
  PARROT_CVMFS_CONFIG   libcvmfs global options: cache_directory, alien_cache,
                        alien_cachedir, quota_limit, timeout, timeout_direct,
                        max_ttl, proxies, log_file (parrot_run's --debug-file);
                        nofiles, syslog_level and quota_threshold are refused
  PARROT_CVMFS_ALIEN_CACHE
                        the same as --alien-cache: read, never written (unlike
                        Parrot); fill it with parrot_cvmfs preload
  PARROT_CVMFS_CACHE    cache directory (below --cache-dir)
  PARROT_CVMFS_CONFIG_DIR
                        cvmfs configuration directory (below --config-dir)
  PARROT_CVMFS_OFFLINE  yes: the same as --offline
  PARROT_CVMFS_PREFETCH
                        MiB a repository's client in parrot_run may fetch ahead
                        of the job, when it reads a missing file: the files of
                        its kind beside it (default 64; 0: none)
  PARROT_ALLOW_SWITCHING_CVMFS_REPOSITORIES
                        accepted: every repository is always available at once
  CVMFS_*               any cvmfs client parameter (CVMFS_HTTP_PROXY,
                        CVMFS_REPOSITORIES, ...), above the configuration files
  XDG_CACHE_HOME        the per-user cache is $XDG_CACHE_HOME/parrot-cvmfs
"""

_PARROT_PARAMS = ("PARROT_CVMFS_OFFLINE", "PARROT_CVMFS_PREFETCH")  # read as CVMFS_* are
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


def normalize_name(name: str, default_domain: str) -> str:
    """Append the default domain to a dot-less name and validate it."""
    if not valid_name(name):
        raise ConfigError(f"invalid repository name {name!r}")
    if "." not in name and default_domain:
        name = f"{name}.{default_domain}"
    if not valid_name(name):
        raise ConfigError(f"invalid repository name {name!r}")
    return name


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
        from ..format.values import url_problem

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
        from ..format.signature import public_key_files

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
        global_spec = self.env.get("PARROT_CVMFS_CONFIG", "")
        self.parrot_globals = parse_parrot_config(global_spec) if global_spec else ParrotGlobals()
        self._cache: dict[str, RepositorySettings] = {}
        self._global: dict[str, str] | None = None
        # where the shell's answers for the configuration files are kept (parrot_run
        # sets it inside its cache; None: evaluate every time)
        self.memo_dir: str | None = None

    def with_overrides(self, extra: Mapping[str, str]) -> Configuration:
        """This configuration with more overrides (later ones winning), everything
        else kept: the environment, the directory, the Parrot entries however given."""
        derived = Configuration(self.env, self.sysdir, {**self.overrides, **extra}, parrot_repos="")
        derived.parrot_entries = self.parrot_entries
        derived.parrot_globals = self.parrot_globals
        derived.memo_dir = self.memo_dir
        return derived

    # -- what is not per repository ---------------------------------------------------------

    def run_cache_dir(self, given: str | None) -> str | None:
        """The writable cache asked for: `given` (--cache-dir), else PARROT_CVMFS_CONFIG's
        cache_directory; None: the cache module's default (PARROT_CVMFS_CACHE...)."""
        return given or self.parrot_globals.cache_dir

    def run_alien_cache(self, given: str | None) -> str | None:
        """The alien caches asked for: `given` (--alien-cache), else
        PARROT_CVMFS_ALIEN_CACHE, else PARROT_CVMFS_CONFIG's alien cache; a directory
        named that does not exist is refused with the name of where it came from."""
        for source, value in (
            ("--alien-cache", given),
            ("PARROT_CVMFS_ALIEN_CACHE", self.env.get("PARROT_CVMFS_ALIEN_CACHE")),
            ("PARROT_CVMFS_CONFIG alien cache", self.parrot_globals.alien_cache),
        ):
            if value:
                check_directory_option(source, value)
                return value
        return None

    def global_params(self) -> dict[str, str]:
        """The parameters of no repository in particular: the default files
        (default.conf, default.d, the configuration repository's default.conf,
        default.local), then the CVMFS_* environment, then the overrides."""
        if self._global is None:
            seed = dict(DEFAULTS)
            seed["CVMFS_MOUNT_DIR"] = package_config_mount_dir()
            files = default_config_files(self.sysdir, self._config_repo_etc(""))
            params = dict(DEFAULTS)
            params.update(evaluate_config_files("", files, seed, self.env, self.memo_dir)[0])
            params.update((k, v) for k, v in self.env.items() if k.startswith("CVMFS_"))
            params.update(self.overrides)
            self._global = params
        return self._global

    @property
    def default_domain(self) -> str:
        return self.global_params().get("CVMFS_DEFAULT_DOMAIN") or ""

    def canonical_name(self, name: str) -> str:
        # a dotted name needs no default domain (and no configuration files read for it)
        return normalize_name(name, "" if "." in name else self.default_domain)

    def configured_names(self) -> list[str]:
        """Repositories named explicitly: PARROT_CVMFS_REPO entries and CVMFS_REPOSITORIES
        (configuration files, environment or -o, as every parameter)."""
        names = [e.pattern for e in self.parrot_entries if not e.is_wildcard]
        for n in (self.global_params().get("CVMFS_REPOSITORIES") or "").split(","):
            if n.strip():
                names.append(self.canonical_name(n.strip()))
        return list(dict.fromkeys(names))

    def _config_repo_etc(self, fqrn: str) -> str | None:
        """The shipped configuration repository's etc/cvmfs (None for itself)."""
        config_repo = self.env.get("CVMFS_CONFIG_REPOSITORY", CONFIG_REPOSITORY)
        repo_etc = os.path.join(package_config_mount_dir(), config_repo, "etc", "cvmfs")
        if not os.path.isdir(repo_etc) or config_repo == fqrn:
            return None
        return repo_etc

    def _http_proxy_seed(self) -> str:
        return self._env_proxy() or "DIRECT"

    def _env_proxy(self) -> str | None:
        for k in ("CVMFS_HTTP_PROXY", "http_proxy", "HTTP_PROXY"):
            v = self.env.get(k)
            if v:
                return v
        return None

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
        for k in SHELL_SEEDED:
            if self.env.get(k):
                seed[k] = self.env[k]
        files = config_files(fqrn, self.sysdir, self._config_repo_etc(fqrn))
        # Parrot's default proxy, DIRECT, stands for a proxy nobody configured; a client
        # profile configures one (common.conf: `single` is `auto;DIRECT` when the files
        # leave CVMFS_HTTP_PROXY empty), so with a profile the files see it empty
        proxy = self._env_proxy()
        if proxy is None and not (
            self.env.get("CVMFS_CLIENT_PROFILE") or assigns(files, "CVMFS_CLIENT_PROFILE")
        ):
            proxy = "DIRECT"
        if proxy is not None:
            seed["CVMFS_HTTP_PROXY"] = proxy
        file_params, read = evaluate_config_files(fqrn, files, seed, self.env, self.memo_dir)
        params.update(file_params)
        for k, v in self.env.items():
            if (k.startswith("CVMFS_") and k != "CVMFS_MOUNT_DIR") or k in _PARROT_PARAMS:
                params[k] = v
        params.update(self.parrot_globals.params)
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
        """Values for `$(VAR)` symlinks (see symlink_variables)."""
        return symlink_variables(settings.params, self.env)


def symlink_variables(params: dict[str, str], env) -> dict[str, str]:
    """Values for `$(VAR)` symlinks: the client's global parameters (CVMFS_ARCH from
    `uname -m`, as mountpoint.cc SetupGlobalEnvironmentParams sets it before any
    configuration is read), then the repository's parameters, then the environment."""
    out = {"CVMFS_ARCH": os.uname().machine}
    out.update(params)
    out.update(env)
    return out
