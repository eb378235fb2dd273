"""Files replaced whole: written under a temporary name, renamed over the old one.

A reader sees the old file or the new one, never a partial one, and a rename
replaces whatever was at the name (a symbolic link included) without writing
through it. Below client, server and tracer: the standard library only.
"""

from __future__ import annotations

import itertools
import os

_temp_counter = itertools.count()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# temporary names tried before giving up: each taken one was left by a dead process of
# our pid (another pid namespace), or planted by someone who may write the directory
_TRIES = 100


def discard(path: str, dir_fd: int | None = None) -> None:
    """Remove a temporary file that will not be used, if it is still there."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


def write_atomic_at(dfd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `name` in the directory `dfd` by a file of `data` with `mode` (whatever the
    umask), never following a link; the temporary file goes on failure."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for tries in range(_TRIES):
        tmp = f".tmp.{os.getpid()}.{next(_temp_counter)}.{name[:128]}"
        try:
            fd = os.open(tmp, flags, mode, dir_fd=dfd)
            break
        except FileExistsError:  # a dead process of the same pid left it
            if tries == _TRIES - 1:
                raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        discard(tmp, dfd)
        raise


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace the file at `path` by one of `data` with `mode` (see `write_atomic_at`)."""
    d, name = os.path.split(path)
    dfd = os.open(d or ".", _DIR_FLAGS)
    try:
        write_atomic_at(dfd, name, data, mode)
    finally:
        os.close(dfd)
