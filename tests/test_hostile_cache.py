"""A hostile cache: objects planted, truncated, resized, replaced by links, fifos or
directories; aliases replaced; links planted for the cache's own files.

A cache file is served only if it is a regular file of the size its catalog entry
gives (one of that size is trusted, as the cvmfs client trusts its cache). In the
local cache a wrong one is fetched again; in an alien cache, which is not ours to
repair, it is EIO and one line naming the object and the directory. Through
`parrot_cvmfs cat` and through `parrot_run cat`, warm (the second run's open is
replayed by C from the kept answers, which check the size too)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.fetch import ASSEMBLED, chunk_list_key
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.server.chunking import ChunkSizes
from parrot_cvmfs.server.serve import StratumServer

from .conftest import Cli, base_env, repo_spec
from .servers import dead_url
from .treegen import publish_files

NAME = "hostile-cache.test.org"
MNT = f"/cvmfs/{NAME}"
PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]
FILES = {
    "/a.txt": b"hello\n",
    "/b.txt": b"second file\n",
    "/empty": b"",
    "/chunked.bin": bytes((i * 7 + i // 251) % 256 for i in range(40_000)),
}
PLANTED = b"HELLO\n"  # same size as a.txt, other bytes
HOST_SECRET = b"EVIL!\n"  # a host file of a.txt's size a planted link points to


class Repo:
    def __init__(self, env: dict[str, str], offline_env: dict[str, str], alien: str, base: str):
        self.env, self.offline_env, self.alien, self.base = env, offline_env, alien, base
        self.secret = os.path.join(base, "secret")
        self.names = _object_names(env, os.path.join(base, "names-cache"))


def _object_names(env: dict[str, str], cache: str) -> dict[str, str]:
    """The cache name (`xx/rest`) of each file, and of one chunk of the chunked one."""
    out = {}
    with Repository.mount(NAME, cache_dir=cache, config=Configuration(env=env)) as repo:
        for path in FILES:
            e = repo.lookup(path)
            if e.is_chunked:
                chunks = repo.chunks(e)
                out[path] = chunk_list_key(chunks).cache_name() + ASSEMBLED
                out["chunk"] = chunks[1][2].cache_name()
            elif e.hash is not None:
                out[path] = e.hash.cache_name()
        from parrot_cvmfs.format.hashes import Algorithm, hash_bytes

        out.setdefault("/empty", hash_bytes(Algorithm.SHA1, b"").cache_name())
        out["root catalog"] = repo.root_hash.cache_name()
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("hostile-cache"))
    # chunked.bin: many chunks
    stratum, keys = publish_files(base, NAME, FILES, ChunkSizes(1024, 2048, 4096))
    pubkey = os.path.join(keys, f"{NAME}.pub")
    srv = StratumServer(stratum)
    srv.start_background()
    env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", pubkey))
    alien = os.path.join(base, "alien")
    p = subprocess.run(
        [sys.executable, "-m", "parrot_cvmfs", "preload", "-u", f"{srv.url}/{NAME}", "-r", alien]
        + ["-k", pubkey],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr.decode()
    offline_env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, dead_url(NAME), pubkey))
    r = Repo(env, offline_env, alien, base)
    with open(r.secret, "wb") as f:
        f.write(HOST_SECRET)
    yield r
    srv.shutdown()


def warm(repo: Repo, cache: str, *paths: str) -> None:
    """Fetch files into a local cache (in this process: quicker than a command)."""
    with Repository.mount(NAME, cache_dir=cache, config=Configuration(env=repo.env)) as r:
        for path in paths:
            assert r.read(path) == FILES[path]


def tamper(path: str, kind: str, secret: str) -> None:
    """Change the cache file at `path` in the way `kind` names."""
    if kind == "truncated":
        os.truncate(path, os.lstat(path).st_size // 2)  # in place: its aliases too
        return
    if kind == "larger":
        with open(path, "ab") as f:
            f.write(b"EXTRA BYTES")
        return
    os.unlink(path)
    if kind == "same-size":
        with open(path, "wb") as f:
            f.write(PLANTED)
    elif kind == "symlink":
        os.symlink(secret, path)
    elif kind == "directory":
        os.mkdir(path)
        with open(os.path.join(path, "inside"), "wb") as f:
            f.write(b"x")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        raise AssertionError(kind)


def aliases_of(cache: str, name: str) -> list[str]:
    return glob.glob(os.path.join(cache, "aliases", name + "~*"))


def one_line(err: bytes, prog: str) -> str:
    lines = [x for x in err.decode().splitlines() if x.startswith(prog + ":")]
    assert len(lines) == 1, err.decode()
    return lines[0]


def assert_refused(err: bytes, prog: str, name: str, directory: str) -> None:
    line = one_line(err, prog)
    assert name in line and directory in line and "Traceback" not in err.decode(), line


# -- parrot_cvmfs cat --------------------------------------------------------------------------

KINDS = ["same-size", "truncated", "larger", "symlink", "directory", "fifo"]


@pytest.mark.parametrize("kind", KINDS)
def test_cli_local_cache_fetches_a_wrong_object_again(repo, tmp_path, kind):
    cache = str(tmp_path / "cache")
    warm(repo, cache, "/a.txt")
    obj = os.path.join(cache, repo.names["/a.txt"])
    tamper(obj, kind, repo.secret)
    p = Cli(repo.env)("cat", NAME, "/a.txt", "--cache-dir", cache, timeout=60)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
    if kind == "same-size":  # trusted, as the cvmfs client trusts its cache (README)
        assert p.stdout == PLANTED
        return
    assert p.stdout == FILES["/a.txt"]
    s = os.lstat(obj)
    assert os.path.isfile(obj) and not os.path.islink(obj) and s.st_size == len(FILES["/a.txt"])
    with open(repo.secret, "rb") as f:
        assert f.read() == HOST_SECRET


@pytest.mark.parametrize("path", ["/chunked.bin", "/empty"])
def test_cli_local_cache_assembled_and_empty_files(repo, tmp_path, path):
    """The size check covers a chunked file's assembled copy and the empty file."""
    cache = str(tmp_path / "cache")
    warm(repo, cache, path)
    obj = os.path.join(cache, repo.names[path])
    if path == "/empty":
        os.chmod(obj, 0o600)
        with open(obj, "wb") as f:
            f.write(b"not empty\n")
    else:
        tamper(obj, "truncated", repo.secret)
    p = Cli(repo.env)("cat", NAME, path, "--cache-dir", cache)
    assert p.returncode == 0 and p.stdout == FILES[path], p.stderr.decode()


@pytest.mark.parametrize("kind", KINDS)
def test_cli_alien_cache_refuses_a_wrong_object(repo, tmp_path, kind):
    alien = str(tmp_path / "alien")
    shutil.copytree(repo.alien, alien, symlinks=True)
    tamper(os.path.join(alien, repo.names["/a.txt"]), kind, repo.secret)
    cli = Cli(repo.offline_env)
    args = ("--alien-cache", alien, "--offline", "--cache-dir", str(tmp_path / "cache"))
    p = cli("cat", NAME, "/a.txt", *args, timeout=60)
    if kind == "same-size":
        assert p.returncode == 0 and p.stdout == PLANTED, p.stderr.decode()
        return
    assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
    assert_refused(p.stderr, "parrot_cvmfs", repo.names["/a.txt"], alien)
    if kind == "symlink":  # the other files are served as before
        assert cli("cat", NAME, "/b.txt", *args, check=True).stdout == FILES["/b.txt"]


def test_cli_alien_cache_refuses_a_wrong_chunk(repo, tmp_path):
    alien = str(tmp_path / "alien")
    shutil.copytree(repo.alien, alien, symlinks=True)
    tamper(os.path.join(alien, repo.names["chunk"]), "larger", repo.secret)
    p = Cli(repo.offline_env)(
        "cat",
        NAME,
        "/chunked.bin",
        *("--alien-cache", alien, "--offline", "--cache-dir", str(tmp_path / "cache")),
    )
    assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
    assert_refused(p.stderr, "parrot_cvmfs", repo.names["chunk"], alien)


PLANTS = ["cvmfschecksum", "lock_objects", "cachedb", "txn", "subdirectory"]


@pytest.mark.parametrize("what", PLANTS)
def test_cli_planted_link_among_the_cache_files_is_refused(repo, tmp_path, what):
    """A link in place of one of the cache's own files or directories is never followed:
    one line naming it, and nothing read or written where it points."""
    cache = str(tmp_path / "cache")
    warm(repo, cache, "/a.txt")
    elsewhere = str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    target = os.path.join(elsewhere, "file")
    with open(target, "wb") as f:
        f.write(b"not the cache's\n")
    name = {
        "cvmfschecksum": f"cvmfschecksum.{NAME}",
        "subdirectory": repo.names["/b.txt"][:2],
    }.get(what, what)
    planted = os.path.join(cache, name)
    if os.path.isdir(planted) and not os.path.islink(planted):
        shutil.rmtree(planted)
    elif os.path.lexists(planted):
        os.unlink(planted)
    os.symlink(elsewhere if what in ("txn", "subdirectory") else target, planted)
    p = Cli(repo.env)("cat", NAME, "/b.txt", "--cache-dir", cache)
    assert p.returncode == 1 and p.stdout == b"", p.stderr.decode()
    line = one_line(p.stderr, "parrot_cvmfs")
    assert "symbolic link" in line and name in line and cache in line, line
    assert os.listdir(elsewhere) == ["file"]
    with open(target, "rb") as f:
        assert f.read() == b"not the cache's\n"


def test_cli_offline_manifest_planted_as_link_is_refused(repo, tmp_path):
    alien = str(tmp_path / "alien")
    shutil.copytree(repo.alien, alien, symlinks=True)
    manifest = os.path.join(alien, f"manifest.{NAME}")
    os.unlink(manifest)
    os.symlink(repo.secret, manifest)
    p = Cli(repo.offline_env)(
        "info", NAME, "--alien-cache", alien, "--offline", "--cache-dir", str(tmp_path / "c")
    )
    assert p.returncode == 1, p.stderr.decode()
    line = one_line(p.stderr, "parrot_cvmfs")
    assert "symbolic link" in line and f"manifest.{NAME}" in line and alien in line, line


# -- aliases, in the library -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "other-file", "same-size-file", "directory"])
def test_alias_that_is_not_its_object_is_replaced(repo, tmp_path, kind):
    cache_dir = str(tmp_path / "cache")
    with Repository.mount(NAME, cache_dir=cache_dir, config=Configuration(env=repo.env)) as r:
        obj = r.local_path("/a.txt")
        alias = r.cache.alias(obj, "7")
        assert os.path.samefile(alias, obj) and alias != obj
        os.unlink(alias)
        if kind == "symlink":
            os.symlink(repo.secret, alias)
        elif kind == "directory":
            os.mkdir(alias)
        else:
            with open(alias, "wb") as f:
                f.write(b"other bytes\n" if kind == "other-file" else PLANTED)
        again = r.cache.alias(obj, "7")
        if kind == "directory":  # cannot be replaced atomically: the object itself
            assert again == obj
            return
        assert again == alias and not os.path.islink(alias)
        s, o = os.lstat(alias), os.lstat(obj)
        assert (s.st_dev, s.st_ino) == (o.st_dev, o.st_ino)


def test_quota_cleanup_unlinks_only_objects(tmp_path):
    """`cachedb` rows are hints: one naming a path outside the objects' directories is
    dropped, nothing is unlinked there."""
    from parrot_cvmfs.client.cache import ObjectCache

    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me\n")
    cache = ObjectCache(str(tmp_path / "cache"), quota_bytes=1 << 20)
    try:
        rows = [("../outside", 10, 1.0, 0), ("00/../../outside", 10, 1.0, 0)]
        cache.quota._write("INSERT INTO objects VALUES (?, ?, ?, ?)", rows)
        cache.quota.cleanup(target=0)
        assert outside.read_bytes() == b"keep me\n"
        assert cache.quota._db.execute("SELECT count(*) FROM objects").fetchone()[0] == 0
    finally:
        cache.close()


# -- parrot_run cat, twice ---------------------------------------------------------------------


def parrot_cat(env, mode, cache, *options):
    """`cat b.txt a.txt` under parrot_run: the first /cvmfs call (which mounts the
    repository) is Python's, the open of a.txt is replayed by C once it was kept."""
    return subprocess.run(
        [*PARROT, "--cache-dir", cache, *options, "--", "cat", f"{MNT}/b.txt", f"{MNT}/a.txt"],
        env={**env, "PARROT_CVMFS_MODE": mode},
        capture_output=True,
        timeout=120,
    )


# In place (the object's aliases change with it: C's kept open must notice, checked
# in both modes: C checks differently in each), or the object replaced (its aliases
# gone, as after an eviction: Python's lookup must notice).
RUN_KINDS = [
    ("notify", "truncated"),
    ("notify", "larger"),
    ("notify", "symlink"),
    ("notify", "alias-symlink"),
    ("notify", "alias-other-size"),
    ("ptrace", "truncated"),
    ("ptrace", "directory"),
    ("ptrace", "alias-symlink"),
]


@pytest.mark.parametrize("mode,kind", RUN_KINDS)
def test_parrot_run_local_cache(repo, tmp_path, mode, kind):
    cache = str(tmp_path / "cache")
    want = FILES["/b.txt"] + FILES["/a.txt"]
    first = parrot_cat(repo.env, mode, cache)
    assert first.returncode == 0 and first.stdout == want, first.stderr.decode()
    name = repo.names["/a.txt"]
    aliases = aliases_of(cache, name)
    assert aliases, "the open was not served from an alias"
    if kind.startswith("alias-"):
        for a in aliases:
            os.unlink(a)
            if kind == "alias-symlink":
                os.symlink(repo.secret, a)
            else:
                with open(a, "wb") as f:
                    f.write(b"another file\n")
    else:
        if kind in ("symlink", "directory"):
            for a in aliases:
                os.unlink(a)
        tamper(os.path.join(cache, name), kind, repo.secret)
    for _ in range(2):  # repaired by Python, then replayed by C again
        p = parrot_cat(repo.env, mode, cache)
        assert p.returncode == 0 and p.stdout == want, (p.stdout, p.stderr.decode())
        assert p.stderr == b"", p.stderr.decode()


@pytest.mark.parametrize(
    "mode,kind",
    [("notify", "truncated"), ("notify", "symlink"), ("notify", "same-size"), ("ptrace", "larger")],
)
def test_parrot_run_alien_cache(repo, tmp_path, mode, kind):
    alien, cache = str(tmp_path / "alien"), str(tmp_path / "cache")
    shutil.copytree(repo.alien, alien, symlinks=True)
    options = ("--alien-cache", alien, "--offline")
    first = parrot_cat(repo.offline_env, mode, cache, *options)
    b = FILES["/b.txt"]
    assert first.returncode == 0 and first.stdout == b + FILES["/a.txt"], first.stderr.decode()
    name = repo.names["/a.txt"]
    if kind not in ("truncated", "larger"):
        for a in aliases_of(cache, name):
            os.unlink(a)
    tamper(os.path.join(alien, name), kind, repo.secret)
    for _ in range(2):
        p = parrot_cat(repo.offline_env, mode, cache, *options)
        if kind == "same-size":
            assert p.returncode == 0 and p.stdout == b + PLANTED, p.stderr.decode()
            continue
        assert p.returncode == 1 and p.stdout == b, (p.stdout, p.stderr.decode())
        assert_refused(p.stderr, "parrot_run", name, alien)
        assert "Input/output error" in p.stderr.decode()


def test_preload_again_replaces_a_wrong_object(repo, tmp_path):
    """A preload resumed over a directory with a truncated object and a planted link
    fetches both again (the lookup's check), instead of counting them as stored."""
    alien = str(tmp_path / "alien")
    shutil.copytree(repo.alien, alien, symlinks=True)
    os.unlink(os.path.join(alien, repo.names["root catalog"]))  # as if interrupted
    a, b = (os.path.join(alien, repo.names[p]) for p in ("/a.txt", "/b.txt"))
    tamper(a, "truncated", repo.secret)
    tamper(b, "symlink", repo.secret)
    url = repo.env["PARROT_CVMFS_REPO"].split("url=", 1)[1].split(",", 1)[0]
    p = subprocess.run(
        [sys.executable, "-m", "parrot_cvmfs", "preload", "-u", url, "-r", alien, "-k"]
        + [repo.env["PARROT_CVMFS_REPO"].split("pubkey=", 1)[1].split(",", 1)[0]],
        env=repo.env,
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr.decode()
    for path, obj in (("/a.txt", a), ("/b.txt", b)):
        assert not os.path.islink(obj)
        with open(obj, "rb") as f:
            assert f.read() == FILES[path]


@pytest.mark.parametrize("mode", ["notify", "ptrace"])
def test_parrot_run_replayed_open_has_the_programs_flags(repo, tmp_path, mode):
    """The checks C makes before it replays an open leave nothing in the descriptor's
    flags (fdinfo): they are those of a native open of a local file."""
    local = os.path.join(repo.base, "src", "a.txt")
    script = (
        f"exec 3<{MNT}/b.txt; exec 4<{MNT}/a.txt; exec 5<{local};"
        " grep ^flags /proc/self/fdinfo/4 /proc/self/fdinfo/5"
    )
    cmd = [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--", "/bin/sh", "-c", script]
    for _ in range(2):  # the second run's open of a.txt is replayed by C
        p = subprocess.run(
            cmd, env={**repo.env, "PARROT_CVMFS_MODE": mode}, capture_output=True, timeout=120
        )
        assert p.returncode == 0, p.stderr.decode()
        flags = [line.split()[-1] for line in p.stdout.decode().splitlines()]
        assert len(flags) == 2 and flags[0] == flags[1], p.stdout.decode()
