"""Carrying a handler's action out (context.py lists them): the only module that knows
a ptrace stop from a seccomp notification.

A ptrace stop is answered by the tracer thread in C (resume, skip, or arguments pointed
at strings written below the program's stack pointer, the original registers put back at
the exit); a notification is answered here (a result, the call let through, or a
descriptor we opened installed in the program, one round trip)."""

from __future__ import annotations

import errno
import os
import struct

from ...errors import CvmfsError
from ..core import Core
from ..paths import VPath
from ..structs import host_attrs, pack_stat, pack_statx
from ..vfs import CvmfsView
from .context import Context
from .processes import Processes
from .xattrs import xattr_reply

# The one rule for an object another job's quota clean-up evicted between our lookup and
# the open (once open, it is ours): the open fails with ENOENT, and the object is fetched
# again and the open made again, REFETCHES times at most for one call. (C applies it to
# the opens it answers itself: respond.c respond_open, queue.c pc_restart_exit.)
REFETCHES = 2


def evicted(err: int, tries: int) -> bool:
    """Whether an open that failed with `err` after `tries` refetches is made again."""
    return err == errno.ENOENT and tries < REFETCHES


def io_error(view: CvmfsView, e: CvmfsError) -> int:
    """A fetch failed: counted, one line for the user, EIO for the program."""
    view.io_errors += 1
    view.warn(str(e))
    return -errno.EIO


class Scratch:
    """Memory below the stopped thread's stack pointer for rewritten arguments."""

    def __init__(self, core: Core, tid: int, sp: int):
        self.core, self.tid, self.cur = core, tid, sp

    def put(self, data: bytes) -> int:
        addr = (self.cur - len(data)) & ~15
        if not self.core.write(self.tid, addr, data):
            raise OSError(14, "cannot write below the program's stack pointer")
        self.cur = addr
        return addr

    def put_str(self, s: str | bytes) -> int:
        return self.put((os.fsencode(s) if isinstance(s, str) else s) + b"\0")


class Delivery:
    def __init__(self, core: Core, view: CvmfsView, procs: Processes):
        self.core, self.view, self.procs = core, view, procs
        self._open_pending: dict[int, tuple[str, VPath]] = {}  # tid -> the open's file
        self._reopens: dict[int, int] = {}  # tid -> opens made again in a row (on_exit)
        self._exit_hooks: dict[int, object] = {}  # tid -> an "exit" action's hook

    # HOT PATH: runs once for every call Python answers
    def apply(self, c: Context, action: tuple) -> None:
        kind = action[0]
        core = self.core
        if c.notify:
            nid = c.notif_id
            if kind == "resume":
                core.notif_continue(nid)
            elif kind == "skip":
                core.notif_reply(nid, action[1])
            elif kind == "open":
                self._notif_open(c, *action[1:])
            elif kind == "host":
                core.notif_reply(nid, _emulate(c, action[1]))
            else:
                self.view.warn(
                    f"internal error: {c.call.name} cannot be rewritten as a notification"
                )
                core.notif_reply(nid, -errno.EIO)
            return
        tid = c.tid
        if self._exit_hooks:  # a new call: a hook left by a task gone meanwhile is stale
            self._exit_hooks.pop(tid, None)
        if kind == "resume":
            core.resume(tid)
        elif kind == "skip":
            core.skip(tid, action[1])
        else:
            if kind == "open":
                values, report = self._ptrace_open(c, *action[1:])
                is_exec = False
            elif kind == "host":
                values = {c.call.path: Scratch(core, tid, c.sp).put_str(action[1])}
                report = is_exec = False
            elif kind == "exit":
                self._exit_hooks[tid] = action[1]
                values, report, is_exec = {}, True, False
            else:
                _, values, report, is_exec = action
                try:
                    values = _written(Scratch(core, tid, c.sp), values)
                except OSError as e:  # as for a handler's OSError (dispatch)
                    if is_exec:
                        self.procs.pending_exec.pop(tid, None)
                    core.skip(tid, -(e.errno or errno.EIO))
                    return
            if core.set_args(tid, values, report, is_exec) < 0:
                core.skip(tid, -errno.EFAULT)

    def _ptrace_open(self, c: Context, path, flags, mode, vpath, how, backing):
        sc = Scratch(self.core, c.tid, c.sp)
        values = {c.call.path: sc.put_str(path)}
        if how is not None:
            struct.pack_into("<Q", how, 0, flags)  # the handler's flags (an overlay's
            struct.pack_into("<Q", how, 16, 0)  # O_EXCL done); resolution rules applied
            values[2] = sc.put(bytes(how))
        elif c.call.flags >= 0 and flags != c.args[c.call.flags]:
            values[c.call.flags] = flags  # the handler changed them (overlay.py: O_EXCL)
        if vpath is not None:
            self._open_pending[c.tid] = (path, vpath)
        return values, vpath is not None

    def _notif_open(self, c: Context, path, flags, mode, vpath, how, backing) -> None:
        core, nid = self.core, c.notif_id
        tries = 0
        while True:
            try:
                # never block here on a fifo on the program's behalf: open it non-blocking,
                # then give the description the program's blocking mode
                how_open = flags | os.O_CLOEXEC | os.O_NONBLOCK
                if backing:
                    fd = core.open_backing(path, how_open)
                elif flags & (os.O_CREAT | os.O_TMPFILE):  # the program's umask, not ours
                    old = os.umask(_umask_of(c.tid))
                    try:
                        fd = os.open(path, how_open, mode & 0o7777)
                    finally:
                        os.umask(old)
                else:
                    fd = os.open(path, how_open, mode & 0o7777)
                if not flags & os.O_NONBLOCK:
                    os.set_blocking(fd, True)
                break
            except OSError as e:
                node = self.view.lookup(vpath) if vpath is not None else None
                if node is not None and evicted(e.errno, tries):
                    tries += 1
                    try:
                        path = self.view.materialize(node)
                    except CvmfsError as fetch_error:
                        core.notif_reply(nid, io_error(self.view, fetch_error))
                        return
                    continue
                core.notif_reply(nid, -(e.errno or errno.EIO))
                return
        n = core.notif_addfd(nid, fd, bool(flags & os.O_CLOEXEC), c.tid)  # closes fd
        if n >= 0 and vpath is not None:
            self.procs.fds.setdefault(self.procs.tgid(c.tid), {})[n] = (path, vpath)
        elif n < 0 and n != -errno.ENOENT:  # ENOENT: the program was interrupted
            core.notif_reply(nid, n)

    def on_exit(self) -> None:
        """Exit of a rewritten open: remember which /cvmfs file the new descriptor holds."""
        tid, ret = self.core.exit_result()
        hook = self._exit_hooks.pop(tid, None)
        if hook is not None:
            try:
                hook(ret)
            except OSError:
                pass  # the program's memory went away: its result stands
            self.core.finish_exit(tid)
            return
        pending = self._open_pending.pop(tid, None)
        if pending is not None and ret >= 0:
            self.procs.fds.setdefault(self.procs.tgid(tid), {})[int(ret)] = pending
        elif pending is not None and evicted(-ret, self._reopens.get(tid, 0)):
            # the program opens its own path again, and we fetch it again
            self._reopens[tid] = self._reopens.get(tid, 0) + 1
            self.core.restart_exit(tid)
            return
        self._reopens.pop(tid, None)
        self.core.finish_exit(tid)


def _umask_of(tid: int) -> int:
    """A thread's umask (/proc/TID/status; 0o022 where the kernel does not show it)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _written(sc: Scratch, values: dict) -> dict[int, int]:
    """The registers of an "args" action: what a value points at written below the
    stack pointer, in the order given (context.py says what a value can be)."""
    out = {}
    for arg, v in values.items():
        if type(v) is int:
            out[arg] = v
        elif type(v) is list:  # argv: the strings, then the NULL-terminated pointers
            ptrs = [sc.put_str(a) for a in v]
            out[arg] = sc.put(struct.pack(f"<{len(ptrs) + 1}Q", *ptrs, 0))
        else:
            out[arg] = sc.put_str(v) if type(v) is str else sc.put(v)
    return out


def _emulate(c: Context, host: str) -> int:
    """A notified call on a host path reached through /cvmfs: do it ourselves."""
    call, args, core = c.call, c.args, c.core
    try:
        h = call.handler
        if h == "stat":
            s = os.stat(host, follow_symlinks=c.follow)
            a = host_attrs(s)
            data = pack_statx(a) if call.name == "statx" else pack_stat(a, c.arch)
            return 0 if core.write(c.tid, args[call.out], data) else -errno.EFAULT
        if h == "access":
            mode = int(args[call.mode]) & 7
            if os.access(host, mode, follow_symlinks=c.follow):
                return 0
            return -(errno.EACCES if os.path.lexists(host) else errno.ENOENT)
        if h == "readlink":
            data = os.fsencode(os.readlink(host))[: int(args[call.size])]
            return len(data) if core.write(c.tid, args[call.out], data) else -errno.EFAULT
        if h == "getxattr":
            name = core.read_cstr(c.tid, args[1])
            data = os.getxattr(host, name, follow_symlinks=c.follow)
            return xattr_reply(c, data, args[2], int(args[3]))
        if h == "listxattr":
            names = os.listxattr(host, follow_symlinks=c.follow)
            data = b"".join(os.fsencode(n) + b"\0" for n in names)
            return xattr_reply(c, data, args[call.out], int(args[call.size]))
        if h == "statfs":
            return _host_statfs(c, host, args[call.out])
    except OSError as e:
        return -(e.errno or errno.EIO)
    return -errno.EXDEV


def _host_statfs(c: Context, path: str, addr: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(120)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return -ctypes.get_errno()
    return 0 if c.core.write(c.tid, addr, buf.raw) else -errno.EFAULT
