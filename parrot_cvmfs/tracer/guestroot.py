"""The guest root read by the pure container modules: the overlay's lower layer when
the root is in /cvmfs (container/overlay.py's `Lower`, answered from the catalogs and
the cache) and the reader image.py evaluates an image's environment scripts with (the
guest's namespace, so the scripts see what the job will see)."""

from __future__ import annotations

import errno
import os
import stat as st

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


class GuestReader:
    """image.py's root reader over the job's namespace: `stat` and `read` follow links
    in the guest, `entries` lists a directory as the job would (overlay merged)."""

    def __init__(self, guest):
        self.guest = guest  # a tracer.guest.Guest (not imported: guest.py imports us)

    def _target(self, path: str):
        t = self.guest.resolve(0, path, None, True)
        return None if t.err else t

    def stat(self, path: str):
        """The attributes of the guest's `path` (links followed), or None."""
        t = self._target(path)
        if t is None:
            return None
        if t.virtual:
            return _Stat(self.guest.view, t.node)
        try:
            return os.stat(t.host)
        except OSError:
            return None

    def read(self, path: str, limit: int) -> bytes:
        """At most `limit` bytes of the guest's regular file `path` (OSError if none)."""
        t = self._target(path)
        if t is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if t.virtual:
            if not t.node.is_regular:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            host = self.guest.view.materialize(t.node)
        else:
            host = t.host
        fd = os.open(host, _READ)
        try:
            if not st.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def entries(self, path: str) -> list[str]:
        """The names in the guest's directory `path` ([] if it is none)."""
        t = self._target(path)
        if t is None:
            return []
        merged = self.guest.overlay_entries(t.guest)
        if merged is not None:
            return [name for name, _ in merged]
        if t.virtual:
            if not t.node.is_dir:
                return []
            listing = self.guest.view.listing(t.node)
            return [os.fsdecode(n) for _, _, _, n in listing if n not in (b".", b"..")]
        listed = getattr(self.guest, "note_listing", None)
        if listed is not None:  # a start plan depends on what the listing holds
            listed(t.host)
        try:
            return os.listdir(t.host)
        except OSError:
            return []
