"""The container mount table and guest path resolution (parrot_cvmfs/container/mounts.py),
without ptrace: a real directory tree as the root, binds onto it."""

from __future__ import annotations

import errno
import os

import pytest

from parrot_cvmfs.container.mounts import (
    DIR,
    LINK,
    HostFiles,
    MountError,
    MountTable,
    normalize,
    parse_bind,
    parse_map,
    parse_mountfile,
    resolve,
)

IMAGE = "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/centos:centos7"


def test_bind_syntax_keeps_image_names_whole():
    assert parse_bind("/a") == [("/a", "/a", False)]
    assert parse_bind("/a:/b") == [("/a", "/b", False)]
    assert parse_bind("/a:/b:ro") == [("/a", "/b", True)]
    assert parse_bind("/a:/b,/c") == [("/a", "/b", False), ("/c", "/c", False)]
    assert parse_bind(IMAGE) == [(IMAGE, IMAGE, False)]
    assert parse_bind(f"{IMAGE}:/img") == [(IMAGE, "/img", False)]
    assert parse_bind(f"{IMAGE}:/img:ro") == [(IMAGE, "/img", True)]
    assert parse_bind(IMAGE.replace(":", "\\:") + ":/img") == [(IMAGE, "/img", False)]
    with pytest.raises(MountError):
        parse_bind(":/b")


def test_map_and_mountfile_syntax():
    assert parse_map("/etc/grid-security=/cvmfs/grid.cern.ch/etc/grid-security") == (
        "/cvmfs/grid.cern.ch/etc/grid-security",
        "/etc/grid-security",
    )
    with pytest.raises(MountError):
        parse_map("/etc/x")
    text = "# a comment\n\n/etc/x  /cvmfs/r/x   # trailing\n/opt/y /srv/y\n"
    assert parse_mountfile(text, "m") == [("/cvmfs/r/x", "/etc/x"), ("/srv/y", "/opt/y")]
    with pytest.raises(MountError, match="m line 1"):
        parse_mountfile("/only-one\n", "m")


def test_locate_longest_prefix_last_given_wins_and_reverse():
    t = MountTable("/srv/root")
    t.bind("/host/a", "/a")
    t.bind("/host/deep", "/a/b/c")
    t.bind("/host/a2", "/a")  # the same destination again: this one
    assert t.locate("/usr/lib") == ("/srv/root/usr/lib", t.mount_of("/usr"))
    assert t.locate("/a/x")[0] == "/host/a2/x"
    assert t.locate("/a/b/c/d")[0] == "/host/deep/d"
    assert t.locate("/cvmfs/sft.cern.ch")[0] == "/cvmfs/sft.cern.ch"
    assert t.guest_of("/srv/root/etc") == "/etc"
    assert t.guest_of("/srv/root") == "/"
    assert t.guest_of("/host/deep/d") == "/a/b/c/d"
    assert t.guest_of("/elsewhere") is None
    assert t.glue("/") == ["a", "cvmfs"]
    assert t.glue("/a/b") == ["c"]
    assert t.mount_of("/usr").readonly and not t.mount_of("/a").readonly
    assert t.mount_of("/cvmfs/x").readonly


def test_default_binds(tmp_path):
    t = MountTable(str(tmp_path))
    t.add_defaults("/root", "/work/x", minimal=False, exists=lambda p: True, real=str)
    dsts = {m.dst for m in t.mounts}
    for d in ("/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/root", "/work/x", "/cvmfs"):
        assert d in dsts
    for f in ("/etc/passwd", "/etc/group", "/etc/resolv.conf", "/etc/hosts", "/etc/localtime"):
        assert f in dsts
    m = MountTable(str(tmp_path))
    m.add_defaults("/root", "/work/x", minimal=True, exists=lambda p: True, real=str)
    assert {x.dst for x in m.mounts} == {"/", "/proc", "/dev", "/cvmfs"}
    u = MountTable(str(tmp_path))
    u.add_defaults("/root", "/usr", minimal=False, exists=lambda p: p != "/etc/localtime", real=str)
    assert "/usr" not in {x.dst for x in u.mounts}  # apptainer never binds these
    assert "/etc/localtime" not in {x.dst for x in u.mounts}


def test_default_bind_sources_are_where_host_links_lead(tmp_path):
    """A default source that is a host symlink (/etc/localtime into the zoneinfo) shows
    what it leads to, as a bind mount does; a dangling one is skipped."""
    zone = tmp_path / "zoneinfo/Etc/UTC"
    zone.parent.mkdir(parents=True)
    zone.write_text("TZif")
    links = {"/etc/localtime": str(zone), "/etc/hosts": str(tmp_path / "gone")}

    def real(p):
        return links.get(p, p)

    t = MountTable(str(tmp_path))
    t.add_defaults(None, None, minimal=False, exists=os.path.lexists, real=real)
    assert t.locate("/etc/localtime") == (str(zone), t.mount_of("/etc/localtime"))
    assert t.mount_of("/etc/localtime").dst == "/etc/localtime"
    assert t.mount_of("/etc/hosts").root  # its link leads nowhere: not bound


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    for d in ("usr/lib", "etc", "bin", "empty"):
        (root / d).mkdir(parents=True)
    (root / "usr/lib/libc.so").write_text("guest libc")
    (root / "etc/os").write_text("guest")
    os.symlink("/usr/lib", root / "lib")  # absolute: restarts at the guest root
    os.symlink("../../etc/os", root / "usr/lib/rel")  # climbs to the guest's /etc
    os.symlink("../../../../../../etc/os", root / "bin/up")  # never above the guest root
    os.symlink("/loop2", root / "loop1")
    os.symlink("/loop1", root / "loop2")
    os.symlink("/nowhere/x", root / "dangling")
    host = tmp_path / "host"
    host.mkdir()
    (host / "data").write_text("host data")
    os.symlink("/etc/os", host / "abs")  # a link in a bind resolves in the guest too
    t = MountTable(str(root))
    t.bind(str(host), "/mnt/data/deep")  # /mnt missing in the root: glue
    return t, root, host


def test_guest_resolution(tree):
    t, root, host = tree
    f = HostFiles()

    def loc(path, cwd="/", follow=True):
        r = resolve(t, f, path, cwd, follow)
        return r.err or r.location

    assert loc("/lib/libc.so") == f"{root}/usr/lib/libc.so"
    assert loc("/usr/lib/rel") == f"{root}/etc/os"
    assert loc("/bin/up") == f"{root}/etc/os"
    assert loc("/../../..//etc/./os") == f"{root}/etc/os"
    assert loc("libc.so", cwd="/usr/lib") == f"{root}/usr/lib/libc.so"
    assert loc("../etc/os", cwd="/usr") == f"{root}/etc/os"
    assert loc("/loop1") == errno.ELOOP
    assert loc("/dangling") == errno.ENOENT
    assert loc("/etc/os/x") == errno.ENOTDIR
    assert loc("/etc/os/") == errno.ENOTDIR
    assert loc("/lib", follow=False) == f"{root}/lib"
    r = resolve(t, f, "/lib", "/", False)
    assert r.kind == LINK and not r.final_link
    r = resolve(t, f, "/lib", "/", True)
    assert r.kind == DIR and r.final_link and r.guest == "/usr/lib"
    # binds, and the glue directories on the way to them
    assert loc("/mnt/data/deep/data") == f"{host}/data"
    assert loc("/mnt/data/deep/abs") == f"{root}/etc/os"
    r = resolve(t, f, "/mnt/data", "/", True)
    assert r.err == 0 and r.kind == DIR
    assert t.glue("/mnt") == ["data"]
    r = resolve(t, f, "/etc/new", "/", True)
    assert r.err == errno.ENOENT and r.missing_last and r.location == f"{root}/etc/new"
    r = resolve(t, f, "/nope/new", "/", True)
    assert r.err == errno.ENOENT and not r.missing_last
    assert t.guest_of(normalize(f"{root}/usr/lib/libc.so")) == "/usr/lib/libc.so"
    assert t.guest_of(f"{host}/data") == "/mnt/data/deep/data"


def test_guest_walk_needs_search_permission(tree):
    """With a `searchable` answer, the walk needs x on every directory it looks a name up
    in, "." and ".." too, as the kernel's walk; a glue directory (ours) is searchable."""
    t, root, host = tree
    shut = {normalize(f"{root}/usr"), normalize(f"{root}/mnt"), normalize(f"{root}/mnt/data")}

    class Files(HostFiles):
        def searchable(self, location: str) -> bool:
            return location not in shut

    f = Files()

    def err(path, cwd="/"):
        return resolve(t, f, path, cwd, True).err

    assert err("/usr/lib/libc.so") == errno.EACCES
    assert err("/usr/.") == errno.EACCES and err("/usr/..") == errno.EACCES
    assert err("/usr") == 0 and err("/lib") == errno.EACCES  # /lib leads through /usr
    assert err("libc.so", cwd="/usr/lib") == 0  # the cwd's ancestors are not walked
    assert err("/mnt/data/deep/data") == 0  # glue on the way to the bind
    shut.add(normalize(str(root)))  # the guest's "/" itself
    assert err("/etc/os") == errno.EACCES and err("/mnt/data/deep/data") == errno.EACCES


def test_guest_name_of_a_place_a_bind_hides_elsewhere(tree):
    """A location shown at two guest places, one of them under a bind that hides it: its
    guest name is the other (the cwd's spelling, getcwd's answer), not none."""
    t, root, host = tree
    t.bind(f"{root}/usr", "/srv/u")
    t.bind(str(host), "/srv/u/lib")  # hides the root's usr/lib at /srv/u/lib
    lib = normalize(f"{root}/usr/lib/libc.so")
    assert t.guest_of(lib) == "/usr/lib/libc.so"
    assert t.guest_of(normalize(f"{root}/usr")) == "/srv/u"  # the closest source


def test_every_guest_place_of_a_location(tree):
    """guests_of names each place that shows a location (the closest source first, as
    guest_of gives), not those a deeper bind hides; one place for the rest."""
    t, root, host = tree
    t.bind(f"{root}/usr", "/a")
    t.bind(f"{root}/usr", "/b/c")
    t.bind(str(host), "/b/c/lib")  # hides the root's usr/lib at /b/c/lib
    share, lib = normalize(f"{root}/usr/share"), normalize(f"{root}/usr/lib")
    assert sorted(t.guests_of(share)) == ["/a/share", "/b/c/share", "/usr/share"]
    assert t.guests_of(share)[0] == t.guest_of(share) != "/usr/share"
    assert sorted(t.guests_of(lib)) == ["/a/lib", "/usr/lib"]
    assert t.guests_of(normalize(f"{root}/etc")) == ["/etc"]
    assert t.guests_of("/nowhere/seen") == []
