"""One file catalog: a SQLite database mapping path MD5s to directory entries.

Columns differ between schema revisions, so the SELECT is built from the
table's actual columns. Entries are keyed by the MD5 of their full path inside
the repository (the root is the empty string). The database is opened through
`database.Database`: refused unless its schema is one of the catalog schemas,
every query bounded in time, its connection one of a bounded number open at once.
"""

from __future__ import annotations

import stat as st

from ..errors import CatalogError
from .database import Database
from .entry import (
    COMPRESSION_NONE,
    COMPRESSION_ZLIB,
    FLAG_CHUNKED,
    FLAG_DIR,
    FLAG_EXTERNAL,
    FLAG_POS_COMPRESSION,
    FLAG_POS_HASH,
    DirEntry,
    md5path,
)
from .hashes import DIGEST_SIZE, Algorithm, ContentHash
from .values import column_text, decimal, shown

TYPE_CHECKING = False  # not typing's: parrot_run's start-up imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

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


# -- what a row may hold ------------------------------------------------------------------------
# Names are bytes on Linux (any encoding; non-UTF-8 ones travel as surrogate escapes) and
# may hold control characters; what no file system can hold is refused as the kernel
# refuses it from a FUSE server (EIO): an empty name, "." or "..", a '/' or a NUL, more
# than NAME_MAX bytes. A symlink target holds no NUL and fits PATH_MAX.
NAME_MAX = 255
SYMLINK_MAX = 4095
_FILE_TYPES = frozenset(
    (st.S_IFDIR, st.S_IFREG, st.S_IFLNK, st.S_IFIFO, st.S_IFSOCK, st.S_IFCHR, st.S_IFBLK)
)
_INT64_MAX = (1 << 63) - 1
_U32_MAX = (1 << 32) - 1
_ALGORITHM_BITS_MAX = 2  # flags store the algorithm minus one: SHA-1, RMD-160, SHAKE-128
_COMPRESSIONS = (COMPRESSION_ZLIB, COMPRESSION_NONE)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a directory entry's name, or None if it can."""
    if not name:
        return "is empty"
    if name == "." or name == "..":
        return f"is {name!r}"
    if "/" in name:
        return "contains '/'"
    if "\0" in name:
        return "contains a NUL byte"
    # a character is at most 4 bytes in UTF-8 (a surrogate escape stands for one byte)
    if len(name) * 4 > NAME_MAX and len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None


class Catalog:
    """A read-only view of one catalog database.

    `mountpoint` is where the catalog's root appears in the logical namespace;
    `prefix` is that root's path inside the catalog (its `root_prefix`, "" for a
    root catalog). Paths given to methods are logical.
    """

    def __init__(
        self,
        db_path: str,
        content_hash: ContentHash | None,
        mountpoint: str = "",
        reopen: Callable[[], str] | None = None,
    ):
        self.db_path = db_path
        self.hash = content_hash
        self.mountpoint = mountpoint
        self.what = (
            f"catalog {content_hash.hex if content_hash else db_path} at /{mountpoint.lstrip('/')}"
        )
        # the file may be closed while the catalog stays attached (database.py):
        # `reopen` gives it again (fetched again if the cache evicted it meanwhile)
        self._db = Database(
            db_path, self.what, CATALOG_SCHEMA, ("properties", "catalog"), reopen=reopen
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
            + ", md5path_1, md5path_2 FROM catalog "
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

    def _bad_row(self, path: str, problem: str) -> CatalogError:
        return CatalogError(f"malformed {self.what}: entry {path or '/'!r}: {problem}")

    def _int(self, path: str, field: str, value, default: int | None, lo: int, hi: int) -> int:
        if value is None and default is not None:
            return default
        if type(value) is not int or not lo <= value <= hi:
            raise self._bad_row(path, f"field {field} is {shown(value)}, not an integer {lo}..{hi}")
        return value

    def _entry(self, row, path: str, listed: bool = False) -> DirEntry:
        """A row as an entry, after checking every field: a row no file system could
        hold is a CatalogError naming this catalog, the entry and the field. `path` is
        the logical path the row was found under (looked up by its key, or listed
        under its parent: then the row's key must be the md5 of that path)."""
        (rowid, name, mode, size, mtime, mtimens, flags, h, symlink, hardlinks, uid, gid, xattr,
         key1, key2) = row  # fmt: skip
        if type(name) is not str or type(symlink) is not str:
            try:
                name = column_text(name) or ""
                symlink = column_text(symlink) or ""
            except TypeError:
                raise self._bad_row(path, "field name or symlink is not text") from None
        internal = self.internal_path(path)
        if internal:
            problem = name_problem(name)
            if problem is not None:
                raise self._bad_row(path, f"name {shown(name)} {problem}")
        if internal[internal.rfind("/") + 1 :] != name or (
            listed and md5path(internal) != (key1, key2)
        ):
            raise self._bad_row(path, f"name {shown(name)} does not match its path key")
        # the common case in one expression; a field out of its range is then named
        if not (
            type(mode) is int and 0 <= mode <= 0o177777 and type(flags) is int
            and 0 <= flags <= _U32_MAX
            and (size is None or (type(size) is int and 0 <= size))
            and (mtime is None or type(mtime) is int)
            and (mtimens is None or (type(mtimens) is int and 0 <= mtimens <= 999_999_999))
            and (hardlinks is None or (type(hardlinks) is int and 0 <= hardlinks))
            and (uid is None or (type(uid) is int and 0 <= uid <= _U32_MAX))
            and (gid is None or (type(gid) is int and 0 <= gid <= _U32_MAX))
        ):  # fmt: skip
            self._int(path, "mode", mode, None, 0, 0o177777)
            self._int(path, "flags", flags, None, 0, _U32_MAX)
            self._int(path, "size", size, 0, 0, _INT64_MAX)
            self._int(path, "mtime", mtime, 0, -_INT64_MAX - 1, _INT64_MAX)
            self._int(path, "mtimens", mtimens, 0, 0, 999_999_999)
            self._int(path, "hardlinks", hardlinks, 1, 0, _INT64_MAX)
            self._int(path, "uid", uid, 0, 0, _U32_MAX)
            self._int(path, "gid", gid, 0, 0, _U32_MAX)
        if st.S_IFMT(mode) not in _FILE_TYPES:
            raise self._bad_row(path, f"field mode {oct(mode)} is no file type")
        if xattr is not None and type(xattr) is not bytes:
            if type(xattr) is not str:
                raise self._bad_row(path, "field xattr is not a blob")
            xattr = xattr.encode("utf-8", "surrogateescape")
        if st.S_ISLNK(mode):
            if not symlink or "\0" in symlink:
                raise self._bad_row(path, f"symlink target {shown(symlink)} is empty or holds NUL")
            if len(symlink) * 4 > SYMLINK_MAX and (
                len(symlink.encode("utf-8", "surrogateescape")) > SYMLINK_MAX
            ):
                raise self._bad_row(path, f"symlink target is longer than {SYMLINK_MAX} bytes")
        elif st.S_ISREG(mode) and (flags >> FLAG_POS_COMPRESSION) & 7 not in _COMPRESSIONS:
            raise self._bad_row(
                path, f"field flags: unknown compression {(flags >> FLAG_POS_COMPRESSION) & 7}"
            )
        content_hash = None
        if h or flags & FLAG_CHUNKED:
            algorithm = self._algorithm(flags)
            if algorithm is None:
                bits = (flags >> FLAG_POS_HASH) & 7
                raise self._bad_row(path, f"field flags: unknown hash algorithm {bits + 1}")
            if h:
                content_hash = self._digest(algorithm, h)
                if content_hash is None:
                    raise self._bad_row(
                        path, f"field hash is not a {algorithm.name} digest ({shown(h)})"
                    )
        return DirEntry(
            path,
            name,
            mode,
            size or 0,
            mtime or 0,
            mtimens,
            flags,
            content_hash,
            symlink,
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

    def listing(self, path: str, limit: int | None = None) -> list[DirEntry]:
        """Children of a directory whose entries live in this catalog (hidden ones
        included), the first `limit` of them if given. One child no file system can hold
        fails the whole listing, as the kernel fails a FUSE server's."""
        p1, p2 = md5path(self.internal_path(path))
        sql = self._select + "WHERE parent_1=? AND parent_2=?"
        if limit is not None:
            rows = self._query(sql + " LIMIT ?", (p1, p2, limit))
        else:
            rows = self._query(sql, (p1, p2))
        out = []
        for r in rows:
            try:
                child = f"{path}/{column_text(r[1]) or ''}"
            except TypeError:
                child = f"{path}/?"
            out.append(self._entry(r, child, listed=True))
        return out

    def _algorithm(self, flags: int) -> Algorithm | None:
        """The content hash algorithm the flags name (None: bits no algorithm has)."""
        if self._legacy_hash:
            return Algorithm.SHA1
        bits = (flags >> FLAG_POS_HASH) & 7
        return Algorithm(bits + 1) if bits <= _ALGORITHM_BITS_MAX else None

    @staticmethod
    def _digest(algorithm: Algorithm, h) -> ContentHash | None:
        """A raw digest column as a hash (None if it is not a digest of that algorithm)."""
        if type(h) is str:
            h = h.encode("utf-8", "surrogateescape")
        if type(h) is not bytes or len(h) != DIGEST_SIZE[algorithm]:
            return None
        return ContentHash(algorithm, h)

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
        algorithm = entry.hash.algorithm if entry.hash else self._algorithm(entry.flags)
        out = []
        for offset, size, h in rows:
            where = f"chunk at offset {shown(offset)}"
            offset = self._int(entry.path, "offset of a chunk", offset, None, 0, _INT64_MAX)
            size = self._int(entry.path, f"size of the {where}", size, None, 0, _INT64_MAX)
            ch = self._digest(algorithm, h) if algorithm is not None else None
            if ch is None:
                raise self._bad_row(entry.path, f"the {where} has no valid hash ({shown(h)})")
            out.append((offset, size, ch))
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
                what = f"object {shown(h)}"
                if type(flags) is not int or not 0 <= flags <= _U32_MAX:
                    raise CatalogError(f"malformed {self.what}: {what} has flags {shown(flags)}")
                if size is not None and (type(size) is not int or not 0 <= size <= _INT64_MAX):
                    raise CatalogError(f"malformed {self.what}: {what} has size {shown(size)}")
                algorithm = self._algorithm(flags)
                ch = self._digest(algorithm, h) if algorithm is not None else None
                if ch is None:
                    raise CatalogError(f"malformed {self.what}: {what} is not a valid hash")
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
        """Logical mountpoint -> (catalog hash, size) of nested and bind-mounted catalogs.
        A mountpoint is a canonical path strictly below this catalog's root."""
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
                        path = column_text(path)
                    except TypeError:
                        path = None
                    if path is None or not _is_below(path, self.prefix):
                        raise CatalogError(
                            f"malformed {self.what}: nested catalog path {shown(path)}"
                            " is not a path below the catalog's root"
                        )
                    if size is not None and (type(size) is not int or size < 0):
                        raise CatalogError(
                            f"malformed {self.what}: nested catalog {path!r} has size {shown(size)}"
                        )
                    try:
                        nested[self.logical_path(path)] = (ContentHash.from_hex(h), size or 0)
                    except (ValueError, TypeError):
                        raise CatalogError(
                            f"malformed {self.what}: nested catalog {path!r} has hash {shown(h)}"
                        ) from None
            self._nested = nested
        return self._nested

    def counters(self) -> dict[str, int]:
        try:
            self._db.columns("statistics")
            rows = self._query("SELECT counter, value FROM statistics", ())
        except CatalogError:
            return {}
        for name, value in rows:
            if type(name) is not str or type(value) is not int:
                raise CatalogError(
                    f"malformed {self.what}: statistics counter {shown(name)} is {shown(value)}"
                )
        return dict(rows)

    def _int_property(self, key: str, default: int) -> int:
        value = self.properties.get(key)
        if value is None:
            return default
        if type(value) is int:
            return value
        text = value if type(value) is str else ""
        n = decimal(text[1:] if text[:1] == "-" else text)
        if n is None:
            raise CatalogError(f"malformed {self.what}: property {key} is {shown(value)}")
        return -n if text[:1] == "-" else n

    @property
    def revision(self) -> int:
        return self._int_property("revision", 0)

    @property
    def ttl(self) -> int:
        try:
            ttl = self._int_property("TTL", DEFAULT_TTL)
        except CatalogError:
            return DEFAULT_TTL  # as the client: a TTL it cannot read is the default
        return ttl if ttl >= 0 else DEFAULT_TTL

    @property
    def last_modified(self) -> int:
        return self._int_property("last_modified", 0)

    @property
    def max_rowid(self) -> int:
        rows = self._query("SELECT max(rowid) FROM catalog", ())
        return rows[0][0] or 0

    def close(self) -> None:
        self._db.close()


def _is_below(path: str, root: str) -> bool:
    """Whether `path` is a canonical path (no empty, "." or ".." component, no name no
    file system can hold) strictly below `root` ("" is the repository root)."""
    if not path.startswith(root + "/"):
        return False
    return all(name_problem(part) is None for part in path[len(root) + 1 :].split("/"))


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
