"""The tag database (manifest field H): named revisions and their root catalogs."""

from __future__ import annotations

from collections import namedtuple

try:  # the C module sqlite3 re-exports, without the datetime adapters its package
    import _sqlite3 as sqlite3  # registers at import (~2 ms of parrot_run's start-up)
except ImportError:  # pragma: no cover
    import sqlite3

from ..errors import CatalogError
from .catalog import sqlite_uri_path
from .hashes import ContentHash


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
        try:
            uri = "file:" + sqlite_uri_path(db_path) + "?mode=ro&immutable=1"
            self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._columns = {r[1] for r in self._con.execute("PRAGMA table_info(tags)")}
            self.properties = dict(self._con.execute("SELECT key, value FROM properties"))
        except sqlite3.DatabaseError as e:
            raise CatalogError(f"malformed {what}: {e}") from None
        if "name" not in self._columns or "hash" not in self._columns:
            raise CatalogError(f"malformed {what}: no tags table")

    def _select(self, where: str, args: tuple) -> list[Tag]:
        size = "size" if "size" in self._columns else "0"
        branch = "branch" if "branch" in self._columns else "''"
        sql = (
            f"SELECT name, hash, revision, timestamp, description, {size}, {branch} FROM tags "
            + where
        )
        try:
            rows = self._con.execute(sql, args).fetchall()
            return [
                Tag(n, ContentHash.from_hex(h), r or 0, t or 0, d or "", s or 0, b or "")
                for n, h, r, t, d, s, b in rows
            ]
        except (sqlite3.DatabaseError, ValueError) as e:
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
        self._con.close()


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
