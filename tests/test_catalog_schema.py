"""Catalogs that do not end: re-signed revisions whose catalog holds a view over an
endless recursive query, a trigger, a computed column or a virtual table are refused
with one line; every query is bounded in time; a catalog padded to hundreds of MB
("catalog bomb") is refused at the size its parent records, and never stored. Every
catalog and history database the real server tools wrote, of every schema revision,
still opens."""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib

import pytest

from parrot_cvmfs.errors import CatalogError
from parrot_cvmfs.format import database
from parrot_cvmfs.format.catalog import CATALOG_SCHEMA, Catalog
from parrot_cvmfs.format.history import History
from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import REAL_REPOS, base_env, failed_with_one_line, repo_spec
from .forge import Forger
from .servers import serving

NAME = "schema.test.org"
CLI = [sys.executable, "-m", "parrot_cvmfs"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    base = tmp_path_factory.mktemp("schema")
    src = base / "src"
    (src / "nested").mkdir(parents=True)
    (src / "README").write_bytes(b"schema test\n")
    (src / "nested" / ".cvmfscatalog").write_bytes(b"")
    (src / "nested" / "file").write_bytes(b"in nested\n")
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(PublishOptions(source=str(src), name=NAME, stratum=stratum, keys_dir=keys))
    return stratum, keys


class Site:
    """A private copy of the repository, its forger, a server and a client."""

    def __init__(self, original, tmp_path):
        stratum, self.keys = str(tmp_path / "stratum"), original[1]
        shutil.copytree(original[0], stratum, symlinks=True)
        self.forger = Forger(stratum, self.keys, NAME)
        self.server = StratumServer(stratum)  # started by the fixture
        self.url = f"{self.server.url}/{NAME}"
        self.cache = tmp_path / "cache"
        pubkey = os.path.join(self.keys, f"{NAME}.pub")
        self.env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, self.url, pubkey))

    def cli(self, *args, timeout=120):
        return subprocess.run(
            [*CLI, *args, "--cache-dir", str(self.cache)],
            env=self.env,
            capture_output=True,
            timeout=timeout,
        )


@pytest.fixture
def site(original, tmp_path):
    s = Site(original, tmp_path)
    with serving(s.server):
        yield s


def one_line(p) -> str:
    assert p.returncode == 1, (p.returncode, p.stderr)
    return failed_with_one_line(p)


ENDLESS_VIEW = [
    "ALTER TABLE catalog RENAME TO catalog_rows",
    "CREATE VIEW catalog AS WITH RECURSIVE forever(n) AS"
    " (SELECT 1 UNION ALL SELECT n + 1 FROM forever) SELECT c.* FROM catalog_rows AS c, forever",
]
TRIGGER = ["CREATE TRIGGER t_audit AFTER INSERT ON catalog BEGIN SELECT 1; END"]
COMPUTED = [
    "ALTER TABLE catalog RENAME TO catalog_rows",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER,"
    " parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER,"
    " mtime INTEGER, mtimens INTEGER, flags INTEGER, name TEXT, uid INTEGER, gid INTEGER,"
    " xattr BLOB, symlink TEXT AS (upper(name)) VIRTUAL)",
    "INSERT INTO catalog SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash,"
    " size, mode, mtime, mtimens, flags, name, uid, gid, xattr FROM catalog_rows",
    "DROP TABLE catalog_rows",
]
VIRTUAL = ["DROP TABLE statistics", "CREATE VIRTUAL TABLE statistics USING fts5(counter, value)"]


@pytest.mark.parametrize(
    "statements, why",
    [
        (ENDLESS_VIEW, "it holds a view (catalog), which no catalog has"),
        (TRIGGER, "it holds a trigger (t_audit), which no catalog has"),
        (COMPUTED, "column symlink of table catalog is computed"),
        (VIRTUAL, "statistics is not a plain table"),
    ],
    ids=["endless-view", "trigger", "computed-column", "virtual-table"],
)
@pytest.mark.parametrize("mountpoint", ["", "/nested"])
def test_catalog_of_an_unknown_schema_is_refused(site, statements, why, mountpoint):
    def edit(db):
        for sql in statements:
            db.execute(sql)

    site.forger.edit(edit, mountpoint)
    h = site.forger._chain(mountpoint)[-1][1]
    p = site.cli("ls", NAME, mountpoint or "/")
    assert one_line(p) == f"parrot_cvmfs: malformed catalog {h.hex} at {mountpoint or '/'}: {why}"


def test_every_query_is_bounded(site, tmp_path, monkeypatch):
    """A query that would never end (views are refused first: made here by hand) is
    interrupted at its deadline."""
    h = site.forger.manifest().root_hash
    path = tmp_path / "root.db"
    path.write_bytes(site.forger._catalog_bytes(h))
    monkeypatch.setattr(database, "QUERY_SECONDS", 0.3)
    db = database.Database(str(path), "catalog X", CATALOG_SCHEMA, ("catalog",))
    endless = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    )
    with pytest.raises(CatalogError, match=r"^malformed catalog X: a query ran longer than 0.3 s$"):
        db.query(endless, ())
    assert db.query("SELECT count(*) FROM catalog", ())[0][0] > 0  # and it is usable again
    db.close()


@pytest.mark.parametrize("mountpoint", ["", "/nested"])
@pytest.mark.slow
def test_catalog_bomb_is_refused_and_not_stored(site, mountpoint):
    """A valid catalog padded with 256 MB of zeros (a few hundred KB compressed), in a
    re-signed revision that records its old size: refused at that size (here already
    by the announced length: an endless zlib stream is stopped as it inflates, see
    test_hostile_server), not stored."""
    recorded = len(site.forger._catalog_bytes(site.forger._chain(mountpoint)[-1][1]))
    site.forger.edit(
        lambda db: None,
        mountpoint,
        raw=lambda data: data + bytes(256 << 20),
        recorded_size=recorded,
    )
    h = site.forger._chain(mountpoint)[-1][1]
    p = site.cli("ls", NAME, mountpoint or "/")
    served = os.path.getsize(os.path.join(site.forger.repo_dir, h.object_path("C")[1:]))
    assert one_line(p) == (
        f"parrot_cvmfs: cannot download catalog {h.hex} of {NAME}:{mountpoint or '/'}: "
        f"{site.url}{h.object_path('C')}: Content-Length {served} is longer than the object"
        " can be (2 attempts)"
    )
    assert not (site.cache / h.cache_name()).exists()
    assert os.listdir(site.cache / "txn") == []


# -- every schema the real tools wrote still opens ---------------------------------------------


def _inflated(path: str, tmp_path, name: str) -> str:
    out = tmp_path / name
    with open(path, "rb") as f:
        out.write_bytes(zlib.decompress(f.read()))
    return str(out)


@pytest.mark.usefixtures("shared_data")
def test_real_catalogs_and_histories_open(tmp_path):
    catalogs = glob.glob(os.path.join(REAL_REPOS, "*", "stratum", "data", "*", "*C"))
    histories = glob.glob(os.path.join(REAL_REPOS, "*", "stratum", "data", "*", "*H"))
    assert len(catalogs) >= 20 and len(histories) >= 5
    for i, c in enumerate(catalogs):
        cat = Catalog(_inflated(c, tmp_path, f"c{i}"), None, "")
        assert cat.schema == 2.5 and cat.max_rowid > 0
        cat.close()
    for i, h in enumerate(histories):
        hist = History(_inflated(h, tmp_path, f"h{i}"))
        assert hist.tags()
        hist.close()


def _revision(db: sqlite3.Connection, schema: str, revision: int) -> None:
    """Make a schema 2.5 revision 7 catalog into one of an older schema (revision):
    the tables and columns that schema had, as the real catalog_sql.cc creates them."""
    db.execute("UPDATE properties SET value = ? WHERE key = 'schema'", (schema,))
    db.execute("UPDATE properties SET value = ? WHERE key = 'schema_revision'", (str(revision),))
    if revision < 7:
        db.execute("ALTER TABLE catalog DROP COLUMN mtimens")
    if revision < 4:
        db.execute("DROP TABLE bind_mountpoints")
    if revision < 2:
        db.execute("ALTER TABLE catalog DROP COLUMN xattr")
    if revision < 1:
        db.execute("ALTER TABLE nested_catalogs DROP COLUMN size")
        db.execute("DELETE FROM properties WHERE key = 'schema_revision'")
    if float(schema) < 2.1:  # 1.x: inode instead of hardlinks, no owners, chunks, counters
        db.execute("ALTER TABLE catalog RENAME COLUMN hardlinks TO inode")
        db.execute("ALTER TABLE catalog DROP COLUMN uid")
        db.execute("ALTER TABLE catalog DROP COLUMN gid")
        db.execute("DROP TABLE chunks")
        db.execute("DROP TABLE statistics")
    if schema == "0.9":  # nested catalogs known by path only
        db.execute("ALTER TABLE nested_catalogs DROP COLUMN sha1")


@pytest.mark.parametrize(
    "schema, revision",
    [("2.5", 6), ("2.5", 3), ("2.5", 1), ("2.5", 0), ("2.4", 0), ("1.2", 0), ("0.9", 0)],
)
def test_every_schema_revision_opens(original, tmp_path, schema, revision):
    forger = Forger(shutil.copytree(original[0], tmp_path / "s"), original[1], NAME)
    path = tmp_path / "root.db"
    path.write_bytes(forger._catalog_bytes(forger.manifest().root_hash))
    db = sqlite3.connect(path)
    _revision(db, schema, revision)
    db.commit()
    db.close()
    cat = Catalog(str(path), None, "")
    assert cat.lookup("/README").size == len(b"schema test\n")
    assert [e.name for e in cat.listing("")] == ["README", "nested"]
    nested = cat.nested_catalogs()
    assert list(nested) == ([] if schema == "0.9" else ["/nested"])
    cat.close()
