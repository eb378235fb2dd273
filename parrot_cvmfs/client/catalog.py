"""One file catalog: a SQLite database mapping path MD5s to directory entries.

Columns differ between schema revisions, so the SELECT is built from the
table's actual columns. Entries are keyed by the MD5 of their full path inside
the repository (the root is the empty string). The database is opened through
`database.Database`: refused unless its schema is one of the catalog schemas,
every query bounded in time.
"""

from __future__ import annotations

import stat as st
import struct

from ..errors import CatalogError
from .database import Database
from .hashes import Algorithm, ContentHash, md5_digest

FLAG_DIR = 1
FLAG_NESTED_MOUNTPOINT = 2
FLAG_FILE = 4
FLAG_LINK = 8
FLAG_SPECIAL = 16
FLAG_NESTED_ROOT = 32
FLAG_CHUNKED = 64
FLAG_EXTERNAL = 128
FLAG_BIND_MOUNTPOINT = 0x4000
FLAG_HIDDEN = 0x8000
FLAG_DIRECT_IO = 0x10000
FLAG_POS_HASH = 8
FLAG_POS_COMPRESSION = 11

COMPRESSION_ZLIB = 0
COMPRESSION_NONE = 1

DEFAULT_TTL = 240

# the statistics table's counters, each stored as self_<name> and subtree_<name>
COUNTERS = [
    "regular",
    "symlink",
    "special",
    "dir",
    "nested",
    "chunked",
    "chunks",
    "file_size",
    "chunked_size",
    "xattr",
    "external",
    "external_file_size",
]

_MD5_SPLIT = struct.Struct("<qq")


def md5path(path: str) -> tuple[int, int]:
    """The (md5path_1, md5path_2) key of a repository path ("" is the root)."""
    return _MD5_SPLIT.unpack(md5_digest(path.encode("utf-8", "surrogateescape")))


# The tables a catalog of any schema (1.x to 2.5 revision 7) may hold: the columns
# every revision has, and those only some have (2.0's `inode`, 2.1's `hardlinks`,
# `uid`, `gid`, revision 2's `xattr`, 7's `mtimens`, revision 1's nested sizes).
_F = frozenset
CATALOG_SCHEMA = {
    "properties": (_F({"key", "value"}), _F()),
    "catalog": (
        _F({"md5path_1", "md5path_2", "parent_1", "parent_2", "hash", "size", "mode", "mtime"})
        | _F({"flags", "name", "symlink"}),
        _F({"inode", "hardlinks", "uid", "gid", "xattr", "mtimens"}),
    ),
    "chunks": (_F({"md5path_1", "md5path_2", "offset", "size", "hash"}), _F()),
    "nested_catalogs": (_F({"path"}), _F({"sha1", "size"})),
    "bind_mountpoints": (_F({"path", "sha1", "size"}), _F()),
    "statistics": (_F({"counter", "value"}), _F()),
}


def _decode_text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class DirEntry:
    """A catalog row, decoded. `path` is the logical path inside the repository."""

    __slots__ = (
        "path",
        "name",
        "mode",
        "size",
        "mtime",
        "mtime_ns",
        "flags",
        "hash",
        "symlink",
        "linkcount",
        "hardlink_group",
        "uid",
        "gid",
        "xattr_blob",
        "catalog",
        "rowid",
    )

    def __init__(
        self,
        path,
        name,
        mode,
        size,
        mtime,
        mtime_ns,
        flags,
        hash_,
        symlink,
        hardlinks,
        uid,
        gid,
        xattr_blob,
        catalog,
        rowid,
    ):
        self.path = path
        self.name = name
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.mtime_ns = mtime_ns
        self.flags = flags
        self.hash = hash_
        self.symlink = symlink
        self.linkcount = hardlinks & 0xFFFFFFFF
        self.hardlink_group = hardlinks >> 32
        self.uid = uid
        self.gid = gid
        self.xattr_blob = xattr_blob
        self.catalog = catalog
        self.rowid = rowid

    # The type comes from the mode; the markers from the flags.
    @property
    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return st.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return st.S_ISREG(self.mode)

    @property
    def is_special(self) -> bool:
        return not (self.is_dir or self.is_symlink or self.is_regular)

    @property
    def kind(self) -> str:
        """'dir', 'file', 'symlink' or 'special'."""
        if self.is_dir:
            return "dir"
        if self.is_regular:
            return "file"
        if self.is_symlink:
            return "symlink"
        return "special"

    @property
    def is_nested_mountpoint(self) -> bool:
        return bool(self.flags & FLAG_NESTED_MOUNTPOINT)

    @property
    def is_bind_mountpoint(self) -> bool:
        return bool(self.flags & FLAG_BIND_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & FLAG_NESTED_ROOT)

    @property
    def is_chunked(self) -> bool:
        return bool(self.flags & FLAG_CHUNKED)

    @property
    def is_external(self) -> bool:
        return bool(self.flags & FLAG_EXTERNAL)

    @property
    def is_hidden(self) -> bool:
        return bool(self.flags & FLAG_HIDDEN)

    @property
    def is_direct_io(self) -> bool:
        return bool(self.flags & FLAG_DIRECT_IO)

    @property
    def hash_algorithm(self) -> Algorithm:
        return Algorithm(((self.flags >> FLAG_POS_HASH) & 7) + 1)

    @property
    def compression(self) -> int:
        return (self.flags >> FLAG_POS_COMPRESSION) & 7

    @property
    def is_compressed(self) -> bool:
        return self.compression == COMPRESSION_ZLIB

    @property
    def md5(self) -> tuple[int, int]:
        return md5path(self.catalog.internal_path(self.path))

    @property
    def rdev(self) -> int:
        return self.size if (st.S_ISCHR(self.mode) or st.S_ISBLK(self.mode)) else 0

    def __repr__(self) -> str:
        return f"DirEntry({self.path!r}, mode={oct(self.mode)}, size={self.size})"


class Catalog:
    """A read-only view of one catalog database.

    `mountpoint` is where the catalog's root appears in the logical namespace;
    `prefix` is that root's path inside the catalog (its `root_prefix`, "" for a
    root catalog). Paths given to methods are logical.
    """

    def __init__(self, db_path: str, content_hash: ContentHash | None, mountpoint: str = ""):
        self.db_path = db_path
        self.hash = content_hash
        self.mountpoint = mountpoint
        self.what = (
            f"catalog {content_hash.hex if content_hash else db_path} at /{mountpoint.lstrip('/')}"
        )
        self._db = Database(
            db_path, self.what, CATALOG_SCHEMA, ("properties", "catalog"), text=_decode_text
        )
        try:
            self._db.columns("properties")
            self.properties = dict(self._query("SELECT key, value FROM properties", ()))
            self.schema = float(self.properties.get("schema", "1.0"))
            self.schema_revision = int(self.properties.get("schema_revision", "0"))
        except (ValueError, TypeError):
            self._db.close()
            raise CatalogError(f"malformed {self.what}: bad schema property") from None
        except BaseException:
            self._db.close()
            raise
        if self.schema >= 2.0 and not (
            abs(self.schema - 2.4) < 1e-6 or abs(self.schema - 2.5) < 1e-6
        ):
            self._db.close()
            raise CatalogError(f"{self.what} has unsupported schema {self.schema}")
        try:
            columns = self._db.columns("catalog")
        except BaseException:
            self._db.close()
            raise
        self.prefix = self.properties.get("root_prefix", "") if mountpoint else ""
        if self.prefix == "/":
            self.prefix = ""

        def col(name: str, default: str) -> str:
            return name if name in columns else default

        self._legacy_hash = "hardlinks" not in columns  # schema < 2.1: always SHA-1
        self._select = (
            "SELECT rowid, name, mode, size, mtime, "
            + col("mtimens", "NULL")
            + ", flags, hash, symlink, "
            + col("hardlinks", "1")
            + ", "
            + col("uid", "0")
            + ", "
            + col("gid", "0")
            + ", "
            + col("xattr", "NULL")
            + " FROM catalog "
        )
        self._has_chunks = self._db.has("chunks")
        self._nested: dict[str, tuple[ContentHash, int]] | None = None

    # -- path mapping ---------------------------------------------------------------------

    def internal_path(self, logical: str) -> str:
        """Logical path -> path as hashed inside this catalog."""
        return self.prefix + logical[len(self.mountpoint) :]

    def logical_path(self, internal: str) -> str:
        return self.mountpoint + internal[len(self.prefix) :]

    # -- queries --------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple) -> list:
        return self._db.query(sql, args)

    def _entry(self, row, path: str) -> DirEntry:
        rowid, name, mode, size, mtime, mtimens, flags, h, symlink, hardlinks, uid, gid, xattr = row
        content_hash = None
        if h:
            if isinstance(h, str):
                h = h.encode("utf-8", "surrogateescape")
            algorithm = Algorithm.SHA1 if self._legacy_hash else Algorithm(((flags >> 8) & 7) + 1)
            try:
                content_hash = ContentHash(algorithm, h)
            except ValueError:
                raise CatalogError(f"malformed {self.what}: bad hash for {path or '/'}") from None
        return DirEntry(
            path,
            name or "",
            mode,
            size or 0,
            mtime or 0,
            mtimens,
            flags,
            content_hash,
            symlink or "",
            hardlinks if hardlinks is not None else 1,
            uid or 0,
            gid or 0,
            xattr,
            self,
            rowid,
        )

    def lookup(self, path: str) -> DirEntry | None:
        """The entry for a logical path, or None if this catalog does not hold it."""
        p1, p2 = md5path(self.internal_path(path))
        rows = self._query(self._select + "WHERE md5path_1=? AND md5path_2=?", (p1, p2))
        return self._entry(rows[0], path) if rows else None

    def listing(self, path: str) -> list[DirEntry]:
        """Children of a directory whose entries live in this catalog (hidden ones included)."""
        p1, p2 = md5path(self.internal_path(path))
        rows = self._query(self._select + "WHERE parent_1=? AND parent_2=?", (p1, p2))
        base = path
        return [self._entry(r, f"{base}/{r[1]}") for r in rows]

    def chunks(self, entry: DirEntry) -> list[tuple[int, int, ContentHash]]:
        """(offset, size, hash) of a chunked file, ordered by offset."""
        if not self._has_chunks:
            return []
        self._db.columns("chunks")
        p1, p2 = md5path(self.internal_path(entry.path))
        rows = self._query(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND md5path_2=? ORDER BY offset",
            (p1, p2),
        )
        algorithm = entry.hash_algorithm
        out = []
        for offset, size, h in rows:
            if isinstance(h, str):
                h = h.encode("utf-8", "surrogateescape")
            try:
                out.append((offset, size, ContentHash(algorithm, h)))
            except (ValueError, TypeError):
                raise CatalogError(
                    f"malformed {self.what}: bad chunk hash for {entry.path}"
                ) from None
        return out

    def objects(self) -> list[tuple[ContentHash, str, bool, int | None]]:
        """Every object this catalog references, as a preload pulls them: contents of
        entries with a hash that are not external (suffix "", or "L" for a hashed
        directory) and chunks ("P"); as (hash, suffix, compressed, inflated size)."""
        out = []
        sources = [
            (
                "SELECT hash, flags, size FROM catalog WHERE hash IS NOT NULL AND length(hash) > 0"
                f" AND (flags & {FLAG_EXTERNAL}) = 0",
                False,
            )
        ]
        if self._has_chunks:
            self._db.columns("chunks")
            sources.append(
                (
                    "SELECT chunks.hash, catalog.flags, chunks.size FROM chunks JOIN catalog"
                    " ON chunks.md5path_1 = catalog.md5path_1 AND chunks.md5path_2 = catalog.md5path_2"
                    f" WHERE (catalog.flags & {FLAG_EXTERNAL}) = 0",
                    True,
                )
            )
        for sql, is_chunk in sources:
            for h, flags, size in self._query(sql, ()):
                if isinstance(h, str):
                    h = h.encode("utf-8", "surrogateescape")
                algorithm = (
                    Algorithm.SHA1 if self._legacy_hash else Algorithm(((flags >> 8) & 7) + 1)
                )
                try:
                    ch = ContentHash(algorithm, h)
                except (ValueError, TypeError):
                    raise CatalogError(f"malformed {self.what}: bad object hash") from None
                compressed = ((flags >> FLAG_POS_COMPRESSION) & 7) == COMPRESSION_ZLIB
                if is_chunk:
                    out.append((ch, "P", compressed, size))
                elif flags & FLAG_DIR:
                    out.append((ch, "L", compressed, None))
                elif flags & FLAG_CHUNKED:
                    out.append((ch, "", compressed, size))  # a legacy bulk object: the file
                else:
                    out.append((ch, "", compressed, size))
        return out

    def nested_catalogs(self) -> dict[str, tuple[ContentHash, int]]:
        """Logical mountpoint -> (catalog hash, size) of nested and bind-mounted catalogs."""
        if self._nested is None:
            nested: dict[str, tuple[ContentHash, int]] = {}
            sources = []
            ncols = self._db.columns("nested_catalogs")
            if "sha1" in ncols:
                size = "size" if "size" in ncols else "0"
                sources.append(f"SELECT path, sha1, {size} FROM nested_catalogs")
            if self._db.has("bind_mountpoints"):
                self._db.columns("bind_mountpoints")
                sources.append("SELECT path, sha1, size FROM bind_mountpoints")
            if sources:
                for path, h, size in self._query(" UNION ALL ".join(sources), ()):
                    try:
                        nested[self.logical_path(path)] = (ContentHash.from_hex(h), size or 0)
                    except (ValueError, TypeError):
                        raise CatalogError(
                            f"malformed {self.what}: bad nested catalog hash {h!r}"
                        ) from None
            self._nested = nested
        return self._nested

    def counters(self) -> dict[str, int]:
        try:
            self._db.columns("statistics")
            rows = self._query("SELECT counter, value FROM statistics", ())
        except CatalogError:
            return {}
        return dict(rows)

    @property
    def revision(self) -> int:
        return int(self.properties.get("revision", "0"))

    @property
    def ttl(self) -> int:
        try:
            return int(self.properties.get("TTL", DEFAULT_TTL))
        except ValueError:
            return DEFAULT_TTL

    @property
    def last_modified(self) -> int:
        return int(self.properties.get("last_modified", "0"))

    @property
    def max_rowid(self) -> int:
        rows = self._query("SELECT max(rowid) FROM catalog", ())
        return rows[0][0] or 0

    def close(self) -> None:
        self._db.close()


def expand_variant_symlink(target: str, env) -> str:
    """Expand `$(NAME)` and `$(NAME:-default)` as the client does (set-but-empty wins)."""
    if "$" not in target:
        return target
    out = []
    i, n = 0, len(target)
    while i < n:
        c = target[i]
        if c == "$" and i + 2 < n and target[i + 1] == "(":
            close = target.find(")", i + 2)
            if close < 0:
                out.append(target[i : i + 3])
                i += 3
                continue
            inner = target[i + 2 : close]
            name, sep, default = inner.partition(":-")
            value = env.get(name)
            out.append(value if value is not None else (default if sep else ""))
            i = close + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)
