"""Creating catalog, history and reflog databases in the schemas the real tools read
(catalog schema 2.5 revision 7, history schema 1.0 revision 3, reflog schema 1.0
revision 0)."""

from __future__ import annotations

import os
import sqlite3

from ..format import reflog
from ..format.entry import md5path

CATALOG_SCHEMA = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER,"
    " hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER,"
    " flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB, "
    " CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2))",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2)",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER, "
    " hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size), "
    " FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2))",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER,"
    " CONSTRAINT pk_nested_catalogs PRIMARY KEY (path))",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER,"
    " CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path))",
    "CREATE TABLE statistics (counter TEXT, value INTEGER,"
    " CONSTRAINT pk_statistics PRIMARY KEY (counter))",
]

HISTORY_SCHEMA = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,"
    "  CONSTRAINT pk_branch PRIMARY KEY (branch),   FOREIGN KEY (parent) REFERENCES branches (branch),"
    "   CHECK ((branch <> '') OR (parent IS NULL)),   CHECK ((branch = '') OR (parent IS NOT NULL)))",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER,   timestamp INTEGER, channel INTEGER,"
    " description TEXT, size INTEGER,   branch TEXT, CONSTRAINT pk_tags PRIMARY KEY (name),"
    "   FOREIGN KEY (branch) REFERENCES branches (branch))",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER,   CONSTRAINT pk_hash PRIMARY KEY (hash))",
]


REFLOG_SCHEMA = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER,"
    " CONSTRAINT pk_refs PRIMARY KEY (hash))",
]


class CatalogWriter:
    def __init__(self, db_path: str):
        self.path = db_path
        if os.path.exists(db_path):
            os.unlink(db_path)
        self.db = sqlite3.connect(db_path, isolation_level=None)
        self.db.execute("PRAGMA page_size=4096")
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("BEGIN")
        for stmt in CATALOG_SCHEMA:
            self.db.execute(stmt)
        self.rows: list[tuple] = []
        self.chunk_rows: list[tuple] = []

    def add(
        self,
        path: str,
        parent: str | None,
        hardlinks: int,
        digest: bytes | None,
        size: int,
        mode: int,
        mtime: int,
        mtimens: int | None,
        flags: int,
        name: str,
        symlink: str,
        uid: int,
        gid: int,
        xattr: bytes | None,
    ) -> None:
        p1, p2 = md5path(path)
        q1, q2 = md5path(parent) if parent is not None else (0, 0)
        enc = lambda s: s.encode("utf-8", "surrogateescape")  # noqa: E731
        self.rows.append(
            (
                p1,
                p2,
                q1,
                q2,
                hardlinks,
                digest,
                size,
                mode,
                mtime,
                mtimens,
                flags,
                enc(name),
                enc(symlink),
                uid,
                gid,
                xattr,
            )
        )

    def add_chunk(self, path: str, offset: int, size: int, digest: bytes) -> None:
        p1, p2 = md5path(path)
        self.chunk_rows.append((p1, p2, offset, size, digest))

    def finish(
        self,
        nested: list[tuple[str, str, int]],
        properties: dict[str, str],
        counters: dict[str, int],
    ) -> str:
        """Write everything, close, return the database path."""
        self.db.executemany(
            "INSERT INTO catalog VALUES (?,?,?,?,?,?,?,?,?,?,?,CAST(? AS TEXT),CAST(? AS TEXT),?,?,?)",
            self.rows,
        )
        self.db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", self.chunk_rows)
        self.db.executemany("INSERT INTO nested_catalogs VALUES (?,?,?)", nested)
        self.db.executemany("INSERT INTO properties VALUES (?,?)", list(properties.items()))
        self.db.executemany("INSERT INTO statistics VALUES (?,?)", sorted(counters.items()))
        self.db.execute("COMMIT")
        self.db.execute("VACUUM")
        self.db.close()
        return self.path


def write_history(db_path: str, fqrn: str, tags: list[tuple], previous: str | None) -> str:
    """tags: (name, hash, revision, timestamp, description, size)."""
    if os.path.exists(db_path):
        os.unlink(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("BEGIN")
    for stmt in HISTORY_SCHEMA:
        db.execute(stmt)
    props = {"schema": "1.0", "schema_revision": "3", "fqrn": fqrn}
    if previous:
        props["previous_revision"] = previous
    db.executemany("INSERT INTO properties VALUES (?,?)", list(props.items()))
    db.execute("INSERT INTO branches VALUES ('', NULL, 0)")
    db.executemany(
        "INSERT INTO tags VALUES (?,?,?,?,0,?,?,'')",
        [(n, h, r, t, d, s) for n, h, r, t, d, s in tags],
    )
    db.execute("COMMIT")
    db.execute("VACUUM")
    db.close()
    return db_path


def write_reflog(
    db_path: str, fqrn: str, previous: str | None, refs: list[tuple[str, int, int]]
) -> str:
    """The reflog at `db_path`: a copy of the checked reflog `previous` (or a new one)
    with `refs` (hex hash, REF_* type, timestamp) added; a reference it holds keeps its
    first timestamp (`INSERT OR IGNORE`, as `SqlInsertReference`)."""
    if os.path.exists(db_path):
        os.unlink(db_path)
    if previous is not None:
        with open(previous, "rb") as src, open(db_path, "wb") as dst:
            dst.write(src.read())
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("BEGIN")
        if previous is None:
            for stmt in REFLOG_SCHEMA:
                db.execute(stmt)
            props = {
                "schema": reflog.SCHEMA_VERSION,
                "schema_revision": reflog.SCHEMA_REVISION,
                "fqrn": fqrn,
            }
            db.executemany("INSERT INTO properties VALUES (?,?)", list(props.items()))
        db.executemany("INSERT OR IGNORE INTO refs (hash, type, timestamp) VALUES (?,?,?)", refs)
        db.execute("COMMIT")
    finally:
        db.close()
    return db_path
