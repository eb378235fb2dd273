"""The tag database (manifest field H): named revisions and their root catalogs."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

from ..errors import CatalogError, ConfigError
from .database import Database
from .hashes import ContentHash
from .values import column_text, shown

_INT64_MAX = (1 << 63) - 1

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
    """The tags of a history database; `reopen` gives its file again if the bound on
    open databases closed it (database.py), by default the same path."""

    def __init__(
        self, db_path: str, what: str = "history database", reopen: Callable[[], str] | None = None
    ):
        self.what = what
        self._db = Database(db_path, what, HISTORY_SCHEMA, ("properties", "tags"), reopen=reopen)
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
        return [self._tag(row) for row in self._db.query(sql, args)]

    def _tag(self, row) -> Tag:
        """A tags row, checked field by field (a CatalogError names the tag and field)."""
        name, h, revision, timestamp, description, size, branch = row
        try:
            name, description, branch = (
                column_text(name),
                column_text(description),
                column_text(branch),
            )
        except TypeError:
            raise CatalogError(
                f"malformed {self.what}: tag {shown(name)}: a text field is not text"
            ) from None
        if not name:
            raise CatalogError(f"malformed {self.what}: a tag has no name")
        where = f"malformed {self.what}: tag {shown(name)}"
        try:
            root = ContentHash.from_hex(h)
        except (ValueError, TypeError):
            raise CatalogError(f"{where}: field hash {shown(h)} is not a hash") from None
        fields = {"revision": revision, "timestamp": timestamp, "size": size}
        for field, value in fields.items():
            if value is not None and (type(value) is not int or not 0 <= value <= _INT64_MAX):
                raise CatalogError(f"{where}: field {field} is {shown(value)}")
        return Tag(
            name, root, revision or 0, timestamp or 0, description or "", size or 0, branch or ""
        )

    def tags(self) -> list[Tag]:
        """All tags, newest revision first."""
        return self._select("ORDER BY revision DESC, name", ())

    def get(self, name: str) -> Tag | None:
        # as bytes: a name of undecodable bytes (surrogate escapes) binds as what it is
        raw = name.encode("utf-8", "surrogateescape")
        found = self._select("WHERE name = CAST(? AS TEXT)", (raw,))
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
    """`YYYY-MM-DDTHH:MM:SSZ` (or a plain ISO date/time, taken as UTC) -> Unix time;
    a ConfigError for anything else."""
    import datetime as dt

    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    try:
        d = dt.datetime.fromisoformat(t)
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        return int(d.timestamp())
    except (ValueError, OverflowError):
        raise ConfigError(f"bad date {text[:40]!r} (expected e.g. 2024-05-01T12:00:00Z)") from None
