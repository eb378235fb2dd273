"""The guest root read by the pure container modules: the overlay's lower layer when
the root is in /cvmfs (container/overlay.py's `Lower`, answered from the catalogs and
the cache)."""

from __future__ import annotations

import errno
import os

from .paths import vpath_of_logical

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .vfs import CvmfsView, Node

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Stat:
    """What the overlay and image.py read of a catalog entry (os.stat_result's names)."""

    __slots__ = ("st_mode", "st_size", "st_uid", "st_gid", "st_atime_ns", "st_mtime_ns")

    def __init__(self, view: CvmfsView, node: Node):
        a = view.attrs(node)
        ns = a.mtime * 1_000_000_000 + a.mtime_nsec
        self.st_mode, self.st_size, self.st_uid, self.st_gid = a.mode, a.size, a.uid, a.gid
        self.st_atime_ns = self.st_mtime_ns = ns


class CvmfsLower:
    """A lower layer that is a directory in /cvmfs (`root`, a canonical /cvmfs path);
    paths are guest paths below it, their links already resolved by the caller."""

    def __init__(self, view: CvmfsView, root: str):
        self.view, self.root = view, root.rstrip("/")

    def _node(self, path: str) -> Node | None:
        if path != "/" and (not path.startswith("/") or "/." in path or "//" in path):
            return None  # not a normalised guest path: nothing of ours
        return self.view.lookup(vpath_of_logical(self.root + (path if path != "/" else "")))

    def lstat(self, path: str):
        """The attributes of `path`, or None when it is not there."""
        node = self._node(path)
        return _Stat(self.view, node) if node is not None else None

    def entries(self, path: str) -> list[tuple[str, int]]:
        """(name, S_IFMT bits) of the directory `path`."""
        node = self._node(path)
        if node is None or not node.is_dir:
            return []
        return [
            (os.fsdecode(name), dtype << 12)
            for _, _, dtype, name in self.view.listing(node)
            if name not in (b".", b"..")
        ]

    def readlink(self, path: str) -> str:
        """The text of the link `path`."""
        node = self._node(path)
        if node is None or not node.is_symlink:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        return node.target

    def open(self, path: str) -> int:
        """A read-only descriptor of the regular file `path` (fetched and verified)."""
        node = self._node(path)
        if node is None or not node.is_regular:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        return os.open(self.view.materialize(node), _READ)
