"""What `cvmfs_swissknife check` and the real server's tools ask of a repository, checked
with SQL on our publisher's output: hardlink groups inside one directory with link
counts equal to their sizes, a `.cvmfscatalog` in every nested catalog root, a reflog
holding every root catalog, certificate and tag database, the manifest's `Y` its hash,
and `mtimens` 0 for whole-second mtimes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import zlib

import pytest

from parrot_cvmfs.errors import ConfigError
from parrot_cvmfs.format.entry import md5path
from parrot_cvmfs.format.hashes import hash_bytes
from parrot_cvmfs.format.manifest import Manifest
from parrot_cvmfs.format.reflog import (
    REF_CATALOG,
    REF_CERTIFICATE,
    REF_HISTORY,
    REFLOG_FILE,
    Reflog,
)
from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import Cli, base_env

NAME = "interop.test"
EMPTY_OBJECT = "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"  # zlib of b"", SHA-1


class Repo:
    """Our publisher's output for one source tree, read with plain sqlite3."""

    def __init__(self, base, source: str, dirtab: str | None = None):
        self.base = base
        self.src = source
        self.stratum = str(base / "stratum")
        self.keys = str(base / "keys")
        self.dirtab = dirtab
        self.dir = os.path.join(self.stratum, NAME)
        self.n = 0

    def publish(self, **kw):
        opts = PublishOptions(
            source=self.src, name=NAME, stratum=self.stratum, keys_dir=self.keys, **kw
        )
        if self.dirtab:
            opts.dirtab = self.dirtab
        return publish(opts)

    def manifest(self) -> Manifest:
        with open(os.path.join(self.dir, ".cvmfspublished"), "rb") as f:
            return Manifest.parse(f.read())

    def open_db(self, hex_hash: str, suffix: str = "C") -> sqlite3.Connection:
        with open(os.path.join(self.dir, "data", hex_hash[:2], hex_hash[2:] + suffix), "rb") as f:
            data = zlib.decompress(f.read())
        self.n += 1
        path = self.base / f"db{self.n}.sqlite"
        path.write_bytes(data)
        return sqlite3.connect(path)

    def catalogs(self) -> dict[str, sqlite3.Connection]:
        """mountpoint -> catalog of the current revision."""
        out, todo = {}, [("", self.manifest().root_hash.hex)]
        while todo:
            mp, h = todo.pop()
            db = out[mp] = self.open_db(h)
            todo += db.execute("SELECT path, sha1 FROM nested_catalogs").fetchall()
        return out

    def reflog(self) -> sqlite3.Connection:
        path = self.base / f"reflog{self.n}.sqlite"
        self.n += 1
        with open(os.path.join(self.dir, REFLOG_FILE), "rb") as f:
            path.write_bytes(f.read())
        return sqlite3.connect(path)


def rows(db: sqlite3.Connection, path: str) -> dict:
    """The catalog row of `path`: name, hardlink group, link count, parent, kind."""
    p1, p2 = md5path(path)
    r = db.execute(
        "SELECT name, hardlinks >> 32, hardlinks & 4294967295, parent_1, parent_2, mode, mtimens"
        " FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?",
        (p1, p2),
    ).fetchone()
    assert r is not None, path
    return dict(zip(("name", "group", "links", "p1", "p2", "mode", "mtimens"), r, strict=True))


def checker_hardlink_violations(db: sqlite3.Connection) -> list:
    """CommandCheck::Find's rules as SQL: a group in more than one directory, a group
    whose size is not its members' link count, a link count > 1 outside any group."""
    spans = db.execute(
        "SELECT hardlinks >> 32 FROM catalog WHERE hardlinks >> 32 > 0"
        " GROUP BY hardlinks >> 32 HAVING COUNT(DISTINCT parent_1 || ',' || parent_2) > 1"
    ).fetchall()
    sizes = db.execute(
        "SELECT hardlinks >> 32 FROM catalog WHERE hardlinks >> 32 > 0 GROUP BY hardlinks >> 32"
        " HAVING COUNT(*) != MIN(hardlinks & 4294967295) OR COUNT(*) != MAX(hardlinks & 4294967295)"
    ).fetchall()
    loose = db.execute(
        "SELECT name FROM catalog WHERE hardlinks >> 32 = 0 AND hardlinks & 4294967295 > 1"
        " AND (flags & 1) = 0"  # directories store 2 + subdirectories
    ).fetchall()
    return spans + sizes + loose


@pytest.fixture
def linked(tmp_path):
    """The issue's tree: a/x, a/x2, b/y one inode; c/s1, c/s2 one symlink; and a nested
    catalog with groups of both kinds in one directory."""
    s = tmp_path / "src"
    for d in ("a", "b", "c", "n/deep"):
        (s / d).mkdir(parents=True)
    (s / "a/x").write_bytes(b"one inode in three directories\n")
    os.link(s / "a/x", s / "a/x2")
    os.link(s / "a/x", s / "b/y")
    os.symlink("target", s / "c/s1")
    os.link(s / "c/s1", s / "c/s2", follow_symlinks=False)
    (s / "n/.cvmfscatalog").write_bytes(b"")
    (s / "n/deep/f1").write_bytes(b"first group\n")
    os.link(s / "n/deep/f1", s / "n/deep/f2")
    os.symlink("elsewhere", s / "n/deep/l1")
    os.link(s / "n/deep/l1", s / "n/deep/l2", follow_symlinks=False)
    (s / "n/g1").write_bytes(b"group in the catalog root\n")
    os.link(s / "n/g1", s / "n/g2")
    os.link(s / "n/g1", s / "n/deep/g3")  # a third link, in another directory
    return Repo(tmp_path, str(s))


def test_hardlink_groups_stay_in_their_directory(linked):
    linked.publish()
    cats = linked.catalogs()
    root, nested = cats[""], cats["/n"]
    x, x2, y = (rows(root, p) for p in ("/a/x", "/a/x2", "/b/y"))
    assert x["group"] == x2["group"] > 0 and x["links"] == x2["links"] == 2
    assert y["group"] == 0 and y["links"] == 1  # alone in b: a plain file
    s1, s2 = rows(root, "/c/s1"), rows(root, "/c/s2")
    assert stat.S_ISLNK(s1["mode"]) and stat.S_ISLNK(s2["mode"])
    assert s1["group"] == s2["group"] > 0 and s1["links"] == s2["links"] == 2
    assert s1["group"] != x["group"]
    g1, g2, g3 = (rows(nested, p) for p in ("/n/g1", "/n/g2", "/n/deep/g3"))
    assert g1["group"] == g2["group"] > 0 and g1["links"] == 2
    assert g3["group"] == 0 and g3["links"] == 1
    for db in cats.values():
        assert checker_hardlink_violations(db) == []


def test_hardlink_group_ids_as_the_real_server_assigns_them(linked):
    """Per catalog from 1 up; symlink groups first (added as the traversal leaves their
    directory), then the others, children's directories before their parents."""
    linked.publish()
    cats = linked.catalogs()
    root = cats[""]
    assert rows(root, "/c/s1")["group"] == 1 and rows(root, "/a/x")["group"] == 2
    nested = cats["/n"]
    assert rows(nested, "/n/deep/l1")["group"] == 1
    assert rows(nested, "/n/deep/f1")["group"] == 2
    assert rows(nested, "/n/g1")["group"] == 3
    for db in cats.values():
        ids = [r[0] for r in db.execute("SELECT DISTINCT hardlinks >> 32 FROM catalog")]
        assert sorted(i for i in ids if i) == list(range(1, len(ids)))


def test_hardlinks_read_back_as_the_groups(linked, tmp_path):
    """Our own client presents the split groups (one inode per group, its link count)
    and reads the manifest's new field."""
    linked.publish()
    from parrot_cvmfs.client.config import Configuration
    from parrot_cvmfs.client.repository import Repository

    from .conftest import repo_spec
    from .servers import FaultyServer, serving

    with serving(FaultyServer(linked.stratum)) as srv:
        env = base_env(
            PARROT_CVMFS_REPO=repo_spec(
                NAME, f"{srv.url}/{NAME}", os.path.join(linked.keys, f"{NAME}.pub")
            )
        )
        config = Configuration(env=env)
        with Repository.mount(NAME, cache_dir=str(tmp_path / "cache"), config=config) as repo:
            st_x, st_x2, st_y = (repo.stat(p) for p in ("/a/x", "/a/x2", "/b/y"))
            assert st_x.st_ino == st_x2.st_ino != st_y.st_ino
            assert (st_x.st_nlink, st_y.st_nlink) == (2, 1)
            # and shows the manifest's reflog field
            assert repo.info()["reflog"] == linked.manifest().fields["Y"]


@pytest.fixture
def dirtabbed(tmp_path):
    s = tmp_path / "src"
    for d in ("sw/v1/lib", "sw/v2", "sw/v3", "data"):
        (s / d).mkdir(parents=True)
        (s / d / "file").write_bytes(d.encode())
    (s / "sw/v3/.cvmfscatalog").write_bytes(b"")  # made by hand: kept as it is
    os.utime(s / "sw/v3/.cvmfscatalog", (1_500_000_000, 1_500_000_000))
    (s / ".cvmfsdirtab").write_text("/sw/*\n/data\n")
    return Repo(tmp_path, str(s))


def test_dirtab_catalogs_get_a_cvmfscatalog_marker(dirtabbed):
    dirtabbed.publish(timestamp=1_700_000_000)
    cats = dirtabbed.catalogs()
    assert sorted(cats) == ["", "/data", "/sw/v1", "/sw/v2", "/sw/v3"]
    for mp, db in cats.items():
        names = [r[0] for r in db.execute("SELECT name FROM catalog")]
        assert ".cvmfsautocatalog" not in names, mp
        if not mp:
            continue
        # the checker's rule: the root of every nested catalog holds a .cvmfscatalog
        p1, p2 = md5path(mp)
        marker = db.execute(
            "SELECT size, mode, hex(hash), flags, hardlinks, mtime, mtimens, uid, gid, symlink"
            " FROM catalog WHERE parent_1 = ? AND parent_2 = ? AND name = '.cvmfscatalog'",
            (p1, p2),
        ).fetchone()
        assert marker is not None, mp
        size, mode, h, flags, links, mtime, mtimens, uid, gid, target = marker
        assert (size, h.lower(), flags, links, target) == (0, EMPTY_OBJECT, 4, 1, ""), mp
        if mp == "/sw/v3":  # the source's own marker, as it is
            assert mtime == 1_500_000_000
            continue
        # as CreateCatalogMarkers: an empty 0644 file the publisher creates
        assert mode == stat.S_IFREG | 0o644 and (uid, gid) == (os.geteuid(), os.getegid())
        assert (mtime, mtimens) == (1_700_000_000, 0)


def test_dirtab_marker_keeps_its_first_mtime(dirtabbed):
    """The real server's marker is a file in the repository from then on: a later
    revision changes nothing in a catalog whose contents did not change."""
    dirtabbed.publish(timestamp=1_700_000_000)
    before = dict(dirtabbed.manifest().fields)
    first = {
        mp: db.execute("SELECT COUNT(*) FROM catalog").fetchone()
        for mp, db in dirtabbed.catalogs().items()
    }
    (dirtabbed.base / "src/data/new").write_bytes(b"new\n")
    dirtabbed.publish(timestamp=1_700_000_100)
    cats = dirtabbed.catalogs()
    p1, p2 = md5path("/sw/v1/.cvmfscatalog")
    mtime = (
        cats["/sw/v1"]
        .execute("SELECT mtime FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?", (p1, p2))
        .fetchone()
    )
    assert mtime == (1_700_000_000,)
    assert dirtabbed.manifest().fields["C"] != before["C"]
    assert set(first) == set(cats)
    # the untouched catalog is the same object as before
    root = cats[""]
    nested = dict(root.execute("SELECT path, sha1 FROM nested_catalogs"))
    assert nested["/sw/v1"] in _nested_of(dirtabbed, before["C"]).values()


def _nested_of(repo: Repo, root_hex: str) -> dict:
    return dict(repo.open_db(root_hex).execute("SELECT path, sha1 FROM nested_catalogs"))


def test_dirtab_marker_that_is_not_a_file_is_refused(dirtabbed):
    (dirtabbed.base / "src/sw/v2/.cvmfscatalog").mkdir()
    with pytest.raises(ConfigError, match=r"/sw/v2.*\.cvmfscatalog is a dir"):
        dirtabbed.publish()


def test_reflog_holds_every_revision(tmp_path):
    s = tmp_path / "src"
    s.mkdir()
    repo = Repo(tmp_path, str(s))
    roots, histories, certs = [], [], set()
    for i in range(3):
        (s / f"f{i}").write_bytes(b"revision %d\n" % i)
        repo.publish(timestamp=1_700_000_000 + i)
        m = repo.manifest()
        roots.append(m.root_hash.hex)
        histories.append(m.history.hex)
        certs.add(m.certificate.hex)
        with open(os.path.join(repo.dir, REFLOG_FILE), "rb") as f:
            data = f.read()
        # Y is the hash of the reflog's bytes, stored uncompressed at the top level
        assert m.reflog is not None and m.fields["Y"] == hash_bytes(m.root_hash.algorithm, data).hex
        assert data.startswith(b"SQLite format 3\0")
    db = repo.reflog()
    assert dict(db.execute("SELECT key, value FROM properties")) == {
        "schema": "1.0",
        "schema_revision": "0",
        "fqrn": NAME,
    }
    refs = {h: (t, ts) for h, t, ts in db.execute("SELECT hash, type, timestamp FROM refs")}
    for h in roots:
        assert refs[h][0] == REF_CATALOG
    for h in histories:
        assert refs[h][0] == REF_HISTORY
    for h in certs:
        assert refs[h] == (REF_CERTIFICATE, 1_700_000_000)  # first recorded, kept
    assert refs[roots[0]][1] == 1_700_000_000 and refs[roots[2]][1] == 1_700_000_002
    # nothing else: the real server records root catalogs only, not nested ones
    assert set(refs) == set(roots) | set(histories) | certs
    # and our own reader takes it
    log = Reflog(os.path.join(repo.dir, REFLOG_FILE))
    try:
        assert log.fqrn == NAME and len(log.references()) == len(refs)
        assert log.contains(repo.manifest().root_hash, REF_CATALOG)
    finally:
        log.close()


def test_reflog_started_for_a_repository_published_without_one(tmp_path):
    """A repository of an earlier publisher (no reflog, no Y): the next revision's reflog
    also holds the previous revision's objects and every tagged root catalog."""
    s = tmp_path / "src"
    s.mkdir()
    (s / "f").write_bytes(b"one\n")
    repo = Repo(tmp_path, str(s))
    repo.publish(tag="old")
    old = repo.manifest()
    (s / "f").write_bytes(b"one, again\n")
    repo.publish()
    previous = repo.manifest()
    os.unlink(os.path.join(repo.dir, REFLOG_FILE))
    _resign_without_y(repo)
    (s / "g").write_bytes(b"two\n")
    repo.publish()
    refs = dict(repo.reflog().execute("SELECT hash, type FROM refs"))
    assert refs[old.root_hash.hex] == REF_CATALOG  # known from its tag
    assert refs[previous.root_hash.hex] == REF_CATALOG
    assert refs[previous.history.hex] == REF_HISTORY
    assert refs[previous.certificate.hex] == REF_CERTIFICATE
    assert refs[repo.manifest().root_hash.hex] == REF_CATALOG


def _resign_without_y(repo: Repo) -> None:
    from .forge import Forger

    forger = Forger(repo.stratum, repo.keys, NAME)
    m = forger.manifest()
    path = os.path.join(repo.dir, ".cvmfspublished")
    forger.sign(m.root_hash, m.root_size, drop=("Y",))
    with open(path, "rb") as f:
        body = f.read()
    assert b"\nY" not in body.split(b"\n--\n")[0], "the forger kept Y"


def test_reflog_that_is_not_the_manifests_is_refused(tmp_path):
    s = tmp_path / "src"
    s.mkdir()
    (s / "f").write_bytes(b"one\n")
    repo = Repo(tmp_path, str(s))
    repo.publish()
    path = os.path.join(repo.dir, REFLOG_FILE)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM refs WHERE type = 0")
    db.commit()
    db.close()
    cli = Cli(base_env())
    args = ["publish", s, "--name", NAME, "--stratum", repo.stratum, "--keys", repo.keys]
    p = cli(*args)
    err = p.stderr.decode()
    assert p.returncode != 0 and "Traceback" not in err
    assert f"{path} is not the reflog the manifest names" in err and len(err.splitlines()) == 1
    os.unlink(path)
    p = cli(*args)
    assert p.returncode != 0 and f"{path} is missing" in p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()


def test_reflog_with_a_trigger_is_refused(tmp_path):
    """Our publisher writes into the previous reflog: one with code in it is refused
    before anything runs."""
    s = tmp_path / "src"
    s.mkdir()
    (s / "f").write_bytes(b"one\n")
    repo = Repo(tmp_path, str(s))
    repo.publish()
    path = os.path.join(repo.dir, REFLOG_FILE)
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER t AFTER INSERT ON refs BEGIN DELETE FROM refs; END")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="trigger"):
        repo.publish()


def test_mtimens_zero_for_whole_seconds(tmp_path):
    s = tmp_path / "src"
    s.mkdir()
    (s / "whole").write_bytes(b"w")
    (s / "fraction").write_bytes(b"f")
    (s / "before-1970").write_bytes(b"b")
    os.utime(s / "whole", ns=(1_600_000_000 * 10**9,) * 2)
    os.utime(s / "fraction", ns=(1_600_000_000 * 10**9 + 250_000_000,) * 2)
    os.utime(s / "before-1970", ns=(-1_500_000_000,) * 2)  # -1.5 s
    os.utime(s, ns=(1_600_000_001 * 10**9,) * 2)
    repo = Repo(tmp_path, str(s))
    repo.publish()
    root = repo.catalogs()[""]
    got = dict(
        (n, (m, ns)) for n, m, ns in root.execute("SELECT name, mtime, mtimens FROM catalog")
    )
    assert got["whole"] == (1_600_000_000, 0)
    assert got[""] == (1_600_000_001, 0)
    assert got["fraction"] == (1_600_000_000, 250_000_000)
    assert got["before-1970"] == (-2, 500_000_000)
    assert root.execute("SELECT COUNT(*) FROM catalog WHERE mtimens IS NULL").fetchone() == (0,)


def _take_over(shared_data: str, base, name: str) -> str:
    """A writable stratum holding the real server's repository `name`: its manifest,
    reflog and catalogs and tag databases (what a next publication reads)."""
    real = os.path.join(shared_data, "real-repos", name, "stratum")
    repo_dir = base / "stratum" / name
    (repo_dir / "data").mkdir(parents=True)
    for f in (".cvmfspublished", ".cvmfsreflog"):
        shutil.copyfile(os.path.join(real, f), repo_dir / f)
    for d in os.listdir(os.path.join(real, "data")):
        for f in os.listdir(os.path.join(real, "data", d)):
            if f.endswith(("C", "H")):
                (repo_dir / "data" / d).mkdir(exist_ok=True)
                shutil.copyfile(os.path.join(real, "data", d, f), repo_dir / "data" / d / f)
    return str(repo_dir)


@pytest.mark.parametrize("name", ["ref.test.org", "ref-shake.test.org"])
def test_reflog_of_the_real_server_is_continued(shared_data, tmp_path, name):
    """Publishing the next revision of a repository the real cvmfs 2.12 server made:
    our reflog is its reflog (same schema, every reference with its timestamp) plus the
    new revision's objects."""
    repo_dir = _take_over(shared_data, tmp_path, name)
    real_db = sqlite3.connect(os.path.join(repo_dir, ".cvmfsreflog"))
    real_refs = set(real_db.execute("SELECT hash, type, timestamp FROM refs"))
    real_schema = real_db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    real_db.close()
    src = tmp_path / "src"
    src.mkdir()
    (src / "README").write_bytes(b"taken over\n")
    with open(os.path.join(repo_dir, ".cvmfspublished"), "rb") as f:
        algorithm = Manifest.parse(f.read()).root_hash.algorithm
    publish(
        PublishOptions(
            source=str(src),
            name=name,
            stratum=str(tmp_path / "stratum"),
            keys_dir=str(tmp_path / "keys"),
            hash_algorithm=algorithm,
        )
    )
    with open(os.path.join(repo_dir, ".cvmfspublished"), "rb") as f:
        m = Manifest.parse(f.read())
    with open(os.path.join(repo_dir, REFLOG_FILE), "rb") as f:
        data = f.read()
    assert m.fields["Y"] == hash_bytes(m.root_hash.algorithm, data).hex
    db = sqlite3.connect(os.path.join(repo_dir, REFLOG_FILE))
    assert db.execute("SELECT type, name, sql FROM sqlite_master").fetchall() == real_schema
    refs = set(db.execute("SELECT hash, type, timestamp FROM refs"))
    assert real_refs <= refs
    new = {(h, t) for h, t, _ in refs - real_refs}
    assert new == {
        (m.root_hash.hex, REF_CATALOG),
        (m.certificate.hex, REF_CERTIFICATE),
        (m.history.hex, REF_HISTORY),
    }


def test_dirtab_marker_as_the_real_server_wrote_it(shared_data, dirtabbed):
    """test.cern.ch (the real cvmfs_server, a `/bar/*` dirtab): its markers and ours
    agree in every field but the publisher's uid/gid and the time."""
    real = os.path.join(shared_data, "real-repos", "test.cern.ch", "stratum")
    repo = Repo(dirtabbed.base / "real", real)
    repo.dir = real
    (dirtabbed.base / "real").mkdir()
    fields = "hardlinks, hex(hash), size, mode, flags, symlink"
    wanted = "name = '.cvmfscatalog'"
    theirs = {
        r
        for db in repo.catalogs().values()
        for r in db.execute(f"SELECT {fields} FROM catalog WHERE {wanted}")
    }
    dirtabbed.publish()
    ours = [
        r
        for db in dirtabbed.catalogs().values()
        for r in db.execute(f"SELECT {fields} FROM catalog WHERE {wanted}")
    ]
    assert len(theirs) == 1 and set(ours) == theirs
    assert len(ours) == 4  # one in each nested catalog: /data, /sw/v1, /sw/v2, /sw/v3


def test_hardlinks_across_directories_warned_once(linked):
    """The real server says "Hardlinks across directories" for each; we say it once."""
    p = Cli(base_env())(
        "publish",
        linked.src,
        "--name",
        NAME,
        "--stratum",
        linked.stratum,
        "--keys",
        linked.keys,
    )
    err = p.stderr.decode().splitlines()
    assert p.returncode == 0, err
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: 4 hardlink groups have links in other directories (or outside"
        f" {linked.src}), published as one group per directory as cvmfs_server does"
        " (first: /a/x)"
    ]
