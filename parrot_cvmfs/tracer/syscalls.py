"""The one table of system calls the supervisor intercepts.

Each row says, per architecture, the call's number, how its arguments are laid
out (which are paths, dirfds, flags, buffers), whether the last path component
is followed, and which handler answers it. The seccomp filter (seccomp.py), the
C fast path's rules (core.py) and the Python dispatch (handlers/dispatch.py) are all
generated from these rows, so no call can be filtered and then forgotten, or
handled but never stopped on.
"""

from __future__ import annotations

import os
from collections import namedtuple

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_EACCESS = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
O_NOFOLLOW = 0o400000
# ioctl requests that change a file's attributes (FS_IOC_SETFLAGS, its 32-bit form,
# FS_IOC_FSSETXATTR, FS_IOC_SETVERSION)
FS_IOC_SET = (0x40086602, 0x40046602, 0x401C5820, 0x40087602)
# fcntl commands whose effect belongs to the open file, not the process (F_OFD_SETLK,
# F_OFD_SETLKW, F_SETLEASE): as flock, what C holds of a file must not outlive the job's
F_OPEN_FILE = (37, 38, 1024)

# How arguments are examined by the C core (tracer.h PC_KIND_*)
PATH, PATH2, FD, CWD, SOCKADDR, SOCKNAME, SOCKMSG, SOCKFROM = 1, 2, 3, 4, 5, 6, 7, 8
# When a path argument names the dirfd itself without AT_EMPTY_PATH (tracer.h PC_BARE_*)
BARE_EMPTY, BARE_NULL = 1, 2
# What the C answer table can replay (tracer.h PC_FAST_*)
(
    FAST_NONE,
    FAST_STAT,
    FAST_STATX,
    FAST_ACCESS,
    FAST_READLINK,
    FAST_OPEN,
    FAST_GETDENTS,
    FAST_GETXATTR,
    FAST_LISTXATTR,
    FAST_STATFS,
    FAST_EXEC,
    FAST_GETCWD,
    FAST_UNHOLD,
) = range(13)


class Call(
    namedtuple(
        "Call",
        "name x86_64 aarch64 kind handler dirfd path dirfd2 path2 flags empty nofollow follow_flag follow proc fast out mode size attr notify bare arg1_in guest_only pointer",
        defaults=(
            -1,
            -1,
            -1,
            -1,
            -1,
            0,
            0,
            0,
            True,
            False,
            FAST_NONE,
            -1,
            -1,
            -1,
            -1,
            False,
            0,
            (),
            False,
            -1,
        ),
    )
):
    __slots__ = ()

    name: str
    x86_64: int | None
    aarch64: int | None
    kind: int
    handler: str
    dirfd: int  # argument index of the dirfd (-1: relative to the cwd)
    path: int  # argument index of the path (the fd for FD calls)
    dirfd2: int
    path2: int
    flags: int  # argument index of the flags word
    empty: int  # flag bit meaning AT_EMPTY_PATH
    nofollow: int  # flag bit meaning "do not follow the last symlink"
    follow_flag: int  # flag bit meaning "follow the last symlink" (linkat)
    follow: bool  # follow the last symlink when no flag says otherwise
    proc: bool  # /proc/<pid>/{exe,cwd,fd/N} concern us
    fast: int
    out: int  # argument index of the result buffer
    mode: int  # argument index of an access mode
    size: int  # argument index of a buffer size
    attr: int  # argument index of an extended attribute's name
    notify: bool  # served through seccomp user notifications when available
    bare: int  # BARE_EMPTY: "" names the dirfd (readlinkat); BARE_NULL: NULL does (utimensat)
    arg1_in: tuple  # stop only when args[1] is one of these (ioctl requests), else always
    guest_only: bool  # in the filter only with a guest namespace (--root, binds)
    pointer: int  # argument index of a pointer: stop only when it is not NULL

    def number(self, arch: str) -> int | None:
        return getattr(self, arch)


def _p2(name, x86, a64, handler, **kw):
    """A call of two paths (rename, link, mount): through /proc magic links too."""
    kw.setdefault("proc", True)
    return Call(name, x86, a64, PATH2, handler, **kw)


def _p(name, x86, a64, handler, **kw):
    # every path call looks through /proc magic links (/proc/self/cwd/x, /proc/self/fd/N):
    # they lead into /cvmfs as any other spelling does
    kw.setdefault("proc", True)
    return Call(name, x86, a64, PATH, handler, **kw)


_AT = dict(dirfd=0, path=1)
_AT2 = dict(dirfd=0, path=1, dirfd2=2, path2=3)  # renameat, linkat
_GETX = dict(path=0, attr=1, out=2, size=3)  # getxattr(path, name, value, size)
_LISTX = dict(path=0, out=1, size=2)  # listxattr(path, list, size)
# flags take AT_EMPTY_PATH, and the last link is followed only with AT_SYMLINK_FOLLOW
_FOLLOW_IF_ASKED = dict(empty=AT_EMPTY_PATH, follow=False, follow_flag=AT_SYMLINK_FOLLOW)


def _at(flags: int, **kw) -> dict:
    """The layout of an *at call whose flags word (argument `flags`) takes AT_EMPTY_PATH
    and AT_SYMLINK_NOFOLLOW."""
    return dict(_AT, flags=flags, empty=AT_EMPTY_PATH, nofollow=AT_SYMLINK_NOFOLLOW, **kw)


CALLS: list[Call] = [
    # -- opening ---------------------------------------------------------------------------
    _p("open", 2, None, "open", path=0, flags=1, nofollow=O_NOFOLLOW, fast=FAST_OPEN),
    _p("creat", 85, None, "open", path=0),
    _p("openat", 257, 56, "open", **_AT, flags=2, nofollow=O_NOFOLLOW, fast=FAST_OPEN),
    _p("openat2", 437, 437, "open", **_AT),
    # -- attributes ------------------------------------------------------------------------
    _p("stat", 4, None, "stat", path=0, out=1, fast=FAST_STAT),
    _p("lstat", 6, None, "stat", path=0, out=1, follow=False, fast=FAST_STAT),
    Call("fstat", 5, 80, FD, "stat", path=0, out=1, fast=FAST_STAT),
    _p("newfstatat", 262, 79, "stat", **_at(3), out=2, fast=FAST_STAT),
    _p("statx", 332, 291, "stat", **_at(2), out=4, fast=FAST_STATX),
    _p("access", 21, None, "access", path=0, mode=1, fast=FAST_ACCESS),
    _p("faccessat", 269, 48, "access", **_AT, mode=2, fast=FAST_ACCESS),
    _p("faccessat2", 439, 439, "access", **_at(3), mode=2, fast=FAST_ACCESS),
    _p("readlink", 89, None, "readlink", path=0, out=1, size=2, follow=False, fast=FAST_READLINK),
    _p(
        "readlinkat",
        267,
        78,
        "readlink",
        **_AT,
        out=2,
        size=3,
        follow=False,
        fast=FAST_READLINK,
        bare=BARE_EMPTY,
    ),
    _p("statfs", 137, 43, "statfs", path=0, out=1, fast=FAST_STATFS),
    Call("fstatfs", 138, 44, FD, "statfs", path=0, out=1, fast=FAST_STATFS),
    # -- extended attributes -----------------------------------------------------------------
    _p("getxattr", 191, 8, "getxattr", **_GETX, fast=FAST_GETXATTR),
    _p("lgetxattr", 192, 9, "getxattr", **_GETX, follow=False, fast=FAST_GETXATTR),
    Call("fgetxattr", 193, 10, FD, "getxattr", path=0, out=2, size=3),
    _p("listxattr", 194, 11, "listxattr", **_LISTX, fast=FAST_LISTXATTR),
    _p("llistxattr", 195, 12, "listxattr", **_LISTX, follow=False, fast=FAST_LISTXATTR),
    Call("flistxattr", 196, 13, FD, "listxattr", **_LISTX),
    _p("getxattrat", 464, 464, "getxattr", **_at(2)),
    _p("listxattrat", 465, 465, "listxattr", **_at(2), out=3, size=4),
    # -- exec and the working directory -------------------------------------------------------
    _p("execve", 59, 221, "execve", path=0, fast=FAST_EXEC),
    _p("execveat", 322, 281, "execve", **_at(4)),
    _p("chdir", 80, 49, "chdir", path=0),
    Call("getcwd", 79, 17, CWD, "getcwd", out=0, size=1, fast=FAST_GETCWD),
    # -- directory listings -------------------------------------------------------------------
    Call("getdents64", 217, 61, FD, "getdents", path=0, out=1, size=2, fast=FAST_GETDENTS),
    Call("getdents", 78, None, FD, "getdents", path=0, out=1, size=2),
    # -- watching and handles -----------------------------------------------------------------
    _p("inotify_add_watch", 254, 27, "inotify", path=1),
    _p("name_to_handle_at", 303, 264, "unsupported", **_AT, flags=4, **_FOLLOW_IF_ASKED),
    _p("file_getattr", 468, 468, "unsupported", **_at(4)),
    # -- writes: EROFS (or ENOENT / EEXIST / EXDEV, in the kernel's order) ----------------------
    _p("truncate", 76, 45, "write_existing", path=0),
    _p("chmod", 90, None, "write_existing", path=0),
    _p("fchmodat", 268, 53, "write_existing", **_AT),
    _p("fchmodat2", 452, 452, "write_existing", **_at(3)),
    _p("chown", 92, None, "write_existing", path=0),
    _p("lchown", 94, None, "write_existing", path=0, follow=False),
    _p("fchownat", 260, 54, "write_existing", **_at(4)),
    _p("utime", 132, None, "write_existing", path=0),
    _p("utimes", 235, None, "write_existing", path=0),
    _p("futimesat", 261, None, "write_existing", **_AT, bare=BARE_NULL),
    _p("utimensat", 280, 88, "write_existing", **_at(3), bare=BARE_NULL),
    _p("setxattr", 188, 5, "write_existing", path=0),
    _p("lsetxattr", 189, 6, "write_existing", path=0, follow=False),
    _p("removexattr", 197, 14, "write_existing", path=0),
    _p("lremovexattr", 198, 15, "write_existing", path=0, follow=False),
    _p("setxattrat", 463, 463, "write_existing", **_at(2)),
    _p("removexattrat", 466, 466, "write_existing", **_at(2)),
    _p("file_setattr", 469, 469, "write_existing", **_at(4)),
    _p("mkdir", 83, None, "write_create", path=0),
    _p("mkdirat", 258, 34, "write_create", **_AT),
    _p("mknod", 133, None, "write_create", path=0),
    _p("mknodat", 259, 33, "write_create", **_AT),
    _p("symlink", 88, None, "write_create", path=1),
    _p("symlinkat", 266, 36, "write_create", dirfd=1, path=2),
    _p("rmdir", 84, None, "write_remove", path=0, follow=False),
    _p("unlink", 87, None, "write_remove", path=0, follow=False),
    _p("unlinkat", 263, 35, "write_remove", **_AT, follow=False),
    _p2("rename", 82, None, "write_rename", path=0, path2=1, follow=False),
    _p2("renameat", 264, 38, "write_rename", **_AT2, follow=False),
    _p2("renameat2", 316, 276, "write_rename", **_AT2, follow=False),
    _p2("link", 86, None, "write_link", path=0, path2=1, follow=False),
    _p2("linkat", 265, 37, "write_link", **_AT2, flags=4, **_FOLLOW_IF_ASKED),
    _p("acct", 163, 89, "write_existing", path=0),  # appends to the file it names
    # the changes that do not go through a path, on descriptors of our files (chattr's
    # FS_IOC_SETFLAGS sets flags on the cache's own inodes)
    Call("ioctl", 16, 29, FD, "ioctl_setattr", path=0, arg1_in=FS_IOC_SET),
    # a lock or lease of the open file: C lets go of its copy of a file it installed
    # (held.c) and the kernel takes the call, so the job's close releases it as natively
    Call("flock", 73, 32, FD, "unhold", path=0, fast=FAST_UNHOLD),
    Call("fcntl", 72, 25, FD, "unhold", path=0, arg1_in=F_OPEN_FILE, fast=FAST_UNHOLD),
    # a Unix socket made at its address, or reached at it
    Call("bind", 49, 200, SOCKADDR, "bind", path=1, size=2, follow=False, proc=True),
    Call("connect", 42, 203, SOCKADDR, "connect", path=1, size=2, proc=True),
    # a socket's own or peer address, shown in guest terms (in a guest namespace only)
    Call("getsockname", 51, 204, SOCKNAME, "sockname", path=0, out=1, size=2),
    Call("getpeername", 52, 205, SOCKNAME, "sockname", path=0, out=1, size=2),
    # Unix socket addresses of datagrams and connections, in guest terms: frequent calls
    # on network sockets, so in the filter only with a guest namespace, past it only
    # with an address given (a connected socket's send/recv names none), and to Python
    # only for a Unix address (C reads it) or a buffer on a Unix socket (C asks it)
    Call("sendto", 44, 206, SOCKADDR, "connect", path=4, size=5, proc=True, pointer=4),
    Call("sendmsg", 46, 211, SOCKMSG, "sendmsg", path=1, proc=True),
    Call("recvfrom", 45, 207, SOCKFROM, "sockfrom", path=0, out=4, size=5, pointer=4),
    Call("recvmsg", 47, 212, SOCKFROM, "sockfrom", path=0, out=1),
    Call("accept", 43, 202, SOCKFROM, "sockfrom", path=0, out=1, size=2, pointer=1),
    Call("accept4", 288, 242, SOCKFROM, "sockfrom", path=0, out=1, size=2, pointer=1),
    # mounts of /cvmfs or onto it (root only, or in a user namespace)
    _p2("mount", 165, 40, "mount", path=0, path2=1),
    _p("open_tree", 428, 428, "unsupported", **_at(2)),
    # a new root (needs CAP_SYS_CHROOT): a guest's path must not reach the kernel as is
    _p("chroot", 161, 51, "chroot", path=0),
    Call("fchmod", 91, 52, FD, "write_fd", path=0),
    Call("fchown", 93, 55, FD, "write_fd", path=0),
    Call("fsetxattr", 190, 7, FD, "write_fd", path=0),
    Call("fremovexattr", 199, 16, FD, "write_fd", path=0),
]

# The frequent calls: with seccomp user notifications they cost one round trip that the
# kernel completes on the caller's CPU, and opens are answered by installing a
# descriptor (SECCOMP_IOCTL_NOTIF_ADDFD). Calls that need their arguments rewritten
# (exec, chdir) or are rare stay with ptrace.
NOTIFIED = {
    "open",
    "creat",
    "openat",
    "stat",
    "lstat",
    "fstat",
    "newfstatat",
    "statx",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "statfs",
    "fstatfs",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "getxattrat",
    "listxattrat",
    "getcwd",
    "getdents64",
    "getdents",
    "flock",
    "fcntl",
}
GUEST_ONLY = {"sendto", "sendmsg", "recvfrom", "recvmsg", "accept", "accept4"}
CALLS = [c._replace(notify=c.name in NOTIFIED, guest_only=c.name in GUEST_ONLY) for c in CALLS]

# Calls refused in the filter itself, without a stop.
IO_URING_SETUP = {"x86_64": 425, "aarch64": 425}  # kernel workers resolve paths unseen
CLONE3 = {"x86_64": 435, "aarch64": 435}  # flags hidden in memory; glibc falls back to clone
CLONE = {"x86_64": 56, "aarch64": 220}
CLONE_UNTRACED = 0x00800000
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def machine() -> str:
    m = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def calls_for(arch: str | None = None) -> list[Call]:
    """The rows that exist on `arch` (default: this machine)."""
    arch = arch or machine()
    if arch not in AUDIT_ARCH:
        raise OSError(f"parrot_run does not support the {arch} architecture")
    return [c for c in CALLS if c.number(arch) is not None]
