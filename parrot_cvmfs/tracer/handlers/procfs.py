"""/proc/PID/{exe,cwd,root,fd/N} (the same under task/TID), /dev/fd/N and /dev/std*:
magic links the kernel follows to where they lead, which for a program under us is an
anchor or a cache file standing for a /cvmfs path. Resolved here as the kernel would,
from the /cvmfs path they stand for."""

from __future__ import annotations

import errno
import os

from ...client.lookup import lexical_parts
from ..paths import Target, resolve, vpath_of_logical
from ..vfs import CvmfsView
from .processes import Processes

_STD = ("stdin", "stdout", "stderr")


def may_name_proc(path: str, base: str | None) -> bool:
    """Whether a path may go through a /proc magic link: a component "proc" (or "fd",
    "stdin"... of /dev) anywhere, or a base there (the same test as C's, examine.c
    path_may_name_proc, which decides what reaches Python)."""
    if not path.startswith("/") and base and (base.startswith(("/proc", "/dev")) or base == "/"):
        return True
    comps = set(path.split("/"))
    return "proc" in comps or ("dev" in comps and bool(comps & {"fd", *_STD}))


def proc_link(
    view: CvmfsView, procs: Processes, tid: int, path: str, base: str | None
) -> tuple[str, str | None, str] | None:
    """For a path through a /proc magic link, however it is spelled ("//proc",
    "proc/self" from "/", "../../proc"), as thread `tid` sees it: (the kernel's link,
    the /cvmfs path it stands for or None, the rest of the path after the link)."""
    parts = lexical_parts(path if path.startswith("/") else f"{base or '/'}/{path}")
    if parts[:2] == ["dev", "fd"]:
        parts = ["proc", "self", "fd", *parts[2:]]
    elif parts[:1] == ["dev"] and len(parts) >= 2 and parts[1] in _STD:
        parts = ["proc", "self", "fd", str(_STD.index(parts[1])), *parts[2:]]
    if len(parts) < 3 or parts[0] != "proc":
        return None
    who, rest = parts[1], parts[2:]
    if who == "self":
        pid = procs.tgid(tid)
    elif who == "thread-self":
        pid = tid
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
        logical = procs.exe.get(procs.tgid(pid))
    elif what.startswith("fd/"):
        hint = procs.fds.get(procs.tgid(pid), {}).get(int(what[3:]))
        if hint is not None and hint[0] == link:
            logical = hint[1].logical
    if logical is None:
        vpath = view.vpath_of_host(link)
        logical = vpath.logical if vpath is not None else None
    return link, logical, "/".join(rest)


def resolve_proc(
    view: CvmfsView,
    procs: Processes,
    tid: int,
    follow: bool,
    path: str,
    base: str | None,
    **kw,
) -> Target | None:
    """A path through a /proc magic link, resolved from where the link leads (the
    kernel jumps there): into /cvmfs through an anchor or a file we served, or a
    host path that may enter /cvmfs. None if it is not such a path."""
    p = proc_link(view, procs, tid, path, base)
    if p is None:
        return None
    link, logical, rest = p
    if logical is not None and not rest:
        vpath = vpath_of_logical(logical)
        node = view.lookup(vpath) if vpath is not None else None
        t = Target(vpath=vpath, node=node, via_cvmfs=True) if node else Target(err=errno.ENOENT)
    else:
        start = logical if logical is not None else link
        if not start.startswith("/"):  # "pipe:[123]", "socket:[4]": not a directory
            return Target(err=errno.ENOTDIR) if rest else None
        t = resolve(view, f"{start}/{rest}" if rest else start, None, follow, **kw)
    t.proc = True  # depends on the process's state: never kept in the answer table
    return t
