"""A forger for hostile revisions: edit a published repository's catalogs with SQL and
re-sign the manifest with the repository's own keys (as a leaked signing key or a buggy
publisher would), so that the client accepts the result as the next revision.

    forger = Forger(stratum_dir, keys_dir, "evo.test")
    forger.edit(lambda db: db.execute("UPDATE catalog SET size = 2 WHERE name = 'a.txt'"))
    forger.add_entry("/dir", "../../escaped.txt", data=b"outside\n")

Every edit writes a new revision: the changed catalog and each catalog above it get new
hashes, the manifest a new root hash, size, revision and timestamp.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable

from parrot_cvmfs.format.entry import FLAG_FILE, md5path
from parrot_cvmfs.format.hashes import ContentHash, hash_bytes
from parrot_cvmfs.format.manifest import Manifest, export_manifest_body
from parrot_cvmfs.format.signature import certificate_fingerprint, sign_manifest, sign_raw_pkcs1
from parrot_cvmfs.server.keys import ensure_keys
from parrot_cvmfs.server.stratum import StratumStore


class Forger:
    def __init__(self, stratum: str, keys_dir: str, name: str):
        self.name = name
        self.repo_dir = os.path.join(stratum, name)
        self.keys = ensure_keys(keys_dir, name)
        self.store = StratumStore(self.repo_dir)

    # -- reading ---------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        with open(os.path.join(self.repo_dir, ".cvmfspublished"), "rb") as f:
            return Manifest.parse(f.read())

    def _catalog_bytes(self, h: ContentHash) -> bytes:
        return self.store.read(h, "C")

    def _chain(self, mountpoint: str) -> list[tuple[str, ContentHash]]:
        """(mountpoint, hash) from the root catalog down to the one at `mountpoint`."""
        chain = [("", self.manifest().root_hash)]
        while chain[-1][0] != mountpoint:
            here, h = chain[-1]
            with _open_db(self._catalog_bytes(h)) as (db, _):
                rows = db.execute("SELECT path, sha1 FROM nested_catalogs").fetchall()
            below = [(p, s) for p, s in rows if mountpoint == p or mountpoint.startswith(p + "/")]
            if not below:
                raise KeyError(f"no nested catalog on the way to {mountpoint!r} below {here!r}")
            p, s = max(below, key=lambda r: len(r[0]))
            chain.append((p, ContentHash.from_hex(s)))
        return chain

    # -- writing ---------------------------------------------------------------------------

    def edit(
        self,
        fn: Callable[[sqlite3.Connection], None],
        mountpoint: str = "",
        *,
        raw: Callable[[bytes], bytes] | None = None,
        recorded_size: int | None = None,
    ) -> Manifest:
        """Apply `fn` to the catalog at `mountpoint` (then `raw` to its bytes, if given),
        re-hash the catalogs above it and sign a new manifest. `recorded_size`: the size
        its parent (or the manifest) records for it, instead of its real one."""
        chain = self._chain(mountpoint)
        mp, h = chain[-1]
        with _open_db(self._catalog_bytes(h)) as (db, path):
            fn(db)
            db.commit()
            db.close()
            with open(path, "rb") as f:
                data = f.read()
        if raw is not None:
            data = raw(data)
        new_hash = self.store.put(data, "C")
        new_size = len(data) if recorded_size is None else recorded_size
        for parent_mp, parent_h in reversed(chain[:-1]):
            with _open_db(self._catalog_bytes(parent_h)) as (db, path):
                db.execute(
                    "UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = ?",
                    (new_hash.hex, new_size, mp),
                )
                db.commit()
                db.close()
                with open(path, "rb") as f:
                    data = f.read()
            new_hash, new_size, mp = self.store.put(data, "C"), len(data), parent_mp
        return self.sign(new_hash, new_size)

    def sign(
        self, root: ContentHash, size: int, drop: tuple[str, ...] = (), **fields: str
    ) -> Manifest:
        """A new signed manifest: root catalog `root`, the next revision; the fields in
        `drop` left out."""
        old = self.manifest()
        f = {k: v for k, v in old.fields.items() if k not in drop}
        stamp = max(int(time.time()), (old.timestamp or 0) + 1)
        f.update(C=root.hex, B=str(size), S=str(old.revision + 1), T=str(stamp))
        f.update(fields)
        body = export_manifest_body(f)
        digest = hash_bytes(old.root_hash.algorithm, body).hex.encode()
        data = body + b"--\n" + digest + b"\n" + sign_manifest(self.keys.key, digest)
        tmp = os.path.join(self.repo_dir, ".cvmfspublished.forged")
        with open(tmp, "wb") as out:
            out.write(data)
        os.rename(tmp, os.path.join(self.repo_dir, ".cvmfspublished"))
        return Manifest.parse(data)

    def sign_whitelist(self, expires: str, *, created: str | None = None) -> bytes:
        """A whitelist listing the repository's certificate, with this expiry text
        (`YYYYMMDDhhmmss`, or anything), signed with the master key."""
        old = self.manifest()
        algorithm = old.root_hash.algorithm
        created = created or time.strftime("%Y%m%d%H%M%S", time.gmtime())
        fp = certificate_fingerprint(self.keys.certificate, algorithm).fingerprint()
        body = f"{created}\nE{expires}\nN{self.name}\n{fp}\n".encode()
        digest = hash_bytes(algorithm, body).hex.encode()
        data = body + b"--\n" + digest + b"\n" + sign_raw_pkcs1(self.keys.master_key, digest)
        with open(os.path.join(self.repo_dir, ".cvmfswhitelist"), "wb") as out:
            out.write(data)
        return data

    def put_object(self, data: bytes, compress: bool = True) -> ContentHash:
        return self.store.put(data, compress=compress)

    def add_entry(
        self,
        parent: str,
        name: str,
        *,
        data: bytes = b"",
        mode: int = 0o100644,
        flags: int = FLAG_FILE,
        size: int | None = None,
        content_hash: str | None = None,
        mountpoint: str = "",
        path: str | None = None,
        xattr: bytes | None = None,
    ) -> Manifest:
        """Insert one catalog row named `name` under directory `parent` (a repository
        path, "" for the root). Its path key is `path` (default parent + "/" + name),
        so names no file system can hold can be planted; `xattr` its raw xattr blob."""
        h = content_hash or self.put_object(data).hex
        key = path if path is not None else f"{parent}/{name}"

        def insert(db: sqlite3.Connection) -> None:
            cols = [r[1] for r in db.execute("PRAGMA table_info(catalog)")]
            m1, m2 = md5path(key)
            p1, p2 = md5path(parent)
            row = {
                "md5path_1": m1,
                "md5path_2": m2,
                "parent_1": p1,
                "parent_2": p2,
                "hardlinks": 1,
                "hash": bytes.fromhex(h),
                "size": len(data) if size is None else size,
                "mode": mode,
                "mtime": int(time.time()),
                "mtimens": 0,
                "flags": flags,
                "name": name,
                "symlink": "",
                "uid": 0,
                "gid": 0,
                "xattr": xattr,
            }
            use = [c for c in cols if c in row]
            db.execute(
                f"INSERT INTO catalog ({','.join(use)}) VALUES ({','.join('?' * len(use))})",
                [row[c] for c in use],
            )

        return self.edit(insert, mountpoint)


class _open_db:
    """The decompressed catalog in a temporary file, opened with sqlite3."""

    def __init__(self, data: bytes):
        self.data = data

    def __enter__(self) -> tuple[sqlite3.Connection, str]:
        self.dir = tempfile.TemporaryDirectory(prefix="forge.")
        self.path = os.path.join(self.dir.name, "catalog.db")
        with open(self.path, "wb") as f:
            f.write(self.data)
        self.db = sqlite3.connect(self.path)
        return self.db, self.path

    def __exit__(self, *exc) -> None:
        try:
            self.db.close()
        finally:
            self.dir.cleanup()
