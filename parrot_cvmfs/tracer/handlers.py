"""Answers to the system calls the C core hands over, one handler per kind of call.

A handler returns what to do with the call. Calls arrive as ptrace stops or as
seccomp notifications (ev.notify); `_apply` carries the decision out either way:
- RESUME: run it unchanged (it does not concern /cvmfs after all);
- ("skip", result): do not run it; the program sees `result`;
- ("open", path, flags, mode, vpath, how, backing): the program's open of `path`
  instead (ptrace: the path argument is pointed at it, two stops; notification: we open
  it and install the descriptor, one round trip); `backing`: a file of our cache,
  opened following no link below the cache;
- ("host", path): the program's path left /cvmfs again; the call happens on `path`
  (ptrace: argument rewritten; notification: done here on the program's behalf);
- ("args", {arg: value}, report_exit, is_exec): ptrace only, pointer arguments
  replaced (exec, chdir), the original registers put back at the exit.
"""

from __future__ import annotations

import errno
import os
import stat as st
import struct
import sys

from .._core import ffi
from ..errors import CvmfsError
from . import execve as ex
from .core import Core, Scratch
from .memo import answer_record, xattrs_record
from .paths import LAST_DOT, LAST_NORM, MOUNT, Target, VPath, resolve
from .structs import Attrs, pack_dirents, pack_stat, pack_statfs, pack_statx
from .syscalls import AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, FD, Call
from .vfs import CvmfsView, Node

RESUME = ("resume",)
MAGIC_XATTR_PREFIXES = (b"user.", b"xfsroot.")  # every cvmfs magic attribute is under these

O_WRONLY, O_RDWR, O_ACCMODE = 0o1, 0o2, 0o3
O_CREAT, O_EXCL, O_TRUNC = 0o100, 0o200, 0o1000
O_DIRECTORY, O_NOFOLLOW, O_PATH = 0o200000, 0o400000, 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY
RESOLVE_NO_XDEV, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT = 0x01, 0x04, 0x08, 0x10
R_OK, W_OK, X_OK = 4, 2, 1


def skip(result: int) -> tuple:
    return ("skip", result)


class Processes:
    """Per-process state: the /cvmfs program each process runs (for /proc/self/exe) and
    which /cvmfs file each descriptor it opened came from."""

    def __init__(self):
        self.tgid_of: dict[int, int] = {}
        self.exe: dict[int, str] = {}
        self.pending_exec: dict[int, str | None] = {}
        self.fds: dict[int, dict[int, tuple[str, VPath]]] = {}

    def tgid(self, tid: int) -> int:
        t = self.tgid_of.get(tid)
        if t is None:
            t = _read_tgid(tid)
            self.tgid_of[tid] = t
        return t

    def on_newtask(self, parent: int, child: int) -> None:
        ptgid = self.tgid(parent)
        ctgid = _read_tgid(child)
        self.tgid_of[child] = ctgid
        if ctgid != ptgid:  # a new process: it runs the same program, has the same fds
            if ptgid in self.exe:
                self.exe[ctgid] = self.exe[ptgid]
            if ptgid in self.fds:
                self.fds[ctgid] = dict(self.fds[ptgid])

    def on_exec(self, tid: int, former: int) -> None:
        logical = self.pending_exec.pop(former, None)
        self.pending_exec.pop(tid, None)
        for t in [t for t, g in self.tgid_of.items() if g == tid and t != tid]:
            del self.tgid_of[t]
        self.tgid_of[tid] = tid
        if logical:
            self.exe[tid] = logical
        else:
            self.exe.pop(tid, None)

    def on_exit(self, tid: int) -> None:
        tgid = self.tgid_of.pop(tid, tid)
        self.pending_exec.pop(tid, None)
        if tgid == tid:
            self.exe.pop(tid, None)
            self.fds.pop(tid, None)


def _read_tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


class Handlers:
    def __init__(self, core: Core, view: CvmfsView, procs: Processes, debug: bool = False):
        from .memo import Memo

        self._siblings = Siblings()
        self.core = core
        self.memo = Memo(core, view.cache_dir)
        view.on_mount = self.memo.load
        view.kept_path = self.memo.logical_path
        self.view = view
        self.procs = procs
        self.calls = core.calls
        self.arch = core.arch
        self.debug = debug
        self._open_pending: dict[int, tuple[str, VPath]] = {}
        self._reopens: dict[int, int] = {}  # tid -> opens made again in a row (on_exit)

    # -- the event -----------------------------------------------------------------------------

    def dispatch(self) -> None:
        ev = self.core.ev
        call = self.calls[ev.rule]
        tid = ev.tid
        if ev.notify and not self.core.notif_valid(ev.notif_id):
            return  # the program went away (killed) while the call waited
        try:
            action = getattr(self, "h_" + call.handler)(ev, call)
        except CvmfsError as e:
            if self.core.given_up():  # C answered it meanwhile (a termination signal)
                return
            action = skip(self._io_error(e))
        except OSError as e:
            action = skip(-(e.errno or errno.EIO))
        except Exception as e:  # never let a program's call take the supervisor down
            self.view.warn(f"internal error in {call.name}: {type(e).__name__}: {e}")
            if self.debug:
                import traceback

                traceback.print_exc()
            action = skip(-errno.EIO)
        if self.debug:
            via = "notify" if ev.notify else "ptrace"
            print(
                f"[{tid}] {call.name}({_s(ev.path, ev.path_len)!r}) via {via} -> {action}",
                file=sys.stderr,
            )
        self._apply(ev, call, action)

    def _apply(self, ev, call: Call, action: tuple) -> None:
        kind = action[0]
        if ev.notify:
            nid = ev.notif_id
            if kind == "resume":
                self.core.notif_continue(nid)
            elif kind == "skip":
                self.core.notif_reply(nid, action[1])
            elif kind == "open":
                self._notif_open(ev, *action[1:])
            elif kind == "host":
                self.core.notif_reply(nid, self._emulate(ev, call, action[1]))
            else:
                self.view.warn(f"internal error: {call.name} cannot be rewritten as a notification")
                self.core.notif_reply(nid, -errno.EIO)
            return
        tid = ev.tid
        if kind == "resume":
            self.core.resume(tid)
        elif kind == "skip":
            self.core.skip(tid, action[1])
        else:
            if kind == "open":
                values, report = self._ptrace_open(ev, call, *action[1:])
                is_exec = False
            elif kind == "host":
                sc = Scratch(self.core, ev.tid, ev.sp)
                values, report, is_exec = {call.path: sc.put_str(action[1])}, False, False
            else:
                _, values, report, is_exec = action
            if self.core.set_args(tid, values, report, is_exec) < 0:
                self.core.skip(tid, -errno.EFAULT)

    def _ptrace_open(self, ev, call: Call, path, flags, mode, vpath, how, backing):
        sc = Scratch(self.core, ev.tid, ev.sp)
        values = {call.path: sc.put_str(path)}
        if how is not None:
            struct.pack_into("<Q", how, 16, 0)  # resolution rules were applied here
            values[2] = sc.put(bytes(how))
        if vpath is not None:
            self._open_pending[ev.tid] = (path, vpath)
        return values, vpath is not None

    def _io_error(self, e: CvmfsError) -> int:
        """A fetch failed: counted, one line for the user, EIO for the program."""
        self.view.io_errors += 1
        self.view.warn(str(e))
        return -errno.EIO

    def _notif_open(self, ev, path, flags, mode, vpath, how, backing) -> None:
        nid = ev.notif_id
        for attempt in range(3):
            try:
                # never block here on a fifo on the program's behalf: open it non-blocking,
                # then give the description the program's blocking mode
                how_open = flags | os.O_CLOEXEC | os.O_NONBLOCK
                if backing:
                    fd = self.core.open_backing(path, how_open)
                else:
                    fd = os.open(path, how_open, mode & 0o7777)
                if not flags & os.O_NONBLOCK:
                    os.set_blocking(fd, True)
                break
            except OSError as e:
                node = self.view.lookup(vpath) if vpath is not None else None
                if e.errno == errno.ENOENT and node is not None and attempt < 2:
                    # another job's quota clean-up evicted the object since it was found
                    # (once open, it is ours): fetch it again
                    try:
                        path = self.view.materialize(node)
                    except CvmfsError as fetch_error:
                        self.core.notif_reply(nid, self._io_error(fetch_error))
                        return
                    continue
                self.core.notif_reply(nid, -(e.errno or errno.EIO))
                return
        try:
            n = self.core.notif_addfd(nid, fd, bool(flags & os.O_CLOEXEC), ev.tid)
        finally:
            os.close(fd)
        if n >= 0 and vpath is not None:
            self.procs.fds.setdefault(self.procs.tgid(ev.tid), {})[n] = (path, vpath)
        elif n < 0 and n != -errno.ENOENT:  # ENOENT: the program was interrupted
            self.core.notif_reply(nid, n)

    def _emulate(self, ev, call: Call, host: str) -> int:
        """A notified call on a host path reached through /cvmfs: do it ourselves."""
        try:
            h = call.handler
            if h == "stat":
                s = os.stat(host, follow_symlinks=self._follow(ev, call))
                a = Attrs(
                    s.st_dev,
                    s.st_ino,
                    s.st_mode,
                    s.st_nlink,
                    s.st_uid,
                    s.st_gid,
                    s.st_rdev,
                    s.st_size,
                    s.st_blksize,
                    s.st_blocks,
                    int(s.st_mtime),
                    s.st_mtime_ns % 10**9,
                )
                data = pack_statx(a) if call.name == "statx" else pack_stat(a, self.arch)
                return 0 if self.core.write(ev.tid, ev.args[call.out], data) else -errno.EFAULT
            if h == "access":
                mode = int(ev.args[call.mode]) & 7
                if os.access(host, mode, follow_symlinks=self._follow(ev, call)):
                    return 0
                return -(errno.EACCES if os.path.lexists(host) else errno.ENOENT)
            if h == "readlink":
                data = os.fsencode(os.readlink(host))[: int(ev.args[call.size])]
                return (
                    len(data) if self.core.write(ev.tid, ev.args[call.out], data) else -errno.EFAULT
                )
            if h == "getxattr":
                name = _read_cstr(self.core, ev.tid, ev.args[1])
                data = os.getxattr(host, name, follow_symlinks=self._follow(ev, call))
                return self._xattr_reply(ev, data, ev.args[2], int(ev.args[3]))
            if h == "listxattr":
                names = os.listxattr(host, follow_symlinks=self._follow(ev, call))
                data = b"".join(os.fsencode(n) + b"\0" for n in names)
                return self._xattr_reply(ev, data, ev.args[call.out], int(ev.args[call.size]))
            if h == "statfs":
                return _host_statfs(self.core, ev.tid, host, ev.args[call.out])
        except OSError as e:
            return -(e.errno or errno.EIO)
        return -errno.EXDEV

    def _xattr_reply(self, ev, data: bytes, addr: int, size: int) -> int:
        if size == 0:
            return len(data)
        if size < len(data):
            return -errno.ERANGE
        if data and not self.core.write(ev.tid, addr, data):
            return -errno.EFAULT
        return len(data)

    def on_exit(self) -> None:
        """Exit of a rewritten open: remember which /cvmfs file the new descriptor holds."""
        ev = self.core.ev
        pending = self._open_pending.pop(ev.tid, None)
        if pending is not None and ev.ret >= 0:
            self.procs.fds.setdefault(self.procs.tgid(ev.tid), {})[int(ev.ret)] = pending
        elif pending is not None and ev.ret == -errno.ENOENT and self._reopens.get(ev.tid, 0) < 2:
            # another job's quota clean-up evicted the object between our lookup and the
            # kernel's open: the program opens its own path again, and we fetch it again
            self._reopens[ev.tid] = self._reopens.get(ev.tid, 0) + 1
            self.core.restart_exit(ev.tid)
            return
        self._reopens.pop(ev.tid, None)
        self.core.finish_exit(ev.tid)

    # -- shared pieces -----------------------------------------------------------------------------

    def _path(self, ev) -> str:
        return _s(ev.path, ev.path_len)

    def _base(self, ev) -> str | None:
        return _s(ev.base, ev.base_len) if ev.base_len else None

    def _follow(self, ev, call: Call) -> bool:
        follow = call.follow
        if call.flags >= 0:
            flags = ev.args[call.flags]
            if call.nofollow and flags & call.nofollow:
                follow = False
            if call.follow_flag and flags & call.follow_flag:
                follow = True
        return follow

    def _resolve(self, ev, call: Call, follow: bool | None = None, **kw) -> Target | None:
        """The target of the call's path; None when the kernel should handle it as is."""
        if ev.path_err:
            return None
        if ev.empty_path:  # AT_EMPTY_PATH: the dirfd itself
            return self._fd_target(ev, self._base(ev))
        f = self._follow(ev, call) if follow is None else follow
        if self._maybe_proc(ev):
            t = self._resolve_proc(ev, f, **kw)
            if t is not None:
                return t
        return resolve(self.view, self._path(ev), self._base(ev), f, **kw)

    def _walk_to_last(self, ev, path: str, base: str | None) -> Target:
        """_resolve_last for any path of the call."""
        stripped = path.rstrip("/")
        t = self._resolve_path(ev, stripped or path, base, False)
        t.trailing = bool(stripped) and stripped != path
        return t

    def _resolve_last(self, ev, call: Call) -> Target | None:
        """For calls that create or remove the last component (mkdir, unlink, rename,
        link's new name, open with O_CREAT): the walk to it, with the last component
        itself neither followed nor required to be a directory by a trailing "/" (the
        kernel's filename_parentat); `trailing` says whether there was one."""
        if ev.path_err:
            return None
        path = self._path(ev)
        stripped = path.rstrip("/")
        if not stripped or stripped == path or ev.empty_path:
            return self._resolve(ev, call, False)
        t = self._resolve_path(ev, stripped, self._base(ev), False)
        t.trailing = True
        return t

    def _resolve_path(self, ev, path: str, base: str | None, follow: bool) -> Target:
        """`resolve`, through /proc magic links as the kernel goes (for a call's second
        path; `_resolve` for its first)."""
        if path and _may_name_proc(path, base):
            t = self._resolve_proc(ev, follow, path, base)
            if t is not None:
                return t
        return resolve(self.view, path, base, follow)

    def _fd_target(self, ev, host: str | None, fd: int | None = None) -> Target | None:
        if not host:
            return None
        vpath = self.view.anchor_to_vpath(host)
        if vpath is None and fd is not None:
            hint = self.procs.fds.get(self.procs.tgid(ev.tid), {}).get(fd)
            if hint is not None and hint[0] == host:
                vpath = hint[1]
        if vpath is None:
            vpath = self.view.vpath_of_host(host)
        if vpath is None:
            return None
        node = self.view.lookup(vpath)
        if node is None:
            return None
        return Target(vpath=vpath, node=node, via_cvmfs=True)

    def _outside(self, ev, call: Call, t: Target | None) -> tuple | None:
        """The action for a call whose target is not a /cvmfs entry (the kernel's to do,
        a path handed back, or an error); None when it is one."""
        if t is None:
            return RESUME
        if t.err:
            return skip(-t.err)
        if not t.virtual:
            return self._host(ev, call, t)
        return None

    def _host(self, ev, call: Call, t: Target) -> tuple:
        """A path that left /cvmfs again: the kernel resolves the rest."""
        return ("host", t.host) if t.via_cvmfs else RESUME

    def _can(self, node: Node, want: int) -> int:
        """0 or the errno of access(2) with mode `want` (R_OK|W_OK|X_OK)."""
        return self.view.access_error(node, want)

    def _revision_of(self, path: str, t: Target) -> str | None:
        """The revision whose answer this is, if it can be kept across runs."""
        if t.mixed or not path.startswith(MOUNT + "/"):
            return None
        name = path[len(MOUNT) + 1 :].split("/", 1)[0]
        if t.node is not None and t.node.repo is not None and t.vpath.repo != name:
            return None
        return self.view.revision_id(name)

    def _key(self, ev) -> str | None:
        """The answer table's key for the call's path: the path itself when absolute;
        for a path relative to a directory anchor (cwd or dirfd in /cvmfs), the absolute
        /cvmfs spelling C composes the same way (examine.c relative_key)."""
        if ev.empty_path or not ev.path_len:
            return None
        path = self._path(ev)
        if path.startswith("/"):
            return path
        base = self._base(ev)
        logical = self.view.anchor_tree.logical(base) if base else None
        if logical is None:
            return None
        try:
            if not st.S_ISDIR(os.lstat(base).st_mode):
                return None  # the anchor of a symlink or fifo: ENOTDIR, never kept
        except OSError:
            return None
        return logical + "/" + path

    def _remember(self, ev, call: Call, follow: bool, t: Target) -> None:
        """Teach the C answer table this path (stat, statx, access, readlink). An answer
        that following the last component would not change is taught as the 'N' one,
        which C uses for both (answers.c answer_for_path)."""
        path = self._key(ev)
        if path is None or not (t.err or t.virtual) or t.proc:
            return
        key = os.fsencode(path)
        rev = self._revision_of(path, t)
        follow = follow and t.final_link
        if t.err:
            self.memo.put(rev, key, follow, t.err, None, [t.err] * 8, None)
            return
        node = t.node
        if node.variant:
            rev = None  # depends on the environment
        self.memo.teach(rev, self._answer(node, key, follow))
        self._siblings.seen(self, t, path, rev)

    def _answer(self, node: Node, key: bytes, follow: bool) -> bytes:
        """The 'A' record of a /cvmfs entry: its stat, access and link answers."""
        a = self.view.attrs(node)
        link = os.fsencode(node.target) if node.is_symlink else None
        return answer_record(
            follow, key, 0, pack_stat(a, self.arch), self.view.access_vector(node), link
        )

    def _teach_open(self, ev, call: Call, follow: bool, t: Target, backing: str) -> None:
        """Let C replay this read-only open, and answer fstat on its descriptors."""
        node = t.node
        path = None if t.proc else self._key(ev)
        rev = self._revision_of(path, t) if path is not None else None
        self.memo.teach(rev, self._answer(node, os.fsencode(backing), True))
        if path is not None:
            self._remember(ev, call, follow, t)
            self.memo.put_open(
                rev,
                os.fsencode(path),
                follow,
                os.fsencode(backing),
                node.is_dir,
                node.vpath.logical if node.is_regular else None,
            )

    def xattr_blob(self, node: Node) -> bytes:
        """What C needs to answer getxattr on an entry: its stored attributes with their
        values, and prefix records for the magic ones (cvmfs's `user.*` and `xfsroot.*`,
        which change: Python answers them)."""
        blob = bytearray()
        if node.repo is not None:
            magic = set(node.repo.magic_xattr_names(node.entry))
            for name, value in node.repo.stored_xattrs(node.entry).items():
                if name not in magic:
                    k = os.fsencode(name)
                    blob += struct.pack("<H", len(k)) + k + struct.pack("<I", len(value)) + value
            for prefix in MAGIC_XATTR_PREFIXES:
                blob += struct.pack("<H", len(prefix)) + prefix + b"\xfe\xff\xff\xff"
        return bytes(blob)

    # -- /proc/<pid>/{exe,cwd,fd/N} ----------------------------------------------------------------

    def _maybe_proc(self, ev) -> bool:
        return bool(ev.path_len) and _may_name_proc(self._path(ev), self._base(ev))

    def _proc_link(
        self, ev, path: str | None = None, base: str | None = None
    ) -> tuple[str, str | None, str] | None:
        """For a path through a /proc magic link (/proc/PID/{exe,cwd,root,fd/N}, the
        same under task/TID, /dev/fd/N, /dev/std*), however it is spelled ("//proc",
        "proc/self" from "/", "../../proc"): (the kernel's link, the /cvmfs path it
        stands for or None, the rest of the path after the link). The call's path by
        default."""
        if path is None:
            path, base = self._path(ev), self._base(ev)
        parts = _lexical_parts(path if path.startswith("/") else f"{base or '/'}/{path}")
        if parts[:2] == ["dev", "fd"]:
            parts = ["proc", "self", "fd", *parts[2:]]
        elif parts[:1] == ["dev"] and len(parts) >= 2 and parts[1] in _STD:
            parts = ["proc", "self", "fd", str(_STD.index(parts[1])), *parts[2:]]
        if len(parts) < 3 or parts[0] != "proc":
            return None
        who, rest = parts[1], parts[2:]
        if who == "self":
            pid = self.procs.tgid(ev.tid)
        elif who == "thread-self":
            pid = ev.tid
        elif who.isdigit():
            pid = int(who)
        else:
            return None
        if len(rest) >= 2 and rest[0] == "task" and rest[1].isdigit():
            pid, rest = int(rest[1]), rest[2:]
        if not rest:
            return None
        if rest[0] in ("exe", "cwd", "root"):
            what, rest = rest[0], rest[1:]
        elif rest[0] == "fd" and len(rest) >= 2 and rest[1].isdigit():
            what, rest = f"fd/{rest[1]}", rest[2:]
        else:
            return None
        try:
            link = os.readlink(f"/proc/{pid}/{what}")
        except OSError:
            return None
        logical = None
        if what == "exe":
            logical = self.procs.exe.get(self.procs.tgid(pid))
        elif what.startswith("fd/"):
            hint = self.procs.fds.get(self.procs.tgid(pid), {}).get(int(what[3:]))
            if hint is not None and hint[0] == link:
                logical = hint[1].logical
        if logical is None:
            vpath = self.view.vpath_of_host(link)
            logical = vpath.logical if vpath is not None else None
        return link, logical, "/".join(rest)

    def _proc_target(self, ev, call: Call) -> tuple[str, str | None] | None:
        """For a /proc magic link itself that shows a cache file or anchor: (kernel link,
        /cvmfs path)."""
        p = self._proc_link(ev)
        if p is None or p[1] is None or p[2]:
            return None
        return p[0], p[1]

    def _resolve_proc(
        self, ev, follow: bool, path: str | None = None, base: str | None = None, **kw
    ) -> Target | None:
        """A path through a /proc magic link, resolved from where the link leads (the
        kernel jumps there): into /cvmfs through an anchor or a file we served, or a
        host path that may enter /cvmfs. None if it is not such a path."""
        p = self._proc_link(ev, path, base)
        if p is None:
            return None
        link, logical, rest = p
        if logical is not None and not rest:
            from .paths import vpath_of_logical

            vpath = vpath_of_logical(logical)
            node = self.view.lookup(vpath) if vpath is not None else None
            t = Target(vpath=vpath, node=node, via_cvmfs=True) if node else Target(err=errno.ENOENT)
        else:
            start = logical if logical is not None else link
            if not start.startswith("/"):  # "pipe:[123]", "socket:[4]": not a directory
                return Target(err=errno.ENOTDIR) if rest else None
            t = resolve(self.view, f"{start}/{rest}" if rest else start, None, follow, **kw)
        t.proc = True  # depends on the process's state: never kept in the answer table
        return t

    # -- opening -----------------------------------------------------------------------------------

    def h_open(self, ev, call: Call) -> tuple:
        resolve_flags = 0
        how = None
        if call.name == "creat":
            flags, mode = O_CREAT | O_WRONLY | O_TRUNC, int(ev.args[1])
        elif call.name == "openat2":
            size = ev.args[3]
            if size < 24:
                return skip(-errno.EINVAL)
            how = bytearray(self.core.read(ev.tid, ev.args[2], min(size, 256)))
            flags, mode, resolve_flags = struct.unpack_from("<QQQ", how)
        else:
            flags = ev.args[call.flags]
            mode = int(ev.args[call.flags + 1])
        follow = not (flags & O_NOFOLLOW) and not (flags & O_CREAT and flags & O_EXCL)
        path = self._path(ev)
        if flags & O_CREAT and path.endswith("/") and path.strip("/") and not ev.path_err:
            # open_last_lookups: "name/" with O_CREAT is EISDIR once the walk gets there
            t = self._resolve_last(ev, call)
            if t is not None and (t.virtual or self._in_cvmfs(t) or t.err):
                return skip(-(t.err if t.err and not t.missing_last else errno.EISDIR))
        t = self._resolve(ev, call, follow, no_symlinks=bool(resolve_flags & RESOLVE_NO_SYMLINKS))
        if t is None:
            return RESUME
        if resolve_flags & (RESOLVE_BENEATH | RESOLVE_IN_ROOT | RESOLVE_NO_XDEV) and t.via_cvmfs:
            if resolve_flags & (RESOLVE_BENEATH | RESOLVE_NO_XDEV) and self._path(ev).startswith(
                "/"
            ):
                return skip(-errno.EXDEV)
        if t.err:
            if t.err == errno.ENOENT and t.missing_last and flags & O_CREAT:
                # "name/" cannot be created as a file (open_last_lookups: EISDIR)
                return skip(-(errno.EISDIR if t.trailing else errno.EROFS))
            if not resolve_flags:  # ld.so probes many missing paths: answer them in C next time
                self._remember(ev, call, follow, t)
            return skip(-t.err)
        if not t.virtual:
            return self._host_open(ev, call, t, how, flags, mode)
        node = t.node
        acc = flags & O_ACCMODE
        if flags & O_TMPFILE == O_TMPFILE:
            return skip(-errno.EROFS if node.is_dir else -errno.ENOTDIR)
        if flags & O_CREAT and flags & O_EXCL:
            return skip(-errno.EEXIST)
        if node.is_dir and (acc != 0 or flags & O_TRUNC):
            return skip(-errno.EISDIR)
        if acc != 0 or flags & O_TRUNC:
            return skip(-errno.EROFS)
        if flags & O_DIRECTORY and not node.is_dir:
            return skip(-errno.ENOTDIR)
        opath = bool(flags & O_PATH)
        if node.is_symlink and not opath:
            return skip(-errno.ELOOP)
        if not opath:
            denied = self._can(node, R_OK)
            if denied:
                return skip(-denied)
        if node.is_regular:
            backing = self.view.materialize(node)
        elif node.is_dir or node.is_symlink or st.S_ISFIFO(node.mode):
            backing = self.view.anchor(node)
        elif st.S_ISSOCK(node.mode):
            return skip(-errno.ENXIO)
        else:
            return skip(-errno.EACCES)  # devices: the repository is mounted nodev
        if not opath and (node.is_regular or node.is_dir):
            self._teach_open(ev, call, follow, t, backing)
        return ("open", backing, flags, 0, node.vpath if node.is_regular else None, how, True)

    def _host_open(self, ev, call: Call, t: Target, how, flags: int, mode: int) -> tuple:
        if not t.via_cvmfs:
            return RESUME
        return ("open", t.host, flags, mode, None, how, False)

    # -- attributes ----------------------------------------------------------------------------------

    def _stat_result(self, ev, call: Call, node: Node) -> tuple:
        a = self.view.attrs(node)
        data = pack_statx(a) if call.name == "statx" else pack_stat(a, self.arch)
        if not self.core.write(ev.tid, ev.args[call.out], data):
            return skip(-errno.EFAULT)
        return skip(0)

    def h_stat(self, ev, call: Call) -> tuple:
        if call.kind == FD:
            t = self._fd_target(ev, self._base(ev), int(ev.args[0]))
            return RESUME if t is None else self._stat_result(ev, call, t.node)
        follow = self._follow(ev, call)
        if follow and self._maybe_proc(ev):
            p = self._proc_target(ev, call)
            if p is not None:
                node = self._logical_node(p[1])
                return RESUME if node is None else self._stat_result(ev, call, node)
        t = self._resolve(ev, call, follow)
        if t is None:
            return RESUME
        self._remember(ev, call, follow, t)
        if t.err:
            return skip(-t.err)
        if not t.virtual:
            return self._host(ev, call, t)
        return self._stat_result(ev, call, t.node)

    def _logical_node(self, logical: str) -> Node | None:
        from .paths import vpath_of_logical

        v = vpath_of_logical(logical)
        return self.view.lookup(v) if v is not None else None

    def h_access(self, ev, call: Call) -> tuple:
        follow = self._follow(ev, call)
        if follow and self._maybe_proc(ev):
            p = self._proc_target(ev, call)
            if p is not None:
                node = self._logical_node(p[1])
                if node is not None:
                    return skip(-self._can(node, int(ev.args[call.mode]) & 7))
        t = self._resolve(ev, call, follow)
        if t is None:
            return RESUME
        self._remember(ev, call, follow, t)
        if t.err:
            return skip(-t.err)
        if not t.virtual:
            return self._host(ev, call, t)
        return skip(-self._can(t.node, int(ev.args[call.mode]) & 7))

    def h_readlink(self, ev, call: Call) -> tuple:
        size = int(ev.args[call.size])
        p = self._proc_target(ev, call) if self._maybe_proc(ev) else None
        if p is not None:
            return self._write_link(ev, call, os.fsencode(p[1]), size)
        t = self._resolve(ev, call, False)
        if t is None:
            return RESUME
        self._remember(ev, call, False, t)
        if t.err:
            return skip(-t.err)
        if not t.virtual:
            return self._host(ev, call, t)
        if not t.node.is_symlink:
            return skip(-errno.EINVAL)
        return self._write_link(ev, call, os.fsencode(t.node.target), size)

    def _write_link(self, ev, call: Call, data: bytes, size: int) -> tuple:
        if size <= 0:
            return skip(-errno.EINVAL)
        data = data[:size]
        if not self.core.write(ev.tid, ev.args[call.out], data):
            return skip(-errno.EFAULT)
        return skip(len(data))

    def h_statfs(self, ev, call: Call) -> tuple:
        if call.kind == FD:
            t = self._fd_target(ev, self._base(ev), int(ev.args[0]))
        else:
            t = self._resolve(ev, call, True)
        outside = self._outside(ev, call, t)
        if outside is not None:
            return outside
        files = 0
        blocks = free = 0
        cache = self.view.cache
        if cache is not None and cache.quota is not None:
            blocks = cache.quota.limit // 4096
            free = max(0, blocks - cache.quota.usage() // 4096)
        a = self.view.attrs(t.node)
        data = pack_statfs(blocks, free, files, a.dev)
        if not self.core.write(ev.tid, ev.args[call.out], data):
            return skip(-errno.EFAULT)
        return skip(0)

    # -- extended attributes ---------------------------------------------------------------------

    def _xattr_target(self, ev, call: Call) -> Target | None:
        if call.kind == FD:
            return self._fd_target(ev, self._base(ev), int(ev.args[0]))
        return self._resolve(ev, call)

    def _teach_xattrs(self, ev, call: Call, t: Target, listing: bytes | None = None) -> None:
        """Let C answer getxattr (and listxattr, in this run) on this path."""
        path = None if call.kind == FD or call.name.endswith("at") else self._key(ev)
        if path is None:
            return
        follow = self._follow(ev, call)
        self._remember(ev, call, follow, t)
        if t.err or not t.virtual or t.proc:
            return
        key = os.fsencode(path)
        follow = follow and t.final_link
        if listing is not None:
            self.core.table_put_xnames(key, follow, listing)
            return
        node = t.node
        rev = None if node.variant else self._revision_of(path, t)
        self.memo.put_xattrs(rev, key, follow, self.xattr_blob(node))

    def h_getxattr(self, ev, call: Call) -> tuple:
        t = self._xattr_target(ev, call)
        if t is None:
            return RESUME
        self._teach_xattrs(ev, call, t)
        if t.err:
            return skip(-t.err)
        if not t.virtual:
            return self._host(ev, call, t)
        if call.name == "getxattrat":
            name_addr = ev.args[3]
            value, size = struct.unpack("<QI", self.core.read(ev.tid, ev.args[4], 12))
        else:
            name_addr, value, size = ev.args[1], ev.args[2], int(ev.args[3])
        name = _read_cstr(self.core, ev.tid, name_addr)
        node = t.node
        if node.repo is None:
            return skip(-errno.ENODATA)
        try:
            data = node.repo.getxattr(node.entry, name)
        except CvmfsError:
            raise  # EIO and one line for the user, from dispatch
        except OSError as e:
            return skip(-(e.errno or errno.ENODATA))
        return skip(self._xattr_reply(ev, data, value, size))

    def h_listxattr(self, ev, call: Call) -> tuple:
        t = self._xattr_target(ev, call)
        outside = self._outside(ev, call, t)
        if outside is not None:
            return outside
        node = t.node
        names = node.repo.listxattr(node.entry) if node.repo is not None else []
        data = b"".join(os.fsencode(n) + b"\0" for n in names)
        self._teach_xattrs(ev, call, t, data)
        return skip(self._xattr_reply(ev, data, ev.args[call.out], int(ev.args[call.size])))

    # -- directories and the working directory ---------------------------------------------------

    def h_getdents(self, ev, call: Call) -> tuple:
        fd = int(ev.args[0])
        vpath = self.view.anchor_to_vpath(self._base(ev))
        node = self.view.lookup(vpath) if vpath is not None else None
        if node is None or not node.is_dir:
            return RESUME
        entries = self.view.listing(node)
        self._siblings.listed(vpath)
        if call.name == "getdents64":  # C answers the next ones (and later runs')
            records, _ = pack_dirents(entries, 0, 1 << 62)
            self.memo.put_dents(
                self.view.revision_id(vpath.repo) if vpath.repo else None,
                os.fsencode(self._base(ev)),
                records,
            )
        # the descriptor's own file position is the cursor: read and move it through a copy
        ours = self.core.getfd(ev.tid, fd)
        try:
            pos = os.lseek(ours, 0, os.SEEK_CUR)
            count = int(ev.args[2]) & 0xFFFFFFFF
            data, nxt = pack_dirents(entries, pos, count, legacy=call.name == "getdents")
            if pos < len(entries) and not data:
                return skip(-errno.EINVAL)
            if data and not self.core.write(ev.tid, ev.args[1], data):
                return skip(-errno.EFAULT)
            os.lseek(ours, nxt, os.SEEK_SET)
        finally:
            os.close(ours)
        if call.name == "getdents64":
            node._listing = None  # C has it now (and Python makes it again if C drops it)
        return skip(len(data))

    def h_chdir(self, ev, call: Call) -> tuple:
        t = self._resolve(ev, call, True)
        outside = self._outside(ev, call, t)
        if outside is not None:
            return outside
        if not t.node.is_dir:
            return skip(-errno.ENOTDIR)
        denied = self._can(t.node, X_OK)
        if denied:
            return skip(-denied)
        sc = Scratch(self.core, ev.tid, ev.sp)
        return ("args", {call.path: sc.put_str(self.view.anchor(t.node))}, False, False)

    def h_getcwd(self, ev, call: Call) -> tuple:
        vpath = self.view.anchor_to_vpath(self._base(ev))
        if vpath is None:
            return RESUME
        data = os.fsencode(vpath.logical) + b"\0"
        size = int(ev.args[1])
        if size < len(data):
            return skip(-errno.ERANGE)
        if not self.core.write(ev.tid, ev.args[0], data):
            return skip(-errno.EFAULT)
        return skip(len(data))

    # -- exec ---------------------------------------------------------------------------------------

    def h_execve(self, ev, call: Call) -> tuple:
        is_at = call.name == "execveat"
        argv_arg = 2 if is_at else 1
        if ev.empty_path:  # fexecve: the program is the descriptor
            t = self._fd_target(ev, self._base(ev), int(ev.args[0]))
            if t is None:
                return RESUME
        else:
            t = self._resolve(ev, call)
            if t is None:
                return RESUME
        if t.err:
            return skip(-t.err)
        given = self._path(ev) if not ev.empty_path else t.vpath.logical
        if t.virtual:
            node = t.node
            if not node.is_regular:
                return skip(-errno.EACCES)
            denied = self._can(node, X_OK)
            if denied:
                return skip(-denied)
            program = self.view.materialize(node)
            logical = node.vpath.logical
        else:
            program, logical = t.host, None
            if not _may_need_us(program):
                return self._host(ev, call, t) if t.via_cvmfs else RESUME
        plan = self._plan_exec(ev, program, logical, given, argv_arg)
        if plan is None:  # a host program that needs nothing from /cvmfs
            return self._host(ev, call, t) if t.via_cvmfs else RESUME
        if isinstance(plan, int):
            return skip(-plan)
        exe_path, new_argv, exe_logical = plan
        sc = Scratch(self.core, ev.tid, ev.sp)
        values = {call.path: sc.put_str(exe_path)}
        if is_at:
            values[0] = AT_FDCWD & 0xFFFFFFFFFFFFFFFF
            values[4] = 0
        if new_argv is not None:
            ptrs = [sc.put_str(a) for a in new_argv]
            values[argv_arg] = sc.put(struct.pack(f"<{len(ptrs) + 1}Q", *ptrs, 0))
        self.procs.pending_exec[ev.tid] = exe_logical
        return ("args", values, False, True)

    def _plan_exec(self, ev, program: str, logical: str | None, given: str, argv_arg: int):
        """(path to exec, new argv or None, logical exe) / an errno / None (nothing to do)."""
        argv: list[bytes] | None = None
        exe_logical = logical or program  # what /proc/self/exe is to show
        path = program
        for _depth in range(ex.MAX_INTERPRETER_DEPTH + 1):
            try:
                head = ex.read_head(path)
            except OSError as e:
                return None if logical is None else e.errno
            sb = ex.parse_shebang(head)
            if sb is None:
                break
            interp, arg = sb
            if argv is None:
                argv = ex.read_string_array(
                    lambda a, n: self.core.read(ev.tid, a, n), ev.args[argv_arg]
                )
            # the kernel's rule: interpreter, its argument, the file as exec was given it
            argv = (
                [os.fsencode(interp)]
                + ([os.fsencode(arg)] if arg else [])
                + [os.fsencode(given)]
                + argv[1:]
            )
            given = interp
            t = resolve(self.view, interp, None, True)
            if t.err:
                return t.err
            if t.virtual:
                if not t.node.is_regular:
                    return errno.EACCES
                path, exe_logical = self.view.materialize(t.node), t.node.vpath.logical
            else:
                path = exe_logical = t.host
        else:
            return errno.ELOOP
        interp = ex.elf_interpreter(path) if head[:4] == b"\x7fELF" else None
        if interp is not None and (interp[0] == MOUNT or interp[0].startswith(MOUNT + "/")):
            t = resolve(self.view, interp[0], None, True)
            if t.err or not t.virtual:
                return errno.ENOENT if t.err else None
            loader = self.view.materialize(t.node)
            path = ex.patched_binary(self.view.cache, path, loader)
        elif path == program and argv is None and logical is None:
            return None
        if not os.access(path, os.X_OK):
            path = ex.executable_copy(self.view.cache, path)
        return path, argv, exe_logical

    # -- other path calls ------------------------------------------------------------------------

    def h_inotify(self, ev, call: Call) -> tuple:
        t = self._resolve(ev, call, not (ev.args[2] & 0x01000000))  # IN_DONT_FOLLOW
        outside = self._outside(ev, call, t)
        if outside is not None:
            return outside
        node = t.node
        backing = self.view.materialize(node) if node.is_regular else self.view.anchor(node)
        sc = Scratch(self.core, ev.tid, ev.sp)
        return ("args", {call.path: sc.put_str(backing)}, False, False)

    def _refuse(self, ev, call: Call, err: int) -> tuple:
        """Fail a call on a /cvmfs path with `err`; hand any other back to the kernel."""
        t = self._resolve(ev, call)
        outside = self._outside(ev, call, t)
        return outside if outside is not None else skip(-err)

    def h_unsupported(self, ev, call: Call) -> tuple:
        return self._refuse(ev, call, errno.EOPNOTSUPP)

    # -- writes --------------------------------------------------------------------------------------
    # /cvmfs is a read-only mount: every write is refused, with the errno the kernel gives
    # for the first check that fails (fs/namei.c, fs/open.c): walk errors, then the last
    # component's kind ("." and ".."), then existence, then EROFS (mnt_want_write).

    def h_write_existing(self, ev, call: Call) -> tuple:
        if ev.empty_path:  # the dirfd itself (AT_EMPTY_PATH, futimens)
            return self.h_write_fd(ev, call)
        t = self._resolve(ev, call)
        outside = self._outside(ev, call, t)
        if outside is not None:
            return outside
        if call.name == "truncate":  # vfs_truncate: the type before the mount
            if t.node.is_dir:
                return skip(-errno.EISDIR)
            if not t.node.is_regular:
                return skip(-errno.EINVAL)
        return skip(-errno.EROFS)

    def h_write_create(self, ev, call: Call) -> tuple:
        t = self._resolve_last(ev, call)
        if t is None:
            return RESUME
        if t.virtual:  # an existing name, or "." / ".." (filename_create: EEXIST)
            return skip(-errno.EEXIST)
        if t.err:
            if t.err == errno.ENOENT and t.missing_last:
                # "name/" asks for a directory: only mkdir may create one
                if t.trailing and not call.name.startswith("mkdir"):
                    return skip(-errno.ENOENT)
                return skip(-errno.EROFS)
            return skip(-t.err)
        return self._host(ev, call, t)

    def h_write_remove(self, ev, call: Call) -> tuple:
        t = self._resolve_last(ev, call)
        if t is None:
            return RESUME
        if t.virtual or (t.err == errno.ENOENT and t.missing_last):
            if t.last != LAST_NORM:
                rmdir = call.name == "rmdir" or (
                    call.name == "unlinkat" and ev.args[2] & AT_REMOVEDIR
                )
                if not rmdir:
                    return skip(-errno.EISDIR)
                return skip(-(errno.EINVAL if t.last == LAST_DOT else errno.ENOTEMPTY))
            return skip(-errno.EROFS)  # the kernel checks the mount before the name
        if t.err:
            return skip(-t.err)
        return self._host(ev, call, t)

    def _two(self, ev, call: Call, follow_old: bool) -> tuple[Target | None, Target | None]:
        if ev.empty_path:  # linkat(fd, "", ..., AT_EMPTY_PATH): the descriptor itself
            t1 = self._fd_target(ev, self._base(ev), int(ev.args[call.dirfd]))
        elif ev.path_err:
            t1 = None
        elif call.handler == "write_rename":  # both names are the last of a parent walk
            t1 = self._walk_to_last(ev, self._path(ev), self._base(ev))
        else:
            t1 = self._resolve_path(ev, self._path(ev), self._base(ev), follow_old)
        p2 = _s(ev.path2, ev.path2_len)
        b2 = _s(ev.base2, ev.base2_len) if ev.base2_len else None
        t2 = None if ev.path2_err else self._walk_to_last(ev, p2, b2)
        return t1, t2

    @staticmethod
    def _in_cvmfs(t: Target | None) -> bool:
        """Whether the parent of the path's last component is in /cvmfs (its mount)."""
        return t is not None and (t.virtual or (t.missing_last and t.parent is not None))

    def h_write_rename(self, ev, call: Call) -> tuple:
        t1, t2 = self._two(ev, call, False)
        v1, v2 = self._in_cvmfs(t1), self._in_cvmfs(t2)
        if not (v1 or v2):
            return self._rewrite_two(ev, call, t1, t2)
        for t in (t1, t2):  # both parents are walked first
            if t is not None and t.err and not t.missing_last:
                return skip(-t.err)
        if v1 != v2:
            return skip(-errno.EXDEV)
        if any(t is not None and t.last != LAST_NORM for t in (t1, t2)):
            return skip(-errno.EBUSY)
        return skip(-errno.EROFS)

    def h_write_link(self, ev, call: Call) -> tuple:
        follow = bool(call.flags >= 0 and ev.args[call.flags] & AT_SYMLINK_FOLLOW)
        t1, t2 = self._two(ev, call, follow)
        v1, v2 = self._in_cvmfs(t1), self._in_cvmfs(t2)
        if not (v1 or v2):
            return self._rewrite_two(ev, call, t1, t2)
        # do_linkat: the old name is looked up, the new one created (filename_create:
        # its walk, ".", "..", an existing name, then the mount), and only then are the
        # two mounts compared
        if t1 is not None and t1.err:
            return skip(-t1.err)
        if t2 is None:
            return RESUME
        if t2.virtual:
            return skip(-errno.EEXIST)
        if t2.err and not t2.missing_last:
            return skip(-t2.err)
        if t2.missing_last and t2.trailing:
            return skip(-errno.ENOENT)
        if v2:
            return skip(-errno.EROFS)
        new_host = t2.host or ""
        if os.path.lexists(new_host):
            return skip(-errno.EEXIST)
        if not os.path.isdir(os.path.dirname(new_host.rstrip("/")) or "/"):
            return skip(-errno.ENOENT)
        return skip(-errno.EXDEV)

    def h_ioctl_setattr(self, ev, call: Call) -> tuple:
        """chattr and the like on a descriptor of ours: what a FUSE mount without ioctl
        support answers."""
        host = self._base(ev)
        if host and (self.view.anchor_to_vpath(host) or self.view.is_cache_path(host)):
            return skip(-errno.ENOTTY)
        return RESUME

    def h_bind(self, ev, call: Call) -> tuple:
        """A Unix socket bound at a path: made like any name (mknod), so refused in /cvmfs
        (an existing name: EADDRINUSE); through a symlink leading out, bound there."""
        t = self._resolve(ev, call, False)
        if t is None:
            return RESUME
        if t.virtual:
            return skip(-errno.EADDRINUSE)
        if t.err:
            if t.err == errno.ENOENT and t.missing_last:
                return skip(-errno.EROFS)
            return skip(-t.err)
        if not t.via_cvmfs:
            return RESUME
        path = os.fsencode(t.host)
        if len(path) > 107:
            return skip(-errno.ENAMETOOLONG)
        addr = struct.pack("<H", 1) + path + b"\0"
        sc = Scratch(self.core, ev.tid, ev.sp)
        return ("args", {call.path: sc.put(addr), call.size: len(addr)}, False, False)

    def h_mount(self, ev, call: Call) -> tuple:
        """mount(2) of a /cvmfs path, or onto one: not something a FUSE-less /cvmfs can
        give (a bind mount of an anchor would be writable)."""
        t1, t2 = self._two(ev, call, True)
        if self._in_cvmfs(t1) or self._in_cvmfs(t2):
            return skip(-errno.EOPNOTSUPP)
        return self._rewrite_two(ev, call, t1, t2)

    def _rewrite_two(self, ev, call: Call, t1, t2) -> tuple:
        values = {}
        sc = Scratch(self.core, ev.tid, ev.sp)
        for t, arg in ((t1, call.path), (t2, call.path2)):
            if t is not None and t.host is not None and t.via_cvmfs:
                values[arg] = sc.put_str(t.host)
        return ("args", values, False, False) if values else RESUME

    def h_write_fd(self, ev, call: Call) -> tuple:
        host = self._base(ev)
        if host and (self.view.anchor_to_vpath(host) or self.view.is_cache_path(host)):
            return skip(-errno.EROFS)
        return RESUME


class Siblings:
    """Answers for a whole directory at once, as FUSE's readdirplus does: once a program
    has listed a directory and asked Python about a few of its entries (`ls -l`, `find
    -printf`), C is taught the lstat and getxattr answers of every entry, in one call,
    so the rest is answered in C. Only for directories whose paths the program spells
    as we do (the keys are the entries' /cvmfs paths)."""

    AFTER = 4  # entries asked about before the rest is taught
    CHUNK = 2048  # entries per call to C
    LIMIT = 4096  # directories remembered as listed

    def __init__(self):
        self._listed: dict = {}  # directory vpath -> entries asked about (-1: taught)

    def listed(self, vpath: VPath) -> None:
        if len(self._listed) >= self.LIMIT:
            self._listed.clear()
        self._listed.setdefault(vpath, 0)

    def seen(self, h: Handlers, t: Target, path: str, rev: str | None) -> None:
        node = t.node
        parent = node.vpath.parent()
        n = self._listed.get(parent)
        if n is None or n < 0 or path != node.vpath.logical or node.repo is None:
            return
        self._listed[parent] = n + 1
        if n + 1 < self.AFTER:
            return
        self._listed[parent] = -1
        view = h.view
        dir_node = view.lookup(parent)
        if dir_node is None or dir_node.repo is None:
            return
        ns = dir_node.repo.ns
        records: list[bytes] = []
        for e in ns.listdir(ns.dir_entry(dir_node.entry)):
            child = view.node_of(parent.child(e.name), e, dir_node.repo)
            if child.variant:
                continue  # depends on the environment: Python's every time
            key = os.fsencode(child.vpath.logical)
            records.append(h._answer(child, key, False))
            records.append(xattrs_record(False, key, h.xattr_blob(child)))
            if len(records) >= 2 * self.CHUNK:
                h.memo.teach(rev, b"".join(records))
                records.clear()
        if records:
            h.memo.teach(rev, b"".join(records))


_STD = ("stdin", "stdout", "stderr")


def _may_name_proc(path: str, base: str | None) -> bool:
    """Whether a path may go through a /proc magic link: a component "proc" (or "fd",
    "stdin"... of /dev) anywhere, or a base there (the same test as C's, examine.c
    path_may_name_proc, which decides what reaches Python)."""
    if not path.startswith("/") and base and (base.startswith(("/proc", "/dev")) or base == "/"):
        return True
    comps = set(path.split("/"))
    return "proc" in comps or ("dev" in comps and bool(comps & {"fd", *_STD}))


def _lexical_parts(path: str) -> list[str]:
    """The components of an absolute path, "." dropped and ".." applied lexically."""
    out: list[str] = []
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if out:
                out.pop()
            continue
        out.append(c)
    return out


def _s(buf, n: int) -> str:
    return os.fsdecode(ffi.buffer(buf, n)[:]) if n else ""


def _read_cstr(core: Core, tid: int, addr: int, limit: int = 4096) -> str:
    out = b""
    while len(out) < limit:
        piece = core.read(tid, addr + len(out), 256 - ((addr + len(out)) & 255))
        if not piece:
            break
        if b"\0" in piece:
            out += piece.split(b"\0", 1)[0]
            break
        out += piece
    return os.fsdecode(out)


def _host_statfs(core: Core, tid: int, path: str, addr: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(120)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return -ctypes.get_errno()
    return 0 if core.write(tid, addr, buf.raw) else -errno.EFAULT


def _may_need_us(path: str) -> bool:
    """Whether exec of a host file involves /cvmfs (a #! or ELF interpreter there)."""
    try:
        head = ex.read_head(path)
    except OSError:
        return False
    if head.startswith(b"#!"):
        return MOUNT.encode() in head.split(b"\n", 1)[0]
    if head[:4] == b"\x7fELF":
        try:
            interp = ex.elf_interpreter(path)
        except OSError:
            return False
        return interp is not None and interp[0].startswith(MOUNT + "/")
    return False
