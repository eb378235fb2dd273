"""open, creat, openat, openat2: a /cvmfs file is opened as its cache file (fetched
first), a directory, symlink or fifo as its anchor; every flag that would write is
refused as the kernel refuses it on a read-only mount."""

from __future__ import annotations

import errno
import os
import stat as st
import struct

from ..paths import Target
from .answers import remember, teach_open
from .context import R_OK, RESUME, Context, in_cvmfs, skip
from .writes import readonly_write

O_WRONLY, O_ACCMODE = 0o1, 0o3
O_CREAT, O_EXCL, O_TRUNC = 0o100, 0o200, 0o1000
O_DIRECTORY, O_NOFOLLOW, O_PATH = 0o200000, 0o400000, 0o10000000
_O_TMPFILE_BIT = 0o20000000
O_TMPFILE = _O_TMPFILE_BIT | O_DIRECTORY
RESOLVE_NO_XDEV, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT = 0x01, 0x04, 0x08, 0x10


def h_open(c: Context) -> tuple:
    resolve_flags = 0
    how = None
    call, args = c.call, c.args
    if call.name == "creat":
        flags, mode = O_CREAT | O_WRONLY | O_TRUNC, int(args[1])
    elif call.name == "openat2":
        size = args[3]
        if size < 24:
            return skip(-errno.EINVAL)
        how = bytearray(c.core.read(c.tid, args[2], min(size, 256)))
        flags, mode, resolve_flags = struct.unpack_from("<QQQ", how)
    else:
        flags = args[call.flags]
        mode = int(args[call.flags + 1])
    follow = not (flags & O_NOFOLLOW) and not (flags & O_CREAT and flags & O_EXCL)
    path = c.path
    if flags & O_CREAT and path.endswith("/") and path.strip("/") and not c.path_err:
        # open_last_lookups: "name/" with O_CREAT is EISDIR once the walk gets there
        t = c.resolve_last()
        if t is not None and (t.virtual or in_cvmfs(t) or t.err):
            return skip(-(t.err if t.err and not t.missing_last else errno.EISDIR))
    t = c.resolve(follow, no_symlinks=bool(resolve_flags & RESOLVE_NO_SYMLINKS))
    if t is None:
        return RESUME
    if flags & _O_TMPFILE_BIT and (
        flags & (O_TMPFILE | O_CREAT) != O_TMPFILE or flags & O_ACCMODE == 0
    ):
        return skip(-errno.EINVAL)  # build_open_flags, before any lookup
    if resolve_flags & (RESOLVE_BENEATH | RESOLVE_IN_ROOT | RESOLVE_NO_XDEV) and t.via_cvmfs:
        if resolve_flags & (RESOLVE_BENEATH | RESOLVE_NO_XDEV) and path.startswith("/"):
            return skip(-errno.EXDEV)
    if t.err:
        if t.err == errno.ENOENT and t.missing_last and flags & O_CREAT:
            # "name/" cannot be created as a file (open_last_lookups: EISDIR)
            if t.trailing:
                return skip(-errno.EISDIR)
            return readonly_write(c, t, open_how=(flags, mode, how))
        if not resolve_flags:  # ld.so probes many missing paths: answer them in C next time
            remember(c, follow, t)
        return skip(-t.err)
    if not t.virtual:
        if t.readonly:  # a file of the guest root
            refused = _write_open(c, t, (flags, mode, how), os.path.isdir(t.host))
            if refused is not None:
                return refused
        return _host_open(t, how, flags, mode)
    node = t.node
    refused = _write_open(c, t, (flags, mode, how), node.is_dir)
    if refused is not None:
        return refused
    if flags & O_DIRECTORY and not node.is_dir:
        return skip(-errno.ENOTDIR)
    opath = bool(flags & O_PATH)
    if node.is_symlink and not opath:
        return skip(-errno.ELOOP)
    if not opath:
        denied = c.can(node, R_OK)
        if denied:
            return skip(-denied)
    if node.is_regular:
        backing = c.view.materialize(node)
    elif node.is_dir or node.is_symlink or st.S_ISFIFO(node.mode):
        backing = c.view.anchor(node)
    elif st.S_ISSOCK(node.mode):
        return skip(-errno.ENXIO)
    else:
        return skip(-errno.EACCES)  # devices: the repository is mounted nodev
    if not opath and (node.is_regular or node.is_dir):
        teach_open(c, follow, t, backing)
    return ("open", backing, flags, 0, node.vpath if node.is_regular else None, how, True)


def _write_open(c: Context, t: Target, open_how: tuple, is_dir: bool) -> tuple | None:
    """An open of an existing entry of a read-only mount that would write: refused in
    the kernel's order (do_open: O_TMPFILE, O_EXCL, a directory, then the mount)."""
    flags = open_how[0]
    acc = flags & O_ACCMODE
    if flags & O_TMPFILE == O_TMPFILE:
        if not is_dir:
            return skip(-errno.ENOTDIR)
        return readonly_write(c, t, open_how=open_how)  # EROFS, or in the overlay
    if flags & O_CREAT and flags & O_EXCL:
        return skip(-errno.EEXIST)
    if is_dir and (acc != 0 or flags & O_TRUNC):
        return skip(-errno.EISDIR)
    if acc != 0 or flags & O_TRUNC:
        return readonly_write(c, t, open_how=open_how)
    return None


def _host_open(t: Target, how, flags: int, mode: int) -> tuple:
    if not t.via_cvmfs:
        return RESUME
    return ("open", t.host, flags, mode, None, how, False)
