"""The self-erasing progress line of a job's downloads.

Every object the client downloads (by the C fetcher or the Python downloader) goes
through the fetcher, which tells this module when a download begins and ends (the
download statistics themselves are the Downloader's: `--stats`, `user.speed`).

A cold job that downloads a lot looks hung: when a caller asked for it (`terminal_line`,
parrot_run does when not debugging) and stderr is a terminal, one line is drawn on stderr
while a download goes on, once downloads have been going on for more than a second
(downloads less than QUIET_GAP apart are one burst), and erased (`\\r` and erase to the
end of the line) the moment no download is going on, when the job runs again and may
write to the terminal, and at `finish()`. The downloading threads draw and erase it as
they begin and end; a small thread redraws it while one long download goes on. Never
when stderr is not a terminal.
"""

from __future__ import annotations

import os
import threading
import time

SHOW_AFTER = 1.0  # seconds of downloading before the line appears
QUIET_GAP = 0.5  # seconds without a download that end a burst
TICK = 0.2  # seconds between redraws
ERASE = b"\r\x1b[K"


_lock = threading.Lock()
_active = 0  # downloads going on now
_burst_start = 0.0  # monotonic start of the current burst (stretches QUIET_GAP apart)
_burst_objects = _burst_bytes = 0
_idle_since = 0.0
_current = ""  # what is being fetched (the last download that began)
_line: _TerminalLine | None = None


def begin(what: str) -> None:
    """A download of `what` (a repository path, a catalog...) starts."""
    global _active, _burst_start, _burst_objects, _burst_bytes, _current
    now = time.monotonic()
    with _lock:
        if _active == 0:
            if not _burst_start or now - _idle_since > QUIET_GAP:
                _burst_start, _burst_objects, _burst_bytes = now, 0, 0
        _active += 1
        _current = what
        line = _line
    if line is not None:
        line.wake()
        line.draw()


def end(stored: int | None) -> None:
    """A download that began ended: it stored `stored` bytes (None: it failed)."""
    global _active, _idle_since, _burst_objects, _burst_bytes
    now = time.monotonic()
    with _lock:
        _active = max(0, _active - 1)
        if _active == 0:
            _idle_since = now
        if stored is not None:
            _burst_objects += 1
            _burst_bytes += stored
        line = _line if _active == 0 else None
    if line is not None:
        line.draw()  # erased now: the job, running again, may write to the terminal


def _text(now: float) -> str | None:
    """The line to show now, None for none (called with _lock held)."""
    if not _active or now - _burst_start < SHOW_AFTER:
        return None
    elapsed = now - _burst_start
    mb = _burst_bytes / 1e6
    return (
        f"parrot_cvmfs: downloaded {_burst_objects} objects, {mb:.1f} MB"
        f" ({mb / elapsed:.1f} MB/s); fetching {_current}"
    )


class _TerminalLine:
    """The thread that draws the line on descriptor `fd` and erases it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.shown = False
        self.stopped = False
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def wake(self) -> None:
        if self.thread is not None:
            return
        with self.cond:
            if self.thread is None and not self.stopped:
                self.thread = threading.Thread(target=self._run, name="progress-line", daemon=True)
                self.thread.start()

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.fd).columns
        except OSError:
            columns = 0
        return max(20, columns - 1) if columns else 79  # 0: a terminal of unknown size

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)  # one write: the line never goes out in pieces
        except OSError:
            pass

    def draw(self) -> None:
        """The line as the counters say now: drawn while a download is going on (past
        the first second of a burst), erased otherwise."""
        with self.cond:
            if self.stopped:
                return
            with _lock:
                text = _text(time.monotonic())
            if text is not None:
                width = self._width()
                if len(text) > width:
                    text = text[: width - 3] + "..."
                self._write(b"\r" + text.encode("utf-8", "replace") + b"\x1b[K")
                self.shown = True
            elif self.shown:
                self._write(ERASE)
                self.shown = False

    def _run(self) -> None:
        """Redraws while one long download goes on (its rate and the time move)."""
        with self.cond:
            while not self.stopped:
                self.draw()
                self.cond.wait(TICK)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
            if self.shown:
                self._write(ERASE)
                self.shown = False


def terminal_line(fd: int = 2) -> None:
    """Show the progress line on `fd` from now on, if it is a terminal (the drawing
    thread starts with the first download)."""
    global _line
    try:
        if not os.isatty(fd):
            return
    except OSError:
        return
    with _lock:
        if _line is None:
            _line = _TerminalLine(fd)


def finish() -> None:
    """No more progress line: erased if shown (before the job's exit is reported)."""
    global _line
    with _lock:
        line, _line = _line, None
    if line is not None:
        line.stop()
