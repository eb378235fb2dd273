"""The writable overlay (parrot_cvmfs/container/overlay.py) without ptrace: a real
lower tree on disk, a real overlay directory, and what the guest would see."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from parrot_cvmfs.container.overlay import OPAQUE, HostLower, Overlay, OverlayError

MTIME = 1_600_000_000_000_000_000


def names(ov, path):
    return sorted(n for n, _ in ov.entries(path))


@pytest.fixture
def lower(tmp_path):
    root = tmp_path / "lower"
    for d in ("etc/sub", "bin", "empty", "tree/a/b"):
        (root / d).mkdir(parents=True)
    (root / "etc/a").write_text("lower a\n")
    (root / "etc/sub/x").write_text("x\n")
    (root / "tree/a/b/leaf").write_text("leaf\n")
    os.chmod(root / "etc/a", 0o640)
    os.symlink("../etc/a", root / "bin/link")
    os.utime(root / "etc/a", ns=(MTIME, MTIME))
    os.utime(root / "bin/link", ns=(MTIME, MTIME), follow_symlinks=False)
    os.chmod(root / "etc", 0o751)
    os.utime(root / "etc", ns=(MTIME, MTIME))
    return str(root)


@pytest.fixture
def ov(lower, tmp_path):
    o = Overlay(str(tmp_path / "ov"), HostLower(lower))
    yield o
    o.close()


def upper(tmp_path, rel=""):
    return os.path.join(tmp_path, "ov", "upper", rel)


def err(code, fn, *args, **kw):
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == code, e.value
    return e.value


def test_layout_and_lookup_falls_through_to_the_lower(ov, tmp_path):
    assert os.path.isdir(upper(tmp_path)) and os.path.isdir(tmp_path / "ov" / "work")
    f = ov.lookup("/etc/a")
    assert f.layer == "lower" and f.host is None and f.st.st_size == 8
    assert ov.lookup("/etc/missing") is None
    assert stat.S_ISLNK(ov.lookup("/bin/link").st.st_mode)
    assert names(ov, "/") == ["bin", "empty", "etc", "tree"]
    err(errno.ENOTDIR, ov.entries, "/etc/a")


def test_copy_up_keeps_data_mode_times_and_parents(ov, lower, tmp_path):
    host = ov.prepare_write("/etc/a")
    assert host == upper(tmp_path, "etc/a")
    s = os.lstat(host)
    assert open(host).read() == "lower a\n"
    assert stat.S_IMODE(s.st_mode) == 0o640 and s.st_mtime_ns == MTIME
    d = os.lstat(upper(tmp_path, "etc"))
    assert stat.S_IMODE(d.st_mode) == 0o751 and d.st_mtime_ns == MTIME
    with open(host, "a") as f:
        f.write("more\n")
    assert open(os.path.join(lower, "etc/a")).read() == "lower a\n"  # lower untouched
    assert ov.lookup("/etc/a").layer == "upper"
    # the upper's directory still shows the lower's other entries
    assert names(ov, "/etc") == ["a", "sub"]
    # a symbolic link is copied as a link, its text and time kept
    link = ov.prepare_write("/bin/link")
    assert os.readlink(link) == "../etc/a"
    assert os.lstat(link).st_mtime_ns == MTIME
    assert not any(n.startswith(".wh.") for n in os.listdir(upper(tmp_path, "etc")))


def test_create_with_exact_mode_and_exclusive(ov, tmp_path):
    old = os.umask(0o077)
    try:
        host = ov.prepare_write("/etc/new", create_mode=0o664)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(host).st_mode) == 0o664
    err(errno.EEXIST, ov.prepare_write, "/etc/new", 0o600, exclusive=True)
    err(errno.EEXIST, ov.prepare_write, "/etc/a", 0o600, exclusive=True)
    err(errno.ENOENT, ov.prepare_write, "/etc/none")
    err(errno.ENOENT, ov.prepare_write, "/nodir/f", 0o600)
    err(errno.ENOTDIR, ov.prepare_write, "/etc/a/f", 0o600)


def test_remove_whites_out_and_persists(lower, tmp_path):
    with Overlay(str(tmp_path / "ov"), HostLower(lower)) as ov:
        ov.remove("/etc/a")
        assert ov.lookup("/etc/a") is None
        assert os.path.isfile(upper(tmp_path, "etc/.wh.a"))
        assert names(ov, "/etc") == ["sub"]
        err(errno.ENOENT, ov.remove, "/etc/a")
        err(errno.EISDIR, ov.remove, "/etc/sub")
        err(errno.ENOTDIR, ov.remove, "/bin/link", directory=True)
        ov.remove("/bin/link")
    with Overlay(str(tmp_path / "ov"), HostLower(lower)) as ov:  # a later run
        assert ov.lookup("/etc/a") is None and ov.lookup("/bin/link") is None
        assert names(ov, "/bin") == []
        # made again: the new file shows, its whiteout is gone
        host = ov.prepare_write("/etc/a", create_mode=0o644)
        assert open(host).read() == ""
        assert not os.path.exists(upper(tmp_path, "etc/.wh.a"))
        assert names(ov, "/etc") == ["a", "sub"]
    assert open(os.path.join(lower, "etc/a")).read() == "lower a\n"


def test_rmdir_then_mkdir_is_opaque(ov, tmp_path):
    err(errno.ENOTEMPTY, ov.remove, "/etc/sub", directory=True)
    ov.remove("/etc/sub/x")
    ov.remove("/etc/sub", directory=True)
    assert ov.lookup("/etc/sub") is None and names(ov, "/etc") == ["a"]
    ov.mkdir("/etc/sub", 0o700)
    assert os.path.isfile(upper(tmp_path, f"etc/sub/{OPAQUE}"))
    assert stat.S_IMODE(os.lstat(upper(tmp_path, "etc/sub")).st_mode) == 0o700
    assert names(ov, "/etc/sub") == []  # the lower's x stays hidden
    assert ov.lookup("/etc/sub/x") is None
    err(errno.EEXIST, ov.mkdir, "/etc/sub", 0o755)
    err(errno.EEXIST, ov.mkdir, "/etc", 0o755)
    ov.mkdir("/fresh", 0o755)  # nothing below: no marker needed
    assert os.listdir(upper(tmp_path, "fresh")) == []
    ov.remove("/fresh", directory=True)
    assert not os.path.exists(upper(tmp_path, "fresh"))
    assert not os.path.exists(upper(tmp_path, ".wh.fresh"))


def test_rmdir_of_a_deep_lower_tree(ov):
    ov.remove("/tree/a/b/leaf")
    ov.remove("/tree/a/b", directory=True)
    ov.remove("/tree/a", directory=True)
    assert names(ov, "/tree") == []
    ov.remove("/tree", directory=True)
    assert "tree" not in names(ov, "/")


def test_rename_file_and_directory(ov, tmp_path):
    ov.rename("/etc/a", "/etc/b")
    assert ov.lookup("/etc/a") is None
    assert open(ov.lookup("/etc/b").host).read() == "lower a\n"
    assert names(ov, "/etc") == ["b", "sub"]
    # a directory with lower content cannot move (the kernel's EXDEV; mv copies)
    err(errno.EXDEV, ov.rename, "/etc/sub", "/etc/sub2")
    ov.mkdir("/new", 0o755)
    ov.prepare_write("/new/f", create_mode=0o644)
    ov.rename("/new", "/etc/moved")
    assert names(ov, "/etc/moved") == ["f"]
    # onto a lower directory that is empty: it is replaced, and stays hidden
    ov.rename("/etc/moved", "/empty")
    assert names(ov, "/empty") == ["f"] and ov.lookup("/etc/moved") is None
    assert os.path.isfile(upper(tmp_path, f"empty/{OPAQUE}"))
    # onto a file, a non-empty directory, into itself
    err(errno.EISDIR, ov.rename, "/etc/b", "/empty")
    err(errno.ENOTDIR, ov.rename, "/empty", "/etc/b")
    ov.mkdir("/d2", 0o755)
    err(errno.ENOTEMPTY, ov.rename, "/d2", "/empty")
    err(errno.EINVAL, ov.rename, "/d2", "/d2/in")
    err(errno.EEXIST, ov.rename, "/etc/b", "/bin/link", noreplace=True)
    ov.rename("/etc/b", "/bin/link")  # replaces the lower link
    assert open(ov.lookup("/bin/link").host).read() == "lower a\n"
    # a whited-out name is a free destination
    ov.remove("/etc/sub/x")
    ov.rename("/bin/link", "/etc/sub/x")
    assert names(ov, "/etc/sub") == ["x"]
    assert not os.path.exists(upper(tmp_path, "etc/sub/.wh.x"))


def test_symlink_and_hardlink(ov, tmp_path):
    ov.symlink("/etc/a", "/bin/abs")
    assert os.readlink(upper(tmp_path, "bin/abs")) == "/etc/a"  # the text as given
    err(errno.EEXIST, ov.symlink, "x", "/bin/link")
    ov.link("/etc/a", "/etc/hard")
    a, h = os.lstat(ov.lookup("/etc/a").host), os.lstat(ov.lookup("/etc/hard").host)
    assert (a.st_ino, a.st_nlink) == (h.st_ino, 2)
    err(errno.EPERM, ov.link, "/etc/sub", "/etc/sub-link")
    err(errno.EEXIST, ov.link, "/etc/a", "/etc/sub")
    err(errno.ENOENT, ov.link, "/etc/none", "/etc/x2")


def test_reserved_names_never_shown_nor_made(ov, lower, tmp_path):
    with open(os.path.join(lower, "etc/.wh.sub"), "w"):  # a lower's own: still reserved
        pass
    assert names(ov, "/etc") == ["a", "sub"]
    ov.remove("/etc/a")
    err(errno.ENOENT, ov.lookup, "/etc/.wh.a")
    err(errno.EINVAL, ov.prepare_write, "/etc/.wh.z", 0o644)
    err(errno.EINVAL, ov.mkdir, "/etc/.wh..wh..opq", 0o755)
    err(errno.EINVAL, ov.rename, "/etc/sub/x", "/etc/.wh.x")
    assert not any(n.startswith(".wh.") for n, _ in ov.entries("/etc"))


def test_links_planted_in_upper_are_never_followed(ov, lower, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), upper(tmp_path, "etc"))
    err(errno.ENOTDIR, ov.prepare_write, "/etc/a")
    err(errno.ENOTDIR, ov.prepare_write, "/etc/new", 0o644)
    err(errno.ENOTDIR, ov.remove, "/etc/sub/x")
    assert os.listdir(outside) == []


def test_overlay_directory_that_is_not_one(lower, tmp_path):
    (tmp_path / "ov").mkdir()
    os.symlink(str(tmp_path), tmp_path / "ov" / "upper")
    with pytest.raises(OverlayError) as e:
        Overlay(str(tmp_path / "ov"), HostLower(lower))
    assert "upper is not a directory" in str(e.value) and "\n" not in str(e.value)


def test_kernel_format_is_read(lower, tmp_path):
    up = tmp_path / "ov" / "upper"
    (up / "etc").mkdir(parents=True)
    (up / "tree").mkdir()
    try:
        os.mknod(up / "etc" / "a", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("no 0/0 device without CAP_MKNOD on this kernel")
    os.setxattr(up / "tree", "user.overlay.opaque", b"y")
    (up / "etc" / "gone").write_text("")  # an xattr whiteout hides a lower name...
    os.setxattr(up / "etc" / "gone", "user.overlay.whiteout", b"")
    (up / "etc" / "empty-file").write_text("")  # ...a zero-size file without one is a file
    with Overlay(str(tmp_path / "ov"), HostLower(lower)) as ov:
        assert ov.lookup("/etc/a") is None and ov.lookup("/etc/gone") is None
        assert names(ov, "/etc") == ["empty-file", "sub"]
        assert names(ov, "/tree") == [] and ov.lookup("/tree/a") is None
        # writing over the device replaces it with the new file, in one rename
        host = ov.prepare_write("/etc/a", create_mode=0o600)
        assert stat.S_ISREG(os.lstat(host).st_mode)
        assert names(ov, "/etc") == ["a", "empty-file", "sub"]
        ov.remove("/etc/a")
        ov.mkdir("/etc/a", 0o755)
        assert stat.S_ISDIR(os.lstat(host).st_mode)


LOCKER = textwrap.dedent("""
    import sys
    from parrot_cvmfs.container.overlay import HostLower, Overlay
    ov = Overlay(sys.argv[1], HostLower(sys.argv[2]))
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_second_job_on_one_overlay_is_refused(lower, tmp_path):
    d = str(tmp_path / "ov")
    p = subprocess.Popen(
        [sys.executable, "-c", LOCKER, d, lower], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert p.stdout.readline() == b"locked\n"
        with pytest.raises(OverlayError) as e:
            Overlay(d, HostLower(lower))
        text = str(e.value)
        assert f"overlay {d} is in use by pid {p.pid}" in text and "\n" not in text
        assert e.value.errno == errno.EBUSY
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    Overlay(d, HostLower(lower)).close()  # free again once that job ended


def test_unprivileged_user_on_its_own_overlay(lower, tmp_path):
    """Any user, no capability: whiteouts and opaque markers are plain files."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    import pathlib
    import shutil
    import tempfile

    base = pathlib.Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's are root's alone
    os.chmod(base, 0o755)
    lower = shutil.copytree(lower, base / "lower", symlinks=True)
    os.chmod(lower / "etc/a", 0o644)  # 0640 root's: nobody may not read it to copy it
    d = base / "nobody-ov"
    d.mkdir()
    os.chown(d, 65534, 65534)
    script = textwrap.dedent("""
        import sys
        from parrot_cvmfs.container.overlay import HostLower, Overlay
        with Overlay(sys.argv[1], HostLower(sys.argv[2])) as ov:
            ov.remove("/etc/sub/x")
            ov.remove("/etc/sub", directory=True)
            ov.mkdir("/etc/sub", 0o755)
            open(ov.prepare_write("/etc/a"), "a").write("by nobody\\n")
            print(sorted(n for n, _ in ov.entries("/etc")), sorted(ov.entries("/etc/sub")))
    """)
    p = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-c", script, str(d), lower],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == "['a', 'sub'] []"
    assert open(d / "upper/etc/a").read() == "lower a\nby nobody\n"
    assert os.stat(d / "upper/etc/a").st_uid == 65534
    shutil.rmtree(base)


# -- the kernel's overlayfs as the reference ----------------------------------------------------

OPS = [
    ("append", "/etc/a", "more\n"),
    ("create", "/etc/new", "new\n"),
    ("unlink", "/etc/sub/x"),
    ("rmdir", "/etc/sub"),
    ("mkdir", "/etc/sub"),
    ("create", "/etc/sub/y", "y\n"),
    ("rename", "/etc/a", "/etc/b"),
    ("symlink", "/etc/b", "/bin/abs"),
    ("link", "/etc/b", "/etc/hard"),
    ("unlink", "/bin/link"),
    ("unlink", "/tree/a/b/leaf"),
    ("rmdir", "/tree/a/b"),
    ("rmdir", "/tree/a"),
    ("rename", "/empty", "/empty2"),  # a lower directory: EXDEV
    ("rename", "/etc/sub", "/sub-moved"),  # opaque, upper only: moves
    ("rmdir", "/etc"),  # ENOTEMPTY
    ("mkdir", "/etc"),  # EEXIST
    ("unlink", "/etc/none"),  # ENOENT
    ("chmod", "/bin", 0o700),
    ("rename", "/etc/new", "/tree/new"),
    ("rmdir", "/tree"),  # ENOTEMPTY: new is there
    # renameat2: RENAME_EXCHANGE of lower files (both copied up), of an upper directory
    # and a file, of a lower directory (EXDEV), with a missing name; the other flags
    ("exchange", "/swap/one", "/swap/two"),
    ("exchange", "/swap/one", "/bin/abs"),
    ("exchange", "/sub-moved", "/tree/new"),
    ("exchange", "/empty", "/swap/two"),
    ("exchange", "/swap/two", "/swap/none"),
    ("exchange", "/swap/dir", "/swap/one"),  # a lower directory, even empty: EXDEV
    ("rename2", "/swap/one", "/swap/two", 1),  # RENAME_NOREPLACE: EEXIST
    ("rename2", "/swap/one", "/swap/three", 1),
    ("rename2", "/swap/two", "/swap/four", 4),  # RENAME_WHITEOUT: EINVAL on overlayfs
]


def kernel_op(m: str, op: str, *a) -> int:
    try:
        if op in ("append", "create"):
            with open(m + a[0], "a") as f:
                f.write(a[1])
        elif op == "unlink":
            os.unlink(m + a[0])
        elif op == "rmdir":
            os.rmdir(m + a[0])
        elif op == "mkdir":
            os.mkdir(m + a[0], 0o755)
        elif op == "rename":
            os.rename(m + a[0], m + a[1])
        elif op == "symlink":
            os.symlink(a[0], m + a[1])
        elif op == "link":
            os.link(m + a[0], m + a[1])
        elif op == "chmod":
            os.chmod(m + a[0], a[1])
        elif op in ("exchange", "rename2"):
            _renameat2(m + a[0], m + a[1], 2 if op == "exchange" else a[2])
    except OSError as e:
        return e.errno
    return 0


def _renameat2(old: str, new: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


def our_op(ov: Overlay, op: str, *a) -> int:
    try:
        if op in ("append", "create"):
            host = ov.prepare_write(a[0], create_mode=0o644 if op == "create" else None)
            with open(host, "a") as f:
                f.write(a[1])
        elif op == "unlink":
            ov.remove(a[0])
        elif op == "rmdir":
            ov.remove(a[0], directory=True)
        elif op == "mkdir":
            ov.mkdir(a[0], 0o755)
        elif op == "rename":
            ov.rename(a[0], a[1])
        elif op == "symlink":
            ov.symlink(a[0], a[1])
        elif op == "link":
            ov.link(a[0], a[1])
        elif op == "chmod":
            os.chmod(ov.prepare_write(a[0]), a[1])
        elif op == "exchange":
            ov.exchange(a[0], a[1])
        elif op == "rename2":
            if a[2] & 4:
                return errno.EINVAL  # the tracer's answer (handlers/writes.py)
            ov.rename(a[0], a[1], noreplace=bool(a[2] & 1))
    except OSError as e:
        return e.errno
    return 0


def kernel_view(m: str) -> dict:
    out = {}
    for dp, dns, fns in os.walk(m):
        for n in dns + fns:
            p = os.path.join(dp, n)
            s = os.lstat(p)
            out[p[len(m) :]] = describe(s, lambda p=p: open(p).read(), lambda p=p: os.readlink(p))
    return out


def describe(s, read, readlink):
    kind = stat.S_IFMT(s.st_mode)
    body = read() if kind == stat.S_IFREG else readlink() if kind == stat.S_IFLNK else None
    return kind, stat.S_IMODE(s.st_mode), body


def our_view(ov: Overlay, lower: HostLower, path="/", out=None) -> dict:
    out = {} if out is None else out
    for name, kind in ov.entries(path):
        p = path.rstrip("/") + "/" + name
        f = ov.lookup(p)
        assert f is not None and stat.S_IFMT(f.st.st_mode) == kind, p
        if f.layer == "upper":
            h = f.host
            out[p] = describe(f.st, lambda h=h: open(h).read(), lambda h=h: os.readlink(h))
        else:

            def read(p=p):
                fd = lower.open(p)
                try:
                    return os.read(fd, 1 << 20).decode()
                finally:
                    os.close(fd)

            out[p] = describe(f.st, read, lambda p=p: lower.readlink(p))
        if kind == stat.S_IFDIR:
            our_view(ov, lower, p, out)
    return out


def test_same_results_as_the_kernels_overlayfs(lower, tmp_path):
    """The same operations on a kernel overlay mount and on ours: the same errnos, the
    same merged tree; then ours reads what the kernel left in its upper directory."""
    if os.geteuid() != 0:
        pytest.skip("mounting an overlayfs needs root")
    k, m = tmp_path / "kernel", str(tmp_path / "mnt")
    os.makedirs(f"{lower}/swap/dir")
    for name in ("one", "two"):
        with open(f"{lower}/swap/{name}", "w") as f:
            f.write(f"lower {name}\n")
    for d in (k / "upper", k / "work", tmp_path / "mnt"):
        d.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={k}/upper,workdir={k}/work,redirect_dir=off"
    p = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, m], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"no overlayfs mount here: {p.stderr.decode().strip()}")
    old = os.umask(0o022)
    try:
        try:
            kernel = [kernel_op(m, *op) for op in OPS]
            expected = kernel_view(m)
        finally:
            subprocess.run(["umount", m], check=True)
        low = HostLower(lower)
        with Overlay(str(tmp_path / "ours"), low) as ov:
            ours = [our_op(ov, *op) for op in OPS]
            assert ours == kernel, [o for o, a, b in zip(OPS, ours, kernel, strict=True) if a != b]
            assert our_view(ov, low) == expected
        with Overlay(str(k), low) as ov:  # the kernel's upper, in the kernel's format
            assert our_view(ov, low) == expected
    finally:
        os.umask(old)
