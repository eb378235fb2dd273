"""getxattr and listxattr (and their l-, f- and -at forms) on /cvmfs entries: the stored
attributes and cvmfs's magic ones (user.*, xfsroot.*), answered by the repository."""

from __future__ import annotations

import errno
import os
import struct

from ...errors import CvmfsError
from ..paths import Target
from ..syscalls import FD
from .answers import teach_xattrs
from .context import RESUME, Context, skip


def xattr_reply(c: Context, data: bytes, addr: int, size: int) -> int:
    """The kernel's rule for a buffer of `size` bytes: size 0 asks for the length."""
    if size == 0:
        return len(data)
    if size < len(data):
        return -errno.ERANGE
    if data and not c.core.write(c.tid, addr, data):
        return -errno.EFAULT
    return len(data)


def _target(c: Context) -> Target | None:
    if c.call.kind == FD:
        return c.fd_target(c.base, int(c.args[0]))
    return c.resolve()


def h_getxattr(c: Context) -> tuple:
    t = _target(c)
    if t is None:
        return RESUME
    teach_xattrs(c, t)
    if t.err:
        return skip(-t.err)
    if not t.virtual:
        return c.host(t)
    args = c.args
    if c.call.name == "getxattrat":
        name_addr = args[3]
        value, size = struct.unpack("<QI", c.core.read(c.tid, args[4], 12))
    else:
        name_addr, value, size = args[1], args[2], int(args[3])
    name = c.core.read_cstr(c.tid, name_addr)
    node = t.node
    if node.repo is None:
        return skip(-errno.ENODATA)
    c.view.count_opens(c.core.served())  # the client's counters include C's opens
    try:
        data = node.repo.getxattr(node.entry, name)
    except CvmfsError:
        raise  # EIO and one line for the user, from dispatch
    except OSError as e:
        return skip(-(e.errno or errno.ENODATA))
    return skip(xattr_reply(c, data, value, size))


def h_listxattr(c: Context) -> tuple:
    t = _target(c)
    outside = c.outside(t)
    if outside is not None:
        return outside
    node = t.node
    names = node.repo.listxattr(node.entry) if node.repo is not None else []
    data = b"".join(os.fsencode(n) + b"\0" for n in names)
    teach_xattrs(c, t, data)
    call = c.call
    return skip(xattr_reply(c, data, c.args[call.out], int(c.args[call.size])))
