"""Where a cache is and what is in it: the writable directory of this user, the
read-only alien tiers consulted before it, and the names under the writable one.

    00/..ff/      objects, `xx/<rest of hex><algo id>[variant]` (the cvmfs posix layout);
                  each made when the first object goes into it (`ObjectCache.destination`)
    txn/          temporary files, named after the writing process, renamed into place
                  (made with the cache: what marks a directory as a cache's)
    quarantaine/  what was found where an object belongs and had to go aside (on demand)
    aliases/      second names (hard links) of objects, `xx/rest~TAG`
    anchors/      the supervisor's anchor tree; memo/ and config/: what runs keep
    cachedb, lock_objects, lock_cleanup: the quota's database and the locks
"""

from __future__ import annotations

import os
import stat as st
import sys

from ...errors import CacheError, file_kind
from .files import make_dir, unlink_matching

TYPE_CHECKING = False  # not typing's: parrot_run's start-up imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

TXN = "txn"
QUARANTINE = "quarantaine"
ALIASES = "aliases"
CONFIG = "config"  # kept answers of the configuration's shell (`Configuration.memo_dir`)


class CacheTiers:
    """The directories one process reads objects from: its writable cache (`own`) and
    the read-only alien tiers (`aliens`, consulted first). What the supervisor must
    recognise as the cache's files, and where the kept configuration goes, come from
    here."""

    __slots__ = ("own", "aliens", "_prefixes")

    def __init__(self, own: str, aliens: list[str]):
        self.own = own
        self.aliens = aliens
        self._prefixes = (own + "/", *(a.rstrip("/") + "/" for a in aliens))

    def dirs(self) -> list[str]:
        """Every tier, the writable one first (the supervisor's prefixes of cache files)."""
        return [self.own, *self.aliens]

    def alien_list(self) -> str | None:
        """The alien tiers as `--alien-cache` takes them (colon-separated), or None."""
        return ":".join(self.aliens) or None

    def under(self, name: str) -> str:
        """The path of `name` (CONFIG, TXN...) under the writable cache."""
        return os.path.join(self.own, name)

    def holds(self, path: str) -> bool:
        """Whether `path` is a file of one of the tiers."""
        return path.startswith(self._prefixes)  # one call: asked of every write's path


def split_aliens(alien: str | None) -> list[str]:
    """The directories of a colon-separated alien list (`--alien-cache`)."""
    return [a for a in (alien or "").split(":") if a]


def resolve_tiers(
    directory: str | None, alien: str | None, warn: Callable[[str], None] | None = None
) -> CacheTiers:
    """The tiers for `--cache-dir` and a colon-separated `--alien-cache` (resolve_cache)."""
    return CacheTiers(*resolve_cache(directory, split_aliens(alien), warn))


def default_cache_dir() -> str:
    """PARROT_CVMFS_CACHE, else the per-user cache directory."""
    env = os.environ.get("PARROT_CVMFS_CACHE")
    if env:
        return env
    return per_user_cache_dir()


def per_user_cache_dir() -> str:
    """`$XDG_CACHE_HOME/parrot-cvmfs`, else `~/.cache/parrot-cvmfs`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parrot-cvmfs")


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _is_populated(directory: str) -> bool:
    """Whether a directory holds a cache's layout: our `txn/`, made with it, or the
    `ff/` of a cache made by cvmfs_preload or by a version that made `00`..`ff` at once."""
    for name in (TXN, "ff"):
        try:
            if st.S_ISDIR(os.lstat(os.path.join(directory, name)).st_mode):
                return True
        except OSError:
            pass
    return False


def cache_problem(directory: str) -> tuple[str, str] | None:
    """Why `directory` cannot be this user's writable cache, or None (also when it does
    not exist yet: creating it reports its own failure). A (kind, one line) pair: kind
    "readonly" for a directory of ours that we cannot write, else "refused"."""
    try:
        s = os.stat(directory)  # the directory itself may be a link the user made
    except FileNotFoundError:
        return None
    except OSError as e:
        return "refused", f"cannot use cache directory {directory}: {e.strerror}"
    if not st.S_ISDIR(s.st_mode):
        return "refused", f"cache directory {directory} is {file_kind(s.st_mode)}, not a directory"
    if s.st_uid != os.geteuid():
        hint = f" (--alien-cache {directory} reads it without writing)"
        return "refused", (
            f"cache directory {directory} belongs to {_user(s.st_uid)}: a writable cache"
            " belongs to one user; give --cache-dir a directory of your own"
            + (hint if _is_populated(directory) else "")
        )
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
        try:
            read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "on a read-only file system" if read_only else "not writable"
        return "readonly", (
            f"cache directory {directory} is {why}: give --cache-dir a directory you can write"
        )
    return None


_noted: set[str] = set()


def resolve_cache(
    directory: str | None, alien: list[str], warn: Callable[[str], None] | None = None
) -> tuple[str, list[str]]:
    """The writable cache directory and the alien tiers to use for `--cache-dir` (else
    PARROT_CVMFS_CACHE, CVMFS_CACHE_DIR from the environment, the per-user default) and
    `--alien-cache`. A directory owned by someone else, or not writable, is refused with
    one line (CacheError), except a populated cache we cannot write (read-only file
    system): it becomes the first alien tier, the per-user cache takes what this process
    writes, and `warn` (default: a line on stderr) is told so once."""
    d = os.path.abspath(
        directory
        or os.environ.get("PARROT_CVMFS_CACHE")
        or os.environ.get("CVMFS_CACHE_DIR")
        or default_cache_dir()
    )
    aliens = [os.path.abspath(a) for a in alien]
    problem = cache_problem(d)
    if problem is None:
        return d, aliens
    kind, line = problem
    if kind != "readonly" or not _is_populated(d):
        raise CacheError(line)
    own = os.path.abspath(per_user_cache_dir())
    head = line.split(":", 1)[0]  # "cache directory D is on a read-only file system"
    if os.path.realpath(own) == os.path.realpath(d):
        raise CacheError(
            f"{head}: give --cache-dir a directory you can write (and --alien-cache {d})"
        )
    second = cache_problem(own)
    if second is None:
        try:
            make_layout(own)
        except CacheError as e:
            second = ("refused", str(e))
    if second is not None:
        raise CacheError(
            f"{head}, and the per-user cache cannot be used ({second[1]}); give --cache-dir"
            f" a directory you can write (and --alien-cache {d})"
        )
    if d not in _noted:
        _noted.add(d)
        note = f"{head}: reading its objects as an alien cache, writing to {own}"
        if warn is None:
            print(f"parrot_cvmfs: {note}", file=sys.stderr, flush=True)
        else:
            warn(note)
    return own, [d, *[a for a in aliens if a != d]]


def make_layout(directory: str, mode: int = 0o700) -> None:
    """Create the cache directory and its `txn`; an existing one must be a directory
    of ours, not a link. The objects' `00`..`ff` and `quarantaine` are made when first
    written to (256 directories at start were ~0.16 s of a cold run)."""
    try:
        os.makedirs(directory, mode=mode, exist_ok=True)  # and the parents the user named
        make_dir(directory, TXN, mode)
    except CacheError:
        raise
    except OSError as e:
        raise CacheError(f"cannot create cache directory {directory}: {e.strerror}") from None


ALIASES = "aliases"


def remove_aliases(cache_dir: str, name: str) -> None:
    """Remove the aliases of object `name` (`xx/rest`)."""
    d, rest = os.path.split(os.path.join(cache_dir, ALIASES, name))
    unlink_matching(d, lambda e: e.startswith(rest + "~"))


def alias_target(cache_dir: str, path: str) -> str:
    """The object path an alias path names (other paths unchanged)."""
    prefix = f"{cache_dir}/{ALIASES}/"  # plain strings: called for every file at exit
    if path.startswith(prefix) and "~" in path:
        return f"{cache_dir}/{path[len(prefix) :].rsplit('~', 1)[0]}"
    return path
