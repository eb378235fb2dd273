"""The container behaviour issue 13 left for later: changes through descriptors of root
files not yet copied up, O_TMPFILE and RENAME_EXCHANGE in an overlaid root, Unix socket
addresses of accept/recvfrom/recvmsg/sendto/sendmsg in guest terms, and an offline
--root run from a preloaded alien cache."""

from __future__ import annotations

import os

from . import test_container_root as croot

# the Debian 11 userland as root, from the host and from /cvmfs (test_container_root.py)
debian11, bullseye, mode, run, run_modes = (
    croot.debian11,
    croot.bullseye,
    croot.mode,
    croot.run,
    croot.run_modes,
)
ok = croot.ok

# -- changes through a descriptor of a root file not yet copied up --------------------------

_FD_CHANGES = r"""
import errno, os
fd = os.open('/etc/hostname', os.O_RDONLY)
dv = os.open('/etc/debian_version', os.O_RDONLY)
def t(name, f, *a, **kw):
    try:
        f(*a, **kw)
        print(name, 'ok')
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t('fchmod', os.fchmod, fd, 0o604)
t('fchown', os.fchown, fd, 12, 34)
t('fsetxattr', os.setxattr, fd, 'user.mark', b'v1')
t('fsetxattr2', os.setxattr, dv, 'user.gone', b'x')
t('fremovexattr', os.removexattr, dv, 'user.gone')
t('futimens', os.utime, fd, None, ns=(10**9, 2 * 10**9))
t('ftruncate', os.ftruncate, fd, 0)
t('fchmod-dir', os.fchmod, os.open('/usr/share', os.O_RDONLY | os.O_DIRECTORY), 0o750)
"""
_FD_LOOK = (
    "stat -c '%a %u %g %Y %s' /etc/hostname; stat -c %a /usr/share; python3 -c \"import os;"
    " print(os.getxattr('/etc/hostname', 'user.mark'),"
    " os.listxattr('/etc/debian_version'))\""
)


def test_descriptor_changes_copy_up(run_modes, bullseye, tmp_path):
    """fchmod, fchown, fsetxattr, fremovexattr and futimens on a read-only descriptor
    of a root file copy it up and change the copy (as overlayfs does); ftruncate of a
    read-only descriptor is EINVAL as the kernel's; without an overlay all are EROFS."""
    before = os.lstat(os.path.join(bullseye, "etc/hostname"))
    ov = ["--overlay", str(tmp_path / "ov")]
    out = ok(run_modes("python3", "-c", _FD_CHANGES, options=ov))
    assert out.split("\n")[:-1] == [
        "fchmod ok",
        "fchown ok",
        "fsetxattr ok",
        "fsetxattr2 ok",
        "fremovexattr ok",
        "futimens ok",
        "ftruncate EINVAL",
        "fchmod-dir ok",
    ], out
    size = before.st_size
    assert ok(run_modes.sh(_FD_LOOK, options=ov)).splitlines() == [
        f"604 12 34 2 {size}",
        "750",
        "b'v1' []",
    ]
    now = os.lstat(os.path.join(bullseye, "etc/hostname"))
    assert (now.st_mode, now.st_uid, now.st_mtime_ns) == (
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
    )
    out = ok(run_modes("python3", "-c", _FD_CHANGES))
    assert out.split() == [
        *("fchmod EROFS fchown EROFS fsetxattr EROFS fsetxattr2 EROFS".split()),
        *("fremovexattr EROFS futimens EROFS ftruncate EINVAL fchmod-dir EROFS".split()),
    ], out


def test_descriptor_changes_as_nobody(run):
    """As an unprivileged user: the copy is the user's, so fchmod and futimens work on
    it, and fchown to another user is EPERM (made with the job's credentials)."""
    import shutil
    import tempfile

    work = tempfile.mkdtemp(prefix="cleft-", dir="/tmp")
    try:
        os.chmod(work, 0o777)
        ov = os.path.join(work, "ov")
        run.env = dict(run.env, PARROT_CVMFS_CACHE=os.path.join(work, "cache"))
        out = ok(
            run("python3", "-c", _FD_CHANGES, options=["--overlay", ov], user="nobody", cwd=work)
        )
        assert out.split()[:6] == ["fchmod", "ok", "fchown", "EPERM", "fsetxattr", "ok"], out
        s = os.stat(os.path.join(ov, "upper", "etc", "hostname"))
        assert (s.st_uid, s.st_mode & 0o777, s.st_mtime_ns) == (65534, 0o604, 2 * 10**9)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- renameat2 in the root -------------------------------------------------------------------

_RENAMES = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def r(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) == 0:
        return 'ok'
    return errno.errorcode[ctypes.get_errno()]
print(r('/etc/hostname', '/etc/debian_version', 2),  # RENAME_EXCHANGE
      r('/etc/hostname', '/etc/none', 2),
      r('/usr', '/etc/hostname', 2),  # a root directory: EXDEV as overlayfs
      r('/etc/hostname', '/etc/debian_version', 3),  # EXCHANGE|NOREPLACE: EINVAL
      r('/etc/hostname', '/etc/debian_version', 1),  # NOREPLACE: EEXIST
      r('/etc/hostname', '/etc/new', 4))  # WHITEOUT: EINVAL on overlayfs
"""


def test_rename_exchange_in_the_root(run_modes, bullseye, tmp_path):
    """RENAME_EXCHANGE of two root files copies both up and swaps them; the other
    renameat2 flags as the kernel's overlayfs answers them; EROFS without an overlay
    (after the kernel's flag checks)."""
    ov = ["--overlay", str(tmp_path / "ov")]
    out = ok(run_modes("python3", "-c", _RENAMES, options=ov))
    assert out.split() == ["ok", "ENOENT", "EXDEV", "EINVAL", "EEXIST", "EINVAL"], out
    hostname = open(os.path.join(bullseye, "etc/hostname")).read()
    release = open(os.path.join(bullseye, "etc/debian_version")).read()
    both = ok(run_modes("cat", "/etc/hostname", "/etc/debian_version", options=ov))
    assert both == release + hostname
    assert open(os.path.join(bullseye, "etc/hostname")).read() == hostname
    out = ok(run_modes("python3", "-c", _RENAMES))
    assert out.split() == ["EROFS", "EROFS", "EROFS", "EINVAL", "EROFS", "EROFS"], out


# -- O_TMPFILE in the root -------------------------------------------------------------------

_TMPFILES = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def t(path, flags):
    try:
        return os.open(path, flags, 0o640)
    except OSError as e:
        return errno.errorcode[e.errno]
g = open('/tmp/cleft-gone-%d' % os.getpid(), 'w+')
g.write('gone')
g.flush()
os.unlink(g.name)
print(open('/proc/self/fd/%d' % g.fileno()).read())  # a removed file, through its link
print(t('/etc/hostname', os.O_TMPFILE | os.O_WRONLY), t('/etc/none', os.O_TMPFILE | os.O_WRONLY),
      t('/etc', os.O_TMPFILE | os.O_RDONLY))
fd = t('/etc', os.O_TMPFILE | os.O_WRONLY)
print(fd if isinstance(fd, str) else 'fd')
if not isinstance(fd, str):
    os.write(fd, b'first\n')
    os.link(f'/proc/self/fd/{fd}', '/etc/named', follow_symlinks=True)  # AT_SYMLINK_FOLLOW
    fd2 = t('/usr/share', os.O_TMPFILE | os.O_RDWR)
    os.write(fd2, b'second\n')
    r = libc.linkat(fd2, b'', -100, b'/usr/share/named2', 0x1000)  # AT_EMPTY_PATH
    print(r, oct(os.stat('/etc/named').st_mode & 0o777), open('/usr/share/named2').read().strip())
"""


def test_tmpfile_in_the_root(run_modes, bullseye, tmp_path):
    """O_TMPFILE of a root directory makes the unnamed file in the overlay's copy of
    it, and linkat (through /proc/self/fd/N or AT_EMPTY_PATH) names it there; without
    an overlay EROFS, after the kernel's EINVAL, ENOENT and ENOTDIR."""
    ov = ["--overlay", str(tmp_path / "ov")]
    out = ok(run_modes.sh(f'umask 022; exec python3 -c "{_TMPFILES}"', options=ov))
    assert out.split("\n")[:-1] == ["gone", "ENOTDIR ENOENT EINVAL", "fd", "0 0o640 second"], out
    assert ok(run_modes("cat", "/etc/named", "/usr/share/named2", options=ov)) == "first\nsecond\n"
    assert not os.path.lexists(os.path.join(bullseye, "etc/named"))
    out = ok(run_modes("python3", "-c", _TMPFILES))
    assert out.split("\n")[:-1] == ["gone", "ENOTDIR ENOENT EINVAL", "EROFS"], out


# -- Unix socket addresses -------------------------------------------------------------------

_SOCKETS = r"""
import os, socket, sys
d = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(d + '/srv')
cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
cli.bind(d + '/cli')
cli.sendto(b'ping', d + '/srv')  # sendto a guest path
data, src = srv.recvfrom(16)  # the source in guest terms
srv.sendto(b'pong', src)  # and answered there
data2, src2 = cli.recvfrom(16)
cli.sendmsg([b'msg'], [], 0, d + '/srv')
m = srv.recvmsg(16)
st = socket.socket(socket.AF_UNIX)
st.bind(d + '/st')
st.listen(1)
c2 = socket.socket(socket.AF_UNIX)
c2.bind(d + '/c2')
c2.connect(d + '/st')
a, peer = st.accept()  # accept4's peer address
anon = socket.socket(socket.AF_UNIX)
anon.connect(d + '/st')
_, unnamed = st.accept()
name = '\0cleft-%d' % os.getpid()
ab = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
ab.bind(name)
cli.sendto(b'abs', name)  # an abstract address passes untouched
r = ab.recvfrom(16)
print(data.decode(), src, data2.decode(), src2, m[0].decode(), m[3], peer, repr(unnamed),
      r[0].decode(), r[1], ab.getsockname() == name.encode())
"""


def test_socket_addresses_in_guest_terms(run_modes, tmp_path):
    """A datagram server and client in a bind and in the overlay: sendto, sendmsg and
    connect reach the guest path's socket; recvfrom's and recvmsg's source and accept's
    peer show guest paths; unnamed and abstract addresses pass untouched."""
    import tempfile

    work = tempfile.mkdtemp(prefix="cleft-", dir="/tmp")  # short: sun_path has 108 bytes
    try:
        for where, opts in (
            ("/data", ["-B", f"{work}:/data"]),
            ("/run", ["--overlay", f"{work}/ov"]),
        ):
            out = ok(run_modes("python3", "-c", _SOCKETS, where, options=opts))
            assert out.split() == [
                *("ping", f"{where}/cli", "pong", f"{where}/srv", "msg", f"{where}/cli"),
                *(f"{where}/c2", "''", "abs", f"{where}/cli", "True"),
            ], out
        assert os.path.exists(f"{work}/srv")
        assert os.path.exists(f"{work}/ov/upper/run/srv")
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


# -- an offline --root from a preloaded alien cache --------------------------------------------


def test_offline_root_from_a_preloaded_alien_cache(debian11, tmp_path):
    """A site preloads the userland's repository once into an alien cache; a job then
    runs in it as root with no server (a dead URL) and an empty cache of its own."""
    import subprocess
    import sys

    from .conftest import base_env, repo_spec
    from .servers import dead_url
    from .test_parrot_run import PARROT

    name, pubkey = debian11.name, debian11.published.pubkey
    alien = str(tmp_path / "alien")
    p = subprocess.run(
        [sys.executable, "-m", "parrot_cvmfs", "preload", "-u", f"{debian11.url}/{name}"]
        + ["-r", alien, "-k", pubkey],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    env = base_env(PARROT_CVMFS_REPO=repo_spec(name, dead_url(name), pubkey))
    for mode in ("notify", "ptrace"):
        argv = [*PARROT, "--offline", "--alien-cache", alien, "--cache-dir"]
        argv += [str(tmp_path / f"own-{mode}"), "--root", debian11.cvmfs, "--"]
        script = "cat /etc/debian_version && python3 -c 'import json; print(json.dumps([1]))'"
        q = subprocess.run(
            [*argv, "/bin/sh", "-c", script],
            env={**env, "PARROT_CVMFS_MODE": mode},
            capture_output=True,
            text=True,
            timeout=300,
        )
        release = open(os.path.join(debian11.tree, "etc/debian_version")).read()
        assert q.returncode == 0, (mode, q.stderr[-2000:])
        assert q.stdout == release + "[1]\n", (mode, q.stdout, q.stderr[-2000:])


# -- --overlay on the host's tree, over binds from /cvmfs ----------------------------------------

_BIND_CHANGES = (
    "echo new > /opt/sw/newfile && echo more >> /opt/sw/debian_version && rm /opt/sw/issue"
    " && mkdir /opt/sw/made && mv /opt/sw/issue.net /opt/sw/renamed"
)
_BIND_LOOK = (
    "cat /opt/sw/newfile /opt/sw/debian_version; ls /opt/sw/issue 2>&1; ls -A /opt/sw;"
    " echo --; echo x > $0/host && cat $0/host; echo y > /cvmfs/$1/etc/newfile"
)


def test_overlay_without_root_over_a_cvmfs_bind(debian11, mode, tmp_path):
    """Without --root, --overlay takes the writes below a bind from /cvmfs (in
    DIR/binds/<destination>/), listings merge, a later run sees them; the host's own
    tree stays the host's, /cvmfs itself read-only; with no such bind, one line."""
    import subprocess

    from .conftest import base_env, repo_spec
    from .test_parrot_run import PARROT

    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(
            debian11.name, f"{debian11.url}/{debian11.name}", debian11.published.pubkey
        ),
        PARROT_CVMFS_CACHE=str(tmp_path / "cache"),
        **mode,
    )
    ov = str(tmp_path / "ov")
    base = [*PARROT, "-B", f"{debian11.cvmfs}/etc:/opt/sw", "--overlay", ov, "--"]

    def sh(script, *args, argv=base):
        return subprocess.run(
            [*argv, "/bin/sh", "-c", script, str(tmp_path), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    ok(sh(_BIND_CHANGES))
    p = sh(_BIND_LOOK, debian11.name)
    lines = p.stdout.splitlines()
    release = open(os.path.join(debian11.tree, "etc/debian_version")).read().strip()
    assert lines[:3] == ["new", release, "more"], p
    assert "No such file or directory" in lines[3]
    etc = set(os.listdir(os.path.join(debian11.tree, "etc"))) - {"issue", "issue.net"}
    i = lines.index("--")
    assert set(lines[4:i]) == etc | {"newfile", "made", "renamed"}, p
    assert lines[i + 1 :] == ["x"] and "Read-only file system" in p.stderr, p
    assert os.path.exists(os.path.join(ov, "binds", "opt%2Fsw", "upper", "newfile"))
    assert not os.path.lexists("/opt/sw/newfile")
    # without the overlay the bind is read-only again, and as it was
    bare = [a for a in base if a not in ("--overlay", ov)]
    p = sh("cat /opt/sw/debian_version; echo x > /opt/sw/newfile", argv=bare)
    assert p.stdout == release + "\n" and "Read-only file system" in p.stderr, p
    # nothing to lay an overlay over: one line
    p = sh("true", argv=[*PARROT, "--overlay", ov, "--"])
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "--overlay needs" in p.stderr


_UDP = r"""
import socket
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(('127.0.0.1', 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(50):
    b.sendto(b'x', a.getsockname())
    a.recvfrom(10)
"""


def test_network_socket_calls_stay_in_c(run):
    """A network socket's sendto, recvfrom and getsockname under --root never reach
    Python (only Unix addresses are the guest's to translate): --stats counts them
    all as passed through in C."""
    import re

    p = run("python3", "-c", _UDP, options=["--stats"])
    ok(p)
    for name in ("sendto", "recvfrom", "getsockname"):
        m = re.search(rf"\b{name} (\d+) \((\d+)/(\d+)/(\d+)\)", p.stderr)
        assert m is not None and int(m[1]) >= 50 and int(m[4]) == 0, (name, p.stderr)


# -- the times of a host file that Python stats for the guest -------------------------------


def test_host_file_times_through_a_bind(run_modes, tmp_path):
    """A host file seen through a bind elsewhere (-B SRC:/data, which notify mode stats in
    Python) shows its own atime, mtime and ctime through stat and statx, not its mtime
    three times."""
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_text("x")
    os.utime(f, ns=(1_000_000_000_250_000_000, 1_500_000_000_500_000_000))
    s = os.stat(f)
    script = (
        "stat -c '%X %Y %Z' /data/f; python3 -c 'import os; s = os.stat(\"/data/f\");"
        " print(s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns)'"
    )
    out = ok(run_modes.sh(script, options=["-B", f"{src}:/data"])).split("\n")
    assert out[0] == f"{s.st_atime_ns // 10**9} {s.st_mtime_ns // 10**9} {s.st_ctime_ns // 10**9}"
    assert out[1] == f"{s.st_atime_ns} {s.st_mtime_ns} {s.st_ctime_ns}"
