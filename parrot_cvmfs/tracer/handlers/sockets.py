"""Unix socket addresses: connect(2) to a path as the job names it, and getsockname /
getpeername shown in the job's terms (in a guest namespace, a socket bound in a bind
shows the guest path, not the host location the kernel holds). bind(2) is a write
(writes.py) and shares `socket_at`."""

from __future__ import annotations

import errno
import os
import struct

from .context import RESUME, Context, skip

AF_UNIX = 1
SUN_PATH = 108


def socket_at(c: Context, host: str) -> tuple:
    """The call's address argument pointed at a Unix address for `host`."""
    path = os.fsencode(host)
    if len(path) >= SUN_PATH:
        return skip(-errno.ENAMETOOLONG)
    addr = struct.pack("<H", AF_UNIX) + path + b"\0"
    return ("args", {c.call.path: addr, c.call.size: len(addr)}, False, False)


def h_connect(c: Context) -> tuple:
    t = c.resolve(True)
    if t is None:
        return RESUME
    if t.virtual:  # no entry of a repository is a listening socket
        return skip(-errno.ECONNREFUSED)
    if t.err:
        return skip(-t.err)
    if not t.via_cvmfs:
        return RESUME
    return socket_at(c, t.host)


def h_sockname(c: Context) -> tuple:
    """getsockname/getpeername of a Unix socket, its path in guest terms."""
    if c.guest is None:
        return RESUME
    import socket

    ours = c.core.getfd(c.tid, int(c.args[0]))
    try:
        s = socket.socket(fileno=ours)
        try:
            if s.family != socket.AF_UNIX:
                return RESUME
            name = s.getsockname() if c.call.name == "getsockname" else s.getpeername()
        except OSError as e:
            return skip(-(e.errno or errno.EIO))
        finally:
            s.detach()
    finally:
        os.close(ours)
    if not isinstance(name, str) or not name:  # unnamed, or an abstract name (bytes)
        return RESUME
    guest = c.guest.guest_of(name) or name
    addr = struct.pack("<H", AF_UNIX) + os.fsencode(guest) + b"\0"
    size_at = int(c.args[2])
    raw = c.core.read(c.tid, size_at, 4)
    if len(raw) < 4:
        return skip(-errno.EFAULT)
    room = struct.unpack("<I", raw)[0]
    if not c.core.write(c.tid, int(c.args[1]), addr[: min(room, len(addr))]):
        return skip(-errno.EFAULT)
    return c.written(size_at, struct.pack("<I", len(addr)), 0)
