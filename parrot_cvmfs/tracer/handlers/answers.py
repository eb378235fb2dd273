"""Teaching the C answer table: the only module that writes its records.

What Python found out about a path is taught to C (csrc/tracer/answers.c, which these records
mirror: answer_for_path, the 'A', 'O', 'D' and 'X' records of memo.py) so that the next
call on the same path is answered in C, in this run and, through the memo, in later ones.
Keys are the call's path as C composes it (Context.key)."""

from __future__ import annotations

import os
import struct

from ...format.xattrs import reaches
from ..core import XATTR_PREFIX_TAG
from ..memo import (
    answer_record,
    cwd_record,
    exec_failure_record,
    exec_record,
    statfs_record,
    xattrs_record,
)
from ..paths import MOUNT, Target, VPath
from ..structs import pack_stat
from ..syscalls import FD
from ..vfs import CvmfsView, Node
from .context import Context

MAGIC_XATTR_PREFIXES = (b"user.", b"xfsroot.")  # every cvmfs magic attribute is under these


def revision_of(view: CvmfsView, path: str, t: Target) -> str | None:
    """The revision whose answer this is, if it can be kept across runs (for a path
    in a guest namespace: the revision and the mount table, guest.py)."""
    if t.kept_as is not None:
        return t.kept_as
    if t.mixed or not path.startswith(MOUNT + "/"):
        return None
    name = path[len(MOUNT) + 1 :].split("/", 1)[0]
    if t.node is not None and t.node.repo is not None and t.vpath.repo != name:
        return None
    return view.revision_id(name)


def remember(c: Context, follow: bool, t: Target) -> None:
    """Teach the C answer table this path (stat, statx, access, readlink). An answer
    that following the last component would not change is taught as the 'N' one,
    which C uses for both (answers.c answer_for_path)."""
    path = c.key()
    if path is None or not (t.err or t.virtual) or t.proc:
        return
    key = os.fsencode(path)
    rev = revision_of(c.view, path, t)
    follow = follow and t.final_link
    if t.err:
        c.memo.put(rev, key, follow, t.err, None, [t.err] * 8, None)
        return
    node = t.node
    if node.variant:
        rev = None  # depends on the environment
    c.memo.teach(rev, answer(c, node, key, follow))
    c.siblings.seen(c, t, path, rev)


def answer(c: Context, node: Node, key: bytes, follow: bool) -> bytes:
    """The 'A' record of a /cvmfs entry: its stat, access and link answers."""
    view = c.view
    a = view.attrs(node)
    link = os.fsencode(node.target) if node.is_symlink else None
    return answer_record(follow, key, 0, pack_stat(a, c.arch), view.access_vector(node), link)


def teach_open(c: Context, follow: bool, t: Target, backing: str) -> None:
    """Let C replay this read-only open, and answer fstat on its descriptors."""
    node = t.node
    path = None if t.proc else c.key()
    rev = revision_of(c.view, path, t) if path is not None else None
    c.memo.teach(rev, answer(c, node, os.fsencode(backing), True))
    if path is not None:
        remember(c, follow, t)
        c.memo.put_open(
            rev,
            os.fsencode(path),
            follow,
            os.fsencode(backing),
            node.is_dir,
            node.vpath.logical if node.is_regular else None,
        )


def teach_listing(c: Context, vpath: VPath, records: bytes) -> None:
    """Let C answer getdents64 on the anchor of this directory (the call's base); kept
    as the namespace keeps its answers (a guest's are loaded per mount table)."""
    rev = c.view.revision_id(vpath.repo) if vpath.repo else None
    if rev is not None and c.guest is not None:
        rev = c.guest.kept(rev)
    c.memo.put_dents(rev, os.fsencode(c.base), records)


def teach_xattrs(c: Context, t: Target, listing: bytes | None = None) -> None:
    """Let C answer getxattr (and listxattr, in this run) on this path."""
    call = c.call
    path = None if call.kind == FD or call.name.endswith("at") else c.key()
    if path is None:
        return
    follow = c.follow
    remember(c, follow, t)
    if t.err or not t.virtual or t.proc:
        return
    key = os.fsencode(path)
    follow = follow and t.final_link
    if listing is not None:
        c.core.table_put_xnames(key, follow, listing)
        return
    node = t.node
    rev = None if node.variant else revision_of(c.view, path, t)
    c.memo.put_xattrs(rev, key, follow, xattr_blob(node))


def teach_statfs(c: Context, t: Target, dev: int, statfs_buf: bytes) -> None:
    """Let C answer statfs and fstatfs of this repository's paths (those C knows the
    stat of): one record for the file system, kept with the revision."""
    if c.call.kind != FD:
        remember(c, True, t)
    repo = t.node.vpath.repo if t.node is not None else None
    rev = c.view.revision_id(repo) if repo else None
    if rev is not None and c.guest is not None:
        rev = c.guest.kept(rev)
    c.memo.teach(rev, statfs_record(dev, statfs_buf))


def teach_cwd(c: Context, vpath: VPath, spelling: str) -> None:
    """Let C answer getcwd in the directory whose anchor is the call's base: its
    spelling is a function of the revision (and, in a guest, of the mount table)."""
    rev = c.view.revision_id(vpath.repo) if vpath.repo else None
    if rev is not None and c.guest is not None:
        rev = c.guest.kept(rev)
    c.memo.teach(rev, cwd_record(os.fsencode(c.base), os.fsencode(spelling)))


def teach_exec_failure(c: Context, t: Target, err: int) -> None:
    """Let C fail the next execve of this path with `err` itself, as Python just did (in
    later runs too when the answer is the revision's)."""
    path = c.key()
    if path is None or t.proc or not (t.err or t.virtual):
        return
    c.memo.teach(revision_of(c.view, path, t), exec_failure_record(os.fsencode(path), err))


def teach_exec(
    c: Context,
    t: Target,
    exe_path: str,
    exe_logical: str,
    words: list[bytes] = (),
    interpreters: list[tuple[str, Target]] = (),
) -> None:
    """Let C make this exec itself (the file exec'd in place of the program, what
    /proc/self/exe shows, for a script the words its `#!` chain puts before its path
    in argv), in this run and later ones: the caller says the ELF loader is in the
    same revision; each `#!` interpreter (its path, its Target) must be too."""
    path = c.key()
    if path is None or t.proc or not t.virtual or t.node.variant:
        return
    rev = revision_of(c.view, path, t)
    if rev is None:
        return
    for name, it in interpreters:  # (a relative one is the cwd's: not the revision's)
        if not name.startswith("/") or it.proc or not it.virtual or it.node.variant:
            return
        if revision_of(c.view, name, it) != rev:
            return
    record = exec_record(
        os.fsencode(path), os.fsencode(exe_path), os.fsencode(exe_logical), list(words)
    )
    c.memo.teach(rev, record)


def xattr_blob(node: Node) -> bytes:
    """What C needs to answer getxattr on an entry: its stored attributes with their
    values, and prefix records for the magic ones (cvmfs's `user.*` and `xfsroot.*`,
    which change: Python answers them). Names the kernel keeps from the file system
    (reaches) have no record: C answers ENODATA for them."""
    blob = bytearray()
    if node.repo is not None:
        entry = node.entry
        magic = set(node.repo.magic_xattr_names(entry))
        for name, value in node.repo.stored_xattrs(entry).items():
            if name not in magic and reaches(entry, name):
                k = os.fsencode(name)
                blob += struct.pack("<H", len(k)) + k + struct.pack("<I", len(value)) + value
        for prefix in MAGIC_XATTR_PREFIXES:
            if reaches(entry, prefix.decode()):
                blob += struct.pack("<H", len(prefix)) + prefix + XATTR_PREFIX_TAG
    return bytes(blob)


class Siblings:
    """Answers for a whole directory at once, as FUSE's readdirplus does: once a program
    has listed a directory and asked Python about a few of its entries (`ls -l`, `find
    -printf`), C is taught the lstat and getxattr answers of every entry, in one call,
    so the rest is answered in C. Only for directories whose paths the program spells
    as we do (the keys are the entries' /cvmfs paths)."""

    AFTER = 4  # entries asked about before the rest is taught
    CHUNK = 2048  # entries per call to C
    LIMIT = 4096  # directories remembered as listed

    def __init__(self):
        self._listed: dict = {}  # directory vpath -> entries asked about (-1: taught)

    def listed(self, vpath: VPath) -> None:
        if len(self._listed) >= self.LIMIT:
            self._listed.clear()
        self._listed.setdefault(vpath, 0)

    def seen(self, c: Context, t: Target, path: str, rev: str | None) -> None:
        node = t.node
        parent = node.vpath.parent()
        n = self._listed.get(parent)
        if n is None or n < 0 or path != node.vpath.logical or node.repo is None:
            return
        if c.guest is not None and c.guest.table.glue(parent.logical):
            return  # a bind below the directory hides what its catalog holds there
        self._listed[parent] = n + 1
        if n + 1 < self.AFTER:
            return
        self._listed[parent] = -1
        view = c.view
        dir_node = view.lookup(parent)
        if dir_node is None or dir_node.repo is None:
            return
        ns = dir_node.repo.ns
        records: list[bytes] = []
        for e in ns.listdir(ns.dir_entry(dir_node.entry)):
            child = view.node_of(parent.child(e.name), e, dir_node.repo)
            if child.variant:
                continue  # depends on the environment: Python's every time
            key = os.fsencode(child.vpath.logical)
            records.append(answer(c, child, key, False))
            records.append(xattrs_record(False, key, xattr_blob(child)))
            if len(records) >= 2 * self.CHUNK:
                c.memo.teach(rev, b"".join(records))
                records.clear()
        if records:
            c.memo.teach(rev, b"".join(records))
