"""stat (and lstat, fstat, newfstatat, statx), access, readlink and statfs: answers
from the catalog entry, taught to C as they are given."""

from __future__ import annotations

import errno
import os

from ..paths import Target
from ..structs import pack_stat, pack_statfs, pack_statx
from ..syscalls import FD
from ..vfs import Node
from .answers import remember, teach_statfs
from .context import RESUME, Context, skip


def _looked_up(c: Context, follow: bool) -> Target | tuple:
    """The /cvmfs entry the call's path names, its answer taught to C; or, when it names
    none, the action."""
    t = c.resolve(follow)
    if t is None:
        return RESUME
    remember(c, follow, t)
    if t.err:
        return skip(-t.err)
    if not t.virtual:
        return c.host(t)
    return t


def _stat_result(c: Context, node: Node) -> tuple:
    a = c.view.attrs(node)
    data = pack_statx(a) if c.call.name == "statx" else pack_stat(a, c.arch)
    return c.written(c.args[c.call.out], data, 0)


def h_stat(c: Context) -> tuple:
    if c.call.kind == FD:
        t = c.fd_target(c.base, int(c.args[0]))
        return RESUME if t is None else _stat_result(c, t.node)
    follow = c.follow
    if follow and c.names_proc():
        p = c.proc_target()
        if p is not None:
            node = c.logical_node(p[1])
            return RESUME if node is None else _stat_result(c, node)
    t = _looked_up(c, follow)
    return t if type(t) is tuple else _stat_result(c, t.node)


def h_access(c: Context) -> tuple:
    follow = c.follow
    mode = int(c.args[c.call.mode]) & 7
    if follow and c.names_proc():
        p = c.proc_target()
        if p is not None:
            node = c.logical_node(p[1])
            if node is not None:
                return skip(-c.can(node, mode))
    t = _looked_up(c, follow)
    return t if type(t) is tuple else skip(-c.can(t.node, mode))


def h_readlink(c: Context) -> tuple:
    size = int(c.args[c.call.size])
    if c.guest is not None:
        t = c.resolve(False)
        if t is None:
            return RESUME
        remember(c, False, t)  # an entry of the root, or an error: C answers it next time
        if t.err:
            return skip(-t.err)
        if not t.virtual:  # the link's text; a /proc magic link's in guest terms
            target = c.guest.link_text(t.host)
            if target is None:
                return skip(-errno.EINVAL)
            return _link_result(c, os.fsencode(target), size)
        if not t.node.is_symlink:
            return skip(-errno.EINVAL)
        return _link_result(c, os.fsencode(t.node.target), size)
    p = c.proc_target() if c.names_proc() else None
    if p is not None:
        return _link_result(c, os.fsencode(p[1]), size)
    t = _looked_up(c, False)
    if type(t) is tuple:
        return t
    if not t.node.is_symlink:
        return skip(-errno.EINVAL)
    return _link_result(c, os.fsencode(t.node.target), size)


def _link_result(c: Context, data: bytes, size: int) -> tuple:
    if size <= 0:
        return skip(-errno.EINVAL)
    data = data[:size]
    return c.written(c.args[c.call.out], data, len(data))


def h_statfs(c: Context) -> tuple:
    if c.call.kind == FD:
        t = c.fd_target(c.base, int(c.args[0]))
    else:
        t = c.resolve(True)
        if t is not None and t.err:
            remember(c, True, t)  # C answers the error next time (the rest is Python's)
    outside = c.outside(t)
    if outside is not None:
        return outside
    files = 0
    blocks = free = 0
    cache = c.view.cache
    if cache is not None and cache.quota is not None:
        blocks = cache.quota.limit // 4096
        free = max(0, blocks - cache.quota.usage() // 4096)
    a = c.view.attrs(t.node)
    buf = pack_statfs(blocks, free, files, a.dev)
    teach_statfs(c, t, a.dev, buf)
    return c.written(c.args[c.call.out], buf, 0)
