"""Path resolution across the host and the virtual /cvmfs tree. Pure code: the
namespace it walks is an interface (see `Namespace`), so it is tested without
ptrace or repositories.

A path starts at the host root (absolute), or at a base directory (the cwd or
a dirfd, as the kernel reports it). Host components are joined lexically;
reaching `/cvmfs` enters the virtual tree, where every component is looked up
in the catalogs and symlinks are expanded here (chains, loops -> ELOOP,
absolute targets restart at the host root, relative ones climb with `..`
from a repository root to `/cvmfs` and from `/cvmfs` to `/`). A walk that
leaves the virtual tree again yields a host path for the kernel.
"""

from __future__ import annotations

import errno
from collections import namedtuple

MAX_SYMLINKS = 40
MOUNT = "/cvmfs"


class VPath(namedtuple("VPath", "repo inner", defaults=("",))):
    """A place in the virtual tree: /cvmfs itself (repo None), or a repository path."""

    __slots__ = ()

    repo: str | None
    inner: str  # "" for the repository root, else "/a/b"

    @property
    def logical(self) -> str:
        if self.repo is None:
            return MOUNT
        return f"{MOUNT}/{self.repo}{self.inner}"

    def child(self, name: str) -> VPath:
        if self.repo is None:
            return VPath(name, "")
        return VPath(self.repo, f"{self.inner}/{name}")

    def parent(self) -> VPath | None:
        """The parent in the virtual tree; None for /cvmfs (whose parent is the host /)."""
        if self.repo is None:
            return None
        if not self.inner:
            return VPath(None)
        return VPath(self.repo, self.inner[: self.inner.rfind("/")])


ROOT = VPath(None)


def vpath_of_logical(path: str) -> VPath | None:
    """'/cvmfs/repo/a' -> VPath('repo', '/a'); canonical paths only."""
    if path == MOUNT:
        return ROOT
    if not path.startswith(MOUNT + "/"):
        return None
    rest = path[len(MOUNT) + 1 :]
    repo, _, inner = rest.partition("/")
    return VPath(repo, "/" + inner if inner else "")


TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from typing import Protocol

    class Node(Protocol):
        is_dir: bool
        is_symlink: bool

        @property
        def target(self) -> str: ...

    class Namespace(Protocol):
        def lookup(self, vpath: VPath) -> Node | None: ...

        def anchor_to_vpath(self, host_path: str) -> VPath | None: ...

        def may_search(self, node: Node) -> bool:
            """Whether the caller may look names up in this directory (its x bit)."""
            ...


# What the last component of a path was (the kernel's LAST_NORM, LAST_DOT, LAST_DOTDOT):
# calls that create or remove a name refuse "." and ".." before anything else.
LAST_NORM, LAST_DOT, LAST_DOTDOT = 0, 1, 2


class Target:
    """The result of a resolution.

    - `err` set: the call fails with it. `missing_last` tells that only the final
      component is missing, in the virtual directory `parent`.
    - `vpath`/`node` set: the path names something in the virtual tree.
    - else `host`: a host path; `via_cvmfs` says whether the walk went through the
      virtual tree (then the program's argument must be replaced by `host`).
    - `mixed`: the walk went through a variant symlink or several repositories.
    - `last`: LAST_DOT or LAST_DOTDOT if the path as given ended in "." or "..";
      `trailing`: it ended in "/"; `proc`: it went through a /proc magic link;
      `final_link`: a symlink was followed at the last component (the answer differs
      from the one without following); `readonly`, `guest`: see guest.py."""

    __slots__ = (
        "err",
        "vpath",
        "node",
        "host",
        "via_cvmfs",
        "missing_last",
        "parent",
        "symlinks",
        "mixed",
        "last",
        "trailing",
        "proc",
        "final_link",
        "readonly",
        "guest",
        "kept_as",
    )

    def __init__(
        self,
        err: int = 0,
        vpath: VPath | None = None,
        node: Node | None = None,
        host: str | None = None,
        via_cvmfs: bool = False,
        missing_last: bool = False,
        parent: VPath | None = None,
        symlinks: int = 0,
        mixed: bool = False,
    ):
        self.err = err
        self.vpath = vpath
        self.node = node
        self.host = host
        self.via_cvmfs = via_cvmfs
        self.missing_last = missing_last
        self.parent = parent
        self.symlinks = symlinks
        self.mixed = mixed
        self.last = LAST_NORM
        self.trailing = False
        self.proc = False  # reached through a /proc magic link (the caller's state)
        self.final_link = False  # a symlink was followed at the last component
        # in a guest namespace (guest.py): the host path lies in a read-only mount (the
        # root; for a missing last component, its parent does), and the path's
        # canonical guest spelling
        self.readonly = False
        self.guest: str | None = None
        self.kept_as: str | None = None  # the memo a guest path's answer is kept in

    @property
    def virtual(self) -> bool:
        return self.vpath is not None


def _join(host: str, name: str) -> str:
    if name == "..":
        if host == "/":
            return "/"
        return host[: host.rstrip("/").rfind("/")] or "/"
    return host + name if host.endswith("/") else f"{host}/{name}"


def resolve(
    ns: Namespace,
    path: str,
    base: str | None,
    follow: bool,
    *,
    no_symlinks: bool = False,
) -> Target:
    """Resolve `path` (relative ones against `base`). `follow`: expand a final symlink.
    `no_symlinks` (RESOLVE_NO_SYMLINKS) fails with ELOOP at any virtual symlink."""
    final_link = [False]
    t = _walk(ns, path, base, follow, no_symlinks, final_link)
    t.final_link = final_link[0]
    comps = path.rstrip("/").rsplit("/", 1)
    tail = comps[-1] if path.strip("/") else ""
    t.last = LAST_DOT if tail == "." else LAST_DOTDOT if tail == ".." else LAST_NORM
    t.trailing = path.endswith("/") and path.strip("/") != ""
    return t


def _walk(
    ns: Namespace, path: str, base: str | None, follow: bool, no_symlinks: bool, final_link: list
) -> Target:
    if path == "":
        return Target(err=errno.ENOENT)
    if len(path) > 4095:
        return Target(err=errno.ENAMETOOLONG)
    trailing = path.endswith("/") and path.strip("/") != ""
    if trailing:
        follow = True
    # "." stays a component: like "..", it requires what precedes it to be a directory
    # one may search, and it makes that component a non-final one (a symlink before it
    # is followed), as in the kernel's walk
    comps = [c for c in path.split("/") if c]
    if path.startswith("/"):
        host: str | None = "/"
        vpath: VPath | None = None
        node = None
    else:
        vpath = ns.anchor_to_vpath(base) if base else None
        if vpath is not None:
            host, node = None, ns.lookup(vpath)
            if node is None:
                return Target(err=errno.ENOENT)
        else:
            host, node = base or "/", None
    via = vpath is not None
    todo = list(reversed(comps))
    links = 0
    repo0 = vpath.repo if vpath is not None else None
    mixed = False
    while todo:
        c = todo.pop()
        last = not todo
        if vpath is None:
            if c == ".":
                if last:  # the kernel checks that the host path is a directory
                    host = host + "." if host.endswith("/") else host + "/."
                continue
            if host == "/" and c == MOUNT[1:]:
                vpath, node, host, via = ROOT, ns.lookup(ROOT), None, True
            else:
                host = _join(host, c)
            continue
        if not node.is_dir:
            return Target(err=errno.ENOTDIR, symlinks=links, mixed=mixed)
        if not ns.may_search(node):  # as the kernel: x on every directory walked, "." too
            return Target(err=errno.EACCES, symlinks=links, mixed=mixed)
        if c == ".":
            continue
        if c == "..":
            up = vpath.parent()
            if up is None:
                vpath, node, host = None, None, "/"
            else:
                vpath, node = up, ns.lookup(up)
            continue
        if len(c) > 255:
            return Target(err=errno.ENAMETOOLONG, symlinks=links, mixed=mixed)
        child_v = vpath.child(c)
        if child_v.repo != repo0:
            mixed = mixed or repo0 is not None
            repo0 = child_v.repo
        child = ns.lookup(child_v)
        if child is None:
            return Target(
                err=errno.ENOENT, missing_last=last, parent=vpath, symlinks=links, mixed=mixed
            )
        if child.is_symlink and (not last or follow):
            mixed = mixed or getattr(child, "variant", False)
            links += 1
            if last:  # the path's last component is (or leads through) a symlink
                final_link[0] = True
            if links > MAX_SYMLINKS or no_symlinks:
                return Target(err=errno.ELOOP, symlinks=links, mixed=mixed)
            target = child.target
            if not target:
                return Target(err=errno.ENOENT, symlinks=links, mixed=mixed)
            if target.startswith("/"):
                vpath, node, host = None, None, "/"
            if target.endswith("/") and last:
                follow = True
            todo.extend(reversed([t for t in target.split("/") if t]))
            continue
        vpath, node = child_v, child
    if vpath is None:
        if trailing and not host.endswith("/"):
            host += "/"
        return Target(host=host, via_cvmfs=via, symlinks=links, mixed=mixed)
    if trailing and not node.is_dir:
        return Target(err=errno.ENOTDIR, symlinks=links, mixed=mixed)
    return Target(vpath=vpath, node=node, via_cvmfs=True, symlinks=links, mixed=mixed)
