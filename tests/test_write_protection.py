"""Nothing outside /cvmfs is ever changed through it (issue 9, items 1 and 5).

- Every way a program has of changing a file (tests/progs/writes.py), spelled every way
  (absolute, relative to the cwd or a dirfd, through /proc magic links, on descriptors),
  fails on /cvmfs exactly as on a read-only bind mount of the same tree, and leaves the
  tree, the host and the cache as they were.
- A repository's history cannot turn an anchor into a door to the host: a symlink to a
  host directory in one revision and a directory in the next.
- A symlink planted among the anchors is not followed: it is replaced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec
from .forge import Forger
from .test_parrot_run import Parrot

pytestmark = pytest.mark.tracer

HERE = os.path.dirname(os.path.abspath(__file__))
WRITES = os.path.join(HERE, "progs", "writes.py")
NAME = "writes.test.org"
MNT = f"/cvmfs/{NAME}"


def make_tree(src: str) -> None:
    os.makedirs(f"{src}/d")
    with open(f"{src}/d/f", "w") as f:
        f.write("data\n")
    with open(f"{src}/top", "w") as f:
        f.write("top\n")
    os.symlink("d", f"{src}/l")
    os.symlink("loop", f"{src}/loop")


@pytest.fixture(scope="module")
def wrepo(tmp_path_factory):
    base = tmp_path_factory.mktemp("writes")
    src, stratum, keys = str(base / "src"), str(base / "stratum"), str(base / "keys")
    make_tree(src)
    publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys))
    srv = StratumServer(stratum)
    srv.start_background()
    yield src, stratum, keys, srv.url
    srv.shutdown()


@pytest.fixture(params=["notify", "ptrace"])
def mode(request):
    return request.param


def _parrot(url: str, keys: str, cache: str, mode: str) -> Parrot:
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{url}/{NAME}", os.path.join(keys, f"{NAME}.pub")),
        PARROT_CVMFS_MODE=mode,
        LC_ALL="C",
    )
    return Parrot(env, cache)


def snapshot(top: str, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every entry below `top` with its type, mode, size, mtime and link target."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        if rel_dir.split(os.sep)[0] in skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, top)
            if rel.split(os.sep)[0] in skip:
                continue
            s = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else None
            out[rel] = (s.st_mode, s.st_size if not os.path.isdir(p) else 0, s.st_mtime_ns, link)
    return out


# what parrot_run itself writes in its cache: memos, the quota database, locks, objects
BOOKKEEPING = ("memo", "config", "txn", "cachedb", "cachedb-wal", "cachedb-shm", "lock_objects")


def _ro_bind(src: str, mnt: str) -> bool:
    os.makedirs(mnt, exist_ok=True)
    if os.geteuid() != 0:
        return False
    if subprocess.run(["mount", "--bind", src, mnt], capture_output=True).returncode != 0:
        return False
    r = subprocess.run(["mount", "-o", "remount,bind,ro", mnt], capture_output=True)
    if r.returncode != 0:
        subprocess.run(["umount", mnt])
        return False
    return True


def _host_dir(path: str) -> str:
    os.makedirs(path)
    with open(f"{path}/hostfile", "w") as f:
        f.write("host\n")
    return path


def test_every_write_refused_as_on_a_read_only_mount(wrepo, mode, tmp_path):
    src, _, keys, url = wrepo
    parrot = _parrot(url, keys, str(tmp_path / "cache"), mode)
    mnt = str(tmp_path / "ro")
    if not _ro_bind(src, mnt):
        pytest.skip("needs root to make a read-only bind mount")
    try:
        native = subprocess.run(
            [sys.executable, WRITES, mnt, _host_dir(str(tmp_path / "h0"))],
            capture_output=True,
            env=base_env(LC_ALL="C"),
        )
    finally:
        subprocess.run(["umount", mnt])
    assert native.returncode == 0, native.stderr
    expected = native.stdout.decode().splitlines()
    assert len(expected) >= 100
    before_src = snapshot(src)
    for run in ("cold", "warm"):  # the second run is answered from the kept answers too
        host = _host_dir(str(tmp_path / f"h-{run}"))
        before_cache = snapshot(parrot.cache, BOOKKEEPING) if run == "warm" else None
        p = parrot(sys.executable, WRITES, MNT, host)
        assert p.returncode == 0, p.stderr
        got = p.stdout.decode().splitlines()
        diff = [
            f"{e!r} native, {g!r} parrot_run" for e, g in zip(expected, got, strict=False) if e != g
        ]
        assert not diff and len(got) == len(expected), (run, diff)
        assert os.listdir(host) == ["hostfile"], run
        if before_cache is not None:
            assert snapshot(parrot.cache, BOOKKEEPING) == before_cache
    assert snapshot(src) == before_src


def test_a_symlink_then_a_directory_never_leads_to_the_host(mode, tmp_path):
    """Revision 1: x -> a host directory; a job opens x with O_PATH|O_NOFOLLOW and
    watches it with IN_DONT_FOLLOW. Revision 2: x is a directory. Jobs on revision 2 see
    the directory, cannot write there, and neither they nor the supervisor touch the
    host directory."""
    src, stratum, keys = str(tmp_path / "src"), str(tmp_path / "st"), str(tmp_path / "keys")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("my thesis\n")
    os.makedirs(src)
    os.symlink(str(victim), f"{src}/x")
    publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys, ttl=1))
    srv = StratumServer(stratum)
    srv.start_background()
    try:
        parrot = _parrot(srv.url, keys, str(tmp_path / "cache"), mode)
        code = (
            "import ctypes, os, sys; "
            f"os.open('{MNT}/x', os.O_PATH | os.O_NOFOLLOW); "
            "libc = ctypes.CDLL(None); fd = libc.inotify_init1(0); "
            f"print(libc.inotify_add_watch(fd, b'{MNT}/x', 0xFFF | 0x01000000) >= 0)"
        )
        p = parrot(sys.executable, "-c", code)
        assert p.returncode == 0 and p.stdout == b"True\n", p.stderr
        os.unlink(f"{src}/x")
        os.makedirs(f"{src}/x/sub")
        with open(f"{src}/x/new.txt", "w") as f:
            f.write("new\n")
        publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys, ttl=1))
        before = snapshot(str(victim))
        script = (
            f"cd {MNT}/x && ls && cd sub && cd .. && "
            "{ rm -f thesis.txt new.txt; echo rm=$?; touch written-by-job; echo touch=$?; "
            "mkdir made; echo mkdir=$?; }"
        )
        # the manifest's TTL is 1 s: the next run mounts revision 2
        for _attempt in range(20):
            p = parrot.sh(script)
            if b"new.txt" in p.stdout:
                break
            time.sleep(0.5)
        out = p.stdout.decode()
        assert out.splitlines()[:2] == ["new.txt", "sub"], (out, p.stderr)
        assert "rm=1" in out and "touch=1" in out and "mkdir=1" in out
        assert b"Read-only file system" in p.stderr
        assert snapshot(str(victim)) == before
        assert sorted(os.listdir(victim)) == ["thesis.txt"]
    finally:
        srv.shutdown()


def test_a_symlink_planted_among_the_anchors_is_replaced(wrepo, mode, tmp_path):
    src, stratum, keys, url = wrepo
    parrot = _parrot(url, keys, str(tmp_path / "cache"), mode)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "planted").write_text("host\n")
    script = f"ls {MNT}/d; cd {MNT}/d && cat f && ls -a"
    first = parrot.sh(script)
    assert first.returncode == 0 and b"planted" not in first.stdout, first.stderr
    root = Forger(stratum, keys, NAME).manifest().root_hash.hex
    anchors = os.path.join(parrot.cache, "anchors")
    anchor = os.path.join(anchors, f"{NAME}@{root}", "d")
    assert os.path.isdir(anchor) and not os.path.islink(anchor)
    # a link where the directory's anchor was, and one where the revision's tree was
    for plant in (anchor, os.path.dirname(anchor)):
        shutil.rmtree(anchor, ignore_errors=True)
        if os.path.lexists(plant):
            shutil.rmtree(plant) if os.path.isdir(plant) else os.unlink(plant)
        os.makedirs(os.path.dirname(plant), exist_ok=True)
        os.symlink(str(victim), plant)
        again = parrot.sh(script + "; touch new; echo touch=$?")
        assert again.stdout.replace(b"touch=1\n", b"") == first.stdout, again.stderr
        assert b"touch=1" in again.stdout
        assert sorted(os.listdir(victim)) == ["planted"]
        assert not os.path.islink(plant)


ONLY_OURS = r"""
import ctypes, errno, fcntl, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
R, HOST = sys.argv[1], sys.argv[2]

def attempt(what, fn):
    try:
        fn()
        print(f"{what}: ok")
    except OSError as e:
        print(f"{what}: {errno.errorcode.get(e.errno, e.errno)}")

def call(n, *args):
    if libc.syscall(n, *args) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

f = os.open(f"{R}/d/f", os.O_RDONLY)
d = os.open(f"{R}/d", os.O_RDONLY | os.O_DIRECTORY)
attempt("FS_IOC_SETFLAGS f", lambda: fcntl.ioctl(f, 0x40086602, struct.pack("l", 0x10)))
attempt("FS_IOC_SETFLAGS d", lambda: fcntl.ioctl(d, 0x40086602, struct.pack("l", 0x10)))
attempt("FS_IOC_FSSETXATTR f", lambda: fcntl.ioctl(f, 0x401C5820, bytes(28)))
attempt("open_tree clone d", lambda: call(428, d, b"", 1 | 0x80000 | 0x1000))  # CLONE|CLOEXEC|EMPTY
attempt("open_tree path", lambda: call(428, -100, os.fsencode(f"{R}/d"), 1))
attempt("mount bind d", lambda: call(165, os.fsencode(f"{R}/d"), os.fsencode(HOST), b"", 4096, None))
attempt("mount onto d", lambda: call(165, b"none", os.fsencode(f"{R}/d"), b"tmpfs", 0, None))
attempt("acct f", lambda: call(163, os.fsencode(f"{R}/d/f")))
"""


def test_changes_without_a_path_refused(wrepo, mode, tmp_path):
    """chattr's ioctls on our descriptors, open_tree, mount and acct of /cvmfs paths
    (the last three need root): none reaches the cache's own files. ENOTTY for the
    ioctls, as on a FUSE mount that does not implement them."""
    src, _, keys, url = wrepo
    parrot = _parrot(url, keys, str(tmp_path / "cache"), mode)
    host = _host_dir(str(tmp_path / "h"))
    p = parrot(sys.executable, "-c", ONLY_OURS, MNT, host)  # fills the cache
    assert p.returncode == 0, p.stderr
    before = snapshot(parrot.cache, BOOKKEEPING)
    p = parrot(sys.executable, "-c", ONLY_OURS, MNT, host)
    assert p.returncode == 0, p.stderr
    got = dict(line.split(": ", 1) for line in p.stdout.decode().splitlines())
    assert len(got) == 8, got
    assert {k: v for k, v in got.items() if v == "ok"} == {}, got
    assert got["FS_IOC_SETFLAGS f"] == got["FS_IOC_FSSETXATTR f"] == "ENOTTY"
    assert snapshot(parrot.cache, BOOKKEEPING) == before
    assert os.listdir(host) == ["hostfile"]


def test_the_supervisor_writes_through_no_link_in_the_cache(wrepo, tmp_path):
    """memo/ and config/ (kept answers, the configuration's) replaced by links to a
    host directory: parrot_run writes nothing there, and still runs."""
    src, _, keys, url = wrepo
    parrot = _parrot(url, keys, str(tmp_path / "cache"), "notify")
    assert parrot("ls", f"{MNT}/d").returncode == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("memo", "config"):
        kept = os.path.join(parrot.cache, name)
        if os.path.isdir(kept):
            shutil.rmtree(kept)
        os.symlink(str(victim), kept)
    for _ in range(2):
        p = parrot("sh", "-c", f"ls {MNT}/d; cat {MNT}/d/f")
        assert p.returncode == 0 and p.stdout == b"f\ndata\n", p.stderr
    assert os.listdir(victim) == []


def test_kept_listings_are_checked(wrepo, tmp_path):
    """A kept listing (memo/) whose names were edited ('f' -> '/', a record of length 0)
    is not replayed by C: the program sees the catalog's names."""
    import glob

    src, _, keys, url = wrepo
    parrot = _parrot(url, keys, str(tmp_path / "cache"), "notify")
    script = f"{sys.executable} -c \"import os; print(sorted(os.listdir('{MNT}/d')))\""
    first = parrot("sh", "-c", script)
    assert first.stdout == b"['f']\n", first.stderr
    (memo,) = glob.glob(os.path.join(parrot.cache, "memo", f"{NAME}@*.memo"))
    data = bytearray(open(memo, "rb").read())
    rec = data.find(b"\x08f\x00")  # d_type DT_REG, the name "f"
    assert rec > 0
    for edit in (b"\x08/\x00", None):
        bad = bytearray(data)
        if edit is None:  # the record's length (d_reclen, just before d_type) made 0
            bad[rec - 2 : rec] = b"\x00\x00"
        else:
            bad[rec : rec + 3] = edit
        with open(memo, "wb") as f:
            f.write(bad)
        p = parrot("sh", "-c", script, timeout=60)
        assert p.returncode == 0 and p.stdout == b"['f']\n", (edit, p.stdout, p.stderr)
