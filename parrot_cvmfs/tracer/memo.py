"""Answers kept across runs.

Everything Python teaches the C answer table about a path in a repository is a
function of the repository revision (immutable), the user, their gid and groups
(ownership, access: CvmfsView.revision_id) and nothing else, unless the path goes
through a variant symlink or into another repository; those are not kept. The rest
is saved per revision and user when the
supervisor ends, and taught to the C table again when a later run mounts the same
revision: a warm run then answers almost every call in C.

The file holds the records in the binary form the C table loads in one call
(`pc_table_load_fd`, answers.c, maps it), so a warm start costs one call, not
thousands; the list of files served is only decoded if a /proc/<pid>/fd link asks.
After the magic line and a u32 length come the files served (`backing\0path\0`...),
then the records:

    record = kind:u8 follow:u8 keylen:u16 paylen:u32 key payload
    kind 'A' (answer)   payload = err:i32 parts:u8 [struct stat][access 8][link...]
                        parts: 1 stat, 4 access, 8 link (the struct statx is derived
                        from the struct stat, by C)
    kind 'O' (open)     payload = is_dir:u8 target
    kind 'D' (listing)  payload = linux_dirent64 records
    kind 'X' (xattrs)   payload = the records of pc_table_put_xattrs (tracer.h)
    kind 'E' (exec)     payload = file exec'd in place of the program NUL logical program
                        [NUL word]... (a script's argv words), or NUL err:i32: it fails
    kind 'C' (getcwd)   payload = the spelling of the directory whose anchor is the key

Python teaches the C table in this same format (`teach`), one record or many at once.
What is kept is bounded (`MAX_KEPT` bytes a revision): a walk over a million entries is
answered in C within the run, but only its first part is kept. A run appends what it
taught to the file (C answered what the file held, so that is new but for the few calls
only Python answers); a later record wins when C loads them.
"""

from __future__ import annotations

import os
import stat
import struct
import time

from .core import Core

# a new number whenever what an answer means changes (the records, or the rules that
# made them: an older build's answers are not replayed by a newer one)
MAGIC = b"parrot-cvmfs memo 6\n"
_HEAD = struct.Struct("<BBHI")


def _record(kind: bytes, follow: bool, key: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind[0], int(follow), len(key), len(payload)) + key + payload


# bytes of records kept for one revision, the file and what a run adds to it alike (what
# a file holds fits the C table's own bound, answers.c PC_ANSWERS_BYTES, when loaded)
MAX_KEPT = 32 << 20
# memo files a user keeps of one repository (its revisions, and in guest namespaces its
# mount tables): a repository published daily leaves no trail of dead revisions' files;
# a file used (loaded) within PRUNE_AGE stays whatever their number (a run may still
# read its list of files served)
KEEP_PER_REPO = 8
PRUNE_AGE = 3 * 86400


def answer_record(follow: bool, key: bytes, err: int, stat_buf, access, link) -> bytes:
    """An 'A' record: an answer to stat, access and readlink of `key`."""
    parts = (1 if stat_buf else 0) | (4 if access else 0) | (8 if link is not None else 0)
    payload = struct.pack("<iB", err, parts) + (stat_buf or b"")
    if access:
        payload += struct.pack("<8b", *access)
    return _record(b"A", follow, key, payload + (link or b""))


def xattrs_record(follow: bool, key: bytes, blob: bytes) -> bytes:
    return _record(b"X", follow, key, blob)


def statfs_record(dev: int, statfs_buf: bytes) -> bytes:
    """An 'S' record: statfs of any path whose stat has st_dev `dev` answers `statfs_buf`
    (keyed as answers.c statfs_key spells it). Its free-space figures are the cache's as
    Python last counted them: C does not count."""
    return _record(b"S", True, b"statfs:%d" % dev, statfs_buf)


def cwd_record(anchor: bytes, spelling: bytes) -> bytes:
    """A 'C' record: getcwd in the directory of `anchor` answers `spelling`."""
    return _record(b"C", True, anchor, spelling)


def exec_record(key: bytes, target: bytes, logical: bytes, words: list[bytes] = ()) -> bytes:
    """An 'E' record: execve of `key` execs `target`; /proc/self/exe shows `logical`;
    `words`: for a script, what its `#!` chain puts before its path in argv."""
    return _record(b"E", True, key, b"\0".join([target, logical, *words]))


def exec_failure_record(key: bytes, err: int) -> bytes:
    """An 'E' record: execve of `key` fails with errno `err`."""
    return _record(b"E", True, key, struct.pack("<Bi", 0, err))


class Memo:
    def __init__(self, core: Core, cache_dir: str):
        self.core = core
        self.dir = os.path.join(cache_dir, "memo")
        self.uid = os.getuid()
        self.loaded: set[str] = set()  # revision ids whose file the C table loaded
        self.new: dict[str, list[bytes]] = {}  # revision id -> records taught in this run
        self.new_bytes: dict[str, int] = {}
        self.served: dict[str, dict] = {}  # revision id -> {backing file: logical path}
        self._unread: set[str] = set()  # loaded revisions whose served list is not decoded

    def _name(self, rev: str) -> str:
        return f"{rev.replace('/', '_')}.{self.uid}.memo"

    # -- teaching (and remembering) --------------------------------------------------------------

    def teach(self, rev: str | None, records: bytes) -> None:
        """Teach C the records, and keep them for later runs of revision `rev` (None: not
        kept: they depend on more than the revision)."""
        self.core.table_load(records)
        if rev is None:
            return
        used = self.new_bytes.get(rev, 0)
        if used + len(records) > MAX_KEPT:
            return
        self.new_bytes[rev] = used + len(records)
        self.new.setdefault(rev, []).append(records)

    def put(self, rev: str | None, key: bytes, follow: bool, err: int, stat_buf, access, link):
        self.teach(rev, answer_record(follow, key, err, stat_buf, access, link))

    def put_open(
        self,
        rev: str | None,
        key: bytes,
        follow: bool,
        target: bytes,
        is_dir: bool,
        logical: str | None,
    ) -> None:
        self.teach(rev, _record(b"O", follow, key, bytes([int(is_dir)]) + target))
        if rev is not None and logical is not None:
            self.served.setdefault(rev, {})[os.fsdecode(target)] = logical

    def put_dents(self, rev: str | None, anchor: bytes, records: bytes) -> None:
        self.teach(rev, _record(b"D", True, anchor, records))

    def put_xattrs(self, rev: str | None, key: bytes, follow: bool, blob: bytes) -> None:
        self.teach(rev, xattrs_record(follow, key, blob))

    # -- across runs --------------------------------------------------------------------------------

    def _open(self, rev: str) -> tuple[int, int] | None:
        """(fd, offset of the records) of this user's memo file for `rev`, or None."""
        from ..client.cache import open_in_dir

        try:  # nothing followed as a link, the directory included
            fd = open_in_dir(self.dir, self._name(rev))
        except OSError:
            return None
        try:
            if os.fstat(fd).st_uid != self.uid:  # a shared cache's other users cannot teach us
                raise OSError
            head = os.pread(fd, len(MAGIC) + 4, 0)
            if len(head) != len(MAGIC) + 4 or not head.startswith(MAGIC):
                raise OSError
            (slen,) = struct.unpack_from("<I", head, len(MAGIC))
            return fd, len(MAGIC) + 4 + slen
        except OSError:
            os.close(fd)
            return None

    def load(self, rev: str) -> None:
        """Teach the C table what earlier runs learned about this revision (an evicted
        backing file is harmless: C's open of it fails and Python takes over)."""
        if rev in self.loaded:
            return  # the launcher's C loaded it (adopted)
        opened = self._open(rev)
        if opened is None:
            return
        fd, start = opened
        try:
            if self.core.table_load_fd(fd, start) >= 0:
                self.loaded.add(rev)
                self._unread.add(rev)
                _used(fd)
                # what this run may add: the room the file leaves
                self.new_bytes[rev] = max(0, os.fstat(fd).st_size - start)
        finally:
            os.close(fd)

    def adopt(self, rev: str, size: int) -> None:
        """The launcher loaded `size` bytes of records of `rev`'s file into the table."""
        self.loaded.add(rev)
        self._unread.add(rev)
        self.new_bytes[rev] = size
        opened = self._open(rev)
        if opened is not None:
            _used(opened[0])
            os.close(opened[0])

    def path(self, rev: str) -> str:
        """This user's memo file for `rev` (for a start plan, which C loads)."""
        return os.path.join(self.dir, self._name(rev))

    def _decode_served(self) -> None:
        """Read the lists of files served of the loaded memo files (once each)."""
        for rev in list(self._unread):
            self._unread.discard(rev)
            opened = self._open(rev)
            if opened is None:
                continue
            fd, start = opened
            try:
                data = os.pread(fd, start - len(MAGIC) - 4, len(MAGIC) + 4)
            finally:
                os.close(fd)
            fields = data.split(b"\0")[:-1]
            kept = self.served.setdefault(rev, {})
            for i in range(0, len(fields) - 1, 2):
                kept.setdefault(os.fsdecode(fields[i]), os.fsdecode(fields[i + 1]))

    def logical_path(self, backing: str) -> str | None:
        """The /cvmfs path an earlier run served from a backing file, if any."""
        self._decode_served()
        for served in self.served.values():
            logical = served.get(backing)
            if logical is not None:
                return logical
        return None

    def _records(self, rev: str) -> bytes:
        """The records of the memo file as it is now (another run may have renewed it)."""
        opened = self._open(rev)
        if opened is None:
            return b""
        fd, start = opened
        try:
            chunks = []
            while True:
                chunk = os.pread(fd, 1 << 20, start)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                start += len(chunk)
        finally:
            os.close(fd)

    def save(self) -> None:
        """Write what this run added (atomically; a concurrent run may win, which is fine)."""
        if not self.new:
            return
        from ..atomic import write_atomic_at  # not on the start-up path
        from ..client.cache import open_subdir
        from ..errors import CvmfsError

        try:
            dfd = open_subdir(self.dir)
        except CvmfsError:
            return
        self._decode_served()  # the loaded files' lists are kept in what is written
        for rev, records in self.new.items():
            old = self._records(rev)
            room = MAX_KEPT - len(old)  # another run may have written it meanwhile
            kept = []
            for batch in records:
                room -= len(batch)
                if room < 0:
                    break
                kept.append(batch)
            if not kept:
                continue
            body = old + b"".join(kept)
            served = b"".join(
                os.fsencode(k) + b"\0" + os.fsencode(v) + b"\0"
                for k, v in self.served.get(rev, {}).items()
            )
            try:
                write_atomic_at(
                    dfd, self._name(rev), MAGIC + struct.pack("<I", len(served)) + served + body
                )
            except OSError:
                pass  # not kept: taught again next time
        try:
            self._prune(dfd, {rev.split("@", 1)[0] for rev in self.new})
        finally:
            os.close(dfd)
        self.new.clear()
        self.new_bytes.clear()

    def _prune(self, dfd: int, repos: set[str]) -> None:
        """Keep this user's KEEP_PER_REPO most recently used memo files of each of
        `repos`, and any used within PRUNE_AGE; remove the others (other users' files
        are theirs to prune)."""
        suffix = f".{self.uid}.memo"
        old = time.time() - PRUNE_AGE
        mine: dict[str, list[tuple[int, str]]] = {}
        with os.scandir(dfd) as entries:
            for e in entries:
                repo = e.name.split("@", 1)[0]
                if repo not in repos or not e.name.endswith(suffix):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_uid == self.uid:
                    mine.setdefault(repo, []).append((st.st_mtime_ns, e.name))
        for files in mine.values():
            for mtime_ns, name in sorted(files, reverse=True)[KEEP_PER_REPO:]:
                if mtime_ns / 1e9 > old:
                    continue
                try:
                    os.unlink(name, dir_fd=dfd)
                except OSError:
                    pass  # another run of ours pruned it first


def _used(fd: int) -> None:
    """Mark a memo file used now (its mtime: what pruning keeps), at most hourly."""
    try:
        if time.time() - os.fstat(fd).st_mtime > 3600:
            os.utime(fd)
    except OSError:
        pass
