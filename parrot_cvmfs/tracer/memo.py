"""Answers kept across runs.

Everything Python teaches the C answer table about a path in a repository is a
function of the repository revision (immutable), the user (ownership, access) and
nothing else, unless the path goes through a variant symlink or into another
repository; those are not kept. The rest is saved per revision and user when the
supervisor ends, and taught to the C table again when a later run mounts the same
revision: a warm run then answers almost every call in C.
"""

from __future__ import annotations

import os
import pickle
import tempfile

from .core import Core

FORMAT = 1


class Memo:
    def __init__(self, core: Core, cache_dir: str):
        self.core = core
        self.dir = os.path.join(cache_dir, "memo")
        self.uid = os.getuid()
        self.answers: dict[str, dict] = {}  # revision id -> {(key, follow): answer}
        self.opens: dict[str, dict] = {}  # revision id -> {(key, follow): (target, is_dir)}
        self.served: dict[str, dict] = {}  # revision id -> {backing file: logical path}
        self.dirty: set[str] = set()

    def _file(self, rev: str) -> str:
        safe = rev.replace("/", "_")
        return os.path.join(self.dir, f"{safe}.{self.uid}.pickle")

    # -- teaching (and remembering) --------------------------------------------------------------

    def put(self, rev: str | None, key: bytes, follow: bool, err: int, stat_buf, statx_buf,
            access, link) -> None:
        self.core.table_put(key, follow, err, stat_buf, statx_buf, access, link)
        if rev is not None:
            self.answers.setdefault(rev, {})[(key, follow)] = (err, stat_buf, statx_buf, access, link)
            self.dirty.add(rev)

    def put_open(self, rev: str | None, key: bytes, follow: bool, target: bytes, is_dir: bool,
                 logical: str | None) -> None:
        self.core.table_put_open(key, follow, target, is_dir)
        if rev is not None:
            self.opens.setdefault(rev, {})[(key, follow)] = (target, is_dir)
            if logical is not None:
                self.served.setdefault(rev, {})[os.fsdecode(target)] = logical
            self.dirty.add(rev)

    # -- across runs --------------------------------------------------------------------------------

    def load(self, rev: str) -> dict[str, str]:
        """Teach the C table what earlier runs learned about this revision; returns the
        backing files they served (file -> /cvmfs path)."""
        try:
            with open(self._file(rev), "rb") as f:
                data = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        answers = data.get("answers", {})
        opens = {k: v for k, v in data.get("opens", {}).items() if os.path.exists(os.fsdecode(v[0]))}
        served = {k: v for k, v in data.get("served", {}).items() if os.path.exists(k)}
        for (key, follow), a in answers.items():
            self.core.table_put(key, follow, *a)
        for (key, follow), (target, is_dir) in opens.items():
            self.core.table_put_open(key, follow, target, is_dir)
        self.answers.setdefault(rev, {}).update(answers)
        self.opens.setdefault(rev, {}).update(opens)
        self.served.setdefault(rev, {}).update(served)
        return served

    def save(self) -> None:
        """Write what this run added (atomically; a concurrent run may win, which is fine)."""
        if not self.dirty:
            return
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError:
            return
        for rev in self.dirty:
            data = {
                "format": FORMAT,
                "answers": self.answers.get(rev, {}),
                "opens": self.opens.get(rev, {}),
                "served": self.served.get(rev, {}),
            }
            try:
                fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".memo.")
                with os.fdopen(fd, "wb") as f:
                    pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.rename(tmp, self._file(rev))
            except OSError:
                continue
        self.dirty.clear()
