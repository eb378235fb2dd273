"""Publishing a directory tree as a signed CernVM-FS repository, without root.

The result is a stratum directory the real client can mount: zlib objects
under `data/`, catalogs split at `.cvmfscatalog` markers and dirtab rules,
large files chunked with the server's content-defined chunker, a tag
database, a certificate, the signed manifest and whitelist. Publishing again
into the same directory makes the next revision: files whose size, mtime and
type did not change keep their objects without being read again, and objects
that exist are never rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat as st
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..atomic import write_atomic
from ..errors import ConfigError, CvmfsError
from ..format.catalog import COUNTERS, Catalog
from ..format.dirtab import Dirtab
from ..format.entry import (
    COMPRESSION_NONE,
    FLAG_CHUNKED,
    FLAG_DIR,
    FLAG_FILE,
    FLAG_LINK,
    FLAG_NESTED_MOUNTPOINT,
    FLAG_NESTED_ROOT,
    FLAG_POS_COMPRESSION,
    FLAG_POS_HASH,
    FLAG_SPECIAL,
)
from ..format.hashes import Algorithm, ContentHash, hash_bytes
from ..format.history import History
from ..format.manifest import ROOT_PATH_HASH, Manifest, export_manifest_body
from ..format.reflog import REF_CATALOG, REF_CERTIFICATE, REF_HISTORY, REFLOG_FILE, Reflog
from ..format.signature import certificate_fingerprint, sign_manifest, sign_raw_pkcs1
from ..format.values import valid_name
from ..format.xattrs import encode_xattrs
from .catalog_writer import CatalogWriter, write_history, write_reflog
from .chunking import Chunker, ChunkSizes
from .keys import ensure_keys
from .scan import CATALOG_MARKER, Node, scan
from .stratum import StratumStore, StreamingObject

NULL_HASH = "0" * 40
_BLOCK = 1 << 20


@dataclass
class PublishOptions:
    source: str
    name: str
    stratum: str
    keys_dir: str
    tag: str | None = None
    tag_description: str = ""
    dirtab: str | None = None
    hash_algorithm: Algorithm = Algorithm.SHA1
    compress: bool = True
    chunking: bool = True
    chunk_sizes: ChunkSizes = field(default_factory=ChunkSizes)
    ttl: int = 240
    whitelist_days: int = 30
    include_xattrs: bool = True
    jobs: int = 0
    timestamp: int | None = None


@dataclass
class PublishResult:
    revision: int
    root_hash: ContentHash
    manifest: Manifest
    files: int
    objects_written: int
    objects_reused: int
    bytes_written: int
    catalogs: int
    seconds: float
    keys_created: list[str]


class Publisher:
    def __init__(self, options: PublishOptions, log=None):
        self.o = options
        self.log = log or (lambda msg: None)
        self.repo_dir = os.path.join(options.stratum, options.name)
        self.warnings: list[str] = []
        self._previous_files: dict[str, tuple] = {}
        self._split_links: list[str] = []  # hardlink groups cut at directories

    # -- previous revision ------------------------------------------------------------------------

    def _previous(self, store: StratumStore) -> tuple[Manifest | None, dict, dict, str | None]:
        """(manifest, path -> previous file entry, mountpoint -> previous catalog hash,
        previous history db path)."""
        path = os.path.join(self.repo_dir, ".cvmfspublished")
        if not os.path.exists(path):
            return None, {}, {}, None
        with open(path, "rb") as f:
            manifest = Manifest.parse(f.read(), f"existing manifest {path}")
        if manifest.fqrn not in (None, self.o.name):
            raise ConfigError(
                f"{self.repo_dir} holds repository {manifest.fqrn}, not {self.o.name}"
            )
        files: dict[str, tuple] = {}
        catalogs: dict[str, str] = {}
        tmp = tempfile.mkdtemp(prefix="prev.", dir=os.path.join(store.data, "txn"))
        try:
            todo = [(manifest.root_hash, "")]
            while todo:
                h, mp = todo.pop()
                catalogs[mp] = h.hex
                db = os.path.join(tmp, h.hex)
                with open(db, "wb") as f:
                    f.write(store.read(h, "C"))
                cat = Catalog(db, h, mp)
                self._index_previous(cat, files)
                for nmp, (nh, _size) in cat.nested_catalogs().items():
                    todo.append((nh, nmp))
                cat.close()
            hist = None
            if manifest.history is not None and store.has(manifest.history, "H"):
                fd, hist = tempfile.mkstemp(dir=os.path.join(store.data, "txn"), suffix=".history")
                with os.fdopen(fd, "wb") as f:
                    f.write(store.read(manifest.history, "H"))
            return manifest, files, catalogs, hist
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    def _index_previous(self, cat: Catalog, files: dict) -> None:
        """Map logical path -> (size, mtime, mtimens, flags, hash, chunks) for regular files."""
        # Walk the catalog from its root so that full paths are known.
        stack = [cat.mountpoint]
        while stack:
            d = stack.pop()
            for e in cat.listing(d):
                if e.is_dir:
                    if not e.is_nested_mountpoint:
                        stack.append(e.path)
                elif e.is_regular:
                    chunks = cat.chunks(e) if e.is_chunked else []
                    files[e.path] = (e.size, e.mtime, e.mtime_ns, e.flags, e.hash, chunks)

    # -- content ---------------------------------------------------------------------------------

    def _ingest(self, node: Node, real: str, store: StratumStore, previous: dict) -> None:
        s = node.lstat
        mtimens = s.st_mtime_ns % 1_000_000_000
        prev = previous.get(node.path)
        fmt = _format_flags(self.o)
        if prev is not None:
            size, mtime, pmtimens, flags, h, chunks = prev
            if (
                size == s.st_size
                and mtime == s.st_mtime_ns // 1_000_000_000
                and (pmtimens or 0) == mtimens  # NULL in revisions before 0 was written
                and (flags & (0x700 | 0x3800)) == fmt
                and (h is not None or chunks)
            ):
                node.hash, node.chunks = h, chunks
                node.flags_extra = fmt | (FLAG_CHUNKED if chunks else 0)
                return
        node.flags_extra = fmt
        try:
            f = open(real, "rb")
        except OSError as e:
            raise ConfigError(f"cannot read {real}: {e.strerror}") from None
        with f:
            if not self.o.chunking or s.st_size <= self.o.chunk_sizes.minimal:
                data = f.read()
                node.hash = store.put(data, "", compress=self.o.compress)
                return
            node.chunks = self._ingest_chunked(f, store)
        if len(node.chunks) == 1:  # no cut mark: stored whole, renamed from chunk to file
            h = node.chunks[0][2]
            src, dest = store.object_file(h, "P"), store.object_file(h, "")
            if not os.path.exists(dest):
                os.link(src, dest)
            node.hash, node.chunks = h, []
        else:
            node.flags_extra |= FLAG_CHUNKED

    def _ingest_chunked(self, f, store: StratumStore) -> list[tuple[int, int, ContentHash]]:
        chunker = Chunker(self.o.chunk_sizes)
        chunks = []
        start = pos = 0
        obj = StreamingObject(store, self.o.compress)
        try:
            while True:
                block = f.read(_BLOCK)
                if not block:
                    break
                view = memoryview(block)
                at = 0
                for cut in chunker.feed(block):
                    obj.write(view[at : cut - pos])
                    at = cut - pos
                    chunks.append((start, cut - start, obj.finish("P")))
                    start = cut
                    obj = StreamingObject(store, self.o.compress)
                obj.write(view[at:])
                pos += len(block)
            if pos > start or not chunks:
                chunks.append((start, pos - start, obj.finish("P")))
            else:
                obj.abort()
        except BaseException:
            obj.abort()
            raise
        return chunks

    # -- catalogs ---------------------------------------------------------------------------------

    def _build_catalog(
        self,
        root: Node,
        store: StratumStore,
        tmpdir: str,
        revision: int,
        now: int,
        prev_catalogs: dict,
        counts: dict,
    ) -> tuple[ContentHash, int, dict]:
        """Write the catalog rooted at `root` (and, first, its nested catalogs)."""
        is_root = root.path == ""
        w = CatalogWriter(os.path.join(tmpdir, f"cat{counts['catalogs']}.db"))
        counts["catalogs"] += 1
        self_c = dict.fromkeys(COUNTERS, 0)
        subtree_c = dict.fromkeys(COUNTERS, 0)
        nested_rows = []

        order: list[Node] = []
        stack = [root]
        while stack:
            n = stack.pop()
            order.append(n)
            if n.kind == "dir" and (n is root or not n.nested):
                stack.extend(reversed(n.children))
        groups = _hardlink_groups(root, self._split_links)

        for n in order:
            s = n.lstat
            parent = None if n.path == "" else n.path[: n.path.rfind("/")]
            xattr = encode_xattrs(n.xattrs)
            if xattr is not None:
                self_c["xattr"] += 1
            if n.kind == "dir":
                flags = FLAG_DIR
                transition = n is not root and n.nested
                if transition:
                    flags |= FLAG_NESTED_MOUNTPOINT
                    h, size, child_c = self._build_catalog(
                        n, store, tmpdir, revision, now, prev_catalogs, counts
                    )
                    nested_rows.append((n.path, h.hex, size))
                    self_c["nested"] += 1
                    for k in COUNTERS:
                        subtree_c[k] += child_c[k]
                elif n is root and not is_root:
                    flags |= FLAG_NESTED_ROOT
                nlink = 2 + sum(1 for c in n.children if c.kind == "dir")
                self_c["dir"] += 1
                _add_row(w, n, parent, nlink, None, s.st_size, flags, xattr)
                if n.dirtab_marker and not transition:
                    self_c["regular"] += 1
                    self._add_dirtab_marker(w, n, store, now)
                continue
            hardlinks = groups.get(id(n), 1)
            if n.kind == "file":
                flags = FLAG_FILE | n.flags_extra
                digest = n.hash.digest if n.hash is not None else None
                self_c["regular"] += 1
                self_c["file_size"] += s.st_size
                if n.chunks:
                    self_c["chunked"] += 1
                    self_c["chunked_size"] += s.st_size
                    self_c["chunks"] += len(n.chunks)
                    for off, size, h in n.chunks:
                        w.add_chunk(n.path, off, size, h.digest)
                _add_row(w, n, parent, hardlinks, digest, s.st_size, flags, xattr)
            elif n.kind == "symlink":
                self_c["symlink"] += 1
                size = len(n.target.encode("utf-8", "surrogateescape"))
                flags = FLAG_FILE | FLAG_LINK
                _add_row(w, n, parent, hardlinks, None, size, flags, xattr, n.target)
            else:
                self_c["special"] += 1
                size = s.st_rdev if (st.S_ISCHR(s.st_mode) or st.S_ISBLK(s.st_mode)) else 0
                flags = FLAG_FILE | FLAG_SPECIAL
                _add_row(w, n, parent, hardlinks, None, size, flags, xattr)

        props = {
            "schema": "2.5",
            "schema_revision": "7",
            "revision": str(revision),
            "last_modified": str(now),
            "previous_revision": prev_catalogs.get(root.path, NULL_HASH),
        }
        if is_root:
            props["TTL"] = str(self.o.ttl)
        else:
            props["root_prefix"] = root.path
        counters = {f"self_{k}": v for k, v in self_c.items()}
        counters.update({f"subtree_{k}": v for k, v in subtree_c.items()})
        db = w.finish(nested_rows, props, counters)
        total = {k: self_c[k] + subtree_c[k] for k in COUNTERS}
        if not is_root and root.path in prev_catalogs:
            # as cvmfs_server: a nested catalog nothing changed in is kept as it was
            kept = _unchanged_catalog(db, store, prev_catalogs[root.path], tmpdir)
            if kept is not None:
                os.unlink(db)
                return kept[0], kept[1], total
        with open(db, "rb") as f:
            data = f.read()
        os.unlink(db)
        h = store.put(data, "C")
        return h, len(data), total

    def _add_dirtab_marker(self, w: CatalogWriter, d: Node, store: StratumStore, now: int) -> None:
        """The `.cvmfscatalog` of a catalog a dirtab rule made, as the real server has it:
        `CommandApplyDirtab::CreateCatalogMarkers` (swissknife_sync.cc) creates an empty
        file with kDefaultFileMode (0644) in the tree before syncing it, so it is an
        ordinary empty file owned by the publisher, and it stays (its mtime is that of
        the revision that first made it)."""
        path = f"{d.path}/{CATALOG_MARKER}"
        prev = self._previous_files.get(path)
        mtime, mtimens = (prev[1], prev[2] or 0) if prev is not None and prev[0] == 0 else (now, 0)
        empty = store.put(b"", "", compress=self.o.compress)
        w.add(
            path,
            d.path,
            1,
            empty.digest,
            0,
            st.S_IFREG | 0o644,
            mtime,
            mtimens,
            FLAG_FILE | _format_flags(self.o),
            CATALOG_MARKER,
            "",
            os.geteuid(),
            os.getegid(),
            None,
        )

    # -- the whole publication ---------------------------------------------------------------------

    def publish(self) -> PublishResult:
        t0 = time.monotonic()
        o = self.o
        if not valid_name(o.name):
            raise ConfigError(f"invalid repository name {o.name!r}")
        dirtab = None
        if o.dirtab:
            dirtab = Dirtab.load(o.dirtab)
        elif os.path.isfile(os.path.join(o.source, ".cvmfsdirtab")):
            dirtab = Dirtab.load(os.path.join(o.source, ".cvmfsdirtab"))
        keys = ensure_keys(o.keys_dir, o.name)
        os.makedirs(self.repo_dir, exist_ok=True)
        lock = open(os.path.join(o.stratum, f".{o.name}.publish-lock"), "w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise CvmfsError(
                    f"another publication of {o.name} into {o.stratum} is running"
                ) from None
            return self._publish_locked(keys, dirtab, t0)
        finally:
            lock.close()

    def _publish_locked(self, keys, dirtab, t0) -> PublishResult:
        o = self.o
        store = StratumStore(self.repo_dir, o.hash_algorithm)
        prev_manifest, prev_files, prev_catalogs, prev_history = self._previous(store)
        self._previous_files = prev_files
        try:
            old_tags = []
            if prev_history:
                hist = History(prev_history)
                old_tags = hist.tags()
                hist.close()
            if o.tag and any(t.name == o.tag for t in old_tags):
                raise ConfigError(f"tag {o.tag!r} already exists in {o.name}")
            if o.tag in ("trunk", "trunk-previous"):
                raise ConfigError(f"tag name {o.tag!r} is reserved")
            revision = (prev_manifest.revision + 1) if prev_manifest else 1
            now = o.timestamp or int(time.time())
            self.log(f"scanning {o.source}")
            root = scan(o.source, dirtab, xattrs=o.include_xattrs, warnings=self.warnings)

            files: list[tuple[Node, str]] = []
            stack = [(root, os.path.abspath(o.source))]
            while stack:
                n, real = stack.pop()
                for c in n.children:
                    cr = os.path.join(real, c.name)
                    if c.kind == "dir":
                        stack.append((c, cr))
                    elif c.kind == "file":
                        files.append((c, cr))
            self.log(f"processing {len(files)} files")
            jobs = o.jobs or min(8, (os.cpu_count() or 2) + 1)
            # biggest first, so that the long ones do not end up last
            files.sort(key=lambda x: -x[0].lstat.st_size)
            with ThreadPoolExecutor(jobs) as pool:
                for fut in [pool.submit(self._ingest, n, r, store, prev_files) for n, r in files]:
                    fut.result()

            with tempfile.TemporaryDirectory(dir=os.path.join(store.data, "txn")) as tmpdir:
                counts = {"catalogs": 0}
                root_hash, root_size, totals = self._build_catalog(
                    root, store, tmpdir, revision, now, prev_catalogs, counts
                )

                cert_hash = store.put(keys.certificate_pem, "X")
                tags = [
                    (t.name, t.root_hash.hex, t.revision, t.timestamp, t.description, t.size)
                    for t in old_tags
                    if t.name not in ("trunk", "trunk-previous")
                ]
                trunk = next((t for t in old_tags if t.name == "trunk"), None)
                if trunk is not None:
                    tags.append(
                        (
                            "trunk-previous",
                            trunk.root_hash.hex,
                            trunk.revision,
                            trunk.timestamp,
                            "default undo target",
                            trunk.size,
                        )
                    )
                tags.append(("trunk", root_hash.hex, revision, now, "current HEAD", root_size))
                tag_name = o.tag or time.strftime("generic-%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
                if not any(t[0] == tag_name for t in tags):
                    tags.append(
                        (tag_name, root_hash.hex, revision, now, o.tag_description, root_size)
                    )
                hist_db = write_history(
                    os.path.join(tmpdir, "history.db"),
                    o.name,
                    tags,
                    prev_manifest.history.hex if prev_manifest and prev_manifest.history else None,
                )
                with open(hist_db, "rb") as f:
                    history_hash = store.put(f.read(), "H")

                # as the real signing step: the new root catalog, certificate and tag
                # database join the reflog (and what an earlier revision published
                # without one: its manifest's objects and the tagged root catalogs)
                refs = [(root_hash.hex, REF_CATALOG, now), (cert_hash.hex, REF_CERTIFICATE, now)]
                refs.append((history_hash.hex, REF_HISTORY, now))
                if prev_manifest is not None:
                    refs.append((prev_manifest.root_hash.hex, REF_CATALOG, now))
                    if prev_manifest.certificate is not None:
                        refs.append((prev_manifest.certificate.hex, REF_CERTIFICATE, now))
                    if prev_manifest.history is not None:
                        refs.append((prev_manifest.history.hex, REF_HISTORY, now))
                refs += [(t.root_hash.hex, REF_CATALOG, t.timestamp) for t in old_tags]
                reflog_db = write_reflog(
                    os.path.join(tmpdir, "reflog.db"),
                    o.name,
                    self._previous_reflog(prev_manifest, tmpdir),
                    sorted(refs, key=lambda r: r[2]),
                )
                with open(reflog_db, "rb") as f:
                    reflog_bytes = f.read()
            reflog_hash = hash_bytes(o.hash_algorithm, reflog_bytes)

            fields = {
                "C": root_hash.hex,
                "B": str(root_size),
                "R": ROOT_PATH_HASH,
                "D": str(o.ttl),
                "S": str(revision),
                "G": "no",
                "A": "no",
                "N": o.name,
                "X": cert_hash.hex,
                "H": history_hash.hex,
                "T": str(now),
                "Y": reflog_hash.hex,
            }
            manifest_bytes = self._sign_manifest(fields, keys)
            whitelist_bytes = self._whitelist(keys)
            open(os.path.join(self.repo_dir, ".cvmfs_master_replica"), "a").close()
            write_atomic(os.path.join(self.repo_dir, REFLOG_FILE), reflog_bytes, 0o644)
            write_atomic(os.path.join(self.repo_dir, ".cvmfswhitelist"), whitelist_bytes, 0o644)
            write_atomic(os.path.join(self.repo_dir, ".cvmfspublished"), manifest_bytes, 0o644)
            manifest = Manifest.parse(manifest_bytes)
            if self._split_links:
                self.warnings.append(
                    f"{len(self._split_links)} hardlink groups have links in other"
                    f" directories (or outside {o.source}), published as one group per"
                    f" directory as cvmfs_server does (first: {min(self._split_links)})"
                )
            for w in self.warnings:
                print(f"warning: {w}", file=sys.stderr)
            return PublishResult(
                revision=revision,
                root_hash=root_hash,
                manifest=manifest,
                files=len(files),
                objects_written=store.written,
                objects_reused=store.reused,
                bytes_written=store.bytes_written,
                catalogs=counts["catalogs"],
                seconds=time.monotonic() - t0,
                keys_created=keys.created,
            )
        finally:
            if prev_history:
                with contextlib.suppress(OSError):
                    os.unlink(prev_history)

    def _previous_reflog(self, manifest: Manifest | None, tmpdir: str) -> str | None:
        """A checked copy (in `tmpdir`) of the reflog the previous revision left, or None
        if there is none to continue (a new repository, or one published without).

        The file must be the one the manifest's `Y` names; or, when a publication was
        interrupted after writing the reflog and before the manifest, one that already
        holds the manifest's root catalog (the next publication only adds to it)."""
        if manifest is None:
            return None
        path = os.path.join(self.repo_dir, REFLOG_FILE)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if manifest.reflog is None:
                return None
            raise ConfigError(
                f"{path} is missing, but the manifest names reflog {manifest.reflog.hex}"
            ) from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        copy = os.path.join(tmpdir, "previous-reflog.db")
        with open(copy, "wb") as f:
            f.write(data)
        algorithm = manifest.reflog.algorithm if manifest.reflog else self.o.hash_algorithm
        matches = manifest.reflog is not None and hash_bytes(algorithm, data) == manifest.reflog
        try:
            log = Reflog(copy, f"reflog {path}")
        except CvmfsError as e:
            raise ConfigError(str(e)) from None
        try:
            if log.fqrn != self.o.name:
                raise ConfigError(f"{path} is the reflog of {log.fqrn!r}, not of {self.o.name}")
            if not matches and not log.contains(manifest.root_hash, REF_CATALOG):
                raise ConfigError(
                    f"{path} is not the reflog the manifest names (field Y"
                    f" {manifest.reflog.hex if manifest.reflog else 'absent'}) and lacks"
                    f" its root catalog {manifest.root_hash.hex}"
                )
            log.references()  # every row checked before we add to it
        except CvmfsError as e:
            raise ConfigError(str(e)) from None
        finally:
            log.close()
        return copy

    def _sign_manifest(self, fields: dict[str, str], keys) -> bytes:
        body = export_manifest_body(fields)
        digest = hash_bytes(self.o.hash_algorithm, body).hex.encode()
        return body + b"--\n" + digest + b"\n" + sign_manifest(keys.key, digest)

    def _whitelist(self, keys) -> bytes:
        now = time.time()
        created = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        expires = time.strftime("%Y%m%d%H%M%S", time.gmtime(now + self.o.whitelist_days * 86400))
        fp = certificate_fingerprint(keys.certificate, self.o.hash_algorithm).fingerprint()
        body = f"{created}\nE{expires}\nN{self.o.name}\n{fp}\n".encode()
        digest = hash_bytes(self.o.hash_algorithm, body).hex.encode()
        return body + b"--\n" + digest + b"\n" + sign_raw_pkcs1(keys.master_key, digest)


def _add_row(
    w: CatalogWriter,
    n: Node,
    parent: str | None,
    links: int,
    digest: bytes | None,
    size: int,
    flags: int,
    xattr: bytes | None,
    target: str = "",
) -> None:
    """The catalog row of node `n`: what its lstat says, with these fields."""
    s = n.lstat
    w.add(
        n.path,
        parent,
        links,
        digest,
        size,
        s.st_mode,
        s.st_mtime_ns // 1_000_000_000,  # tv_sec: floored, also before 1970
        s.st_mtime_ns % 1_000_000_000,  # 0, not NULL, for whole seconds, as the real server
        flags,
        n.name,
        target,
        s.st_uid,
        s.st_gid,
        xattr,
    )


def _hardlink_groups(root: Node, split: list[str]) -> dict[int, int]:
    """The `hardlinks` field (group << 32 | link count) of every multiply linked entry of
    the catalog rooted at `root`, by id(node), as the real server assigns it.

    A group is the links of one inode inside one directory (`AddHardlinkGroup`,
    catalog_mgr_rw.cc: "Hardlink groups have to reside in the same directory"); links of
    that inode in other directories form their own groups (the server's default
    ignores cross-directory links), and a directory holding one link of an inode
    makes it a plain entry with link count 1. Ids are the catalog's largest so far
    plus one: the sync mediator adds a directory's groups when it leaves it (children
    before parents), ascending by inode, symlink groups at once and the others when
    it commits, so symlink groups get the lower ids. `split` gets the first path of
    each group that is not all of its inode's links (the server's "Hardlinks across
    directories")."""
    links: list[list[Node]] = []
    others: list[list[Node]] = []

    def below(d: Node) -> list[Node]:
        return [c for c in d.children if c.kind == "dir" and not c.nested]

    stack: list[tuple[Node, list[Node], int]] = [(root, below(root), 0)]
    while stack:  # post-order over the catalog's directories
        d, subdirs, i = stack.pop()
        if i < len(subdirs):
            stack.append((d, subdirs, i + 1))
            stack.append((subdirs[i], below(subdirs[i]), 0))
            continue
        members: dict[tuple[int, int], list[Node]] = {}
        for c in d.children:
            if c.kind != "dir" and c.lstat.st_nlink > 1:
                members.setdefault((c.lstat.st_ino, c.lstat.st_dev), []).append(c)
        for key in sorted(members):
            group = members[key]
            if len(group) != group[0].lstat.st_nlink:
                split.append(group[0].path)
            if len(group) > 1:
                (links if group[0].kind == "symlink" else others).append(group)
    out: dict[int, int] = {}
    for gid, group in enumerate(links + others, start=1):
        for n in group:
            out[id(n)] = (gid << 32) | len(group)
    return out


def _format_flags(o: PublishOptions) -> int:
    """Catalog flag bits for the content hash algorithm and the compression."""
    comp = 0 if o.compress else COMPRESSION_NONE << FLAG_POS_COMPRESSION
    return ((o.hash_algorithm - 1) << FLAG_POS_HASH) | comp


def publish(options: PublishOptions, log=None) -> PublishResult:
    return Publisher(options, log).publish()


# properties that change with every publication, whether or not the catalog did
_VOLATILE_PROPERTIES = ("revision", "last_modified", "previous_revision")


def _unchanged_catalog(
    db: str, store: StratumStore, prev_hex: str, tmpdir: str
) -> tuple[ContentHash, int] | None:
    """(hash, size) of the previous catalog if `db` holds exactly what it held."""
    import sqlite3

    prev = ContentHash.from_hex(prev_hex)
    try:
        data = store.read(prev, "C")
    except (OSError, CvmfsError):
        return None
    old = os.path.join(tmpdir, f"prev-{prev_hex}.db")
    with open(old, "wb") as f:
        f.write(data)
    con = sqlite3.connect(db)
    try:
        con.execute("ATTACH DATABASE ? AS old", (old,))
        tables = "SELECT name FROM {}.sqlite_master WHERE type = 'table' ORDER BY name"
        names = [r[0] for r in con.execute(tables.format("main"))]
        if names != [r[0] for r in con.execute(tables.format("old"))]:
            return None
        for t in names:
            where = ""
            if t == "properties":
                where = f" WHERE key NOT IN {_VOLATILE_PROPERTIES!r}"
            a, b = f"SELECT * FROM main.{t}{where}", f"SELECT * FROM old.{t}{where}"
            for x, y in ((a, b), (b, a)):
                if con.execute(f"SELECT EXISTS ({x} EXCEPT {y})").fetchone()[0]:
                    return None
        return prev, len(data)
    except sqlite3.DatabaseError:
        return None
    finally:
        con.close()
        os.unlink(old)
