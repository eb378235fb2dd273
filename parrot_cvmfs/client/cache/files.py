"""Opening what is found in a cache: never through a link, never blocking on a fifo
planted there, and every surprise (a link, a directory, a special file) one line
naming the file and the cache."""

from __future__ import annotations

import errno
import os
import stat as st

from ...errors import CacheError, file_kind

TYPE_CHECKING = False  # not typing's: parrot_run's start-up imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
META_MAX = 16 << 20  # manifests, whitelists, breadcrumbs: a few KB each


def open_no_link(path: str, flags: int, where: str, mode: int = 0o600) -> int:
    """os.open of `path` with O_NOFOLLOW; a link there is a CacheError naming `where`
    (the cache directory), other failures are the OSError."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CacheError(
                f"{where}: {os.path.basename(path)} is a symbolic link, not a regular file"
                " (remove it)"
            ) from None
        raise


def cache_error(e: OSError, what: str) -> CacheError:
    """`e` if it is a CacheError already (it names what was wrong), else the one line
    `what: <strerror>`."""
    if isinstance(e, CacheError):
        return e
    return CacheError(f"{what}: {e.strerror}")


def make_dir(root: str, name: str, mode: int) -> None:
    """`root/name` as a real directory of ours: made, or found (never a link)."""
    path = f"{root}/{name}"
    try:
        os.mkdir(path, mode)
        return
    except FileExistsError:
        pass
    mode = os.lstat(path).st_mode
    if not st.S_ISDIR(mode):
        raise CacheError(f"cache {root}: {name} is {file_kind(mode)}, not a directory (remove it)")


def open_in_dir(directory: str, name: str) -> int:
    """A read-only descriptor of `directory/name`, neither the directory nor the file
    followed as a link (OSError otherwise, a link's included)."""
    dfd = os.open(directory, _DIR_NOFOLLOW)
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)


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


def unlink_matching(directory: str, match: Callable[[str], bool]) -> int:
    """Unlink the entries of the real directory `directory` (never through a link) whose
    names `match`; how many went. A directory that cannot be read removes nothing."""
    removed = 0
    try:
        dfd = os.open(directory, _DIR_NOFOLLOW)
    except OSError:
        return 0
    try:
        for name in os.listdir(dfd):
            if match(name):
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


def open_regular(path: str, where: str) -> int | None:
    """A read-only descriptor of the regular file at `path`, opened without following
    a link (nor blocking on a fifo); None if there is nothing there. Anything else is a
    CacheError naming `where` (the cache directory)."""
    try:
        fd = open_no_link(path, _READ_FLAGS, where)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise cache_error(e, f"cannot read {path} in {where}") from None
    mode = os.fstat(fd).st_mode
    if not st.S_ISREG(mode):
        os.close(fd)
        raise CacheError(
            f"{where}: {os.path.basename(path)} is {file_kind(mode)}, not a regular file"
            " (remove it)"
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
        raise cache_error(e, f"cannot read {path} in {where}") from None
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (the writer of a temporary file named after it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
