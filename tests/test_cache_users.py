"""Caches and users: a writable cache belongs to one user.

A cache directory owned by someone else, or one we cannot write, is one line that
says so and what to do; a populated cache we cannot write (a read-only file system,
or its write bits taken away) is read as an alien cache, said once, with the per-user
cache taking what the run writes; a full cache disk is EIO for the program and one
line naming the cache directory. Run as `nobody` where permissions matter (tests run
as root, who may write anywhere); everything nobody touches lives in a world-readable
scratch directory (see test_unprivileged.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from parrot_cvmfs.server.chunking import ChunkSizes
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec
from .servers import dead_url
from .test_unprivileged import AS_NOBODY, NOBODY, _copy_runtime, _interpreter_for_nobody
from .treegen import publish_files

pytestmark = [pytest.mark.tracer, pytest.mark.unprivileged]

NAME = "users.test.org"
MNT = f"/cvmfs/{NAME}"
SMALL = b"a small file\n"
WHOLE = 700 * 1024  # one object, larger than the full file system below
CHUNKED = 3 * 1024 * 1024  # chunks of 1-4 MiB


def _data(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


class Site:
    def __init__(self, scratch, python, env, offline_env):
        self.scratch, self.python, self.env, self.offline_env = scratch, python, env, offline_env

    def run(self, argv, *, nobody=True, env=None, offline=False, timeout=300):
        """A command (`parrot_cvmfs ...` or `parrot_run ...`) as nobody or as root."""
        e = dict(self.offline_env if offline else self.env)
        e.update(env or {})
        module = "parrot_cvmfs" if argv[0] == "parrot_cvmfs" else "parrot_cvmfs.tracer.main"
        cmd = [self.python, "-m", module, *argv[1:]]
        return subprocess.run(
            [*AS_NOBODY, *cmd] if nobody else cmd,
            env=e,
            capture_output=True,
            timeout=timeout,
            cwd="/",
        )

    def nobody_dir(self, name: str) -> str:
        """A directory of nobody's in the scratch area."""
        d = os.path.join(self.scratch, name)
        os.makedirs(d)
        os.chown(d, NOBODY, NOBODY)
        return d


@pytest.fixture(scope="module")
def site():
    scratch = tempfile.mkdtemp(prefix="parrot-users.")
    os.chmod(scratch, 0o755)
    files = {"small.txt": SMALL, "whole.bin": _data(WHOLE, 1), "chunked.bin": _data(CHUNKED, 2)}
    stratum, keys = publish_files(scratch, NAME, files, ChunkSizes(1 << 20, 2 << 20, 4 << 20))
    runtime = os.path.join(scratch, "runtime")
    os.makedirs(runtime)
    _copy_runtime(runtime)
    subprocess.run(["chmod", "-R", "a+rX", scratch], check=True)
    srv = StratumServer(stratum)
    srv.start_background()
    pubkey = os.path.join(keys, f"{NAME}.pub")
    common = dict(
        PYTHONPATH=runtime,
        HOME="/nonexistent",  # nobody's; a test that needs a home gives one
        LC_ALL="C",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", pubkey), **common)
    offline_env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, dead_url(NAME), pubkey), **common)
    yield Site(scratch, _interpreter_for_nobody(), env, offline_env)
    srv.shutdown()
    subprocess.run(["umount", "-l", os.path.join(scratch, "ro")], capture_output=True)
    subprocess.run(["umount", "-l", os.path.join(scratch, "full")], capture_output=True)
    shutil.rmtree(scratch, ignore_errors=True)


def one_line(p: subprocess.CompletedProcess, prog: str) -> str:
    err = p.stderr.decode()
    lines = [x for x in err.splitlines() if x.startswith(prog + ":")]
    assert len(lines) == 1 and "Traceback" not in err and "[Errno" not in err, err
    return lines[0]


def cat_small(site, cache, *options, offline=False, env=None):
    """The small file through both tools, as nobody: (parrot_cvmfs, parrot_run) results."""
    cli = site.run(
        ["parrot_cvmfs", "cat", NAME, "/small.txt", "--cache-dir", cache, *options],
        offline=offline,
        env=env,
    )
    run = site.run(
        ["parrot_run", "--cache-dir", cache, *options, "--", "cat", f"{MNT}/small.txt"],
        offline=offline,
        env=env,
    )
    return cli, run


def test_cache_of_another_user_is_refused(site):
    """root's populated cache, used by nobody: one line naming the owner and what to
    do, for both tools (before: `[Errno 13] ... lock_objects`)."""
    cache = os.path.join(site.scratch, "root-cache")
    p = site.run(["parrot_cvmfs", "cat", NAME, "/small.txt", "--cache-dir", cache], nobody=False)
    assert p.returncode == 0 and p.stdout == SMALL, p.stderr.decode()
    subprocess.run(["chmod", "-R", "a+rX", cache], check=True)  # readable, not writable
    for p, prog in zip(cat_small(site, cache), ("parrot_cvmfs", "parrot_run"), strict=True):
        assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
        line = one_line(p, prog)
        assert f"cache directory {cache} belongs to user root (uid 0)" in line, line
        assert "belongs to one user" in line and f"--alien-cache {cache}" in line, line


def test_unwritable_empty_cache_is_refused(site):
    cache = site.nobody_dir("unwritable")
    os.chmod(cache, 0o555)
    for p, prog in zip(cat_small(site, cache), ("parrot_cvmfs", "parrot_run"), strict=True):
        assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
        line = one_line(p, prog)
        assert f"cache directory {cache} is not writable" in line, line
        assert "give --cache-dir a directory you can write" in line, line


def _populate_as_nobody(site, cache: str) -> None:
    p = site.run(["parrot_run", "--cache-dir", cache, "--", "cat", f"{MNT}/small.txt"])
    assert p.returncode == 0 and p.stdout == SMALL, p.stderr.decode()


@pytest.mark.parametrize("how", ["read-only mount", "write bits removed"])
def test_read_only_populated_cache_is_read_as_alien(site, how):
    """nobody's populated cache, unwritable, given as --cache-dir: read as an alien
    cache (said once, on one line), offline too; what the run writes goes to the
    per-user cache (before: "cannot open quota database" and ENOENT for the job)."""
    tag = how.split()[0]
    own = site.nobody_dir(f"own-{tag}")
    _populate_as_nobody(site, own)
    home = site.nobody_dir(f"home-{tag}")
    if how == "read-only mount":
        ro = os.path.join(site.scratch, "ro")
        os.makedirs(ro)
        if subprocess.run(["mount", "--bind", own, ro], capture_output=True).returncode != 0:
            pytest.skip("cannot bind-mount here")
        subprocess.run(["mount", "-o", "remount,ro,bind", ro], check=True)
        why = "is on a read-only file system"
    else:
        ro = own
        subprocess.run(["chmod", "-R", "a-w", ro], check=True)
        why = "is not writable"
    try:
        default = os.path.join(home, ".cache", "parrot-cvmfs")
        for offline in (False, True):
            options = ["--offline"] if offline else []
            results = cat_small(site, ro, *options, offline=offline, env={"HOME": home})
            for p, prog in zip(results, ("parrot_cvmfs", "parrot_run"), strict=True):
                assert p.returncode == 0 and p.stdout == SMALL, p.stderr.decode()
                line = one_line(p, prog)
                assert f"cache directory {ro} {why}" in line, line
                assert f"reading its objects as an alien cache, writing to {default}" in line
        assert os.path.isdir(os.path.join(default, "txn"))
        assert os.stat(default).st_uid == NOBODY
    finally:
        if how == "read-only mount":
            subprocess.run(["umount", ro], check=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", ro], check=True)


def test_read_only_populated_cache_without_a_per_user_cache(site):
    """The per-user cache cannot be made (HOME not writable): one line with both
    directories and what to do."""
    own = site.nobody_dir("own-nohome")
    _populate_as_nobody(site, own)
    subprocess.run(["chmod", "-R", "a-w", own], check=True)
    try:
        env = {"HOME": "/nonexistent"}
        p = site.run(["parrot_cvmfs", "cat", NAME, "/small.txt", "--cache-dir", own], env=env)
        assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
        line = one_line(p, "parrot_cvmfs")
        assert f"cache directory {own} is not writable, and the per-user cache" in line, line
        assert "/nonexistent/.cache/parrot-cvmfs" in line and f"--alien-cache {own}" in line
    finally:
        subprocess.run(["chmod", "-R", "u+w", own], check=True)


@pytest.fixture
def full_disk(site):
    d = os.path.join(site.scratch, "full")
    os.makedirs(d, exist_ok=True)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", d], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield d
    subprocess.run(["umount", d], check=True)


@pytest.mark.parametrize("path", ["/whole.bin", "/chunked.bin"])
def test_full_cache_disk(site, full_disk, path):
    """The object does not fit: nothing on stdout and one line naming the cache
    directory (parrot_cvmfs), EIO for the program (parrot_run)."""
    cache = os.path.join(full_disk, "cache")
    p = site.run(["parrot_cvmfs", "cat", NAME, path, "--cache-dir", cache], nobody=False)
    assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
    line = one_line(p, "parrot_cvmfs")
    assert f"in cache {cache}: No space left on device" in line, line
    p = site.run(
        ["parrot_run", "--cache-dir", cache, "--", "cat", f"{MNT}{path}"],
        nobody=False,
    )
    assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
    line = one_line(p, "parrot_run")
    assert f"in cache {cache}: No space left on device" in line, line
    assert f"cat: {MNT}{path}: Input/output error" in p.stderr.decode()
    assert os.listdir(os.path.join(cache, "txn")) == []  # nothing half-written left
    # what fits is still served
    p = site.run(
        ["parrot_run", "--cache-dir", cache, "--", "cat", f"{MNT}/small.txt"], nobody=False
    )
    assert p.returncode == 0 and p.stdout == SMALL, p.stderr.decode()
