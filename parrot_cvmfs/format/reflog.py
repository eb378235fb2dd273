"""The reflog `.cvmfsreflog`: the server's SQLite record of every root catalog,
certificate, tag database and meta-information object it published (what its garbage
collector must keep), at the repository's top level, uncompressed; the manifest's `Y`
field is the hash of the file's bytes. Clients never read it.

Schema 1.0 revision 0 (`reflog_sql.cc`): `properties` (schema, schema_revision, fqrn)
and `refs (hash TEXT, type INTEGER, timestamp INTEGER)`, the hash as bare hex, the type
one of REF_* below, the timestamp when the reference was first recorded.
"""

from __future__ import annotations

from collections import namedtuple

from ..errors import CatalogError
from .database import Database
from .hashes import ContentHash
from .values import shown

REFLOG_FILE = ".cvmfsreflog"

# SqlReflog::ReferenceType, and the object suffix of each
REF_CATALOG, REF_CERTIFICATE, REF_HISTORY, REF_METAINFO = 0, 1, 2, 3
REF_SUFFIX = {REF_CATALOG: "C", REF_CERTIFICATE: "X", REF_HISTORY: "H", REF_METAINFO: "M"}

SCHEMA_VERSION = "1.0"
SCHEMA_REVISION = "0"

_F = frozenset
READ_SCHEMA = {
    "properties": (_F({"key", "value"}), _F()),
    "refs": (_F({"hash", "type", "timestamp"}), _F()),
}

_INT64_MAX = (1 << 63) - 1


class Reference(namedtuple("Reference", "hash type timestamp")):
    __slots__ = ()

    hash: ContentHash
    type: int
    timestamp: int


class Reflog:
    """The references of a reflog database, each row checked (a CatalogError names the
    row and field)."""

    def __init__(self, db_path: str, what: str = "reflog"):
        self.what = what
        self._db = Database(db_path, what, READ_SCHEMA, ("properties", "refs"))
        try:
            self._db.columns("refs")
            self._db.columns("properties")
            self.properties = dict(self._db.query("SELECT key, value FROM properties", ()))
        except BaseException:
            self._db.close()
            raise

    @property
    def fqrn(self) -> str | None:
        value = self.properties.get("fqrn")
        return value if isinstance(value, str) else None

    def references(self) -> list[Reference]:
        """All references, oldest first."""
        rows = self._db.query("SELECT hash, type, timestamp FROM refs ORDER BY timestamp, hash", ())
        return [self._reference(row) for row in rows]

    def _reference(self, row) -> Reference:
        h, kind, timestamp = row
        where = f"malformed {self.what}: reference {shown(h)}"
        if kind not in REF_SUFFIX or type(kind) is not int:
            raise CatalogError(f"{where}: field type is {shown(kind)}")
        if type(timestamp) is not int or not 0 <= timestamp <= _INT64_MAX:
            raise CatalogError(f"{where}: field timestamp is {shown(timestamp)}")
        try:
            parsed = ContentHash.from_hex(h)
        except (ValueError, TypeError):
            raise CatalogError(f"{where}: field hash is not a hash") from None
        return Reference(parsed, kind, timestamp)

    def contains(self, h: ContentHash, kind: int) -> bool:
        return bool(self._db.query("SELECT 1 FROM refs WHERE hash = ? AND type = ?", (h.hex, kind)))

    def close(self) -> None:
        self._db.close()
