"""SQLite databases received from servers (catalogs, history databases), opened as
the real client opens them: read-only, with a fixed schema in mind.

A hash that verifies says only that the publisher signed the file, not that the file
is harmless to query: a table replaced by a view can make every query endless (a
recursive CTE), a generated column runs an expression on every row read, a trigger
or a virtual table is code, not data. So a database is refused unless each table we
read is a plain table with the columns we need and nothing computed, and it holds
no view, trigger or virtual table at all; and every query gets a deadline, checked
by SQLite's progress handler, in case something still makes one run away.
"""

from __future__ import annotations

import threading
import time

try:  # the C module sqlite3 re-exports, without the datetime adapters its package
    import _sqlite3 as sqlite3  # registers at import (~2 ms of parrot_run's start-up)
except ImportError:  # pragma: no cover
    import sqlite3

from ..errors import CatalogError

QUERY_SECONDS = 30.0  # the most one query may run (a whole large catalog listed in a preload)
_STEPS = 100_000  # SQLite VM instructions between two looks at the deadline (about 1 ms)

# table -> the columns we need (if the table is there), and those of some schema revisions
Schema = dict[str, tuple[frozenset[str], frozenset[str]]]


def _decode_text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def sqlite_uri_path(path: str) -> str:
    """A file path for a `file:` SQLite URI (%, ? and # escaped)."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _create_keywords(sql: str) -> list[str]:
    """The first two keywords of a CREATE statement, comments skipped (SQLite allows
    them between any two tokens): ["CREATE", "TABLE"] for a plain table."""
    words: list[str] = []
    i, n = 0, len(sql)
    while i < n and len(words) < 2:
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql[i].isspace():
            i += 1
        else:
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            words.append(sql[i : max(j, i + 1)].upper())
            i = max(j, i + 1)
    return words


class Database:
    """A read-only database of a known schema. Its schema entries are checked when it
    is opened; the columns of each table the first time `columns` is asked for them
    (opening a catalog reads three tables: the others wait until they are needed)."""

    def __init__(self, path: str, what: str, schema: Schema, required: tuple[str, ...], text=None):
        self.what = what
        self._schema = schema
        self._lock = threading.Lock()
        self._started = 0.0  # of the running query, at its first progress call
        try:
            uri = "file:" + sqlite_uri_path(path) + "?mode=ro&immutable=1"
            self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # (a message of bad bytes)
            raise CatalogError(f"malformed {what}: {e}") from None
        # text as the bytes it is (names are bytes on Linux): non-UTF-8 as surrogate escapes
        self._con.text_factory = text or _decode_text
        self._con.set_progress_handler(self._overdue, _STEPS)
        self._columns: dict[str, frozenset[str]] = {}
        try:
            self._tables = self._check_entries(required)
        except BaseException:
            self._con.close()
            raise

    def _overdue(self) -> bool:
        # called every _STEPS instructions: a short query (a lookup) never gets here,
        # so it pays for its bound with no more than resetting `_started`
        now = time.monotonic()
        if not self._started:
            self._started = now
            return False
        return now - self._started > QUERY_SECONDS

    def _refuse(self, why: str) -> CatalogError:
        return CatalogError(f"malformed {self.what}: {why}")

    def _check_entries(self, required: tuple[str, ...]) -> frozenset[str]:
        """The plain tables; refused: views, triggers, virtual tables, missing tables."""
        # sqlite_master is always a table: nothing of the file's own runs to read it
        tables = set()
        for kind, name, rootpage, sql in self.query(
            "SELECT type, name, rootpage, sql FROM sqlite_master", ()
        ):
            if kind in ("view", "trigger"):
                raise self._refuse(f"it holds a {kind} ({name}), which no catalog has")
            if kind == "table":
                # a virtual table is code (a module), and has no b-tree of its own
                if _create_keywords(sql or "") != ["CREATE", "TABLE"] or not rootpage:
                    raise self._refuse(f"{name} is not a plain table")
                tables.add(name)
            elif kind != "index":
                raise self._refuse(f"unknown schema entry {kind} {name}")
        for name in required:
            if name not in tables:
                raise self._refuse(f"no {name} table")
        return frozenset(tables)

    def has(self, table: str) -> bool:
        return table in self._tables

    def columns(self, table: str) -> frozenset[str]:
        """The known columns of a table of the schema (empty if the file lacks it),
        refused if it lacks a needed one or computes one (a generated column)."""
        got = self._columns.get(table)
        if got is not None:
            return got
        needed, known = self._schema[table]
        have = set()
        if table in self._tables:
            for row in self.query(f"PRAGMA table_xinfo({table})", ()):
                if row[-1]:  # hidden: a generated column
                    raise self._refuse(f"column {row[1]} of table {table} is computed")
                have.add(row[1])
            missing = needed - have
            if missing:
                raise self._refuse(f"table {table} lacks column {min(missing)}")
        got = self._columns[table] = frozenset(have & (needed | known))
        return got

    def query(self, sql: str, args: tuple) -> list:
        """All rows of one query, which may run about QUERY_SECONDS at most."""
        try:
            with self._lock:
                self._started = 0.0
                return self._con.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if str(e) == "interrupted":
                raise self._refuse(f"a query ran longer than {QUERY_SECONDS:g} s") from None
            raise self._refuse(str(e)) from None
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # (a message of bad bytes)
            raise self._refuse(str(e)) from None

    def close(self) -> None:
        with self._lock:
            self._con.close()
