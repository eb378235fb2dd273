"""The local object cache: verified, decompressed objects by content hash.

Layout follows the cvmfs posix cache (`00/`..`ff/`, `txn/`, files named
`xx/<rest of hex><algo id>` without a type suffix), so a directory filled by
`cvmfs_preload` or our own preload serves as a read-only "alien" tier that is
consulted first.

A writable cache belongs to one user (its directories are 0700): `resolve_cache`
refuses a directory owned by someone else, and uses a populated one it cannot write
(a read-only file system) as an alien tier.

Sharing between concurrent processes of that user:
- objects are written under txn/ and renamed into place: readers never see
  partial files;
- a download takes an open-file-description lock on one byte of `lock_objects`
  chosen by the hash, so concurrent processes fetch each object once;
- with a quota, `cachedb` (SQLite, WAL) records size and last use; clean-up
  evicts least recently used objects down to half the limit, skipping any file
  that a process has open or mapped (found in /proc) and objects used in the
  last few seconds (handed out but not opened yet).

Everything found in a cache is checked before it is used, never followed as a
symbolic link: an object must be a regular file of the size its catalog entry gives
(`find`; a file of the right size is trusted, as the cvmfs client trusts its cache),
an alias a link to its object, metadata files regular and small, the directories
real directories.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat as st
import struct
import sys
import threading
import time

try:  # the C module sqlite3 re-exports, without the datetime adapters its package
    import _sqlite3 as sqlite3  # registers at import (~2 ms of parrot_run's start-up)
except ImportError:  # pragma: no cover
    import sqlite3

from ..errors import CacheError
from ..format.hashes import ContentHash

TYPE_CHECKING = False  # not typing's: parrot_run's start-up imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

OBJECT_MODE = 0o500  # read-only for everybody, executable so that exec works on it
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
_FLOCK = struct.Struct("=hh4xqqi4x")  # struct flock on 64-bit Linux
# an object stored or used this recently may be about to be opened: not evicted yet
_RECENT_GRACE = 0.25
_temp_counter = itertools.count()
# how our own code opens what it finds in a cache: never through a link, never
# blocking on a fifo planted there
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
META_MAX = 16 << 20  # manifests, whitelists, breadcrumbs: a few KB each


def default_cache_dir() -> str:
    env = os.environ.get("PARROT_CVMFS_CACHE")
    if env:
        return env
    return per_user_cache_dir()


def per_user_cache_dir() -> str:
    """`$XDG_CACHE_HOME/parrot-cvmfs`, else `~/.cache/parrot-cvmfs`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parrot-cvmfs")


# -- what a cache directory may be ----------------------------------------------------------------


def _kind(mode: int) -> str:
    if st.S_ISLNK(mode):
        return "a symbolic link"
    if st.S_ISDIR(mode):
        return "a directory"
    if st.S_ISFIFO(mode):
        return "a fifo"
    if st.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _is_populated(directory: str) -> bool:
    """Whether a directory holds a cache's object layout (`ff/` is made last)."""
    try:
        return st.S_ISDIR(os.lstat(os.path.join(directory, "ff")).st_mode)
    except OSError:
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
        return "refused", f"cache directory {directory} is {_kind(s.st_mode)}, not a directory"
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


def _mkdir(root: str, name: str, mode: int) -> None:
    """`root/name` as a real directory of ours: made, or found (never a link)."""
    path = f"{root}/{name}"
    try:
        os.mkdir(path, mode)
        return
    except FileExistsError:
        pass
    mode = os.lstat(path).st_mode
    if not st.S_ISDIR(mode):
        raise CacheError(f"cache {root}: {name} is {_kind(mode)}, not a directory (remove it)")


def make_layout(directory: str, mode: int = 0o700) -> None:
    """Create `00`..`ff`, `txn` and `quarantaine` (the objects' directories are skipped
    when `ff` exists). Existing ones must be directories of ours, not links."""
    try:
        os.makedirs(directory, mode=mode, exist_ok=True)  # and the parents the user named
        if not _is_populated(directory):
            for i in range(256):
                _mkdir(directory, f"{i:02x}", mode)
            _mkdir(directory, "quarantaine", mode)
        _mkdir(directory, "txn", mode)
    except CacheError:
        raise
    except OSError as e:
        raise CacheError(f"cannot create cache directory {directory}: {e.strerror}") from None


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a small file via a temporary file and rename (which replaces whatever
    was at `path`, a link included, never writing through it)."""
    import tempfile

    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_subdir(path: str) -> int:
    """A descriptor of a directory of the cache (memo/, config/), made if missing; a
    link or anything else where it belongs is a CacheError (our files are written
    relative to it, never through a link)."""
    for _ in range(2):
        try:
            return os.open(path, _DIR_NOFOLLOW)
        except FileNotFoundError:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CacheError(f"{path} is not a directory of the cache (remove it)") from None
            raise CacheError(f"cannot open {path}: {e.strerror}") from None
    raise CacheError(f"cannot make {path}")


def write_atomic_at(dfd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """write_atomic relative to a directory descriptor."""
    tmp = f".tmp.{os.getpid()}.{next(_temp_counter)}.{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise


def open_regular(path: str, where: str) -> int | None:
    """A read-only descriptor of the regular file at `path`, opened without following
    a link (nor blocking on a fifo); None if there is nothing there. Anything else is a
    CacheError naming `where` (the cache directory)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CacheError(
                f"{where}: {os.path.basename(path)} is a symbolic link, not a regular file"
                " (remove it)"
            ) from None
        raise CacheError(f"cannot read {path} in {where}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not st.S_ISREG(mode):
        os.close(fd)
        raise CacheError(
            f"{where}: {os.path.basename(path)} is {_kind(mode)}, not a regular file (remove it)"
        )
    return fd


def read_regular(path: str, where: str, limit: int = META_MAX) -> bytes | None:
    """The bytes of a small regular file found in a cache (see `open_regular`)."""
    fd = open_regular(path, where)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = bytearray()
        while size <= limit and len(buf) <= limit:  # bounded, should the file grow
            b = os.read(fd, max(size + 1 - len(buf), 4096))
            if not b:
                return bytes(buf)
            buf += b
        raise CacheError(f"{where}: {os.path.basename(path)} is larger than {limit} bytes")
    except OSError as e:
        if isinstance(e, CacheError):
            raise
        raise CacheError(f"cannot read {path} in {where}: {e.strerror}") from None
    finally:
        os.close(fd)


ALIASES = "aliases"
_ALIAS_COPY_MAX = 64 << 10


def remove_aliases(cache_dir: str, name: str) -> None:
    """Remove the aliases of object `name` (`xx/rest`)."""
    d, rest = os.path.split(os.path.join(cache_dir, ALIASES, name))
    try:  # through a descriptor of the real directory: never unlink through a link
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for e in os.listdir(dfd):
            if e.startswith(rest + "~"):
                try:
                    os.unlink(e, dir_fd=dfd)
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        os.close(dfd)


def alias_target(cache_dir: str, path: str) -> str:
    """The object path an alias path names (other paths unchanged)."""
    prefix = f"{cache_dir}/{ALIASES}/"  # plain strings: called for every file at exit
    if path.startswith(prefix) and "~" in path:
        return f"{cache_dir}/{path[len(prefix) :].rsplit('~', 1)[0]}"
    return path


def _unfit(s: os.stat_result, size: int | None) -> str | None:
    """Why a cache file with these attributes cannot be served for an entry of `size`."""
    if not st.S_ISREG(s.st_mode):
        return f"is {_kind(s.st_mode)}, not a regular file"
    if size is not None and s.st_size != size:
        return f"has {s.st_size} bytes where its catalog entry has {size}"
    return None


class ObjectCache:
    """A writable cache directory plus optional read-only alien directories."""

    def __init__(
        self,
        directory: str,
        quota_bytes: int | None = None,
        alien: list[str] | None = None,
        object_mode: int = OBJECT_MODE,
        dir_mode: int = 0o700,
    ):
        self.dir = os.path.abspath(directory)
        self.alien = [os.path.abspath(a) for a in (alien or [])]
        self.object_mode = object_mode
        self._umask = os.umask(0o022)
        os.umask(self._umask)
        make_layout(self.dir, dir_mode)
        self.txn = os.path.join(self.dir, "txn")
        self._lockfile = os.path.join(self.dir, "lock_objects")
        self._tls = threading.local()
        self._lockfds: set[int] = set()  # the threads' descriptors of lock_objects
        self._lockfds_guard = threading.Lock()
        self._dirs_ok: set[str] = set()  # directories found to be real ones
        self.quota = Quota(self.dir, quota_bytes) if quota_bytes and quota_bytes > 0 else None
        self.remove_stale_temporaries()  # what a killed process was writing
        self.hits = 0
        self.misses = 0

    # -- names and lookup ---------------------------------------------------------------------

    def path(self, h: ContentHash, variant: str = "") -> str:
        return os.path.join(self.dir, h.cache_name() + variant)

    def _lstat(self, root: str, name: str) -> os.stat_result | None:
        """lstat of `root/name` (None if absent) once `root/xx` is known to be a real
        directory; what cannot be read is a CacheError."""
        where = "cache" if root == self.dir else "alien cache"
        sub = f"{root}/{name[:2]}"
        try:
            if sub not in self._dirs_ok:
                mode = os.lstat(sub).st_mode
                if not st.S_ISDIR(mode):
                    raise CacheError(
                        f"{where} {root}: {name[:2]} is {_kind(mode)}, not a directory (remove it)"
                    )
                self._dirs_ok.add(sub)
            return os.lstat(f"{root}/{name}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if isinstance(e, CacheError):
                raise
            raise CacheError(f"cannot read {where} {root}: {e.strerror}") from None

    def find(self, h: ContentHash, variant: str = "", size: int | None = None) -> str | None:
        """Local path of a cached object (alien tiers first), or None.

        What is found must be a regular file (a link, directory or fifo is never served)
        of `size` bytes, when the caller knows it from the catalog; a file of that size is
        trusted. A wrong one in this cache counts as missing: fetching it again replaces
        it. One in an alien tier, which is not ours to repair, is a CacheError (EIO)
        naming the object and the directory."""
        name = h.cache_name() + variant
        for a in self.alien:
            s = self._lstat(a, name)
            if s is None:
                continue
            problem = _unfit(s, size)
            if problem is not None:
                raise CacheError(f"object {name} in alien cache {a} {problem}: not served")
            self.hits += 1
            return f"{a}/{name}"
        s = self._lstat(self.dir, name)
        if s is not None and _unfit(s, size) is None:
            self.hits += 1
            if self.quota is not None:
                self.quota.touch(name)
            return f"{self.dir}/{name}"
        self.misses += 1
        return None

    def touch_paths(self, paths: list[str]) -> None:
        """Record uses of the objects at `paths` (or at their aliases) for the LRU
        clean-up, as find() does for one; paths outside the writable cache are ignored."""
        if self.quota is None:
            return
        prefix = self.dir + "/"
        names = (alias_target(self.dir, p)[len(prefix) :] for p in paths if p.startswith(prefix))
        self.quota.touch_many([n for n in names if not n.startswith((ALIASES + "/", "txn/"))])

    def ensure_dir(self, rel: str) -> str:
        """`self.dir/rel` (a relative path of directories) as real directories of ours."""
        path = f"{self.dir}/{rel}"
        if path not in self._dirs_ok:
            parts = rel.split("/")
            for i in range(len(parts)):
                _mkdir(self.dir, "/".join(parts[: i + 1]), 0o700)
            self._dirs_ok.add(path)
        return path

    def alias(self, path: str, tag: str) -> str:
        """A second name, `aliases/xx/rest~TAG`, for the cached object at `path` (a hard
        link, so no bytes are copied). Callers that hand out one content under several
        identities tell them apart by the name the kernel shows for an open file
        (/proc/PID/fd/N). Evicting the object removes its aliases. An object of an alien
        cache on another file system is copied when small (the common duplicates are tiny
        files); `path` itself is returned where no alias can be made.

        An existing alias is handed out only if it still is that object (a regular file,
        the same inode, or for a copy the same bytes); anything else at its name is
        replaced, atomically."""
        for root in (self.dir, *self.alien):
            if path.startswith(root + "/"):
                rel = path[len(root) + 1 :]
                break
        else:
            return path
        alias = f"{self.dir}/{ALIASES}/{rel}~{tag}"
        try:
            obj = os.lstat(path)
        except OSError:
            return path
        if not st.S_ISREG(obj.st_mode):
            return path
        try:
            cur = os.lstat(alias)
        except OSError:
            cur = None
        if cur is not None and self._is_alias_of(cur, alias, obj, path):
            return alias
        tmp = f"{alias}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.ensure_dir(f"{ALIASES}/{os.path.dirname(rel)}")
            try:
                os.link(path, tmp, follow_symlinks=False)
            except OSError as e:
                # another file system, or protected_hardlinks and an object we do not own
                if e.errno not in (errno.EXDEV, errno.EPERM) or obj.st_size > _ALIAS_COPY_MAX:
                    raise
                data = read_regular(path, f"cache {root}", _ALIAS_COPY_MAX)
                if data is None or len(data) != obj.st_size:
                    return path
                write_atomic(tmp, data, 0o400)
            os.rename(tmp, alias)
        except OSError:  # CacheError included: the object itself is served
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return path
        return alias

    @staticmethod
    def _is_alias_of(cur: os.stat_result, alias: str, obj: os.stat_result, path: str) -> bool:
        if not st.S_ISREG(cur.st_mode) or cur.st_size != obj.st_size:
            return False
        if (cur.st_dev, cur.st_ino) == (obj.st_dev, obj.st_ino):
            return True
        if cur.st_size > _ALIAS_COPY_MAX:
            return False
        try:  # a copy (an object we cannot link): the same bytes
            a = read_regular(alias, "aliases", _ALIAS_COPY_MAX)
            b = read_regular(path, "cache", _ALIAS_COPY_MAX)
        except CacheError:
            return False
        return a is not None and a == b

    # -- writing ------------------------------------------------------------------------------

    def store_error(self, e: OSError, what: str) -> CacheError:
        """The one line for a failed write of `what` into this cache (a full disk, an
        exhausted quota: the program sees EIO)."""
        text = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            text += " (the cache's file system is full)"
        return CacheError(f"cannot store {what} in cache {self.dir}: {text}")

    def temp_path(self, tag: str = "fetch") -> str:
        """A fresh name in txn/ (after our pid, so that a dead process's leftovers are
        recognised), for a file a caller creates there."""
        return f"{self.txn}/{tag}.{os.getpid()}.{next(_temp_counter)}"

    def new_temp(self) -> tuple[int, str]:
        """A new temporary file in txn/."""
        while True:
            path = self.temp_path()
            try:
                # created with its final mode: no chmod (a journaled metadata write) later,
                # unless the umask would take bits away
                fd = os.open(
                    path,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    self.object_mode,
                )
                if self._umask & self.object_mode:
                    os.fchmod(fd, self.object_mode)
                return fd, path
            except FileExistsError:
                continue
            except OSError as e:
                raise self.store_error(e, "a temporary file") from None

    def commit(self, tmp: str, h: ContentHash, variant: str = "", kind: int = 0) -> str:
        """Move a complete, verified temporary file into place (replacing whatever wrong
        file `find` passed over there)."""
        name = h.cache_name() + variant
        dest = os.path.join(self.dir, name)
        try:
            size = os.lstat(tmp).st_size if self.quota is not None else 0
            try:
                os.rename(tmp, dest)
            except OSError as e:
                if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self._quarantine(name)  # a directory where the object belongs
                os.rename(tmp, dest)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, CacheError):
                raise
            raise self.store_error(e, f"object {name}") from None
        if self.quota is not None:
            self.quota.insert(name, size, kind)
            if self.quota.over_limit():
                self.quota.cleanup()
        return dest

    def _quarantine(self, name: str) -> None:
        """Move what is at an object's name aside, into `quarantaine/` (as cvmfs does with
        corrupt cache files)."""
        q = self.ensure_dir("quarantaine")
        os.rename(
            f"{self.dir}/{name}",
            f"{q}/{name.replace('/', '')}.{os.getpid()}.{next(_temp_counter)}",
        )

    def lock(self, key: str) -> _ObjectLock:
        """Exclusive lock across processes and threads for one object key (a hex hash),
        for a `with` block.

        An open-file-description lock on one byte of `lock_objects`; each thread has
        its own description, so threads exclude each other as processes do."""
        own = getattr(self._tls, "lockfile", None)
        if own is None:
            own = self._tls.lockfile = _ThreadLockFile(
                _open_lock_file(self._lockfile, self.dir), self._lockfds, self._lockfds_guard
            )
        return _ObjectLock(own, int(key[:15], 16))

    # -- small metadata files -------------------------------------------------------------------

    def meta_path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _where(self, d: str) -> str:
        return f"cache {d}" if d == self.dir else f"alien cache {d}"

    def read_meta(self, name: str, search_alien: bool = True) -> bytes | None:
        """A metadata file (manifest, whitelist, breadcrumb...) of this cache, else of the
        first alien tier that has it; None if none has. A link or another kind of file
        there is a CacheError, as is one larger than META_MAX."""
        for d in [self.dir] + (self.alien if search_alien else []):
            data = self.read_meta_in(d, name)
            if data is not None:
                return data
        return None

    def read_meta_in(self, d: str, name: str) -> bytes | None:
        """A metadata file of one of this cache's directories (`d`), as `read_meta`."""
        return read_regular(os.path.join(d, name), self._where(d))

    def read_meta_everywhere(self, name: str) -> list[tuple[str, bytes]]:
        """(directory, contents) of `name` in this cache and in each alien tier."""
        out = []
        for d in [self.dir, *self.alien]:
            data = self.read_meta_in(d, name)
            if data is not None:
                out.append((d, data))
        return out

    def write_meta(self, name: str, data: bytes) -> None:
        try:
            write_atomic(os.path.join(self.dir, name), data)
        except OSError as e:
            raise self.store_error(e, name) from None

    def remove_stale_temporaries(self) -> int:
        """Delete txn/ files of processes that no longer exist."""
        removed = 0
        try:
            dfd = os.open(self.txn, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            names = os.listdir(dfd)
            for name in names:
                parts = name.split(".")
                if len(parts) >= 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                    try:
                        os.unlink(name, dir_fd=dfd)
                        removed += 1
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            os.close(dfd)
        return removed

    def close(self) -> None:
        with self._lockfds_guard:
            fds, self._lockfds = self._lockfds, set()  # what threads still hold: now nothing
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        fds.clear()
        self._tls = threading.local()
        if self.quota is not None:
            self.quota.close()


def _open_lock_file(path: str, cache_dir: str) -> int:
    """A lock file of the cache, opened (made) without following a link."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CacheError(
                f"cache {cache_dir}: {os.path.basename(path)} is a symbolic link, not a"
                " regular file (remove it)"
            ) from None
        raise CacheError(
            f"cannot open {os.path.basename(path)} in cache {cache_dir}: {e.strerror}"
        ) from None


class _ThreadLockFile:
    """A thread's own description of `lock_objects`, closed when the thread ends (its
    thread-local storage goes with it) or when the cache closes, whichever comes first:
    a program that makes a thread per request must not keep a descriptor per thread."""

    __slots__ = ("fd", "_fds", "_guard")
    _close = staticmethod(os.close)  # still there when the interpreter is shutting down

    def __init__(self, fd: int, fds: set[int], guard: threading.Lock):
        self.fd, self._fds, self._guard = fd, fds, guard
        with guard:
            fds.add(fd)

    def __del__(self) -> None:
        # the cache's set of the time: once the cache closed them, not this one's to close
        with self._guard:
            mine = self.fd in self._fds
            self._fds.discard(self.fd)
        if mine:
            self._close(self.fd)


class _ObjectLock:
    """One byte of the lock file, held for a `with` block (a class rather than a
    contextlib generator: contextlib is ~2 ms of parrot_run's start-up)."""

    __slots__ = ("fd", "offset", "_file")

    def __init__(self, file: _ThreadLockFile, offset: int):
        # the thread's lock file stays open while this lock exists (even if the cache,
        # and with it the thread's local storage, is gone meanwhile)
        self.fd, self.offset, self._file = file.fd, offset, file

    def __enter__(self) -> None:
        fcntl.fcntl(
            self.fd, _F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.offset, 1, 0)
        )

    def __exit__(self, *exc) -> None:
        fcntl.fcntl(
            self.fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, self.offset, 1, 0)
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_files_under(prefix: str) -> set[str]:
    """Paths under `prefix` that some process we can inspect has open or mapped."""
    prefix = prefix.rstrip("/") + "/"
    found: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        base = f"/proc/{pid}"
        try:
            for fd in os.listdir(base + "/fd"):
                try:
                    target = os.readlink(f"{base}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    found.add(target.removesuffix(" (deleted)"))
        except OSError:
            continue
        try:
            with open(base + "/maps", "rb") as f:
                for line in f:
                    i = line.find(b" /")
                    if i > 0:
                        path = line[i + 1 :].rstrip(b"\n").decode("utf-8", "surrogateescape")
                        if path.startswith(prefix):
                            found.add(path.removesuffix(" (deleted)"))
        except OSError:
            continue
    return found


def _is_object_name(name: object) -> bool:
    """Whether a name from `cachedb` is one the cache gives objects (`xx/rest`): a row
    is only a hint, never a path to unlink anywhere else."""
    return (
        isinstance(name, str)
        and len(name) > 3
        and name[2] == "/"
        and all(c in "0123456789abcdef" for c in name[:2])
        and "/" not in name[3:]
        and "\0" not in name
        and not name[3:].startswith(".")
    )


class Quota:
    """LRU bookkeeping in `cachedb`, shared by the processes using the cache."""

    def __init__(self, cache_dir: str, limit_bytes: int):
        self.dir = cache_dir
        self.limit = limit_bytes
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self.cleanups = 0
        self.evicted = 0
        path = os.path.join(cache_dir, "cachedb")
        fresh = True
        # SQLite opens its files following links: what is there must be a plain file
        for f in (path, path + "-wal", path + "-shm"):
            try:
                mode = os.lstat(f).st_mode
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CacheError(f"cannot open quota database {path}: {e.strerror}") from None
            if not st.S_ISREG(mode):
                raise CacheError(
                    f"cache {cache_dir}: {os.path.basename(f)} is {_kind(mode)}, not a"
                    " regular file (remove it)"
                )
            if f == path:
                fresh = False
        try:
            self._db = sqlite3.connect(
                path, timeout=60, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS objects (name TEXT PRIMARY KEY, size INTEGER NOT NULL,
                                                    atime REAL NOT NULL, kind INTEGER NOT NULL);
                CREATE INDEX IF NOT EXISTS idx_objects_atime ON objects (atime);
                CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value TEXT);
                """
            )
        except sqlite3.DatabaseError as e:
            raise CacheError(f"cannot open quota database {path}: {e}") from None
        if fresh:
            self.rebuild()

    def _write(self, sql: str, args=()) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if isinstance(args, list):
                    self._db.executemany(sql, args)
                else:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise CacheError(f"quota database in {self.dir} failed: {e}") from None

    def rebuild(self) -> None:
        """Register objects already on disk (a cache created without a quota)."""
        rows = []
        for i in range(256):
            d = os.path.join(self.dir, f"{i:02x}")
            try:
                with os.scandir(d) as it:
                    for e in it:
                        try:
                            s = e.stat(follow_symlinks=False)
                            rows.append((f"{i:02x}/{e.name}", s.st_size, s.st_atime, 0))
                        except OSError:
                            pass
            except OSError:
                continue
        if rows:
            self._write("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", rows)

    def insert(self, name: str, size: int, kind: int) -> None:
        with self._lock:
            self._write(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
                (name, size, time.time(), kind),
            )

    def touch(self, name: str) -> None:
        with self._lock:
            self._touched[name] = time.time()
            if len(self._touched) > 2000 or time.monotonic() - self._last_flush > 30:
                self._flush_locked()

    def touch_many(self, names: list[str], grace: float = 300.0) -> None:
        """touch() for many objects at once, written at once (one statement per 500);
        an object used less than `grace` seconds ago keeps its time (rewriting hundreds
        of rows and their atime index at every job's exit cost ~2 ms)."""
        now = time.time()
        with self._lock:
            for i in range(0, len(names), 500):
                chunk = names[i : i + 500]
                marks = ",".join("?" * len(chunk))
                self._write(
                    f"UPDATE objects SET atime = ? WHERE name IN ({marks}) AND atime < ?",
                    (now, *chunk, now - grace),
                )

    def _flush_locked(self) -> None:
        if self._touched:
            items = [(t, n) for n, t in self._touched.items()]
            self._touched.clear()
            self._write("UPDATE objects SET atime = max(atime, ?) WHERE name = ?", items)
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def usage(self) -> int:
        try:
            return self._db.execute("SELECT coalesce(sum(size), 0) FROM objects").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise CacheError(f"quota database in {self.dir} failed: {e}") from None

    def over_limit(self) -> bool:
        return self.usage() > self.limit

    def cleanup(self, target: int | None = None) -> int:
        """Evict least recently used objects until usage <= target (default: half the
        limit). Returns bytes freed. Only one process cleans at a time."""
        target = self.limit // 2 if target is None else target
        lockfd = _open_lock_file(os.path.join(self.dir, "lock_cleanup"), self.dir)
        try:
            try:
                fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return 0  # somebody else is cleaning
                raise
            self.flush()
            usage = self.usage()
            if usage <= target:
                return 0
            in_use = {alias_target(self.dir, p) for p in open_files_under(self.dir)}
            recent = time.time() - _RECENT_GRACE
            freed = 0
            gone = []
            for name, size, atime in self._db.execute(
                "SELECT name, size, atime FROM objects ORDER BY atime"
            ).fetchall():
                if usage - freed <= target:
                    break
                if not _is_object_name(name) or not isinstance(size, int):
                    gone.append((name,))  # a row naming no object: dropped, nothing unlinked
                    continue
                path = os.path.join(self.dir, name)
                if atime > recent or path in in_use:
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                remove_aliases(self.dir, name)
                gone.append((name,))
                freed += size
            if gone:
                self._write("DELETE FROM objects WHERE name = ?", gone)
            self.cleanups += 1
            self.evicted += len(gone)
            return freed
        finally:
            os.close(lockfd)

    def close(self) -> None:
        try:
            self.flush()
            self._db.close()
        except (CacheError, sqlite3.Error):
            pass
