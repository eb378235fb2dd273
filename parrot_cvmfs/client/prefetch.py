"""Bounded background fetches for cold runs.

When a job reads a file that is not in the cache, the files of the same kind beside it
are likely next: a Python package's `__pycache__/*.pyc`, a library directory's
extension modules, a header directory's headers. So before the job's own fetch of the
file, its directory's other regular files with the same suffix (small, unchunked,
not external) are queued for a few background threads, which fetch them while the job
goes on. Measured on workload P (numpy and scipy from a venv, bench/bench_workload.py):
about 435 objects come ahead of the job, 80% of which it then reads (72% of the 488 it
needs), for 3% more bytes fetched in all.

Every prefetch is verified as any fetch is (the C fetcher checks the hash and the size,
the cache commits it), bounded in bytes per run and per directory and in files per
directory, skipped for an object another thread or process is fetching (its lock is
taken without waiting), and never waited for: the job's fetch of an object a worker has
in flight waits on its lock as it would for another job's, and one not started yet is
fetched by the job itself. The end of a run waits for none of them (what is in flight
is not stored). A failed prefetch is dropped without a word and ends the prefetching
for the run (a failing server would fail the next guesses too); the job's own fetch,
if it comes, reports whatever is wrong.
"""

from __future__ import annotations

import threading
from collections import deque

from ..atomic import discard
from . import cfetch

WORKERS = 2  # fetching threads: the job's supervisor has the other core's worth of work
FILE_MAX = 4 << 20  # bytes: larger files are fetched when read (chunked ones always are)
DIR_FILES = 256  # a directory with more entries is not guessed from
DIR_BYTES = 16 << 20  # bytes queued for one directory, at most
DIRS_MAX = 65536  # directories remembered as looked at
FILES_MAX = 16384  # objects queued in a run, at most (whatever their sizes)


class Prefetcher:
    """The background fetches of one repository's client (see the module's text)."""

    def __init__(self, fetcher, budget: int, workers: int = WORKERS):
        self.fetcher = fetcher
        self.budget = budget  # bytes that may still be queued, for the whole run
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._seen: set[str] = set()
        self._mine: set[bytes] = set()  # digests prefetched, to count those used
        self._threads: list[threading.Thread] = []
        self._workers = workers
        self._closed = False
        self.queued = self.fetched = self.bytes = self.used = 0

    def around(self, directory: str, siblings, entry) -> None:
        """`entry`, in `directory`, is about to be fetched on demand: queue the files
        `siblings()` lists there (DirEntry objects, or None for a directory too big to
        guess from) that are of its kind. Each directory is looked at once."""
        if self._closed or self.budget <= 0 or directory in self._seen:
            return
        if len(self._seen) >= DIRS_MAX or self.queued >= FILES_MAX:
            return
        self._seen.add(directory)
        children = siblings(DIR_FILES)
        if not children:
            return
        suffix = _suffix(entry.name)
        picked, total = [], 0
        for c in children:
            if (
                c.name == entry.name
                or not c.is_regular
                or c.is_chunked
                or c.is_external
                or c.is_hidden
                or c.hash is None
                or not 0 < c.size <= FILE_MAX
                or _suffix(c.name) != suffix
            ):
                continue
            if total + c.size > min(DIR_BYTES, self.budget):
                break
            if self.queued + len(picked) >= FILES_MAX:
                break
            total += c.size
            picked.append((c.hash, c.is_compressed, c.size))
        if not picked:
            return
        with self._cv:
            self.budget -= total
            self.queued += len(picked)
            self._queue.extend(picked)
            self._cv.notify(len(picked))
            while len(self._threads) < self._workers:
                t = threading.Thread(target=self._work, name="prefetch", daemon=True)
                try:
                    t.start()
                except RuntimeError:
                    # at the process's thread limit: a guess is not worth failing the
                    # job's open for; what the workers that did start cannot take, the
                    # job fetches itself when it reads it
                    self._workers = len(self._threads)  # not tried again
                    if not self._threads:
                        self._closed = True
                        self._queue.clear()
                    break
                self._threads.append(t)

    def note_read(self, digest: bytes) -> None:
        """The job read an object (for the count of prefetched objects it used)."""
        if digest in self._mine:
            self._mine.discard(digest)
            self.used += 1

    def close(self) -> None:
        """Drop what is queued and stop: a fetch in flight ends at its own deadline
        and is not stored (its temporary file is the cache's to clear), so the end of
        a run waits for no guess. Returns once no worker is storing into the cache."""
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                h, compressed, size = self._queue.popleft()
            try:
                got = self._fetch(h, compressed, size)
            except Exception:  # noqa: BLE001 - a guess that failed costs nothing
                got = -1
            if got < 0:
                # a server or network that fails a guess would fail the next ones too,
                # and each could make a job that waits on it wait twice: no more guesses
                self.close()
                return

    def _fetch(self, h, compressed: bool, size: int) -> int:
        """Fetch one object unless it is cached or being fetched: its size, 0 if it
        was not fetched, -1 if the fetch failed."""
        f = self.fetcher
        cache = f.cache
        if f.offline or f.downloader is None:
            return 0
        # the cache is open while this is not closed: looked at and locked under the
        # condition (none of it waits), as it is stored and let go of below
        with self._cv:
            if self._closed or cache.find(h, size=size, count=False) is not None:
                return 0
            lock = cache.lock(h.hex)
            if not lock.try_acquire():
                return 0  # another thread or process has it in flight
        stored = False
        try:
            if cache.find(h, size=size, count=False) is not None:
                return 0  # stored by whoever had it before the lock was ours
            tmp = cache.temp_path("prefetch")
            item = cfetch.Item(h, "", compressed, size, size, tmp, None)
            got = cfetch.fetch(f.downloader, [item], mode=cache.object_mode)[0]
            if got.stored is None:
                return -1
            # stored under the condition, so that close() (and the cache's after it)
            # cannot come between the check and the commit
            with self._cv:
                if self._closed:
                    discard(tmp)
                    return 0
                cache.commit(tmp, h, clean=False)
                stored = True
                self.fetched += 1
                self.bytes += size
                self._mine.add(h.digest)
                lock.release()
            return size
        finally:
            if not stored:
                with self._cv:  # (as above: the cache is open while this is not closed)
                    if not self._closed:
                        lock.release()
            # once closed, the lock is left to the cache's close, which drops it with
            # its descriptor: released later, that number may be closed or another's


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""
