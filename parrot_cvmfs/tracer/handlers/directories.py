"""Directories: listings of an anchor's descriptor (getdents, getdents64), the working
directory (chdir into an anchor, getcwd showing the /cvmfs path) and inotify watches
(on the cache file or anchor)."""

from __future__ import annotations

import errno
import os

from ..structs import pack_dirents
from .answers import teach_cwd, teach_listing
from .context import RESUME, X_OK, Context, skip


def guest_listing(c: Context, entries: list | None) -> list | None:
    """The one merge point of a guest directory's listing (the descriptor's target is
    c.base): the mount points below it that the directory itself lacks are added
    (glue). Under --overlay a directory of the root lists the overlay's merge (upper
    over lower, whiteouts hidden), a new list each time (never taught: it changes as
    the job writes). None: the kernel's listing is the guest's."""
    guest = c.guest.guest_of(c.base) if c.base else None
    if guest is None:
        return entries
    glue = c.guest.table.glue(guest)
    merged = c.guest.overlay_entries(guest)
    if merged is not None:
        entries = [(2, 2, 4, b"."), (3, 3, 4, b"..")]
        for name, fmt in merged:
            raw = os.fsencode(name)
            entries.append((_ino(guest, raw), 0, fmt >> 12, raw))
        scanned = False
    elif not glue:
        return entries
    else:
        scanned = entries is None
    if scanned:
        try:
            with os.scandir(c.base) as it:
                entries = [(2, 2, 4, b"."), (3, 3, 4, b"..")]
                for e in sorted(it, key=lambda e: e.name):
                    dtype = 4 if e.is_dir(follow_symlinks=False) else 10 if e.is_symlink() else 8
                    entries.append((e.inode(), 0, dtype, os.fsencode(e.name)))
        except OSError:
            return None
    have = {name for _, _, _, name in entries}
    extra = [(1, 0, 4, os.fsencode(n)) for n in glue if os.fsencode(n) not in have]
    if not extra and merged is None:
        return None if scanned else entries
    rows = entries + extra
    return [(ino, i + 1, t, name) for i, (ino, _, t, name) in enumerate(rows)]


def _ino(directory: str, name: bytes) -> int:
    """A stable non-zero d_ino for a merged entry (stat gives the real one)."""
    import zlib

    return (zlib.crc32(name, zlib.crc32(os.fsencode(directory))) & 0x7FFFFFFF) | 1


def h_getdents(c: Context) -> tuple:
    fd = int(c.args[0])
    view = c.view
    vpath = view.anchor_to_vpath(c.base)
    node = view.lookup(vpath) if vpath is not None else None
    if node is None or not node.is_dir:
        if c.guest is None:
            return RESUME
        entries = guest_listing(c, None)
        if entries is None:
            return RESUME
        return _listed(c, fd, entries, c.call.name == "getdents64")
    entries = view.listing(node)
    c.siblings.listed(vpath)
    modern = c.call.name == "getdents64"
    if c.guest is not None:
        merged = guest_listing(c, entries)
        if merged is not entries and merged is not None:
            if c.guest.overlay is not None or not modern:  # changes as the job writes
                return _listed(c, fd, merged, modern)
            entries = merged  # the mount points added: a function of the mount table
    if modern:  # C answers the next ones (and later runs')
        records, _ = pack_dirents(entries, 0, 1 << 62)
        teach_listing(c, vpath, records)
    action = _listed(c, fd, entries, modern)
    if modern and action[1] >= 0:
        node._listing = None  # C has it now (and Python makes it again if C drops it)
    return action


def _listed(c: Context, fd: int, entries: list, modern: bool) -> tuple:
    """getdents answered from `entries`: the descriptor's own file position is the
    cursor, read and moved through a copy of the descriptor."""
    ours = c.core.getfd(c.tid, fd)
    try:
        pos = os.lseek(ours, 0, os.SEEK_CUR)
        count = int(c.args[2]) & 0xFFFFFFFF
        data, nxt = pack_dirents(entries, pos, count, legacy=not modern)
        if pos < len(entries) and not data:
            return skip(-errno.EINVAL)
        if data and not c.core.write(c.tid, c.args[1], data):
            return skip(-errno.EFAULT)
        os.lseek(ours, nxt, os.SEEK_SET)
    finally:
        os.close(ours)
    return skip(len(data))


def h_chdir(c: Context) -> tuple:
    t = c.resolve(True)
    outside = c.outside(t)
    if outside is not None:
        if c.guest is not None and t is not None and t.host:
            c.guest.entered(c.tid, t, t.host.rstrip("/") or "/", c.core)
        return outside
    if not t.node.is_dir:
        return skip(-errno.ENOTDIR)
    denied = c.can(t.node, X_OK)
    if denied:
        return skip(-denied)
    anchor = c.view.anchor(t.node)
    if c.guest is not None:
        c.guest.entered(c.tid, t, anchor, c.core)
    return ("args", {c.call.path: anchor}, False, False)


def h_getcwd(c: Context) -> tuple:
    vpath = c.view.anchor_to_vpath(c.base) if c.base else None
    if c.guest is not None:  # the kernel's cwd as the guest names it
        guest = c.guest.cwd_guest(c.tid, c.base) if c.base else None  # its own spelling
        data = os.fsencode(guest if guest is not None else "(unreachable)/") + b"\0"
        if vpath is not None and guest is not None and guest == c.guest.guest_of(c.base):
            teach_cwd(c, vpath, guest)  # an anchor of the root (or a bind from /cvmfs)
    else:
        if vpath is None:
            return RESUME
        data = os.fsencode(vpath.logical) + b"\0"
        teach_cwd(c, vpath, vpath.logical)
    size = int(c.args[1])
    if size < len(data):
        return skip(-errno.ERANGE)
    return c.written(c.args[0], data, len(data))


def h_inotify(c: Context) -> tuple:
    t = c.resolve(not (c.args[2] & 0x01000000))  # IN_DONT_FOLLOW
    outside = c.outside(t)
    if outside is not None:
        return outside
    node = t.node
    backing = c.view.materialize(node) if node.is_regular else c.view.anchor(node)
    return ("args", {c.call.path: backing}, False, False)
