"""Locks between the processes and threads sharing a cache: one byte of `lock_objects`
per object being fetched (an open-file-description lock, so that threads exclude each
other as processes do), and `lock_cleanup` for the one process evicting."""

from __future__ import annotations

import fcntl
import os
import struct
import threading

from .files import cache_error, open_no_link

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
_FLOCK = struct.Struct("=hh4xqqi4x")  # struct flock on 64-bit Linux


def open_lock_file(path: str, cache_dir: str) -> int:
    """A lock file of the cache, opened (made) without following a link."""
    try:
        return open_no_link(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, f"cache {cache_dir}")
    except OSError as e:
        raise cache_error(e, f"cannot open {os.path.basename(path)} in cache {cache_dir}") from None


class ThreadLockFile:
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


class ObjectLock:
    """One byte of the lock file, held for a `with` block (a class rather than a
    contextlib generator: contextlib is ~2 ms of parrot_run's start-up)."""

    __slots__ = ("fd", "offset", "_file")

    def __init__(self, file: ThreadLockFile, offset: int):
        # the thread's lock file stays open while this lock exists (even if the cache,
        # and with it the thread's local storage, is gone meanwhile)
        self.fd, self.offset, self._file = file.fd, offset, file

    def __enter__(self) -> None:
        fcntl.fcntl(
            self.fd, _F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.offset, 1, 0)
        )

    def __exit__(self, *exc) -> None:
        self.release()

    def try_acquire(self) -> bool:
        """Take the lock without waiting: False if another holds it."""
        try:
            fcntl.fcntl(
                self.fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.offset, 1, 0)
            )
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another
            return False
        return True

    def release(self) -> None:
        fcntl.fcntl(
            self.fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, self.offset, 1, 0)
        )


class ObjectLocks:
    """The object locks of one cache: each thread takes them through its own description
    of `lock_objects`, all closed with the cache."""

    def __init__(self, cache_dir: str):
        self._dir = cache_dir
        self._path = os.path.join(cache_dir, "lock_objects")
        self._tls = threading.local()
        self._fds: set[int] = set()  # the threads' descriptors of lock_objects
        self._guard = threading.Lock()

    def lock(self, key: str) -> ObjectLock:
        """Exclusive lock across processes and threads for one object key (a hex hash),
        for a `with` block."""
        own = getattr(self._tls, "lockfile", None)
        if own is None:
            own = self._tls.lockfile = ThreadLockFile(
                open_lock_file(self._path, self._dir), self._fds, self._guard
            )
        return ObjectLock(own, int(key[:15], 16))

    def close(self) -> None:
        with self._guard:
            # what threads still hold: now nothing (emptied under the guard, so that a
            # thread's description that ends meanwhile knows it is not its to close)
            fds = list(self._fds)
            self._fds.clear()
            self._fds = set()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._tls = threading.local()
