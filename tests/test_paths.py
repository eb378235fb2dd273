"""The path resolver, over an in-memory namespace (no ptrace, no repositories)."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest

from parrot_cvmfs.tracer.paths import ROOT, VPath, resolve, vpath_of_logical

ANCHORS = "/var/cache/anchors"


@dataclass
class FakeNode:
    is_dir: bool = False
    is_symlink: bool = False
    target: str = ""
    searchable: bool = True


class FakeNamespace:
    """/cvmfs/repo.org with a small tree; other repositories do not exist."""

    def __init__(self):
        d, f = FakeNode(is_dir=True), FakeNode()
        link = lambda t: FakeNode(is_symlink=True, target=t)  # noqa: E731
        self.tree = {
            "": d,
            "/a": d,
            "/a/b": d,
            "/a/b/file": f,
            "/top": f,
            "/a/rel": link("b/file"),
            "/a/up": link("../top"),
            "/a/chain": link("rel"),
            "/a/dirlink": link("b"),
            "/a/abs-in": link("/cvmfs/repo.org/a/b"),
            "/a/abs-out": link("/etc/hosts"),
            "/a/out-rel": link("../../../etc"),
            "/a/loop1": link("loop2"),
            "/a/loop2": link("loop1"),
            "/a/dangling": link("nope"),
            "/a/other-repo": link("/cvmfs/other.org/x"),
            "/a/empty": link(""),
            "/locked": FakeNode(is_dir=True, searchable=False),
            "/locked/inner": d,
            "/a/to-locked": link("../locked/inner"),
        }

    def lookup(self, v: VPath):
        if v.repo is None:
            return FakeNode(is_dir=True)
        if v.repo != "repo.org":
            return None
        return self.tree.get(v.inner)

    def may_search(self, node) -> bool:
        return node.searchable

    def anchor_to_vpath(self, host):
        if host == ANCHORS:
            return ROOT
        if host and host.startswith(ANCHORS + "/"):
            repo, _, inner = host[len(ANCHORS) + 1 :].partition("/")
            return VPath(repo, "/" + inner if inner else "")
        return None


NS = FakeNamespace()


def r(path, base=None, follow=True, **kw):
    return resolve(NS, path, base, follow, **kw)


def test_host_paths_are_left_alone():
    t = r("/usr/bin/ls")
    assert t.host == "/usr/bin/ls" and not t.via_cvmfs and not t.virtual
    t = r("relative/x", "/home/u")
    assert not t.via_cvmfs
    assert r("").err == errno.ENOENT


def test_virtual_entries_and_errors():
    assert r("/cvmfs").vpath == ROOT
    assert r("/cvmfs/repo.org").vpath == VPath("repo.org", "")
    assert r("/cvmfs/repo.org/a/b/file").vpath == VPath("repo.org", "/a/b/file")
    assert r("/cvmfs//repo.org/./a//b/").vpath == VPath("repo.org", "/a/b")
    t = r("/cvmfs/repo.org/a/b/nope")
    assert t.err == errno.ENOENT and t.missing_last and t.parent == VPath("repo.org", "/a/b")
    t = r("/cvmfs/repo.org/a/nope/x")
    assert t.err == errno.ENOENT and not t.missing_last
    assert r("/cvmfs/repo.org/top/x").err == errno.ENOTDIR
    assert r("/cvmfs/repo.org/top/").err == errno.ENOTDIR
    assert r("/cvmfs/unknown.org").err == errno.ENOENT
    assert r("/cvmfs/repo.org/" + "x" * 256).err == errno.ENAMETOOLONG


def test_symlinks_inside():
    assert r("/cvmfs/repo.org/a/rel").vpath == VPath("repo.org", "/a/b/file")
    assert r("/cvmfs/repo.org/a/rel", follow=False).vpath == VPath("repo.org", "/a/rel")
    assert r("/cvmfs/repo.org/a/chain").vpath == VPath("repo.org", "/a/b/file")
    assert r("/cvmfs/repo.org/a/up").vpath == VPath("repo.org", "/top")
    assert r("/cvmfs/repo.org/a/dirlink/file", follow=False).vpath == VPath("repo.org", "/a/b/file")
    assert r("/cvmfs/repo.org/a/dirlink/", follow=False).vpath == VPath("repo.org", "/a/b")
    assert r("/cvmfs/repo.org/a/abs-in/file").vpath == VPath("repo.org", "/a/b/file")
    t = r("/cvmfs/repo.org/a/loop1")
    assert t.err == errno.ELOOP
    assert r("/cvmfs/repo.org/a/loop1", follow=False).vpath.inner == "/a/loop1"
    assert r("/cvmfs/repo.org/a/dangling").err == errno.ENOENT
    assert r("/cvmfs/repo.org/a/other-repo").err == errno.ENOENT
    assert r("/cvmfs/repo.org/a/empty").err == errno.ENOENT
    assert r("/cvmfs/repo.org/a/rel", no_symlinks=True).err == errno.ELOOP


def test_leaving_the_virtual_tree():
    t = r("/cvmfs/repo.org/a/abs-out")
    assert t.host == "/etc/hosts" and t.via_cvmfs
    t = r("/cvmfs/repo.org/a/out-rel/passwd")
    assert t.host == "/etc/passwd" and t.via_cvmfs
    t = r("/cvmfs/repo.org/../../etc")
    assert t.host == "/etc" and t.via_cvmfs
    assert r("/cvmfs/..").host == "/"
    assert r("/cvmfs/repo.org/..").vpath == ROOT
    t = r("/usr/../cvmfs/repo.org/top")
    assert t.vpath == VPath("repo.org", "/top")


def test_relative_to_anchor_directories():
    base = ANCHORS + "/repo.org/a"
    assert r("b/file", base).vpath == VPath("repo.org", "/a/b/file")
    assert r("../top", base).vpath == VPath("repo.org", "/top")
    assert r("../../repo.org/a", base).vpath == VPath("repo.org", "/a")
    assert r("../../..", base).host == "/"
    assert r("repo.org/top", ANCHORS).vpath == VPath("repo.org", "/top")
    assert r("cvmfs/repo.org", "/").vpath == VPath("repo.org", "")
    assert r("x", ANCHORS + "/repo.org/nonexistent").err == errno.ENOENT


@pytest.mark.parametrize(
    "logical,vpath",
    [
        ("/cvmfs", ROOT),
        ("/cvmfs/r.org", VPath("r.org")),
        ("/cvmfs/r.org/a/b", VPath("r.org", "/a/b")),
        ("/usr", None),
        ("/cvmfsx", None),
    ],
)
def test_vpath_of_logical(logical, vpath):
    assert vpath_of_logical(logical) == vpath
    if vpath is not None:
        assert vpath.logical == logical


def test_search_permission_on_every_directory_walked():
    """As the kernel: x on each directory looked into, through symlinks and `..` too."""
    assert r("/cvmfs/repo.org/locked").virtual  # the directory itself is reachable
    for p in (
        "/cvmfs/repo.org/locked/inner",
        "/cvmfs/repo.org/locked/nope",
        "/cvmfs/repo.org/locked/..",
        "/cvmfs/repo.org/a/to-locked",
    ):
        assert r(p).err == errno.EACCES, p
    assert r("..", f"{ANCHORS}/repo.org/locked").err == errno.EACCES
    assert r("/cvmfs/repo.org/top/..").err == errno.ENOTDIR


def test_dot_components_as_the_kernel_walks_them():
    """`.` requires a directory before it, and makes a symlink before it non-final
    (followed), as the kernel's walk does; `..` likewise."""
    assert r("/cvmfs/repo.org/top/.").err == errno.ENOTDIR
    assert r("/cvmfs/repo.org/top/./").err == errno.ENOTDIR
    assert r("/cvmfs/repo.org/a/b/file/.", follow=False).err == errno.ENOTDIR
    assert r("/cvmfs/repo.org/a/./b/./file").vpath == VPath("repo.org", "/a/b/file")
    # a symlink followed by "." is followed even without `follow`
    t = r("/cvmfs/repo.org/a/dirlink/.", follow=False)
    assert t.vpath == VPath("repo.org", "/a/b")
    assert r("/cvmfs/repo.org/a/rel/.", follow=False).err == errno.ENOTDIR
    assert r("/cvmfs/repo.org/a/dirlink/..", follow=False).vpath == VPath("repo.org", "/a")
    assert r("/cvmfs/repo.org/locked/.").err == errno.EACCES
    assert r(".", f"{ANCHORS}/repo.org/a/b").vpath == VPath("repo.org", "/a/b")
    # a host path that ends in "." keeps it: the kernel checks it is a directory
    assert r("/cvmfs/repo.org/a/abs-out/.").host == "/etc/hosts/."


def test_last_component_kind():
    from parrot_cvmfs.tracer.paths import LAST_DOT, LAST_DOTDOT, LAST_NORM

    assert r("/cvmfs/repo.org/a/.").last == LAST_DOT
    assert r("/cvmfs/repo.org/a/..").last == LAST_DOTDOT
    assert r("/cvmfs/repo.org/a/../").last == LAST_DOTDOT
    assert r(".", f"{ANCHORS}/repo.org/a").last == LAST_DOT
    assert r("/cvmfs/repo.org/a").last == LAST_NORM
    assert r("/cvmfs/repo.org/a/").trailing and not r("/cvmfs/repo.org/a").trailing
