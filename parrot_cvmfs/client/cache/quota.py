"""The quota: LRU bookkeeping of the objects of a cache in `cachedb` (SQLite, WAL),
shared by the processes using it. Clean-up evicts least recently used objects down to
half the limit, skipping any file that a process has open or mapped (found in /proc)
and objects used in the last few seconds (handed out but not opened yet)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat as st
import threading
import time
from collections import deque

from ...errors import CacheError, file_kind
from ...format.database import sqlite3  # the start-up-cheap sqlite3, chosen there
from .layout import alias_target, remove_aliases
from .locks import open_lock_file

# an object stored or used this recently may be about to be opened: not evicted yet
_RECENT_GRACE = 0.25


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
        # every use of the database (one connection, threads committing at once: the
        # prefetch's and the supervisor's), a clean-up's whole pass included
        self._lock = threading.RLock()
        self._touched: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self.cleanups = 0
        self.cleanup_times: deque[float] = deque(maxlen=1000)  # user.ncleanup24
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
                    f"cache {cache_dir}: {os.path.basename(f)} is {file_kind(mode)}, not a"
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
            with self._lock:
                db = self._db.execute("SELECT coalesce(sum(size), 0) FROM objects")
                return db.fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise CacheError(f"quota database in {self.dir} failed: {e}") from None

    def over_limit(self) -> bool:
        return self.usage() > self.limit

    def cleanup(self, target: int | None = None) -> int:
        """Evict least recently used objects until usage <= target (default: half the
        limit). Returns bytes freed. Only one process cleans at a time."""
        target = self.limit // 2 if target is None else target
        lockfd = open_lock_file(os.path.join(self.dir, "lock_cleanup"), self.dir)
        try:
            try:
                fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return 0  # somebody else is cleaning
                raise
            with self._lock:
                return self._cleanup_locked(target)
        finally:
            os.close(lockfd)

    def _cleanup_locked(self, target: int) -> int:
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
        self.cleanup_times.append(time.time())
        self.evicted += len(gone)
        return freed

    def close(self) -> None:
        try:
            with self._lock:
                self.flush()
                self._db.close()
        except (CacheError, sqlite3.Error):
            pass
