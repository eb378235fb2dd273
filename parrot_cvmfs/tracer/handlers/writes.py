"""Every write, refused: /cvmfs is a read-only mount, and each call fails with the errno
the kernel gives for the first check that fails (fs/namei.c, fs/open.c): walk errors,
then the last component's kind ("." and ".."), then existence, then EROFS
(mnt_want_write). Also bind (a socket made at a path), mount, the attribute-setting
ioctls and the calls a FUSE-less /cvmfs does not support."""

from __future__ import annotations

import errno
import os
import stat

from ..paths import LAST_DOT, LAST_NORM, Target
from ..syscalls import AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, FD
from .context import RESUME, Context, exists_readonly, in_cvmfs, skip
from .sockets import socket_at


def readonly_write(
    c: Context, t: Target, t2: Target | None = None, open_how=None, source: str | None = None
) -> tuple:
    """The one decision for a write into a read-only mount once the kernel's earlier
    checks passed: /cvmfs, the guest root (--root) and binds from /cvmfs are EROFS,
    except the root under --overlay (container/overlay.py): there the change is made
    in the upper layer (`t2`: rename's and link's second target; `open_how`: an open's
    (flags, mode, openat2's struct); `source`: a /proc magic link to a file of the
    upper layer that link names as `t`)."""
    guest = c.guest.overlaid(t) if c.guest is not None else None
    if guest is None:
        return skip(-errno.EROFS)
    try:
        if source is not None:
            c.guest.overlay.link_file(source, guest)
            return skip(0)
        return _overlay_write(c, guest, t2, open_how)
    except OSError as e:
        return skip(-(e.errno or errno.EIO))


_RENAME_NOREPLACE, _RENAME_EXCHANGE, _RENAME_WHITEOUT = 1, 2, 4


def _rename_flags(c: Context) -> int:
    """renameat2's flags (0 for rename and renameat)."""
    return int(c.args[4]) & 0xFFFFFFFF if c.call.name == "renameat2" else 0


_S_IFMT, _S_IFREG = 0o170000, 0o100000
_O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE (O_TMPFILE also holds O_DIRECTORY)


def _overlay_write(c: Context, guest: str, t2: Target | None, open_how) -> tuple:
    """The call carried out through the overlay: removals, creations and renames made
    there (their result the call's), other changes retargeted at the upper copy (a
    copy-up first) for the kernel to make with its own result and checks."""
    from .delivery import _umask_of

    ov = c.guest.overlay
    name, args = c.call.name, c.args
    if open_how is not None:  # a write-open, O_CREAT or O_TMPFILE
        flags, mode, how = open_how
        if flags & _O_TMPFILE_BIT:  # the unnamed file made in the directory's upper copy
            return ("open", ov.tmpfile_dir(guest), flags, mode, None, how, False)
        create = mode & 0o7777 & ~_umask_of(c.tid) if flags & 0o100 else None
        host = ov.prepare_write(guest, create, exclusive=bool(flags & 0o200))
        return ("open", host, flags & ~0o200, mode, None, how, False)
    if name == "bind":  # the kernel makes the socket, in the upper layer
        try:
            return socket_at(c, ov.new_name(guest))
        except FileExistsError:
            return skip(-errno.EADDRINUSE)
    if name in ("rmdir", "unlink", "unlinkat"):
        ov.remove(guest, name == "rmdir" or bool(name == "unlinkat" and args[2] & AT_REMOVEDIR))
        return skip(0)
    if name in ("mkdir", "mkdirat"):
        ov.mkdir(guest, int(args[c.call.path + 1]) & 0o7777 & ~_umask_of(c.tid))
        return skip(0)
    if name in ("mknod", "mknodat"):
        mode = int(args[c.call.path + 1])
        if mode & _S_IFMT not in (0, _S_IFREG):
            return skip(-errno.EPERM)  # no device, fifo or socket in the upper layer
        ov.prepare_write(guest, mode & 0o7777 & ~_umask_of(c.tid), exclusive=True)
        return skip(0)
    if name in ("symlink", "symlinkat"):
        ov.symlink(c.core.read_cstr(c.tid, args[0]), guest)
        return skip(0)
    if name in ("rename", "renameat", "renameat2", "link", "linkat"):
        other = c.guest.overlaid(t2)
        if other is None:
            return skip(-errno.EXDEV)  # the other name lies in another mount
        if name.startswith("link"):
            ov.link(guest, other)
            return skip(0)
        flags = _rename_flags(c)
        if flags & _RENAME_WHITEOUT:
            return skip(-errno.EINVAL)  # the kernel's overlayfs takes no RENAME_WHITEOUT
        if flags & _RENAME_EXCHANGE:
            ov.exchange(guest, other)
        else:
            ov.rename(guest, other, noreplace=bool(flags & _RENAME_NOREPLACE))
        return skip(0)
    # truncate, chmod, chown, utimes, setxattr, ...: on the upper copy, by the kernel
    upper = ov.prepare_write(guest)
    if c.call.kind == FD or c.empty_path:
        return _on_upper(c, upper)
    return ("host", upper)


def _on_upper(c: Context, upper: str) -> tuple:
    """A change asked of a descriptor (fchmod, fchown, fsetxattr, fremovexattr, and the
    *at calls on the dirfd itself: futimens, AT_EMPTY_PATH) of a root file, made on its
    upper copy. As on overlayfs, the descriptor keeps reading the file it opened (the
    lower one); the change shows to every later lookup. *at calls are turned into their
    path form on the copy, for the kernel to check and make; the four calls without a
    path form are made here, with the job's credentials (parrot_run runs as the job's
    user)."""
    call, args = c.call, c.args
    if call.kind != FD:  # utimensat(fd, NULL), fchmodat(fd, "", ..., AT_EMPTY_PATH), ...
        values = {call.dirfd: AT_FDCWD, call.path: upper}
        if call.flags >= 0:
            values[call.flags] = int(args[call.flags]) & ~AT_EMPTY_PATH
        return ("args", values, False, False)
    name = call.name
    if name == "fchmod":
        os.chmod(upper, int(args[1]) & 0o7777)
    elif name == "fchown":
        os.chown(upper, _id(args[1]), _id(args[2]))
    else:
        attr = c.core.read_cstr(c.tid, args[1])
        if not attr:
            return skip(-errno.EFAULT)
        if name == "fremovexattr":
            os.removexattr(upper, attr)
        else:  # fsetxattr(fd, name, value, size, flags)
            size = int(args[3])
            if size > _XATTR_SIZE_MAX:
                return skip(-errno.E2BIG)
            value = c.core.read(c.tid, args[2], size) if size else b""
            if len(value) != size:
                return skip(-errno.EFAULT)
            os.setxattr(upper, attr, value, int(args[4]) & 0xFFFFFFFF)
    return skip(0)


_XATTR_SIZE_MAX = 65536  # include/uapi/linux/limits.h


def _id(arg: int) -> int:
    """A uid_t/gid_t argument (32 bits; -1 keeps the current one)."""
    v = int(arg) & 0xFFFFFFFF
    return -1 if v == 0xFFFFFFFF else v


def _refuse(c: Context, err: int) -> tuple:
    """Fail a call on a /cvmfs path with `err`; hand any other back to the kernel."""
    t = c.resolve()
    outside = c.outside(t)
    return outside if outside is not None else skip(-err)


def h_unsupported(c: Context) -> tuple:
    return _refuse(c, errno.EOPNOTSUPP)


def h_write_existing(c: Context) -> tuple:
    if c.empty_path:  # the dirfd itself (AT_EMPTY_PATH, futimens)
        return h_write_fd(c)
    t = c.resolve()
    if t is not None and t.readonly and not t.err:  # a host file of the guest root
        if c.call.name == "truncate":
            try:
                s = os.stat(t.host)
            except OSError as e:
                return skip(-(e.errno or errno.EIO))
            if stat.S_ISDIR(s.st_mode):
                return skip(-errno.EISDIR)
            if not stat.S_ISREG(s.st_mode):
                return skip(-errno.EINVAL)
        return readonly_write(c, t)
    outside = c.outside(t)
    if outside is not None:
        return outside
    if c.call.name == "truncate":  # vfs_truncate: the type before the mount
        if t.node.is_dir:
            return skip(-errno.EISDIR)
        if not t.node.is_regular:
            return skip(-errno.EINVAL)
    return readonly_write(c, t)


def h_write_create(c: Context) -> tuple:
    t = c.resolve_last()
    if t is None:
        return RESUME
    if exists_readonly(t):  # an existing name, or "." / ".." (filename_create: EEXIST)
        return skip(-errno.EEXIST)
    if t.err:
        if t.err == errno.ENOENT and t.missing_last:
            # "name/" asks for a directory: only mkdir may create one
            if t.trailing and not c.call.name.startswith("mkdir"):
                return skip(-errno.ENOENT)
            return readonly_write(c, t)
        return skip(-t.err)
    return c.host(t)


def h_write_remove(c: Context) -> tuple:
    t = c.resolve_last()
    if t is None:
        return RESUME
    if exists_readonly(t) or (t.err == errno.ENOENT and t.missing_last):
        if t.last != LAST_NORM:
            name = c.call.name
            rmdir = name == "rmdir" or (name == "unlinkat" and c.args[2] & AT_REMOVEDIR)
            if not rmdir:
                return skip(-errno.EISDIR)
            return skip(-(errno.EINVAL if t.last == LAST_DOT else errno.ENOTEMPTY))
        # the kernel checks the mount before the name (EROFS); an overlaid root is
        # writable, so there the name is looked up (ENOENT)
        return readonly_write(c, t)
    if t.err:
        return skip(-t.err)
    return c.host(t)


def _two(c: Context, follow_old: bool) -> tuple[Target | None, Target | None]:
    call = c.call
    if c.empty_path:  # linkat(fd, "", ..., AT_EMPTY_PATH): the descriptor itself
        t1 = c.fd_target(c.base, int(c.args[call.dirfd]))
    elif c.path_err:
        t1 = None
    elif call.handler == "write_rename":  # both names are the last of a parent walk
        t1 = c.walk_to_last(c.path, c.base)
    else:
        t1 = c.resolve_path(c.path, c.base, follow_old)
    p2, b2 = c.core.second_path()
    t2 = None if p2 is None else c.walk_to_last(p2, b2)
    return t1, t2


def _rewrite_two(c: Context, t1: Target | None, t2: Target | None) -> tuple:
    values = {}
    for t, arg in ((t1, c.call.path), (t2, c.call.path2)):
        if t is not None and t.host is not None and t.via_cvmfs:
            values[arg] = t.host
    return ("args", values, False, False) if values else RESUME


def h_write_rename(c: Context) -> tuple:
    t1, t2 = _two(c, False)
    v1, v2 = in_cvmfs(t1), in_cvmfs(t2)
    if not (v1 or v2):
        return _rewrite_two(c, t1, t2)
    flags = _rename_flags(c)  # do_renameat2 checks them before any name
    if flags & ~(_RENAME_NOREPLACE | _RENAME_EXCHANGE | _RENAME_WHITEOUT) or (
        flags & _RENAME_EXCHANGE and flags & (_RENAME_NOREPLACE | _RENAME_WHITEOUT)
    ):
        return skip(-errno.EINVAL)
    for t in (t1, t2):  # both parents are walked first
        if t is not None and t.err and not t.missing_last:
            return skip(-t.err)
    if v1 != v2:
        return skip(-errno.EXDEV)
    if any(t is not None and t.last != LAST_NORM for t in (t1, t2)):
        return skip(-errno.EBUSY)
    return readonly_write(c, t1, t2)


def h_write_link(c: Context) -> tuple:
    call = c.call
    follow = bool(call.flags >= 0 and c.args[call.flags] & AT_SYMLINK_FOLLOW)
    t1, t2 = _two(c, follow)
    v1, v2 = in_cvmfs(t1), in_cvmfs(t2)
    if not (v1 or v2):
        return _rewrite_two(c, t1, t2)
    # do_linkat: the old name is looked up, the new one created (filename_create:
    # its walk, ".", "..", an existing name, then the mount), and only then are the
    # two mounts compared
    if t1 is not None and t1.err:
        return skip(-t1.err)
    if t2 is None:
        return RESUME
    if exists_readonly(t2):
        return skip(-errno.EEXIST)
    if t2.err and not t2.missing_last:
        return skip(-t2.err)
    if t2.missing_last and t2.trailing:
        return skip(-errno.ENOENT)
    if v2:
        if c.guest is not None and c.guest.overlaid(t2):
            if c.guest.overlaid(t1):
                return readonly_write(c, t1, t2)  # both in the overlaid root
            source = _upper_file(c, t1)
            if source is not None:  # an O_TMPFILE file of the overlay, named
                return readonly_write(c, t2, source=source)
        return readonly_write(c, t2)
    new_host = t2.host or ""
    if os.path.lexists(new_host):
        return skip(-errno.EEXIST)
    if not os.path.isdir(os.path.dirname(new_host.rstrip("/")) or "/"):
        return skip(-errno.ENOENT)
    return skip(-errno.EXDEV)


def _upper_file(c: Context, t1: Target | None) -> str | None:
    """For link's old name given as a descriptor (AT_EMPTY_PATH) or a /proc magic link
    to one: a /proc link we can follow to the file, if it is one of the overlay's upper
    layer that has no guest name (an O_TMPFILE file, or one removed since)."""
    if c.empty_path:
        fd = int(c.args[c.call.dirfd])
        if c.guest.in_upper(c.base.removesuffix(" (deleted)")):
            return f"/proc/{c.tid}/fd/{fd}"
        return None
    if t1 is None or t1.err or not t1.host or not t1.host.startswith("/proc/"):
        return None
    try:
        target = os.readlink(t1.host).removesuffix(" (deleted)")
    except OSError:
        return None
    return t1.host if c.guest.in_upper(target) else None


def _ours(c: Context) -> bool:
    """Whether the call's descriptor is an anchor or a cache file, or a file of a
    read-only mount of the guest namespace (the root)."""
    host = c.base
    if not host:
        return False
    if c.view.anchor_to_vpath(host) or c.view.is_cache_path(host):
        return True
    return c.guest is not None and c.guest.readonly_host(host)


def h_write_fd(c: Context) -> tuple:
    """A change through a descriptor (fchmod, fchown, fsetxattr, fremovexattr, futimens,
    AT_EMPTY_PATH) of a read-only file: EROFS, or under --overlay made on the file's
    upper copy (readonly_write)."""
    if not _ours(c):
        return RESUME
    if c.guest is not None:  # a file or (an anchor) a directory of the root
        call = c.call
        fd = int(c.args[call.path if call.kind == FD else call.dirfd])
        t = Target(host=c.base)
        t.readonly = True
        t.guest = c.guest.fd_guest(c.base, c.fd_target(c.base, fd))
        return readonly_write(c, t)
    return skip(-errno.EROFS)


def h_ioctl_setattr(c: Context) -> tuple:
    """chattr and the like on a descriptor of ours: what a FUSE mount without ioctl
    support answers."""
    return skip(-errno.ENOTTY) if _ours(c) else RESUME


def h_bind(c: Context) -> tuple:
    """A Unix socket bound at a path: made like any name (mknod), so refused in /cvmfs
    (an existing name: EADDRINUSE); through a symlink leading out, bound there."""
    t = c.resolve(False)
    if t is None:
        return RESUME
    if t.virtual:
        return skip(-errno.EADDRINUSE)
    if t.err:
        if t.err == errno.ENOENT and t.missing_last:
            return readonly_write(c, t)  # EROFS, or made in the overlay
        return skip(-t.err)
    if not t.via_cvmfs:
        return RESUME
    return socket_at(c, t.host)


def h_chroot(c: Context) -> tuple:
    """chroot(2): into /cvmfs it is unsupported as mount is; in a guest namespace the
    kernel would take the guest's path as a host one, so it is refused as for a
    process without CAP_SYS_CHROOT (a nested guest root is not emulated)."""
    if c.guest is not None:
        t = c.resolve(True)
        return skip(-(t.err if t is not None and t.err else errno.EPERM))
    return _refuse(c, errno.EOPNOTSUPP)


def h_mount(c: Context) -> tuple:
    """mount(2) of a /cvmfs path, or onto one: not something a FUSE-less /cvmfs can
    give (a bind mount of an anchor would be writable)."""
    t1, t2 = _two(c, True)
    if in_cvmfs(t1) or in_cvmfs(t2):
        return skip(-errno.EOPNOTSUPP)
    return _rewrite_two(c, t1, t2)
