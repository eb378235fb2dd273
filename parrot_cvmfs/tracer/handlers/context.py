"""The per-call context the handlers share, and the actions they return.

A handler returns what to do with the call (delivery.py carries it out):
- RESUME: run it unchanged (it does not concern /cvmfs after all);
- ("skip", result): do not run it; the program sees `result`;
- ("open", path, flags, mode, vpath, how, backing): the program's open of `path`
  instead (ptrace: the path argument is pointed at it, two stops; notification: we open
  it and install the descriptor, one round trip); `backing`: a file of our cache,
  opened following no link below the cache;
- ("host", path): the program's path left /cvmfs again; the call happens on `path`
  (ptrace: argument rewritten; notification: done here on the program's behalf);
- ("args", {arg: value}, report_exit, is_exec): ptrace only, arguments replaced (exec,
  chdir), the original registers put back at the exit; a value is the register's (int)
  or what it is to point at: a string (str), bytes, or an array of strings (list,
  argv), which delivery writes below the program's stack pointer;
- ("exit", hook): ptrace only, the call runs as it is and `hook(result)` sees its exit
  (it may change what the call wrote in the program's memory).
"""

from __future__ import annotations

import errno

from ..core import Core, Event
from ..memo import Memo
from ..paths import Target, resolve, vpath_of_logical
from ..syscalls import Call
from ..vfs import CvmfsView, Node
from .processes import Processes
from .procfs import may_name_proc, proc_link, resolve_proc

TYPE_CHECKING = False  # not typing's: the start path stays small
if TYPE_CHECKING:
    from ..guest import Guest  # only with --root or binds (supervisor.py)

RESUME = ("resume",)
R_OK, X_OK = 4, 1  # access(2) modes
_UNSET = object()  # the key not computed yet


def skip(result: int) -> tuple:
    """The action: the call is not run, the program sees `result`."""
    return ("skip", result)


def follow_of(call: Call, args: tuple) -> bool:
    """Whether the call follows its last symlink: the row's default, unless its flags say."""
    follow = call.follow
    if call.flags >= 0:
        flags = args[call.flags]
        if call.nofollow and flags & call.nofollow:
            follow = False
        if call.follow_flag and flags & call.follow_flag:
            follow = True
    return follow


def in_cvmfs(t: Target | None) -> bool:
    """Whether the parent of the path's last component is in /cvmfs (its mount), or
    in another read-only mount of a guest namespace (the root)."""
    return t is not None and (t.virtual or t.readonly or (t.missing_last and t.parent is not None))


def exists_readonly(t: Target) -> bool:
    """Whether the path names an existing entry of a read-only mount."""
    return t.virtual or (t.readonly and not t.err)


class Context(Event):
    """One object for the supervisor's life, refilled for each call (dispatch.py): the
    call as decoded by the core, what follows from it, and the state the handlers use."""

    __slots__ = (
        "core",
        "view",
        "procs",
        "memo",
        "siblings",
        "arch",
        "guest",
        "call",
        "follow",
        "_key",
    )

    def __init__(
        self,
        core: Core,
        view: CvmfsView,
        procs: Processes,
        memo: Memo,
        siblings,
        guest: Guest | None = None,
    ):
        # siblings: answers.Siblings (answers.py builds on this module)
        self.core, self.view, self.procs = core, view, procs
        self.memo, self.siblings, self.arch = memo, siblings, core.arch
        self.guest = guest  # the job's root and binds (guest.py), None: the host's tree

    # HOT PATH: runs once for every call Python answers
    def load(self, call: Call) -> None:
        """After Core.decode: what follows from the call's row and arguments."""
        self.call = call
        self.follow = follow_of(call, self.args)
        self._key = _UNSET

    def key(self) -> str | None:
        """The answer table's key for the call's path, as C composed it (examine.c
        event_key): the path itself when absolute; for a path relative to a directory
        anchor (cwd or dirfd in /cvmfs), its absolute /cvmfs spelling, or in a guest
        namespace a key of its own (the anchor and the path); None otherwise."""
        k = self._key
        if k is _UNSET:
            k = self._key = self.core.event_key()
        return k

    # -- where the call's paths lead ----------------------------------------------------------

    def names_proc(self) -> bool:
        """Whether the call's path may go through a /proc magic link."""
        return bool(self.path) and may_name_proc(self.path, self.base)

    def resolve(self, follow: bool | None = None, **kw) -> Target | None:
        """The target of the call's path; None when the kernel should handle it as is."""
        if self.path_err:
            return None
        if self.empty_path:  # AT_EMPTY_PATH: the dirfd itself
            return self.fd_target(self.base)
        f = self.follow if follow is None else follow
        if self.guest is not None:
            return self.guest.resolve(self.tid, self.path, self.base, f)
        if self.names_proc():
            t = resolve_proc(self.view, self.procs, self.tid, f, self.path, self.base, **kw)
            if t is not None:
                return t
        return resolve(self.view, self.path, self.base, f, **kw)

    def resolve_last(self) -> Target | None:
        """For calls that create or remove the last component (mkdir, unlink, rename,
        link's new name, open with O_CREAT): the walk to it, with the last component
        itself neither followed nor required to be a directory by a trailing "/" (the
        kernel's filename_parentat); `trailing` says whether there was one."""
        if self.path_err:
            return None
        path = self.path
        stripped = path.rstrip("/")
        if not stripped or stripped == path or self.empty_path:
            return self.resolve(False)
        t = self.resolve_path(stripped, self.base, False)
        t.trailing = True
        return t

    def walk_to_last(self, path: str, base: str | None) -> Target:
        """resolve_last for any path of the call."""
        stripped = path.rstrip("/")
        t = self.resolve_path(stripped or path, base, False)
        t.trailing = bool(stripped) and stripped != path
        return t

    def resolve_path(self, path: str, base: str | None, follow: bool) -> Target:
        """`resolve`, through /proc magic links as the kernel goes (for a call's second
        path; `resolve` for its first)."""
        if self.guest is not None:
            return self.guest.resolve(self.tid, path, base, follow)
        if path and may_name_proc(path, base):
            t = resolve_proc(self.view, self.procs, self.tid, follow, path, base)
            if t is not None:
                return t
        return resolve(self.view, path, base, follow)

    def proc_target(self) -> tuple[str, str | None] | None:
        """For a /proc magic link itself that shows a cache file or anchor: (kernel link,
        /cvmfs path)."""
        p = proc_link(self.view, self.procs, self.tid, self.path, self.base)
        if p is None or p[1] is None or p[2]:
            return None
        return p[0], p[1]

    def fd_target(self, host: str | None, fd: int | None = None) -> Target | None:
        """The /cvmfs entry behind a descriptor whose target is `host`, if any."""
        if not host:
            return None
        view = self.view
        vpath = view.anchor_to_vpath(host)
        if vpath is None and fd is not None:
            hint = self.procs.fds.get(self.procs.tgid(self.tid), {}).get(fd)
            if hint is not None and hint[0] == host:
                vpath = hint[1]
        if vpath is None:
            vpath = view.vpath_of_host(host)
        if vpath is None:
            return None
        node = view.lookup(vpath)
        if node is None:
            return None
        return Target(vpath=vpath, node=node, via_cvmfs=True)

    def logical_node(self, logical: str) -> Node | None:
        v = vpath_of_logical(logical)
        return self.view.lookup(v) if v is not None else None

    # -- the common answers -----------------------------------------------------------------

    def outside(self, t: Target | None) -> tuple | None:
        """The action for a call whose target is not a /cvmfs entry (the kernel's to do,
        a path handed back, or an error); None when it is one."""
        if t is None:
            return RESUME
        if t.err:
            return skip(-t.err)
        if not t.virtual:
            return self.host(t)
        return None

    def host(self, t: Target) -> tuple:
        """A path that left /cvmfs again: the kernel resolves the rest."""
        return ("host", t.host) if t.via_cvmfs else RESUME

    def can(self, node: Node, want: int) -> int:
        """0 or the errno of access(2) with mode `want` (R_OK|W_OK|X_OK)."""
        return self.view.access_error(node, want)

    def written(self, addr: int, data: bytes, result: int) -> tuple:
        """Skip the call with `result` once `data` is in the program's memory at `addr`."""
        if not self.core.write(self.tid, addr, data):
            return skip(-errno.EFAULT)
        return skip(result)
