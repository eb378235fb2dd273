"""Files written whole or not at all: a temporary file in the same directory,
renamed into place (which replaces whatever was there, a link included, never
writing through it) and unlinked if anything fails. Below client/ and server/,
which both write this way."""

from __future__ import annotations

import itertools
import os

_temp_counter = itertools.count()


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
