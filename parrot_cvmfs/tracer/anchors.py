"""Anchors: the real objects in the cache that stand for /cvmfs entries where the kernel
needs one (a working directory, a directory descriptor, an O_PATH descriptor of a
symlink, a fifo).

    <cache>/anchors                                   /cvmfs
    <cache>/anchors/<fqrn>@<root hash>/<path>         /cvmfs/<fqrn>/<path>

The mounted revision is part of the name, so a name always stands for one entry: a path
that is a symlink in one revision and a directory in the next has two anchors, and two
jobs on two revisions never share one.

Anchors are made, and checked when reused, without following a link: each component is
opened with O_NOFOLLOW relative to its parent's descriptor, and whatever is found where
an anchor belongs but is not exactly it (a symlink, a file, a fifo, a directory where a
symlink belongs, a symlink with another target) is removed, or moved aside if it is a
directory, and made again. The kernel resolves anchor paths in the job (chdir, and opens
replayed by C, which opens them with RESOLVE_NO_SYMLINKS beneath the cache: respond.c).

A symlink's anchor points where the repository's symlink leads, spelled absolutely
(a relative target is taken from the link's place in /cvmfs, not in the cache): if the
kernel ever follows it, it goes where it would go on a real /cvmfs mount.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat as st

from ..client.lookup import lexical_parts
from ..errors import CacheError
from .paths import MOUNT, ROOT, VPath

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_aside = itertools.count()


class Anchors:
    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir
        self.root = os.path.join(cache_dir, "anchors")
        try:
            os.mkdir(self.root, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise CacheError(f"cannot create {self.root}: {e.strerror}") from None
        # the one component we open by path: the rest is opened beneath it
        self._fd = self._open_root()
        self.made: set[str] = set()  # anchors made or checked in this run

    def _open_root(self) -> int:
        try:
            return os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # a link where our directory belongs
                self._move_aside(os.open(self.cache_dir, _DIR_FLAGS), "anchors", close=True)
                os.mkdir(self.root, 0o755)
                return os.open(self.root, _DIR_FLAGS)
            raise CacheError(f"cannot open {self.root}: {e.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- names ----------------------------------------------------------------------------

    def path(self, vpath: VPath, revision: str) -> str:
        """The anchor's name for `vpath` in the mounted `revision` (`fqrn@root hash`)."""
        if vpath.repo is None:
            return self.root
        return f"{self.root}/{revision}{vpath.inner}"

    def vpath(self, host: str | None) -> VPath | None:
        """The /cvmfs place an anchor path stands for (any revision's), else None."""
        if not host:
            return None
        if host == self.root:
            return ROOT
        if not host.startswith(self.root + "/"):
            return None
        rest = host[len(self.root) + 1 :].removesuffix(" (deleted)")
        top, _, inner = rest.partition("/")
        repo = top.partition("@")[0]
        if not repo:
            return None
        return VPath(repo, "/" + inner if inner else "")

    def logical(self, host: str) -> str | None:
        """The /cvmfs spelling of an anchor directory's path (the answer table's key of
        paths relative to it: examine.c relative_key composes the same)."""
        v = self.vpath(host)
        return v.logical if v is not None else None

    # -- making ---------------------------------------------------------------------------

    def make(self, vpath: VPath, revision: str, kind: str, target: str = "") -> str:
        """The anchor of `vpath`, made or repaired: kind "dir", "fifo" or "symlink"
        (pointing at `target`, the repository's target already expanded)."""
        path = self.path(vpath, revision)
        if path in self.made:
            return path
        if vpath.repo is None:
            return path
        names = [revision, *vpath.inner.split("/")[1:]]
        leaf = names.pop() if kind != "dir" else None
        fd = os.dup(self._fd)
        try:
            for name in names:
                nfd = self._dir_at(fd, name)
                os.close(fd)
                fd = nfd
            if kind == "fifo":
                self._fifo_at(fd, leaf)
            elif kind == "symlink":
                self._symlink_at(fd, leaf, _absolute_target(vpath, target))
        except OSError as e:
            raise CacheError(f"cannot make the anchor {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        self.made.add(path)
        return path

    def _dir_at(self, fd: int, name: str) -> int:
        for _ in range(4):  # bounded: another process may be repairing the same name
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                self._remove_at(fd, name)  # a symlink or file where a directory belongs
        raise OSError(errno.ELOOP, f"{name} keeps changing")

    def _fifo_at(self, fd: int, name: str) -> None:
        for _ in range(4):
            try:
                s = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkfifo(name, 0o644, dir_fd=fd)
                except FileExistsError:
                    continue
                return
            if st.S_ISFIFO(s.st_mode):
                return
            self._remove_at(fd, name)
        raise OSError(errno.ELOOP, f"{name} keeps changing")

    def _symlink_at(self, fd: int, name: str, target: str) -> None:
        for _ in range(4):
            try:
                if os.readlink(name, dir_fd=fd) == target:
                    return
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: not a symlink
                    raise
            # made aside and renamed over: a descriptor of the old link stays as it was
            tmp = f".new.{os.getpid()}.{next(_aside)}"
            os.symlink(target, tmp, dir_fd=fd)
            try:
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                return
            except OSError as e:
                os.unlink(tmp, dir_fd=fd)
                if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self._remove_at(fd, name)  # a directory where the link belongs
        raise OSError(errno.ELOOP, f"{name} keeps changing")

    def _remove_at(self, fd: int, name: str) -> None:
        """Take away what is at `name` (never following it)."""
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            self._move_aside(fd, name)
        except PermissionError:  # unlink of a directory is EISDIR on Linux, EPERM elsewhere
            self._move_aside(fd, name)

    def _move_aside(self, fd: int, name: str, close: bool = False) -> None:
        """A directory where something else belongs: renamed into txn/, where it harms
        nobody (it may hold what others planted; it is not ours to walk)."""
        try:
            txn = os.open(os.path.join(self.cache_dir, "txn"), _DIR_FLAGS)
        except OSError:
            txn = -1
        try:
            dest = f"stale-anchor.{os.getpid()}.{next(_aside)}"
            os.rename(name, dest, src_dir_fd=fd, dst_dir_fd=txn if txn >= 0 else fd)
        except FileNotFoundError:
            pass
        finally:
            if txn >= 0:
                os.close(txn)
            if close:
                os.close(fd)


def _absolute_target(vpath: VPath, target: str) -> str:
    """Where the symlink at `vpath` leads, as an absolute, lexically normal path: what
    the kernel would reach following it on a real /cvmfs mount."""
    if not target:
        return "/nonexistent"  # an empty target: ENOENT, never the anchor's directory
    if not target.startswith("/"):
        target = f"{MOUNT}/{vpath.repo}{vpath.inner.rsplit('/', 1)[0]}/{target}"
    out = lexical_parts(target)
    return "/" + "/".join(out) + ("/" if target.endswith("/") and out else "")
