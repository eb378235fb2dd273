"""Answers kept across runs.

Everything Python teaches the C answer table about a path in a repository is a
function of the repository revision (immutable), the user (ownership, access) and
nothing else, unless the path goes through a variant symlink or into another
repository; those are not kept. The rest is saved per revision and user when the
supervisor ends, and taught to the C table again when a later run mounts the same
revision: a warm run then answers almost every call in C.

The file holds the records in the binary form the C table loads in one call
(`pc_table_load`, answers.c), so a warm start costs a read, not thousands of calls.
After the magic line and a u32 length come the files served (`backing\0path\0`...),
then the records:

    record = kind:u8 follow:u8 keylen:u16 paylen:u32 key payload
    kind 'A' (answer)   payload = err:i32 parts:u8 [struct stat][statx 256][access 8][link...]
                        parts: 1 stat, 2 statx, 4 access, 8 link
    kind 'O' (open)     payload = is_dir:u8 target
    kind 'D' (listing)  payload = linux_dirent64 records
    kind 'X' (xattrs)   payload = the records of pc_table_put_xattrs (tracer.h)
"""

from __future__ import annotations

import os
import struct

from .core import Core

MAGIC = b"parrot-cvmfs memo 4\n"
_HEAD = struct.Struct("<BBHI")


def _record(kind: bytes, follow: bool, key: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind[0], int(follow), len(key), len(payload)) + key + payload


def _split(blob: bytes) -> dict[tuple[int, int, bytes], bytes]:
    """The records of a blob by (kind, follow, key); a later record wins."""
    out: dict[tuple[int, int, bytes], bytes] = {}
    pos, n = 0, len(blob)
    while pos + _HEAD.size <= n:
        kind, follow, klen, plen = _HEAD.unpack_from(blob, pos)
        end = pos + _HEAD.size + klen + plen
        if end > n:
            break
        out[(kind, follow, blob[pos + _HEAD.size : pos + _HEAD.size + klen])] = blob[pos:end]
        pos = end
    return out


class Memo:
    def __init__(self, core: Core, cache_dir: str):
        self.core = core
        self.dir = os.path.join(cache_dir, "memo")
        self.uid = os.getuid()
        self.loaded: dict[str, bytes] = {}  # revision id -> records read at mount
        self.new: dict[str, list[bytes]] = {}  # revision id -> records taught in this run
        self.served: dict[str, dict] = {}  # revision id -> {backing file: logical path}

    def _file(self, rev: str) -> str:
        safe = rev.replace("/", "_")
        return os.path.join(self.dir, f"{safe}.{self.uid}.memo")

    def _keep(self, rev: str | None, record: bytes) -> None:
        if rev is not None:
            self.new.setdefault(rev, []).append(record)

    # -- teaching (and remembering) --------------------------------------------------------------

    def put(
        self, rev: str | None, key: bytes, follow: bool, err: int, stat_buf, statx_buf, access, link
    ) -> None:
        self.core.table_put(key, follow, err, stat_buf, statx_buf, access, link)
        if rev is None:
            return
        parts = (
            (1 if stat_buf else 0)
            | (2 if statx_buf else 0)
            | (4 if access else 0)
            | (8 if link is not None else 0)
        )
        payload = struct.pack("<iB", err, parts) + (stat_buf or b"") + (statx_buf or b"")
        if access:
            payload += struct.pack("<8b", *access)
        self._keep(rev, _record(b"A", follow, key, payload + (link or b"")))

    def put_open(
        self,
        rev: str | None,
        key: bytes,
        follow: bool,
        target: bytes,
        is_dir: bool,
        logical: str | None,
    ) -> None:
        self.core.table_put_open(key, follow, target, is_dir)
        if rev is not None:
            self._keep(rev, _record(b"O", follow, key, bytes([int(is_dir)]) + target))
            if logical is not None:
                self.served.setdefault(rev, {})[os.fsdecode(target)] = logical

    def put_dents(self, rev: str | None, anchor: bytes, records: bytes) -> None:
        self.core.table_put_dents(anchor, records)
        self._keep(rev, _record(b"D", True, anchor, records))

    def put_xattrs(self, rev: str | None, key: bytes, follow: bool, blob: bytes) -> None:
        self.core.table_put_xattrs(key, follow, blob)
        self._keep(rev, _record(b"X", follow, key, blob))

    # -- across runs --------------------------------------------------------------------------------

    def load(self, rev: str) -> dict[str, str]:
        """Teach the C table what earlier runs learned about this revision; returns the
        backing files they served (file -> /cvmfs path)."""
        try:
            with open(self._file(rev), "rb") as f:
                data = f.read()
        except OSError:
            return {}
        if not data.startswith(MAGIC):
            return {}
        try:
            (slen,) = struct.unpack_from("<I", data, len(MAGIC))
        except struct.error:
            return {}
        start = len(MAGIC) + 4
        fields = data[start : start + slen].split(b"\0")[:-1]
        served = {
            os.fsdecode(fields[i]): os.fsdecode(fields[i + 1]) for i in range(0, len(fields) - 1, 2)
        }
        blob = data[start + slen :]
        # an evicted backing file is harmless: C's open of it fails and Python takes over
        self.core.table_load(blob)
        self.loaded[rev] = blob
        self.served.setdefault(rev, {}).update(served)
        return served

    def save(self) -> None:
        """Write what this run added (atomically; a concurrent run may win, which is fine)."""
        if not self.new:
            return
        import tempfile  # not on the start-up path

        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError:
            return
        for rev, records in self.new.items():
            merged = _split(self.loaded.get(rev, b""))
            merged.update(_split(b"".join(records)))
            served = b"".join(
                os.fsencode(k) + b"\0" + os.fsencode(v) + b"\0"
                for k, v in self.served.get(rev, {}).items()
            )
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".memo.")
                with os.fdopen(fd, "wb") as f:
                    f.write(MAGIC + struct.pack("<I", len(served)) + served)
                    f.write(b"".join(merged.values()))
                os.rename(tmp, self._file(rev))
            except OSError:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
        self.new.clear()
