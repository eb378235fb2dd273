"""Descriptors bounded whatever the input: a repository of 1,100 nested catalogs walked
under a soft RLIMIT_NOFILE of 256 (by the CLI, the library and parrot_run in both
modes), catalogs closed past the bound and reopened on demand (fetched again if the
cache evicted them, refused if the file is no longer the one checked), the cache's lock
descriptors per thread, and the job's RLIMIT_NOFILE under parrot_run as it was given."""

from __future__ import annotations

import glob
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.errors import CatalogError
from parrot_cvmfs.format import database
from parrot_cvmfs.format.database import Database
from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec
from .test_parrot_run import Parrot

pytestmark = pytest.mark.slow  # a repository of 1,100 catalogs, walked several ways

NAME = "nest.test.org"
DIRS = 1100  # each with a .cvmfscatalog: 1,100 nested catalogs below the root
SOFT = 256
CLI = [sys.executable, "-m", "parrot_cvmfs"]


@pytest.fixture(scope="module")
def nest(tmp_path_factory):
    """(source tree, env) of the published repository, served over loopback."""
    base = tmp_path_factory.mktemp("nest")
    src, stratum, keys = str(base / "src"), str(base / "stratum"), str(base / "keys")
    for i in range(DIRS):
        d = f"{src}/d{i:04d}"
        os.makedirs(d)
        open(f"{d}/.cvmfscatalog", "w").close()
        for name in ("a", "b"):
            with open(f"{d}/{name}", "w") as f:
                f.write(f"{name}{i}\n")
    result = publish(
        PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys, tag="first")
    )
    assert result.catalogs == DIRS + 1
    srv = StratumServer(stratum)
    srv.start_background()
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", os.path.join(keys, f"{NAME}.pub")),
        LC_ALL="C",
    )
    yield src, env
    srv.shutdown()


def _limit(soft: int, hard: int | None = None):
    """A preexec_fn: RLIMIT_NOFILE's soft limit `soft` (and the hard one `hard`)."""

    def apply() -> None:
        _, h = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, h if hard is None else hard))

    return apply


def _files(src: str) -> list[str]:
    """The regular files below `src`, as paths relative to it ('./d0000/a')."""
    out = []
    for dp, _, fs in os.walk(src):
        out += ["." + os.path.join(dp, f)[len(src) :] for f in fs]
    return sorted(out)


def test_cli_find_under_a_low_descriptor_limit(nest, tmp_path):
    src, env = nest
    p = subprocess.run(
        [*CLI, "find", NAME, "/", "--cache-dir", str(tmp_path / "c")],
        env=env,
        capture_output=True,
        timeout=300,
        preexec_fn=_limit(SOFT),
    )
    assert (p.returncode, p.stderr.decode()) == (0, "")
    found = set(p.stdout.decode().splitlines())
    assert {"." + f for f in found if f != "/"} >= set(_files(src))
    assert len(found) == 1 + DIRS + len(_files(src))


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def mode(request):
    return {"PARROT_CVMFS_MODE": request.param}


# the hard limit as it is (the supervisor may raise its own soft limit), and at 256 too
@pytest.mark.parametrize("hard", [None, SOFT], ids=["soft", "soft-and-hard"])
def test_parrot_run_find_under_a_low_descriptor_limit(nest, mode, hard, tmp_path):
    src, env = nest
    parrot = Parrot({**env, **mode}, str(tmp_path / "c"))
    p = parrot("find", f"/cvmfs/{NAME}", "-type", "f", preexec_fn=_limit(SOFT, hard))
    assert (p.returncode, p.stderr.decode()) == (0, "")
    found = sorted(p.stdout.decode().replace(f"/cvmfs/{NAME}", ".").splitlines())
    assert found == _files(src)


def test_the_jobs_descriptor_limit_is_the_one_it_was_given(nest, mode, tmp_path):
    """The supervisor raises its own soft limit, after the job was forked: the job (and
    what it starts) sees exactly the limits it was started with."""
    _, env = nest
    parrot = Parrot({**env, **mode}, str(tmp_path / "c"))
    script = "ulimit -Sn; ulimit -Hn; sh -c 'ulimit -Sn'"
    for soft, hard in ((SOFT, None), (SOFT, 4096), (1024, None)):
        native = subprocess.run(
            ["sh", "-c", script], capture_output=True, preexec_fn=_limit(soft, hard)
        )
        traced = parrot("sh", "-c", script, preexec_fn=_limit(soft, hard))
        assert traced.returncode == 0, traced.stderr
        assert traced.stdout == native.stdout
        assert traced.stdout.split()[0] == str(soft).encode()


# -- the library: the bound, reopening, and what a reopen refuses ---------------------------------


def _open_cache_files(cache: str, objects_only: bool = False) -> int:
    """How many descriptors of this process point into `cache` (a directory), or only
    to its objects (`xx/...`: here catalogs, as contents are not kept open)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(cache + "/"):
            rel = target[len(cache) + 1 :]
            n += not objects_only or (rel[2:3] == "/" and rel[:2] != "tx")
    return n


def test_catalogs_closed_past_the_bound_are_reopened(nest, tmp_path, monkeypatch):
    """A walk attaches every catalog with at most OPEN_MAX open; a catalog whose file
    the cache evicted while it was closed is fetched again; the history database too
    comes back after the bound closed it."""
    src, env = nest
    limit = 16
    monkeypatch.setattr(database, "OPEN_MAX", limit, raising=False)
    cache = str(tmp_path / "c")
    config = Configuration(env=env)
    with Repository.mount(NAME, cache_dir=cache, config=config, tag="first") as repo:
        peak = 0
        files = []
        for e in repo.walk("/"):
            if e.is_regular:
                files.append("." + e.path)
            if len(files) % 100 == 0:
                peak = max(peak, _open_cache_files(cache))
        assert sorted(files) == _files(src)
        assert len(repo.ns.mounted) == DIRS + 1  # all attached, not all open
        # and lock_objects, the quota's cachedb with its -wal and -shm
        assert peak <= limit + 4
        # every object gone from the cache: what is reopened is fetched again
        for f in glob.glob(f"{cache}/[0-9a-f][0-9a-f]/*"):
            os.unlink(f)
        repo.ns._entries.clear()
        assert [repo.read(f"/d{i:04d}/b") for i in (0, 550, 1099)] == [
            b"b0\n",
            b"b550\n",
            b"b1099\n",
        ]
        assert sorted(t.name for t in repo.tags()) == ["first", "trunk"]
        assert _open_cache_files(cache) <= limit + 4


def test_threads_share_the_bounded_catalogs(nest, tmp_path, monkeypatch):
    """Threads looking up and listing across the catalogs, far more than may be open:
    each gets the right answers while the others close and reopen catalogs."""
    _, env = nest
    limit = 8
    monkeypatch.setattr(database, "OPEN_MAX", limit, raising=False)
    cache = str(tmp_path / "c")
    errors: list[str] = []
    peaks: list[int] = []
    with Repository.mount(NAME, cache_dir=cache, config=Configuration(env=env)) as repo:

        def work(seed: int) -> None:
            try:
                for k in range(300):
                    i = (seed * 7919 + k * 104729) % DIRS
                    d = f"/d{i:04d}"
                    assert sorted(repo.listdir(d)) == [".cvmfscatalog", "a", "b"], d
                    e = repo.ns.children_catalog(repo.lookup(d)).lookup(d + "/b")
                    assert e is not None and e.size == len(f"b{i}\n"), d
                    if k % 50 == 0:
                        peaks.append(_open_cache_files(cache, objects_only=True))
            except Exception as e:  # reported below, with the thread's others
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        # a reopened catalog's connection is open before the sweep closes another
        assert max(peaks) <= limit + len(threads)


def _catalog_copy(nest, tmp_path) -> str:
    src, env = nest
    with Repository.mount(NAME, cache_dir=str(tmp_path / "c"), config=Configuration(env=env)) as r:
        path = r.ns.root.db_path
        shutil.copy(path, tmp_path / "root.db")
    return str(tmp_path / "root.db")


def test_a_reopened_database_is_checked_again(nest, tmp_path, monkeypatch):
    """A file replaced while its connection was closed is refused if it is no longer a
    database of the schema checked (here: a view where the catalog table was)."""
    from parrot_cvmfs.format.catalog import CATALOG_SCHEMA

    monkeypatch.setattr(database, "OPEN_MAX", 4, raising=False)
    path = _catalog_copy(nest, tmp_path)
    db = Database(path, "catalog X at /", CATALOG_SCHEMA, ("properties", "catalog"))
    db.columns("catalog")
    assert db.query("SELECT count(*) FROM catalog", ())[0][0] > 0
    others = []
    for i in range(8):  # past the bound: `db`, the oldest, is closed
        shutil.copy(path, tmp_path / f"other{i}.db")
        others.append(Database(str(tmp_path / f"other{i}.db"), f"o{i}", CATALOG_SCHEMA, ()))
        others[-1].query("SELECT 1", ())
    assert _open_cache_files(str(tmp_path)) <= 4
    assert db.query("SELECT count(*) FROM catalog", ())[0][0] > 0  # reopened
    for o in others:
        o.query("SELECT 1", ())  # and closed again
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE catalog RENAME TO real_catalog")
    con.execute("CREATE VIEW catalog AS SELECT * FROM real_catalog")
    con.commit()
    con.close()
    with pytest.raises(
        CatalogError,
        match=r"^malformed catalog X at /: its schema changed since it was first opened$",
    ):
        db.query("SELECT count(*) FROM catalog", ())
    for o in [db, *others]:
        o.close()
    with pytest.raises(CatalogError, match="was closed"):
        db.query("SELECT 1", ())


def test_lock_descriptors_go_with_their_threads(nest, tmp_path):
    """Each thread locks objects through its own description of lock_objects: a program
    that starts a thread per request does not keep one descriptor per thread."""
    _, env = nest
    cache = str(tmp_path / "c")
    with Repository.mount(NAME, cache_dir=cache, config=Configuration(env=env)) as repo:

        def one(i: int) -> None:
            with repo.cache.lock(f"{i:040x}"):
                pass

        one(0)
        before = _open_cache_files(cache)
        for i in range(50):
            t = threading.Thread(target=one, args=(i,))
            t.start()
            t.join()
        assert _open_cache_files(cache) == before
