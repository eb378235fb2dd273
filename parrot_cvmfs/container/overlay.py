"""A writable overlay over a read-only guest root, kept in a directory any user can
write on any file system (NFS and Lustre included: no xattrs, no device nodes).

Layout (apptainer's `--overlay DIR`): `DIR/upper/` holds what the job wrote, at its
guest path; `DIR/work/` holds only our lock. Removals are OCI whiteouts, plain files:
`.wh.NAME` hides NAME of the lower, `.wh..wh..opq` in a directory hides all of the
lower's entries there (a directory made where one was removed). The kernel's format is
read too, so an upper directory made by apptainer, podman or fuse-overlayfs works: a
0/0 character device or a zero-size file with `{trusted,user}.overlay.whiteout` is a
whiteout, `{trusted,user}.overlay.opaque=y` or `user.fuseoverlayfs.opaque=y` an opaque
directory. Names starting `.wh.` are reserved: never listed, never found, never
created by the guest (EINVAL). The overlay persists: a later run sees it all again.

The lower is anything with the `Lower` methods (`HostLower` for a host directory; the
tracer gives one reading /cvmfs): `lstat(path)` (an object with st_mode, st_size,
st_uid, st_gid, st_atime_ns, st_mtime_ns, or None when absent), `entries(path)`
((name, S_IFMT bits) of a directory), `readlink(path)` and `open(path)` (a read-only
descriptor of a regular file). Paths are absolute, normalised guest paths whose
symbolic links the caller resolved already (it resolves them with `lookup`).

The API the tracer calls; guest-visible failures are OSError with the errno the
call returns, problems of the overlay directory itself are OverlayError:
- `lookup(path)` -> `Found(layer, host, st)` or None: where the guest's `path` is
  (`host` is the upper file's host path for layer "upper", None for "lower").
- `prepare_write(path, create_mode=None, exclusive=False)` -> host path to open or
  change (write-open, truncate, chmod, chown, utimes, setxattr): the lower file is
  copied up first (data, mode, times, symlink text; owner when we may); with
  `create_mode` (umask applied) a missing file is created, `exclusive` is O_EXCL.
- `mkdir(path, mode)`, `symlink(target, path)`, `link(old, new)`,
  `remove(path, directory)` (unlink/rmdir), `rename(old, new, noreplace=False)`,
  `exchange(a, b)` (RENAME_EXCHANGE), `link_file(source, path)` (an O_TMPFILE
  file named), `tmpfile_dir(path)` (the upper copy of a directory, to make an
  O_TMPFILE file in), `new_name(path)` (where the kernel makes an entry itself: a
  Unix socket's bind). Moving a directory that has lower content is
  EXDEV, as the kernel's overlay without redirect_dir (`mv` then copies).
- `entries(path)` -> [(name, S_IFMT bits)]: the merged listing, upper first, lower
  names after (not whited out, not hidden by an opaque directory); no "." nor "..".

Permission checks are the kernel's on the upper copies, which belong to the user
who runs the job: the overlay is that user's own layer of the root.

Concurrency: one job at a time. Two supervisors interleaving lookups and copy-ups
on one upper directory could each decide from what the other is changing (a file
copied up twice, a whiteout written after the other job created the name), the
same reason the kernel refuses a second mount of one upper/work pair. So an
Overlay holds an exclusive lock on `DIR/work/parrot.lock` (flock; where the file
system has no flock, an O_EXCL file naming host and pid) and a second job is
refused with one line. Calls on one Overlay must be serialised by the caller.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat as st

from ..errors import CvmfsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import NamedTuple
else:
    from collections import namedtuple

WH = ".wh."  # OCI whiteout prefix; every name starting so is ours
OPAQUE = ".wh..wh..opq"
_TMP = ".wh..wh.tmp."  # our temporary names: reserved, so never listed
_XATTR_WHITEOUT = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_XATTR_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_MAX_DEPTH = 4096  # components of one path (PATH_MAX / 1)
_tmp_counter = itertools.count()


class OverlayError(CvmfsError):
    """The overlay directory cannot be used (not a directory, in use by another job)."""


if TYPE_CHECKING:

    class Found(NamedTuple):
        layer: str  # "upper" or "lower"
        host: str | None  # the upper entry's host path; None for the lower
        st: os.stat_result
else:
    Found = namedtuple("Found", "layer host st")


def _fail(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _parts(path: str) -> list[str]:
    """The components of an absolute normalised guest path."""
    if not path.startswith("/"):
        raise _fail(errno.EINVAL, path)
    parts = [p for p in path.split("/") if p]
    if len(parts) > _MAX_DEPTH or any(p in (".", "..") for p in parts):
        raise _fail(errno.EINVAL, path)
    return parts


def _xattr(fd: int, name: str | None, attr: str) -> bytes | None:
    """An xattr of the entry `name` in the directory `fd` (of `fd` itself if None),
    never through a link; None when absent or unreadable (trusted.* as a user)."""
    path = f"/proc/self/fd/{fd}" + (f"/{name}" if name else "")
    try:
        return os.getxattr(path, attr, follow_symlinks=name is None)
    except OSError:
        return None


def _lstat_at(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None


def _is_kernel_whiteout(fd: int, name: str, s: os.stat_result) -> bool:
    if st.S_ISCHR(s.st_mode):
        return s.st_rdev == 0
    if st.S_ISREG(s.st_mode) and s.st_size == 0:
        return any(_xattr(fd, name, a) is not None for a in _XATTR_WHITEOUT)
    return False


def _is_opaque(dfd: int) -> bool:
    """Whether the upper directory `dfd` hides the lower's entries below it."""
    if _lstat_at(dfd, OPAQUE) is not None:
        return True
    return any(_xattr(dfd, None, a) == b"y" for a in _XATTR_OPAQUE)


def _tmp_name() -> str:
    return f"{_TMP}{os.getpid()}.{next(_tmp_counter)}"


class _Node:
    """What one guest path is in the two layers: the upper parent's descriptor (None
    when the parent has no upper directory), the upper entry (whiteouts are no entry),
    whether a whiteout names it, and whether the lower is visible at it."""

    __slots__ = ("pfd", "name", "upper", "kernel_whiteout", "oci_whiteout", "lower_visible")

    def __init__(self, pfd, name, upper, kernel_whiteout, oci_whiteout, lower_visible):
        self.pfd, self.name, self.upper = pfd, name, upper
        self.kernel_whiteout, self.oci_whiteout = kernel_whiteout, oci_whiteout
        self.lower_visible = lower_visible

    def close(self) -> None:
        if self.pfd is not None:
            os.close(self.pfd)
            self.pfd = None


class _Lock:
    """The exclusive lock of one overlay (see the module docstring)."""

    def __init__(self, work_fd: int, where: str):
        import fcntl

        self.fd: int | None = None
        self.marker: tuple[int, str] | None = None
        fd = os.open(
            "parrot.lock",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=work_fd,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another job"
            os.close(fd)
            raise OverlayError(
                f"overlay {where} is in use by {holder}: two jobs cannot share one overlay"
                " (give each its own --overlay directory)",
                errno.EBUSY,
            ) from None
        except OSError as e:  # no flock on this file system (Lustre without -o flock)
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            self._take_marker(work_fd, where)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self.fd = fd

    def _take_marker(self, work_fd: int, where: str) -> None:
        me = f"pid {os.getpid()} on {os.uname().nodename}\n"
        for _ in range(2):
            try:
                fd = os.open(
                    "parrot.pid",
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=work_fd,
                )
            except FileExistsError:
                try:
                    fd = os.open("parrot.pid", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=work_fd)
                    holder = os.read(fd, 200).decode(errors="replace").strip()
                    os.close(fd)
                except OSError:
                    continue
                words = holder.split()
                if len(words) == 4 and words[3] == os.uname().nodename and words[1].isdigit():
                    try:
                        os.kill(int(words[1]), 0)
                    except ProcessLookupError:  # a job of this host that is gone
                        os.unlink("parrot.pid", dir_fd=work_fd)
                        continue
                    except PermissionError:
                        pass
                raise OverlayError(
                    f"overlay {where} is in use by {holder or 'another job'}: two jobs cannot"
                    f" share one overlay (if none runs, remove {where}/work/parrot.pid)",
                    errno.EBUSY,
                ) from None
            os.write(fd, me.encode())
            os.close(fd)
            self.marker = (os.dup(work_fd), "parrot.pid")
            return
        raise OverlayError(f"overlay {where}: cannot take {where}/work/parrot.pid", errno.EBUSY)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None
        if self.marker is not None:
            dfd, name = self.marker
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError:
                pass
            os.close(dfd)
            self.marker = None


def _own_dir(parent_fd: int, name: str, where: str) -> int:
    """A descriptor of the real directory `name` in `parent_fd`, made if missing."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise OverlayError(f"overlay {where}: cannot make {name}/: {e.strerror}") from None
    try:
        return os.open(name, _PATH_DIR, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OverlayError(f"overlay {where}: {name} is not a directory") from None
        raise OverlayError(f"overlay {where}: cannot open {name}/: {e.strerror}") from None


class Overlay:
    """The overlay in `directory` (made if missing) over `lower`; locked until close()."""

    def __init__(self, directory: str, lower):
        self.directory = os.path.abspath(directory)
        self.upper_dir = os.path.join(self.directory, "upper")
        self.lower = lower
        where = self.directory
        try:
            os.makedirs(where, 0o755, exist_ok=True)
            top = os.open(where, _PATH_DIR)
        except OSError as e:
            raise OverlayError(f"overlay {where}: not a usable directory: {e.strerror}") from None
        try:
            self._upper = _own_dir(top, "upper", where)
            try:
                os.close(_own_dir(top, "work", where))
                work = os.open("work", _READ_DIR, dir_fd=top)
                try:
                    self._lock = _Lock(work, where)
                finally:
                    os.close(work)
            except BaseException:
                os.close(self._upper)
                raise
        except OSError as e:
            if isinstance(e, OverlayError):
                raise
            raise OverlayError(f"overlay {where}: cannot use work/: {e.strerror}") from None
        finally:
            os.close(top)

    def close(self) -> None:
        """Release the lock (the overlay's files stay)."""
        if self._upper >= 0:
            self._lock.release()
            os.close(self._upper)
            self._upper = -1

    def __enter__(self) -> Overlay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- finding ------------------------------------------------------------------------------------

    def _node(self, parts: list[str], path: str) -> _Node:
        """Walk the upper layer to the parent of `parts` (a guest path other than /)."""
        pfd: int | None = os.dup(self._upper)
        visible = not _is_opaque(pfd)
        try:
            for i, name in enumerate(parts):
                if name.startswith(WH):
                    raise _fail(errno.ENOENT, path)  # reserved: the guest never sees them
                upper = kw = None
                oci = False
                if pfd is not None:
                    upper = _lstat_at(pfd, name)
                    if upper is not None and _is_kernel_whiteout(pfd, name, upper):
                        upper, kw = None, True
                    oci = _lstat_at(pfd, WH + name) is not None
                visible_here = visible and not kw and not oci
                if i == len(parts) - 1:
                    node = _Node(pfd, name, upper, bool(kw), oci, visible_here)
                    pfd = None
                    return node
                if upper is not None:
                    if not st.S_ISDIR(upper.st_mode):
                        raise _fail(errno.ENOTDIR, path)
                    child = os.open(name, _PATH_DIR, dir_fd=pfd)
                    visible = visible_here and not _is_opaque(child)
                elif visible_here:
                    child, visible = None, True
                else:
                    raise _fail(errno.ENOENT, path)
                if pfd is not None:
                    os.close(pfd)
                pfd = child
            raise AssertionError("unreachable")
        finally:
            if pfd is not None:
                os.close(pfd)

    def _lower_at(self, node: _Node, path: str):
        return self.lower.lstat(path) if node.lower_visible else None

    def _has_lower(self, parts: list[str], path: str) -> bool:
        """Whether the lower layer shows an entry at `path` (its whiteout is needed)."""
        node = self._node(parts, path)
        try:
            return self._lower_at(node, path) is not None
        finally:
            node.close()

    def lookup(self, path: str) -> Found | None:
        """Where the guest's `path` is: the upper entry, the lower one, or None (absent
        or removed). "/" is the upper root when it is opaque or the lower is gone."""
        parts = _parts(path)
        if not parts:
            s = self.lower.lstat("/")
            if s is None or _is_opaque(self._upper):
                return Found("upper", self.upper_dir, os.fstat(self._upper))
            return Found("lower", None, s)
        node = self._node(parts, path)
        try:
            if node.upper is not None:
                return Found("upper", self._host(parts), node.upper)
            s = self._lower_at(node, path)
            return Found("lower", None, s) if s is not None else None
        finally:
            node.close()

    def _host(self, parts: list[str]) -> str:
        return os.path.join(self.upper_dir, *parts)

    # -- copy-up ------------------------------------------------------------------------------------

    def _dir_fd(self, parts: list[str], path: str) -> int:
        """A descriptor of the upper directory at `parts`, copied up from the lower (with
        its parents) where it is only there; ENOENT/ENOTDIR as the merged view says."""
        fd = os.dup(self._upper)
        try:
            for i, name in enumerate(parts):
                try:
                    child = os.open(name, _PATH_DIR, dir_fd=fd)
                except FileNotFoundError:
                    sub = "/" + "/".join(parts[: i + 1])
                    node = self._node(parts[: i + 1], sub)
                    try:
                        s = self._lower_at(node, sub) if node.upper is None else node.upper
                    finally:
                        node.close()
                    if s is None:
                        raise _fail(errno.ENOENT, path) from None
                    if not st.S_ISDIR(s.st_mode):
                        raise _fail(errno.ENOTDIR, path) from None
                    self._copy_entry(fd, name, sub, s)
                    child = os.open(name, _PATH_DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _fail(errno.ENOTDIR, path) from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _copy_entry(self, pfd: int, name: str, path: str, s) -> None:
        """Copy the lower's `path` (attributes `s`) up as `name` in `pfd`: under a
        temporary name first, so the upper never holds half a file."""
        tmp = _tmp_name()
        mode = st.S_IMODE(s.st_mode)
        parent = os.fstat(pfd)
        if st.S_ISREG(s.st_mode):
            src = self.lower.open(path)
            try:
                out = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600, dir_fd=pfd,
                )  # fmt: skip
                try:
                    left = s.st_size  # the lower's size bounds the copy
                    while left > 0:
                        data = os.read(src, min(_COPY_CHUNK, left))
                        if not data:
                            break
                        os.write(out, data)
                        left -= len(data)
                    os.fchmod(out, mode)
                    self._own(out, s)
                    os.utime(out, ns=(s.st_atime_ns, s.st_mtime_ns))
                finally:
                    os.close(out)
            except BaseException:
                _discard(pfd, tmp)
                raise
            finally:
                os.close(src)
        elif st.S_ISDIR(s.st_mode):
            os.mkdir(tmp, 0o700, dir_fd=pfd)
            try:
                dfd = os.open(tmp, _READ_DIR, dir_fd=pfd)
                try:
                    os.fchmod(dfd, mode)
                    self._own(dfd, s)
                    os.utime(dfd, ns=(s.st_atime_ns, s.st_mtime_ns))
                finally:
                    os.close(dfd)
            except BaseException:
                os.rmdir(tmp, dir_fd=pfd)
                raise
        elif st.S_ISLNK(s.st_mode):
            os.symlink(self.lower.readlink(path), tmp, dir_fd=pfd)
            try:
                os.utime(tmp, ns=(s.st_atime_ns, s.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)
            except OSError:
                pass
        elif st.S_ISFIFO(s.st_mode):
            os.mkfifo(tmp, mode, dir_fd=pfd)
        else:  # a device or socket of the lower cannot be written anyway
            raise _fail(errno.EOPNOTSUPP, path)
        try:
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            _remove_tree(pfd, tmp)
            raise
        # a copy-up changes nothing the guest sees in the parent: its times stay
        os.utime(f"/proc/self/fd/{pfd}", ns=(parent.st_atime_ns, parent.st_mtime_ns))

    @staticmethod
    def _own(fd: int, s) -> None:
        """The lower's owner, where we may give it (root); a user keeps the copy."""
        if os.geteuid() == 0:
            try:
                os.fchown(fd, s.st_uid, s.st_gid)
            except OSError:
                pass

    def prepare_write(self, path: str, create_mode: int | None = None, exclusive=False) -> str:
        """The host path in the upper layer to open for writing or to change the
        attributes of; see the module docstring."""
        parts = _parts(path)
        if not parts:
            return self.upper_dir
        if create_mode is not None and parts[-1].startswith(WH):
            raise _fail(errno.EINVAL, path)
        node = self._node(parts, path)
        try:
            if node.upper is not None:
                if exclusive and create_mode is not None:
                    raise _fail(errno.EEXIST, path)
                return self._host(parts)
            s = self._lower_at(node, path)
        finally:
            node.close()
        if s is not None:
            if exclusive and create_mode is not None:
                raise _fail(errno.EEXIST, path)
            pfd = self._dir_fd(parts[:-1], path)
            try:
                if _lstat_at(pfd, parts[-1]) is None:  # still: _dir_fd may not copy it
                    self._copy_entry(pfd, parts[-1], path, s)
            finally:
                os.close(pfd)
            return self._host(parts)
        if create_mode is None:
            raise _fail(errno.ENOENT, path)

        def make(pfd: int, tmp: str) -> None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=pfd)
            try:
                os.fchmod(fd, create_mode & 0o7777)  # as given: the umask is the caller's
            finally:
                os.close(fd)

        self._create(parts, path, make)
        return self._host(parts)

    # -- making names -------------------------------------------------------------------------------

    def _create(
        self, parts: list[str], path: str, make: Callable[[int, str], None] | None, dir_mode=None
    ):
        """Make a new guest entry at `path` with `make(dir_fd, temporary name)` (a
        directory of `dir_mode` if given), then put it in place: over a kernel whiteout,
        before dropping a `.wh.` one, so no moment shows the lower's removed entry again."""
        if not parts:
            raise _fail(errno.EEXIST, path)
        name = parts[-1]
        if name.startswith(WH):
            raise _fail(errno.EINVAL, path)
        node = self._node(parts, path)
        try:
            if node.upper is not None or self._lower_at(node, path) is not None:
                raise _fail(errno.EEXIST, path)
            kernel_whiteout, oci = node.kernel_whiteout, node.oci_whiteout
        finally:
            node.close()
        pfd = self._dir_fd(parts[:-1], path)
        try:
            tmp = _tmp_name()
            is_dir = dir_mode is not None
            if is_dir:
                os.mkdir(tmp, 0o700, dir_fd=pfd)  # its own marker first, then its mode
            else:
                make(pfd, tmp)
            try:
                if is_dir:
                    # a directory where the lower has one (removed before) hides its entries
                    if self.lower.lstat(path) is not None:
                        _touch_in(pfd, tmp, OPAQUE)
                    os.chmod(tmp, dir_mode & 0o7777, dir_fd=pfd)
                if kernel_whiteout and is_dir:  # a directory cannot replace a device
                    os.unlink(name, dir_fd=pfd)
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                _remove_tree(pfd, tmp)
                raise
            if oci:
                os.unlink(WH + name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def mkdir(self, path: str, mode: int) -> None:
        """mkdir(2) in the merged view (`mode` with the umask applied)."""
        self._create(_parts(path), path, None, dir_mode=mode)

    def symlink(self, target: str, path: str) -> None:
        """symlink(2): `target` is stored as given."""
        self._create(_parts(path), path, lambda pfd, tmp: os.symlink(target, tmp, dir_fd=pfd))

    def link(self, old: str, new: str) -> None:
        """link(2) of `old` (copied up first) as `new`; both end up in the upper layer."""
        found = self.lookup(old)
        if found is None:
            raise _fail(errno.ENOENT, old)
        if st.S_ISDIR(found.st.st_mode):
            raise _fail(errno.EPERM, old)
        src = self.prepare_write(old)

        def make(pfd: int, tmp: str) -> None:
            os.link(src, tmp, dst_dir_fd=pfd, follow_symlinks=False)

        self._create(_parts(new), new, make)

    def link_file(self, source: str, new: str) -> None:
        """link(2) of a file of the upper layer the caller names by a /proc magic link
        (`source`, followed: an O_TMPFILE file has no name) as `new`."""

        def make(pfd: int, tmp: str) -> None:
            os.link(source, tmp, dst_dir_fd=pfd, follow_symlinks=True)

        self._create(_parts(new), new, make)

    def new_name(self, path: str) -> str:
        """The host path in the upper layer at which the kernel itself is to make the
        new entry `path` (a Unix socket's bind): its parent copied up; EEXIST if the
        merged view has the name. A `.wh.` whiteout there may stay: the upper entry
        is found before it, and it keeps the lower's entry hidden once this one goes."""
        parts = _parts(path)
        if not parts:
            raise _fail(errno.EEXIST, path)
        if parts[-1].startswith(WH):
            raise _fail(errno.EINVAL, path)
        node = self._node(parts, path)
        try:
            if node.upper is not None or self._lower_at(node, path) is not None:
                raise _fail(errno.EEXIST, path)
            kernel_whiteout = node.kernel_whiteout
        finally:
            node.close()
        pfd = self._dir_fd(parts[:-1], path)
        try:
            if kernel_whiteout:  # a device the kernel cannot bind over: an OCI one instead
                _touch(pfd, WH + parts[-1])
                os.unlink(parts[-1], dir_fd=pfd)
        finally:
            os.close(pfd)
        return self._host(parts)

    def tmpfile_dir(self, path: str) -> str:
        """The host directory in which to make an O_TMPFILE file for the guest's
        directory `path`: its upper copy (copied up with its parents)."""
        found = self.lookup(path)
        if found is None:
            raise _fail(errno.ENOENT, path)
        if not st.S_ISDIR(found.st.st_mode):
            raise _fail(errno.ENOTDIR, path)
        parts = _parts(path)
        os.close(self._dir_fd(parts, path))
        return self._host(parts) if parts else self.upper_dir

    # -- removing -----------------------------------------------------------------------------------

    def remove(self, path: str, directory: bool = False) -> None:
        """unlink(2) (`directory` False) or rmdir(2) of the guest's `path`: the upper
        entry goes, and a whiteout hides the lower's."""
        parts = _parts(path)
        if not parts:
            raise _fail(errno.EBUSY, path)
        found = self.lookup(path)
        if found is None:
            raise _fail(errno.ENOENT, path)
        is_dir = st.S_ISDIR(found.st.st_mode)
        if directory and not is_dir:
            raise _fail(errno.ENOTDIR, path)
        if not directory and is_dir:
            raise _fail(errno.EISDIR, path)
        if is_dir and self.entries(path):
            raise _fail(errno.ENOTEMPTY, path)
        lower = self._has_lower(parts, path)
        pfd = self._dir_fd(parts[:-1], path)
        try:
            if lower:  # first the whiteout: the upper entry hides the lower meanwhile
                _touch(pfd, WH + parts[-1])
            if found.layer == "upper":
                if is_dir:
                    _remove_tree(pfd, parts[-1])  # only our markers are left in it
                else:
                    os.unlink(parts[-1], dir_fd=pfd)
        finally:
            os.close(pfd)

    def rename(self, old: str, new: str, noreplace: bool = False) -> None:
        """rename(2) in the merged view (renameat2's RENAME_NOREPLACE as `noreplace`)."""
        op, np_ = _parts(old), _parts(new)
        if not op or not np_:
            raise _fail(errno.EBUSY, old if not op else new)
        if new.startswith(old.rstrip("/") + "/"):
            raise _fail(errno.EINVAL, new)
        if np_[-1].startswith(WH):
            raise _fail(errno.EINVAL, new)
        src = self.lookup(old)
        if src is None:
            raise _fail(errno.ENOENT, old)
        src_dir = st.S_ISDIR(src.st.st_mode)
        src_lower = self._has_lower(op, old)
        if src_dir and src_lower and not self._upper_opaque(op):
            raise _fail(errno.EXDEV, old)  # its lower content cannot move with it
        dst = self.lookup(new)
        if op == np_:
            return
        if dst is not None:
            if noreplace:
                raise _fail(errno.EEXIST, new)
            dst_dir = st.S_ISDIR(dst.st.st_mode)
            if src_dir and not dst_dir:
                raise _fail(errno.ENOTDIR, new)
            if dst_dir and not src_dir:
                raise _fail(errno.EISDIR, new)
            if dst_dir and self.entries(new):
                raise _fail(errno.ENOTEMPTY, new)
        if src.layer == "lower":
            self.prepare_write(old)  # a file or link: copied up, then moved in the upper
        dnode = self._node(np_, new)
        try:
            dst_upper, dst_kw, dst_oci = dnode.upper, dnode.kernel_whiteout, dnode.oci_whiteout
        finally:
            dnode.close()
        spfd = self._dir_fd(op[:-1], old)
        try:
            dpfd = self._dir_fd(np_[:-1], new)
            try:
                if src_lower:  # first the whiteout: the upper entry shows meanwhile
                    _touch(spfd, WH + op[-1])
                if dst_upper is not None and st.S_ISDIR(dst_upper.st_mode):
                    _clear_markers(dpfd, np_[-1])  # merged-empty: only markers are left
                if src_dir and dst_kw:
                    os.unlink(np_[-1], dir_fd=dpfd)
                os.rename(op[-1], np_[-1], src_dir_fd=spfd, dst_dir_fd=dpfd)
                if src_dir and self.lower.lstat(new) is not None:
                    _touch_in(dpfd, np_[-1], OPAQUE)  # the lower's dir there stays hidden
                if dst_oci:
                    os.unlink(WH + np_[-1], dir_fd=dpfd)
            finally:
                os.close(dpfd)
        finally:
            os.close(spfd)

    def exchange(self, a: str, b: str) -> None:
        """renameat2(RENAME_EXCHANGE) of two names of the merged view, as the kernel's
        overlay without redirect_dir: both must exist; a directory with lower content
        cannot move (EXDEV); files and links are copied up, then swapped in the upper."""
        pa, pb = _parts(a), _parts(b)
        if not pa or not pb:
            raise _fail(errno.EBUSY, a if not pa else b)
        for x, y in ((a, b), (b, a)):
            if y.startswith(x.rstrip("/") + "/"):
                raise _fail(errno.EINVAL, y)  # one inside the other
        if pb[-1].startswith(WH) or pa[-1].startswith(WH):
            raise _fail(errno.ENOENT, a if pa[-1].startswith(WH) else b)
        found = []
        for path, parts in ((a, pa), (b, pb)):
            f = self.lookup(path)
            if f is None:
                raise _fail(errno.ENOENT, path)
            found.append(st.S_ISDIR(f.st.st_mode))
            if found[-1]:
                if self.lower.lstat(path) is not None and not self._upper_opaque(parts):
                    raise _fail(errno.EXDEV, path)  # its lower content cannot move with it
            elif f.layer == "lower":
                self.prepare_write(path)
        if pa == pb:
            return
        apfd = self._dir_fd(pa[:-1], a)
        try:
            bpfd = self._dir_fd(pb[:-1], b)
            try:
                _renameat2(apfd, pa[-1], bpfd, pb[-1], _RENAME_EXCHANGE)
                # a directory now where the lower has one must not show the lower's
                for pfd, parts, path, is_dir in ((apfd, pa, a, found[1]), (bpfd, pb, b, found[0])):
                    if is_dir and self.lower.lstat(path) is not None:
                        _touch_in(pfd, parts[-1], OPAQUE)
            finally:
                os.close(bpfd)
        finally:
            os.close(apfd)

    def _upper_opaque(self, parts: list[str]) -> bool:
        try:
            fd = os.open("/".join(parts), _PATH_DIR, dir_fd=self._upper)
        except OSError:
            return False
        try:
            return _is_opaque(fd)
        finally:
            os.close(fd)

    # -- listing ------------------------------------------------------------------------------------

    def entries(self, path: str) -> list[tuple[str, int]]:
        """The merged listing of the directory `path`: (name, S_IFMT bits), upper first."""
        parts = _parts(path)
        hidden: set[str] = set()
        out: list[tuple[str, int]] = []
        lower_visible = True
        ufd = None
        try:
            if parts:
                node = self._node(parts, path)
                try:
                    if node.upper is not None:
                        if not st.S_ISDIR(node.upper.st_mode):
                            raise _fail(errno.ENOTDIR, path)
                        ufd = os.open(node.name, _READ_DIR, dir_fd=node.pfd)
                    lower_visible = node.lower_visible
                finally:
                    node.close()
            else:
                ufd = os.open(".", _READ_DIR, dir_fd=self._upper)
            if ufd is not None:
                lower_visible = lower_visible and not _is_opaque(ufd)
                with os.scandir(ufd) as it:
                    for e in it:
                        if e.name.startswith(WH):
                            hidden.add(e.name[len(WH) :])
                            continue
                        s = e.stat(follow_symlinks=False)
                        if _is_kernel_whiteout(ufd, e.name, s):
                            hidden.add(e.name)
                            continue
                        hidden.add(e.name)
                        out.append((e.name, st.S_IFMT(s.st_mode)))
            if lower_visible:
                s = self.lower.lstat(path)
                if s is not None and st.S_ISDIR(s.st_mode):
                    out.extend(
                        (n, t)
                        for n, t in self.lower.entries(path)
                        if n not in hidden and not n.startswith(WH)  # reserved in every layer
                    )
                elif ufd is None:
                    raise _fail(errno.ENOENT if s is None else errno.ENOTDIR, path)
            elif ufd is None:
                raise _fail(errno.ENOENT, path)
        finally:
            if ufd is not None:
                os.close(ufd)
        return out


_RENAME_EXCHANGE = 2
_libc = None


def _renameat2(olddfd: int, old: str, newdfd: int, new: str, flags: int) -> None:
    """renameat2(2), which Python's os lacks (glibc has it since 2.28)."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.renameat2(olddfd, os.fsencode(old), newdfd, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _discard(pfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=pfd)
    except OSError:
        pass


def _touch(pfd: int, name: str) -> None:
    """An empty marker file `name` in `pfd` (kept if there already)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(name, flags, 0o644, dir_fd=pfd))


def _touch_in(pfd: int, dirname: str, name: str) -> None:
    dfd = os.open(dirname, _PATH_DIR, dir_fd=pfd)
    try:
        _touch(dfd, name)
    finally:
        os.close(dfd)


def _clear_markers(pfd: int, dirname: str) -> None:
    """Remove the whiteouts, opaque markers and kernel whiteouts of the upper directory
    `dirname` (all it holds when the merged view shows it empty)."""
    dfd = os.open(dirname, _READ_DIR, dir_fd=pfd)
    try:
        for n in os.listdir(dfd):
            s = _lstat_at(dfd, n)
            if s is None:
                continue
            if n.startswith(WH) and not st.S_ISDIR(s.st_mode):
                os.unlink(n, dir_fd=dfd)
            elif n.startswith(_TMP) and st.S_ISDIR(s.st_mode):
                _remove_tree(dfd, n)
            elif _is_kernel_whiteout(dfd, n, s):
                os.unlink(n, dir_fd=dfd)
    finally:
        os.close(dfd)


def _remove_tree(pfd: int, name: str) -> None:
    """Remove the upper directory `name` (of markers only) or file, never following
    a link; bounded by the depth of what we made ourselves."""
    s = _lstat_at(pfd, name)
    if s is None:
        return
    if not st.S_ISDIR(s.st_mode):
        os.unlink(name, dir_fd=pfd)
        return
    _clear_markers(pfd, name)
    os.rmdir(name, dir_fd=pfd)


class HostLower:
    """A lower layer that is a host directory, read without following its links."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def _parent(self, path: str) -> tuple[int, str] | None:
        parts = _parts(path)
        fd = os.open(self.root, _PATH_DIR)
        try:
            for name in parts[:-1]:
                child = os.open(name, _PATH_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError:
            os.close(fd)
            return None
        return fd, parts[-1] if parts else "."

    def _at(self, path: str, use, missing):
        """`use(dir_fd, name)` on `path`'s last component, relative to its parent's
        descriptor (closed after); `missing(path)` when the parent is not there."""
        p = self._parent(path)
        if p is None:
            return missing(path)
        fd, name = p
        try:
            return use(fd, name)
        finally:
            os.close(fd)

    def lstat(self, path: str):
        """The attributes of `path` (not followed), or None when it is not there."""

        def use(fd: int, name: str):
            try:
                return os.lstat(name, dir_fd=fd)
            except OSError:
                return None

        return self._at(path, use, lambda _path: None)

    def entries(self, path: str) -> Iterable[tuple[str, int]]:
        """(name, S_IFMT bits) of the directory `path`."""

        def use(fd: int, name: str) -> int | None:
            try:
                return os.open(name, _READ_DIR, dir_fd=fd)
            except OSError:
                return None

        dfd = self._at(path, use, lambda _path: None)
        if dfd is None:
            return []
        try:
            with os.scandir(dfd) as it:
                return [(e.name, st.S_IFMT(e.stat(follow_symlinks=False).st_mode)) for e in it]
        finally:
            os.close(dfd)

    def readlink(self, path: str) -> str:
        """The text of the link `path`."""
        return self._at(path, lambda fd, name: os.readlink(name, dir_fd=fd), _not_there)

    def open(self, path: str) -> int:
        """A read-only descriptor of the regular file `path`."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        out = self._at(path, lambda fd, name: os.open(name, flags, dir_fd=fd), _not_there)
        if not st.S_ISREG(os.fstat(out).st_mode):
            os.close(out)
            raise _fail(errno.EINVAL, path)
        return out


def _not_there(path: str):
    raise _fail(errno.ENOENT, path)


def bind_directory(directory: str, dst: str) -> str:
    """Where the overlay of the bind at guest path `dst` lives in the overlay directory
    `directory` when there is no --root: `binds/` and the destination as one name
    ("/" as %2F, "%" as %25), its own upper/ and work/ inside."""
    name = dst.strip("/").replace("%", "%25").replace("/", "%2F")
    return os.path.join(directory, "binds", name)


class Layered:
    """The overlays of one guest namespace, each over one read-only mount (the root's,
    or without a root one per bind from /cvmfs), keyed by the mount's destination:
    the `Overlay` API with guest paths, each call made by the overlay of the mount
    that holds the path (`mount_dst(guest)`: the destination of that mount, from the
    mount table), the path rebased below it. A change that spans two of them (rename,
    link, exchange) is EXDEV, as across two mounts."""

    def __init__(self, directory: str, layers: dict[str, Overlay], mount_dst):
        self.directory = os.path.abspath(directory)
        self._layers, self._mount_dst = layers, mount_dst
        self._uppers = sorted(
            ((ov.upper_dir + "/", dst) for dst, ov in layers.items()), key=lambda u: -len(u[0])
        )

    def close(self) -> None:
        """Release every overlay's lock."""
        for ov in self._layers.values():
            ov.close()

    def covers(self, guest: str) -> bool:
        """Whether the mount that holds `guest` has an overlay."""
        return self._mount_dst(guest) in self._layers

    def covers_mount(self, dst: str) -> bool:
        return dst in self._layers

    def _at(self, guest: str) -> tuple[Overlay, str]:
        dst = self._mount_dst(guest)
        ov = self._layers.get(dst)
        if ov is None:
            raise _fail(errno.EROFS, guest)
        return ov, _below(guest, dst)

    def _two(self, a: str, b: str) -> tuple[Overlay, str, str]:
        (ova, pa), (ovb, pb) = self._at(a), self._at(b)
        if ova is not ovb:
            raise _fail(errno.EXDEV, b)
        return ova, pa, pb

    def guest_of_upper(self, host: str) -> str | None:
        """The guest path of a host path in one of the upper layers, else None."""
        for up, dst in self._uppers:
            if host.startswith(up) or host == up[:-1]:
                rest = host[len(up) - 1 :] if host != up[:-1] else "/"
                return rest if dst == "/" else (dst + rest).rstrip("/") or "/"
        return None

    def in_upper(self, host: str | None) -> bool:
        return bool(host) and self.guest_of_upper(host) is not None

    # -- the Overlay API, by guest path -------------------------------------------------------

    def lookup(self, guest: str) -> Found | None:
        ov, p = self._at(guest)
        return ov.lookup(p)

    def prepare_write(self, guest: str, create_mode: int | None = None, exclusive=False) -> str:
        ov, p = self._at(guest)
        return ov.prepare_write(p, create_mode, exclusive=exclusive)

    def mkdir(self, guest: str, mode: int) -> None:
        ov, p = self._at(guest)
        ov.mkdir(p, mode)

    def symlink(self, target: str, guest: str) -> None:
        ov, p = self._at(guest)
        ov.symlink(target, p)

    def link(self, old: str, new: str) -> None:
        ov, po, pn = self._two(old, new)
        ov.link(po, pn)

    def link_file(self, source: str, guest: str) -> None:
        ov, p = self._at(guest)
        ov.link_file(source, p)

    def remove(self, guest: str, directory: bool = False) -> None:
        ov, p = self._at(guest)
        ov.remove(p, directory)

    def rename(self, old: str, new: str, noreplace: bool = False) -> None:
        ov, po, pn = self._two(old, new)
        ov.rename(po, pn, noreplace=noreplace)

    def exchange(self, a: str, b: str) -> None:
        ov, pa, pb = self._two(a, b)
        ov.exchange(pa, pb)

    def new_name(self, guest: str) -> str:
        ov, p = self._at(guest)
        return ov.new_name(p)

    def tmpfile_dir(self, guest: str) -> str:
        ov, p = self._at(guest)
        return ov.tmpfile_dir(p)

    def entries(self, guest: str) -> list[tuple[str, int]]:
        ov, p = self._at(guest)
        return ov.entries(p)


def _below(guest: str, dst: str) -> str:
    """`guest` as a path below the mount point `dst` ("/" for the point itself)."""
    if dst == "/":
        return guest
    rest = guest[len(dst) :]
    return rest if rest.startswith("/") else "/" + rest
