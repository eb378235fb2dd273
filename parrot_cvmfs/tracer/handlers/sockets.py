"""Unix socket addresses: connect(2), sendto(2) and sendmsg(2) to a path as the job
names it, and the addresses the kernel gives back shown in the job's terms
(getsockname, getpeername, accept's peer, recvfrom's and recvmsg's source: in a guest
namespace, a socket bound in a bind or the overlay shows the guest path, not the host
location the kernel holds). bind(2) is a write (writes.py) and shares `socket_at`.
Abstract and unnamed addresses pass untouched (C lets them by: examine.c)."""

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


def _peer(c: Context) -> tuple | str:
    """The host location of the socket a connect/sendto/sendmsg address names, or the
    call's action when there is none to point it at."""
    t = c.resolve(True)
    if t is None:
        return RESUME
    if t.virtual:  # no entry of a repository is a listening socket
        return skip(-errno.ECONNREFUSED)
    if t.err:
        return skip(-t.err)
    if not t.via_cvmfs:
        return RESUME
    return t.host


def h_connect(c: Context) -> tuple:
    """connect and sendto: the address argument pointed at the host location."""
    host = _peer(c)
    return host if isinstance(host, tuple) else socket_at(c, host)


_MSGHDR = 56  # struct msghdr on the 64-bit ABIs: name, namelen, iov, iovlen, control...


def h_sendmsg(c: Context) -> tuple:
    """sendmsg: a copy of the job's struct msghdr whose msg_name is the host location
    (the job's own header is never changed)."""
    host = _peer(c)
    if isinstance(host, tuple):
        return host
    path = os.fsencode(host)
    if len(path) >= SUN_PATH:
        return skip(-errno.ENAMETOOLONG)
    head = c.core.read(c.tid, int(c.args[1]), _MSGHDR)
    if len(head) != _MSGHDR:
        return skip(-errno.EFAULT)
    from .delivery import Scratch

    addr = struct.pack("<H", AF_UNIX) + path + b"\0"
    sc = Scratch(c.core, c.tid, c.sp)
    at = sc.put(addr)
    msg = struct.pack("<QI", at, len(addr)) + head[12:]
    return ("args", {1: sc.put(msg)}, False, False)


def h_sockfrom(c: Context) -> tuple:
    """accept, accept4, recvfrom, recvmsg on a Unix socket with an address buffer (C
    checked both): the call runs, and at its exit the address the kernel wrote is
    shown in guest terms."""
    if c.guest is None:
        return RESUME
    call, args = c.call, c.args
    if call.size >= 0:  # the address and its socklen_t
        addr, size_at = int(args[call.out]), int(args[call.size])
    else:  # recvmsg: both in the struct msghdr
        addr, size_at = 0, int(args[call.out]) + 8
    raw = c.core.read(c.tid, size_at, 4)
    if len(raw) != 4:
        return RESUME  # the kernel reports EFAULT
    room = struct.unpack("<I", raw)[0]
    guest, core, tid = c.guest, c.core, c.tid

    def at_exit(result: int) -> None:
        if result < 0:
            return
        where = addr
        if not where:
            head = core.read(tid, int(args[call.out]), 8)
            if len(head) != 8:
                return
            where = struct.unpack("<Q", head)[0]
        raw = core.read(tid, size_at, 4)
        if len(raw) != 4:
            return
        size = struct.unpack("<I", raw)[0]
        if size > room:  # truncated by the kernel: the host name is not all there
            return
        _show_in_guest(core, tid, guest, where, size, room, size_at)

    return ("exit", at_exit)


def _show_in_guest(core, tid: int, guest, addr: int, size: int, room: int, size_at: int):
    """Rewrite the Unix address of `size` bytes at `addr` (a buffer of `room` bytes, its
    socklen_t at `size_at`) in guest terms: a path name only (not abstract, unnamed)."""
    sa = core.read(tid, addr, size)
    if len(sa) < 3 or struct.unpack_from("<H", sa)[0] != AF_UNIX or sa[2] == 0:
        return
    host = os.fsdecode(sa[2:].split(b"\0", 1)[0])
    name = guest.guest_of(host)
    if name is None or name == host:
        return
    new = struct.pack("<H", AF_UNIX) + os.fsencode(name) + b"\0"
    if core.write(tid, addr, new[: min(room, len(new))]):
        core.write(tid, size_at, struct.pack("<I", len(new)))


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
