"""The object store: verified, decompressed objects by content hash, in a writable
cache directory and read-only alien tiers (see `layout`). Objects are written under
txn/ and renamed into place, so that readers never see partial files; everything found
is checked before it is used (`find`)."""

from __future__ import annotations

import errno
import itertools
import os
import stat as st
import threading

from ...atomic import discard, write_atomic
from ...errors import CacheError, file_kind
from ...format.hashes import ContentHash
from .files import cache_error, make_dir, pid_alive, read_regular, unlink_matching
from .layout import ALIASES, QUARANTINE, TXN, CacheTiers, alias_target, make_layout
from .locks import ObjectLock, ObjectLocks
from .quota import Quota

OBJECT_MODE = 0o500  # read-only for everybody, executable so that exec works on it

_temp_counter = itertools.count()

_ALIAS_COPY_MAX = 64 << 10


def _unfit(s: os.stat_result, size: int | None) -> str | None:
    """Why a cache file with these attributes cannot be served for an entry of `size`."""
    if not st.S_ISREG(s.st_mode):
        return f"is {file_kind(s.st_mode)}, not a regular file"
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
        self.dir_mode = dir_mode
        self._umask = os.umask(0o022)
        os.umask(self._umask)
        make_layout(self.dir, dir_mode)
        self.txn = os.path.join(self.dir, TXN)
        self._locks = ObjectLocks(self.dir)
        self._dirs_ok: set[str] = set()  # directories found to be real ones
        self.quota = Quota(self.dir, quota_bytes) if quota_bytes and quota_bytes > 0 else None
        self.remove_stale_temporaries()  # what a killed process was writing
        self.hits = 0
        self.misses = 0

    @property
    def tiers(self) -> CacheTiers:
        """This cache's directories (see `CacheTiers`)."""
        return CacheTiers(self.dir, self.alien)

    # -- names and lookup ---------------------------------------------------------------------

    def path(self, h: ContentHash, variant: str = "") -> str:
        return os.path.join(self.dir, h.cache_name() + variant)

    def destination(self, h: ContentHash, variant: str = "") -> str:
        """The path an object is renamed to, its `xx/` directory made on first use (a
        real directory of ours: a link or file there is a CacheError)."""
        name = h.cache_name() + variant
        self.ensure_dir(name[:2])
        return f"{self.dir}/{name}"

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
                        f"{where} {root}: {name[:2]} is {file_kind(mode)}, not a directory (remove it)"
                    )
                self._dirs_ok.add(sub)
            return os.lstat(f"{root}/{name}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise cache_error(e, f"cannot read {where} {root}") from None

    def find(
        self, h: ContentHash, variant: str = "", size: int | None = None, count: bool = True
    ) -> str | None:
        """Local path of a cached object (alien tiers first), or None; a hit or a miss
        of the statistics unless `count` is false (a look that a fetch repeats).

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
            self.hits += count
            return f"{a}/{name}"
        s = self._lstat(self.dir, name)
        if s is not None and _unfit(s, size) is None:
            self.hits += count
            if self.quota is not None:
                self.quota.touch(name)
            return f"{self.dir}/{name}"
        self.misses += count
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
        """`self.dir/rel` (a relative path of directories) as real directories of ours,
        made with the cache's directory mode where missing (two processes making one
        at once both succeed: `make_dir` accepts a directory it finds)."""
        path = f"{self.dir}/{rel}"
        if path not in self._dirs_ok:
            parts = rel.split("/")
            for i in range(len(parts)):
                make_dir(self.dir, "/".join(parts[: i + 1]), self.dir_mode)
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
            discard(tmp)
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

    def commit(
        self, tmp: str, h: ContentHash, variant: str = "", kind: int = 0, clean: bool = True
    ) -> str:
        """Move a complete, verified temporary file into place (replacing whatever wrong
        file `find` passed over there); past the quota, a clean-up follows unless not
        `clean` (a background fetch's: the next commit of the foreground cleans)."""
        name = h.cache_name() + variant
        try:
            dest = self.destination(h, variant)
            size = os.lstat(tmp).st_size if self.quota is not None else 0
            try:
                os.rename(tmp, dest)
            except OSError as e:
                if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self._quarantine(name)  # a directory where the object belongs
                os.rename(tmp, dest)
        except OSError as e:
            discard(tmp)
            if isinstance(e, CacheError):
                raise
            raise self.store_error(e, f"object {name}") from None
        if self.quota is not None:
            self.quota.insert(name, size, kind)
            if clean and self.quota.over_limit():
                self.quota.cleanup()
        return dest

    def _quarantine(self, name: str) -> None:
        """Move what is at an object's name aside, into `quarantaine/` (as cvmfs does with
        corrupt cache files)."""
        q = self.ensure_dir(QUARANTINE)
        os.rename(
            f"{self.dir}/{name}",
            f"{q}/{name.replace('/', '')}.{os.getpid()}.{next(_temp_counter)}",
        )

    def lock(self, key: str) -> ObjectLock:
        """Exclusive lock across processes and threads for one object key (a hex hash),
        for a `with` block.

        An open-file-description lock on one byte of `lock_objects`; each thread has
        its own description, so threads exclude each other as processes do."""
        return self._locks.lock(key)

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
        return unlink_matching(self.txn, _of_dead_process)

    def close(self) -> None:
        self._locks.close()
        if self.quota is not None:
            self.quota.close()


def _of_dead_process(name: str) -> bool:
    """Whether a txn/ name (`tag.PID.N`) is one a process that is gone was writing."""
    parts = name.split(".")
    return len(parts) >= 3 and parts[1].isdigit() and not pid_alive(int(parts[1]))
