"""The local object cache: verified, decompressed objects by content hash.

Layout follows the cvmfs posix cache (`00/`..`ff/`, `txn/`, files named
`xx/<rest of hex><algo id>` without a type suffix), so a directory filled by
`cvmfs_preload` or our own preload serves as a read-only "alien" tier that is
consulted first.

Sharing between concurrent processes of one user:
- objects are written under txn/ and renamed into place: readers never see
  partial files;
- a download takes an open-file-description lock on one byte of `lock_objects`
  chosen by the hash, so concurrent processes fetch each object once;
- with a quota, `cachedb` (SQLite, WAL) records size and last use; clean-up
  evicts least recently used objects down to half the limit, skipping any file
  that a process has open or mapped (found in /proc) and objects used in the
  last few seconds (handed out but not opened yet).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import struct
import threading
import time

try:  # the C module sqlite3 re-exports, without the datetime adapters its package
    import _sqlite3 as sqlite3  # registers at import (~2 ms of parrot_run's start-up)
except ImportError:  # pragma: no cover
    import sqlite3

from ..errors import CacheError
from .hashes import ContentHash

OBJECT_MODE = 0o500  # read-only for everybody, executable so that exec works on it
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
_FLOCK = struct.Struct("=hh4xqqi4x")  # struct flock on 64-bit Linux
# an object stored or used this recently may be about to be opened: not evicted yet
_RECENT_GRACE = 0.25
_temp_counter = itertools.count()


def default_cache_dir() -> str:
    env = os.environ.get("PARROT_CVMFS_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parrot-cvmfs")


def make_layout(directory: str, mode: int = 0o700) -> None:
    """Create `00`..`ff`, `txn` and `quarantaine` (skipped when `ff` exists)."""
    if os.path.isdir(os.path.join(directory, "ff")):
        os.makedirs(os.path.join(directory, "txn"), mode=mode, exist_ok=True)
        return
    try:
        os.makedirs(directory, mode=mode, exist_ok=True)
        for i in range(256):
            os.makedirs(os.path.join(directory, f"{i:02x}"), mode=mode, exist_ok=True)
        for d in ("txn", "quarantaine"):
            os.makedirs(os.path.join(directory, d), mode=mode, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create cache directory {directory}: {e.strerror}") from None


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a small file via a temporary file and rename."""
    import tempfile

    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


ALIASES = "aliases"
_ALIAS_COPY_MAX = 64 << 10


def remove_aliases(cache_dir: str, name: str) -> None:
    """Remove the aliases of object `name` (`xx/rest`)."""
    d, rest = os.path.split(os.path.join(cache_dir, ALIASES, name))
    try:
        entries = os.listdir(d)
    except OSError:
        return
    for e in entries:
        if e.startswith(rest + "~"):
            try:
                os.unlink(os.path.join(d, e))
            except OSError:
                pass


def alias_target(cache_dir: str, path: str) -> str:
    """The object path an alias path names (other paths unchanged)."""
    prefix = f"{cache_dir}/{ALIASES}/"  # plain strings: called for every file at exit
    if path.startswith(prefix) and "~" in path:
        return f"{cache_dir}/{path[len(prefix) :].rsplit('~', 1)[0]}"
    return path


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
        self._lockfds: list[int] = []
        self._lockfds_guard = threading.Lock()
        self.quota = Quota(self.dir, quota_bytes) if quota_bytes and quota_bytes > 0 else None
        self.remove_stale_temporaries()  # what a killed process was writing
        self.hits = 0
        self.misses = 0

    # -- names and lookup ---------------------------------------------------------------------

    def path(self, h: ContentHash, variant: str = "") -> str:
        return os.path.join(self.dir, h.cache_name() + variant)

    def find(self, h: ContentHash, variant: str = "") -> str | None:
        """Local path of a cached object (alien tiers first), or None."""
        name = h.cache_name() + variant
        if not variant:
            for a in self.alien:
                p = os.path.join(a, name)
                if os.path.exists(p):
                    self.hits += 1
                    return p
        p = os.path.join(self.dir, name)
        if os.path.exists(p):
            self.hits += 1
            if self.quota is not None:
                self.quota.touch(name)
            return p
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

    def alias(self, path: str, tag: str) -> str:
        """A second name, `aliases/xx/rest~TAG`, for the cached object at `path` (a hard
        link, so no bytes are copied). Callers that hand out one content under several
        identities tell them apart by the name the kernel shows for an open file
        (/proc/PID/fd/N). Evicting the object removes its aliases. An object of an alien
        cache on another file system is copied when small (the common duplicates are tiny
        files); `path` itself is returned where no alias can be made."""
        for root in (self.dir, *self.alien):
            if path.startswith(root + "/"):
                rel = path[len(root) + 1 :]
                break
        else:
            return path
        alias = os.path.join(self.dir, ALIASES, f"{rel}~{tag}")
        if os.path.exists(alias):  # the name holds the content hash: it is the same object
            return alias
        tmp = f"{alias}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(alias), mode=0o700, exist_ok=True)
            try:
                os.link(path, tmp)
            except OSError as e:
                # another file system, or protected_hardlinks and an object we do not own
                if e.errno not in (errno.EXDEV, errno.EPERM) or (
                    os.path.getsize(path) > _ALIAS_COPY_MAX
                ):
                    raise
                with open(path, "rb") as src:
                    write_atomic(tmp, src.read(), 0o400)
            os.rename(tmp, alias)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return path
        return alias

    # -- writing ------------------------------------------------------------------------------

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
                    path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.object_mode
                )
                if self._umask & self.object_mode:
                    os.fchmod(fd, self.object_mode)
                return fd, path
            except FileExistsError:
                continue
            except OSError as e:
                raise CacheError(f"cannot write to cache {self.dir}: {e.strerror}") from None

    def commit(self, tmp: str, h: ContentHash, variant: str = "", kind: int = 0) -> str:
        """Move a complete, verified temporary file into place."""
        name = h.cache_name() + variant
        dest = os.path.join(self.dir, name)
        try:
            size = os.stat(tmp).st_size if self.quota is not None else 0
            os.rename(tmp, dest)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CacheError(
                f"cannot store object {name} in cache {self.dir}: {e.strerror}"
            ) from None
        if self.quota is not None:
            self.quota.insert(name, size, kind)
            if self.quota.over_limit():
                self.quota.cleanup()
        return dest

    def lock(self, key: str) -> _ObjectLock:
        """Exclusive lock across processes and threads for one object key (a hex hash),
        for a `with` block.

        An open-file-description lock on one byte of `lock_objects`; each thread has
        its own description, so threads exclude each other as processes do."""
        fd = getattr(self._tls, "lockfd", None)
        if fd is None:
            fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._tls.lockfd = fd
            with self._lockfds_guard:
                self._lockfds.append(fd)
        return _ObjectLock(fd, int(key[:15], 16))

    # -- small metadata files -------------------------------------------------------------------

    def meta_path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def read_meta(self, name: str, search_alien: bool = True) -> bytes | None:
        for d in [self.dir] + (self.alien if search_alien else []):
            try:
                with open(os.path.join(d, name), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CacheError(f"cannot read {os.path.join(d, name)}: {e.strerror}") from None
        return None

    def read_meta_everywhere(self, name: str) -> list[tuple[str, bytes]]:
        """(directory, contents) of `name` in this cache and in each alien tier."""
        out = []
        for d in [self.dir, *self.alien]:
            try:
                with open(os.path.join(d, name), "rb") as f:
                    out.append((d, f.read()))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CacheError(f"cannot read {os.path.join(d, name)}: {e.strerror}") from None
        return out

    def write_meta(self, name: str, data: bytes) -> None:
        try:
            write_atomic(os.path.join(self.dir, name), data)
        except OSError as e:
            raise CacheError(f"cannot write {name} in cache {self.dir}: {e.strerror}") from None

    def remove_stale_temporaries(self) -> int:
        """Delete txn/ files of processes that no longer exist."""
        removed = 0
        try:
            names = os.listdir(self.txn)
        except OSError:
            return 0
        for name in names:
            parts = name.split(".")
            if len(parts) >= 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                try:
                    os.unlink(os.path.join(self.txn, name))
                    removed += 1
                except OSError:
                    pass
        return removed

    def close(self) -> None:
        with self._lockfds_guard:
            for fd in self._lockfds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._lockfds.clear()
        self._tls = threading.local()
        if self.quota is not None:
            self.quota.close()


class _ObjectLock:
    """One byte of the lock file, held for a `with` block (a class rather than a
    contextlib generator: contextlib is ~2 ms of parrot_run's start-up)."""

    __slots__ = ("fd", "offset")

    def __init__(self, fd: int, offset: int):
        self.fd, self.offset = fd, offset

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
        fresh = not os.path.exists(path)
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
        lockfd = os.open(
            os.path.join(self.dir, "lock_cleanup"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
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
