"""Directories: listings of an anchor's descriptor (getdents, getdents64), the working
directory (chdir into an anchor, getcwd showing the /cvmfs path) and inotify watches
(on the cache file or anchor)."""

from __future__ import annotations

import errno
import os

from ..structs import pack_dirents
from .answers import teach_listing
from .context import RESUME, X_OK, Context, skip


def h_getdents(c: Context) -> tuple:
    fd = int(c.args[0])
    view = c.view
    vpath = view.anchor_to_vpath(c.base)
    node = view.lookup(vpath) if vpath is not None else None
    if node is None or not node.is_dir:
        return RESUME
    entries = view.listing(node)
    c.siblings.listed(vpath)
    modern = c.call.name == "getdents64"
    if modern:  # C answers the next ones (and later runs')
        records, _ = pack_dirents(entries, 0, 1 << 62)
        teach_listing(c, vpath, records)
    # the descriptor's own file position is the cursor: read and move it through a copy
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
    if modern:
        node._listing = None  # C has it now (and Python makes it again if C drops it)
    return skip(len(data))


def h_chdir(c: Context) -> tuple:
    t = c.resolve(True)
    outside = c.outside(t)
    if outside is not None:
        return outside
    if not t.node.is_dir:
        return skip(-errno.ENOTDIR)
    denied = c.can(t.node, X_OK)
    if denied:
        return skip(-denied)
    return ("args", {c.call.path: c.view.anchor(t.node)}, False, False)


def h_getcwd(c: Context) -> tuple:
    vpath = c.view.anchor_to_vpath(c.base)
    if vpath is None:
        return RESUME
    data = os.fsencode(vpath.logical) + b"\0"
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
