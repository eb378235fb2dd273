"""SQLite databases received from servers (catalogs, history databases), opened as
the real client opens them: read-only, with a fixed schema in mind.

A hash that verifies says only that the publisher signed the file, not that the file
is harmless to query: a table replaced by a view can make every query endless (a
recursive CTE), a generated column runs an expression on every row read, a trigger
or a virtual table is code, not data. So a database is refused unless each table we
read is a plain table with the columns we need and nothing computed, and it holds
no view, trigger or virtual table at all; and every query gets a deadline, checked
by SQLite's progress handler, in case something still makes one run away.

Each open database holds a descriptor, and a walk through a repository attaches one
catalog per nested catalog it crosses (tens of thousands in some repositories). So no
more than `open_limit()` connections stay open at once: past that, the one least
recently used is closed (what was learned of its schema kept), and reopened on its next
query, its file asked for again (the cache may have evicted it once nobody held it open)
and refused unless its schema entries are the ones checked the first time.
"""

from __future__ import annotations

import os
import threading
import time

try:  # the C module sqlite3 re-exports, without the datetime adapters its package
    import _sqlite3 as sqlite3  # registers at import (~2 ms of parrot_run's start-up)
except ImportError:  # pragma: no cover
    import sqlite3

from ..errors import CatalogError

TYPE_CHECKING = False  # not typing's: parrot_run's start-up imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

QUERY_SECONDS = 30.0  # the most one query may run (a whole large catalog listed in a preload)
_STEPS = 100_000  # SQLite VM instructions between two looks at the deadline (about 1 ms)
OPEN_MAX = 256  # databases open at once, at most (a quarter of a low RLIMIT_NOFILE)

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


def open_limit() -> int:
    """How many databases may be open at once: OPEN_MAX, or a quarter of the soft
    RLIMIT_NOFILE where that is lower (the rest is for everything else a process opens)."""
    try:
        soft = os.sysconf("SC_OPEN_MAX")  # the soft limit, without importing `resource`
    except (OSError, ValueError):
        soft = -1
    return OPEN_MAX if soft < 0 else max(4, min(OPEN_MAX, soft // 4))


class _OpenDatabases:
    """The databases with an open connection, oldest first, bounded by `open_limit()`.

    Which to close is chosen as by a clock: a query marks its database used (one
    attribute store, the only cost on the hot path); a sweep gives a marked database
    another round at the back of the queue, and closes the first unmarked one. Lock
    order: a database's lock, then this one's; a sweep only tries the databases' locks
    (one in use is skipped), so two threads never wait for each other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: dict[Database, None] = {}  # insertion-ordered: the oldest first
        self.closed = 0  # connections closed to stay under the limit (statistics)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, db: Database) -> None:
        """`db` was just opened (its lock held): close others past the limit."""
        with self._lock:
            self._queue[db] = None
            limit = open_limit()
            if len(self._queue) <= limit:
                return
            # bounded: each database is looked at twice at most (marked, then not)
            for _ in range(2 * len(self._queue)):
                if len(self._queue) <= limit:
                    break
                victim = next(iter(self._queue))
                del self._queue[victim]
                if victim is not db and not victim._used and victim._lock.acquire(False):
                    try:
                        victim._disconnect()
                    finally:
                        victim._lock.release()
                    self.closed += 1
                else:
                    victim._used = False
                    self._queue[victim] = None

    def discard(self, db: Database) -> None:
        with self._lock:
            self._queue.pop(db, None)


_open = _OpenDatabases()


def open_databases() -> int:
    """How many databases have an open connection now."""
    return len(_open)


class Database:
    """A read-only database of a known schema. Its schema entries are checked when it
    is opened; the columns of each table the first time `columns` is asked for them
    (opening a catalog reads three tables: the others wait until they are needed).

    The connection may be closed to keep the number of open databases bounded
    (`_OpenDatabases`): the next query reopens it, at the path `reopen()` gives (by
    default the same path); a file whose schema entries are not exactly those checked
    the first time is refused."""

    def __init__(
        self,
        path: str,
        what: str,
        schema: Schema,
        required: tuple[str, ...],
        text=None,
        reopen: Callable[[], str] | None = None,
    ):
        self.what = what
        self._schema = schema
        self._required = required
        self._text = text or _decode_text
        self._path = path
        self._reopen_path = reopen
        self._lock = threading.Lock()
        self._started = 0.0  # of the running query, at its first progress call
        self._used = True  # queried since the last sweep of the open databases
        self._closed = False  # by close(): for good
        self._columns: dict[str, frozenset[str]] = {}
        self._con = self._connect(path)
        try:
            self._tables = self._check_entries()
        except BaseException:
            self._con.close()
            raise
        _open.add(self)

    def _connect(self, path: str):
        try:
            uri = "file:" + sqlite_uri_path(path) + "?mode=ro&immutable=1"
            con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.OperationalError as e:  # the file cannot be opened (nor read)
            raise CatalogError(f"cannot open {self.what}: {e}") from None
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # (a message of bad bytes)
            raise CatalogError(f"malformed {self.what}: {e}") from None
        # text as the bytes it is (names are bytes on Linux): non-UTF-8 as surrogate escapes
        con.text_factory = self._text
        con.set_progress_handler(self._overdue, _STEPS)
        return con

    def _reconnect(self):
        """Open the database again (its lock held), checked as it was the first time."""
        if self._closed:
            raise CatalogError(f"{self.what} was closed")
        path = self._reopen_path() if self._reopen_path is not None else self._path
        self._con = self._connect(path)
        try:
            # the schema is its entries' SQL: the same entries, the same checked columns
            if self._entries() != self._master:
                raise self._refuse("its schema changed since it was first opened")
        except BaseException:
            self._disconnect()
            raise
        self._path = path
        _open.add(self)
        return self._con

    def _disconnect(self) -> None:
        """Close the connection (its lock held); the next query opens it again."""
        con, self._con = self._con, None
        if con is not None:
            con.close()

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

    def _failure(self, e: Exception) -> CatalogError:
        """A query's SQLite error as a refusal naming the database."""
        if isinstance(e, sqlite3.OperationalError) and str(e) == "interrupted":
            return self._refuse(f"a query ran longer than {QUERY_SECONDS:g} s")
        return self._refuse(str(e))

    def _rows(self, sql: str, args: tuple) -> list:
        """All rows of a query on the open connection (the lock held, or not yet shared)."""
        self._started = 0.0
        try:
            return self._con.execute(sql, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # (a message of bad bytes)
            raise self._failure(e) from None

    def _entries(self) -> list:
        # sqlite_master is always a table: nothing of the file's own runs to read it
        return self._rows("SELECT type, name, rootpage, sql FROM sqlite_master", ())

    def _check_entries(self) -> frozenset[str]:
        """The plain tables; refused: views, triggers, virtual tables, missing tables."""
        tables = set()
        self._master = self._entries()
        for kind, name, rootpage, sql in self._master:
            if kind in ("view", "trigger"):
                raise self._refuse(f"it holds a {kind} ({name}), which no catalog has")
            if kind == "table":
                # a virtual table is code (a module), and has no b-tree of its own
                if _create_keywords(sql or "") != ["CREATE", "TABLE"] or not rootpage:
                    raise self._refuse(f"{name} is not a plain table")
                tables.add(name)
            elif kind != "index":
                raise self._refuse(f"unknown schema entry {kind} {name}")
        for name in self._required:
            if name not in tables:
                raise self._refuse(f"no {name} table")
        return frozenset(tables)

    def has(self, table: str) -> bool:
        return table in self._tables

    def _table_columns(self, table: str) -> frozenset[str]:
        """The known columns of `table` as the file has them (the connection open)."""
        needed, known = self._schema[table]
        have = set()
        if table in self._tables:
            for row in self._rows(f"PRAGMA table_xinfo({table})", ()):
                if row[-1]:  # hidden: a generated column
                    raise self._refuse(f"column {row[1]} of table {table} is computed")
                have.add(row[1])
            missing = needed - have
            if missing:
                raise self._refuse(f"table {table} lacks column {min(missing)}")
        return frozenset(have & (needed | known))

    def columns(self, table: str) -> frozenset[str]:
        """The known columns of a table of the schema (empty if the file lacks it),
        refused if it lacks a needed one or computes one (a generated column)."""
        got = self._columns.get(table)
        if got is None:
            with self._lock:
                if self._con is None:
                    self._reconnect()
                got = self._columns[table] = self._table_columns(table)
        return got

    def query(self, sql: str, args: tuple) -> list:
        """All rows of one query, which may run about QUERY_SECONDS at most."""
        with self._lock:
            self._started = 0.0
            self._used = True
            con = self._con
            if con is None:
                con = self._reconnect()
            try:
                return con.execute(sql, args).fetchall()
            except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # (a message of bad bytes)
                raise self._failure(e) from None

    def close(self) -> None:
        """Close the database for good (a later query is an error)."""
        with self._lock:
            self._closed = True
            self._disconnect()
        _open.discard(self)
