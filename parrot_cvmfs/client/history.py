"""The tag database (manifest field H): named revisions and their root catalogs."""

from __future__ import annotations

from collections import namedtuple

from ..errors import CatalogError
from .database import Database
from .hashes import ContentHash

# the tables of history schema 1.0 (revisions 0-3): what we read, what may be there
_F = frozenset
HISTORY_SCHEMA = {
    "properties": (_F({"key", "value"}), _F()),
    "tags": (
        _F({"name", "hash", "revision", "timestamp", "description"}),
        _F({"channel", "size", "branch"}),
    ),
    "branches": (_F({"branch"}), _F({"parent", "initial_revision"})),
    "recycle_bin": (_F(), _F({"hash", "flags"})),
}


class Tag(namedtuple("Tag", "name root_hash revision timestamp description size branch")):
    __slots__ = ()

    name: str
    root_hash: ContentHash
    revision: int
    timestamp: int
    description: str
    size: int
    branch: str


class History:
    def __init__(self, db_path: str, what: str = "history database"):
        self.what = what
        self._db = Database(db_path, what, HISTORY_SCHEMA, ("properties", "tags"))
        try:
            self._columns = self._db.columns("tags")
            self._db.columns("properties")
            self.properties = dict(self._db.query("SELECT key, value FROM properties", ()))
        except BaseException:
            self._db.close()
            raise

    def _select(self, where: str, args: tuple) -> list[Tag]:
        size = "size" if "size" in self._columns else "0"
        branch = "branch" if "branch" in self._columns else "''"
        sql = (
            f"SELECT name, hash, revision, timestamp, description, {size}, {branch} FROM tags "
            + where
        )
        rows = self._db.query(sql, args)
        try:
            return [
                Tag(n, ContentHash.from_hex(h), r or 0, t or 0, d or "", s or 0, b or "")
                for n, h, r, t, d, s, b in rows
            ]
        except ValueError as e:
            raise CatalogError(f"malformed {self.what}: {e}") from None

    def tags(self) -> list[Tag]:
        """All tags, newest revision first."""
        return self._select("ORDER BY revision DESC, name", ())

    def get(self, name: str) -> Tag | None:
        found = self._select("WHERE name = ?", (name,))
        return found[0] if found else None

    def at(self, timestamp: int) -> Tag | None:
        """The newest main-line tag published at or before `timestamp`."""
        where = "WHERE timestamp <= ? "
        if "branch" in self._columns:
            where += "AND branch = '' "
        found = self._select(where + "ORDER BY revision DESC LIMIT 1", (timestamp,))
        return found[0] if found else None

    def close(self) -> None:
        self._db.close()


def parse_repository_date(text: str) -> int:
    """`YYYY-MM-DDTHH:MM:SSZ` (or a plain ISO date/time, taken as UTC) -> Unix time."""
    import datetime as dt

    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    try:
        d = dt.datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"bad date {text!r} (expected e.g. 2024-05-01T12:00:00Z)") from None
    if d.tzinfo is None:
        import calendar

        return calendar.timegm(d.timetuple())
    return int(d.timestamp())
