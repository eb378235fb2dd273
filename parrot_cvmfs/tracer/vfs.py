"""The /cvmfs tree as the supervisor shows it to programs.

Repositories appear on first access (as with autofs), mounted through the
client library into one shared cache. Each path becomes a Node with the
attributes stat reports. What the kernel needs a real object for:
- regular files: the verified cache file (the program's open is pointed at it);
- directories: an empty "anchor" directory (anchors.py: named after the revision and
  the path, made without following links). Programs get descriptors and working
  directories there; everything they ask about such a descriptor (stat, listing,
  getcwd) is answered from the catalog;
- fifos and symlinks opened with O_PATH: a fifo or symlink among the anchors.
Paths of both kinds are mapped back to /cvmfs paths for /proc/self/fd, getcwd
and fstat.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as st
import sys
import time
from collections.abc import Callable

from ..client.cache import CacheTiers, ObjectCache, make_layout, split_aliens
from ..client.config import Configuration
from ..client.repository import Repository, inode_of, open_cache
from ..errors import CvmfsError, one_line_text
from ..format.values import valid_name
from .anchors import Anchors
from .paths import ROOT, VPath, resolve
from .structs import Attrs, dtype_of, stat_attrs

ROOT_DEV = os.makedev(0, 0x0FF)
_MISSING = object()
ROOT_INO = 1


class Node:
    """A path in the virtual tree with what stat says about it."""

    __slots__ = (
        "vpath",
        "entry",
        "repo",
        "mode",
        "is_dir",
        "is_symlink",
        "is_regular",
        "target",
        "variant",
        "_attrs",
        "_listing",
    )

    def __init__(self, vpath: VPath, entry, repo: Repository | None, mode: int, target: str = ""):
        self.vpath = vpath
        self.entry = entry
        self.repo = repo
        self.mode = mode
        self.is_dir = st.S_ISDIR(mode)
        self.is_symlink = st.S_ISLNK(mode)
        self.is_regular = st.S_ISREG(mode)
        self.target = target
        self.variant = self.is_symlink and "$(" in (entry.symlink if entry is not None else "")
        self._attrs: Attrs | None = None
        self._listing = None


class CvmfsView:
    def __init__(
        self,
        config: Configuration,
        cache_dir: str,
        *,
        alien: str | None = None,
        verify_at: float | None = None,
        offline: bool = False,
        eager: list[str] | None = None,
        warn: Callable[[str], None] | None = None,
        pins: dict[str, str] | None = None,
        pinned_until: float = 0.0,
    ):
        self.config = config
        self.cache_dir = os.path.abspath(cache_dir)
        self.alien = alien
        self.tiers = CacheTiers(self.cache_dir, split_aliens(alien))
        self.verify_at = verify_at
        self.offline = offline
        self._warn = warn or (lambda m: print(f"parrot_run: {m}", file=sys.stderr, flush=True))
        self._warned: set[str] = set()
        make_layout(self.cache_dir)
        self.anchor_tree = Anchors(self.cache_dir)
        self.anchors = self.anchor_tree.root
        self.started = int(time.time())
        self.uid, self.gid = os.getuid(), os.getgid()
        self.groups = set(os.getgroups()) | {self.gid}  # what access checks match (_allowed)
        # what decides kept answers besides the user: the gid (claimed ownership shows
        # it) and the groups (published owners' group bits); startplan's UID_ the same
        self._groups_tag = hashlib.sha1(
            f"{self.gid}:{','.join(map(str, sorted(self.groups)))}".encode()
        ).hexdigest()[:12]
        self.repos: dict[str, Repository] = {}
        self.failed: dict[str, str] = {}
        self.eager = [config.canonical_name(n) for n in (eager or [])]
        # revisions this run must mount (name -> root hash: an adopted run, whose C table
        # answered from them), and until when what they were chosen by holds
        self.pins = pins or {}
        self.pinned_until = pinned_until
        self.cache: ObjectCache | None = None
        self.nodes: dict[VPath, Node | None] = {}  # directories (and /cvmfs itself)
        self.leaves: dict[VPath, Node | None] = {}  # other entries, and missing ones
        self.cache_paths: dict[str, VPath] = {}  # cache file -> last /cvmfs path served from it
        self.c_opens_counted = 0  # of the core's served(): counted in their repos' n_open
        self.io_errors = 0
        self.root = Node(ROOT, None, None, st.S_IFDIR | 0o755)
        self.on_mount: Callable[[str], None] | None = None  # teach kept answers
        # the /cvmfs path an earlier run served from a backing file (kept answers)
        self.kept_path: Callable[[str], str | None] | None = None

    def warn(self, message: str) -> None:
        """One line for the user, once: a program retrying a call that fails the same
        way (a bad catalog entry, an object no server has) does not repeat it."""
        if message not in self._warned:
            if len(self._warned) < 10_000:
                self._warned.add(message)
            self._warn(one_line_text(message))

    # -- repositories ---------------------------------------------------------------------------

    def own_cache(self) -> ObjectCache:
        """The shared cache, opened on first need even where no repository is mounted
        (files made for exec from a host root: patched binaries), with the parameters
        every repository shares (default.conf)."""
        return self._shared_cache(self.eager[0] if self.eager else "parrot-cvmfs.local")

    def _shared_cache(self, name: str) -> ObjectCache:
        if self.cache is None:
            self.cache = open_cache(self.config.settings(name), self.cache_dir, self.alien)
        return self.cache

    def repository(self, name: str) -> Repository | None:
        """The mounted repository, mounting it on first use; None if it cannot be."""
        repo = self.repos.get(name)
        if repo is not None or name in self.failed:
            return repo
        labels = name.split(".")
        if not valid_name(name) or len(labels) < 2 or not all(labels):
            # not a repository's name (git's and pyenv's probes of /cvmfs/.git,
            # /cvmfs/.python-version...): ENOENT, silently, as under autofs
            self.failed[name] = f"{name} is not a repository name"
            return None
        try:
            settings = self.config.settings(name)
            settings.server_urls  # noqa: B018 - raises for unknown repositories
            repo = Repository.mount(
                name,
                config=self.config,
                cache=self._shared_cache(name),
                verify_at=self.verify_at,
                offline=self.offline or None,
                reuse_fresh=True,
                root_hash=self.pins.get(name),
            )
        except (CvmfsError, OSError) as e:
            self.failed[name] = str(e)
            if name not in self.eager:  # mount_eager's caller reports those
                self.warn(f"cannot mount /cvmfs/{name}: {e}")
            return None
        self.repos[name] = repo
        repo.start_prefetching()
        if self.on_mount is not None:
            self.on_mount(self.revision_id(name))
        return repo

    def revision_id(self, name: str) -> str | None:
        """`fqrn@root-hash` of a mounted repository: the key of kept answers, with what
        else decides them (owners as published or claimed, our gid and groups; memo
        files are per user)."""
        repo = self.repos.get(name)
        if repo is None or not repo.root_hash:
            return None
        owners = "" if repo.uid is not None else "+owners"
        return f"{name}@{repo.root_hash.hex}{owners}.{self._groups_tag}"

    def valid_until(self) -> float:
        """Until when later runs would mount the same revisions (a start plan's bound):
        the earliest of each mounted revision's own freshness, a pinned one's its pin's."""
        until = float("inf")
        for name, repo in self.repos.items():
            fresh = self.pinned_until if name in self.pins else repo.trust.fresh_until()
            until = min(until, fresh)
        return until

    def mount_eager(self) -> list[str]:
        """Mount the repositories named with --cvmfs; returns the error lines."""
        return [
            f"cannot mount /cvmfs/{n}: {self.failed[n]}"
            for n in self.eager
            if self.repository(n) is None
        ]

    def root_names(self) -> list[str]:
        names = set(self.config.configured_names()) | set(self.eager) | set(self.repos)
        return sorted(n for n in names if n not in self.failed)

    # -- nodes ------------------------------------------------------------------------------------

    # Nodes are kept while the run lasts, within bounds: directories (every walk goes
    # through them) up to DIRS_KEPT, other entries (mostly asked about once: the answer
    # table answers again) up to LEAVES_KEPT; a full set starts over.
    DIRS_KEPT = 100_000
    LEAVES_KEPT = 8192

    def lookup(self, vpath: VPath) -> Node | None:
        node = self.nodes.get(vpath, _MISSING)
        if node is _MISSING:
            node = self.leaves.get(vpath, _MISSING)
        if node is not _MISSING:
            return node
        node = self._lookup(vpath)
        kept = self.nodes if node is not None and node.is_dir else self.leaves
        if len(kept) >= (self.DIRS_KEPT if kept is self.nodes else self.LEAVES_KEPT):
            kept.clear()
        kept[vpath] = node
        return node

    def _lookup(self, vpath: VPath) -> Node | None:
        if vpath.repo is None:
            return self.root
        repo = self.repository(vpath.repo)
        if repo is None:
            return None
        entry = repo.ns.lookup(vpath.inner)
        if entry is None:
            return None
        return self.node_of(vpath, entry, repo)

    @staticmethod
    def node_of(vpath: VPath, entry, repo: Repository) -> Node:
        """The node of a catalog entry already at hand (a listing's)."""
        target = repo.expand_symlink(entry) if entry.is_symlink else ""
        return Node(vpath, entry, repo, entry.mode, target)

    def _allowed(self, node: Node) -> int:
        """The R_OK|W_OK|X_OK bits the kernel's rules grant us over the attributes we
        report (root passes all but a missing x); writes are refused apart."""
        a = self.attrs(node)
        if self.uid == 0:
            return 7 if node.is_dir or a.mode & 0o111 else 6
        if a.uid == self.uid:
            return (a.mode >> 6) & 7
        if a.gid in self.groups:
            return (a.mode >> 3) & 7
        return a.mode & 7

    def access_error(self, node: Node, want: int) -> int:
        """0, or the errno access(2) gives for mode `want` (R_OK|W_OK|X_OK)."""
        if want & os.W_OK:
            return errno.EROFS
        return 0 if self._allowed(node) & want == want else errno.EACCES

    def access_vector(self, node: Node) -> list[int]:
        """access_error for each of the 8 modes (what the answer table keeps)."""
        allowed = self._allowed(node)
        return [
            errno.EROFS if m & os.W_OK else (0 if allowed & m == m else errno.EACCES)
            for m in range(8)
        ]

    def may_search(self, node: Node) -> bool:
        return self.access_error(node, os.X_OK) == 0

    def attrs(self, node: Node) -> Attrs:
        if node._attrs is None:
            if node.repo is None:
                n = 2 + len(self.repos)
                t = (self.started, 0)
                node._attrs = Attrs(
                    ROOT_DEV, ROOT_INO, node.mode, n, 0, 0, 0, 4096, 4096, 8, *t, *t, *t
                )
            else:
                s = node.repo.stat_entry(node.entry)
                rdev = s.st_rdev if node.entry.rdev else 0
                node._attrs = stat_attrs(s, rdev, s.st_mtime, s.st_mtime_nsec)
        return node._attrs

    def listing(self, node: Node) -> list[tuple[int, int, int, bytes]]:
        """(ino, d_off, d_type, name) for '.', '..' and the children, in a stable order."""
        if node._listing is not None:
            return node._listing
        me = self.attrs(node).ino
        parent_v = node.vpath.parent()
        up = self.lookup(parent_v).vpath if parent_v is not None else None
        parent_ino = self.attrs(self.lookup(up)).ino if up is not None else 2
        rows: list[tuple[int, int, bytes]] = [(me, 4, b"."), (parent_ino, 4, b"..")]
        if node.repo is None:
            for name in self.root_names():
                child = self.lookup(VPath(name))
                if child is not None:
                    rows.append((self.attrs(child).ino, 4, os.fsencode(name)))
        else:
            ns = node.repo.ns
            for e in sorted(ns.listdir(ns.dir_entry(node.entry)), key=lambda c: c.name):
                rows.append((inode_of(e), dtype_of(e.mode), os.fsencode(e.name)))
        node._listing = [(ino, i + 1, t, name) for i, (ino, t, name) in enumerate(rows)]
        return node._listing

    # -- backing files ---------------------------------------------------------------------------

    def anchor(self, node: Node) -> str:
        """The anchor for a directory (or fifo, or symlink), made or repaired on use."""
        vpath = node.vpath
        if vpath.repo is None:
            return self.anchors
        revision = f"{vpath.repo}@{node.repo.root_hash.hex}"
        if node.is_dir:
            return self.anchor_tree.make(vpath, revision, "dir")
        if st.S_ISFIFO(node.mode):
            return self.anchor_tree.make(vpath, revision, "fifo")
        if node.is_symlink:
            return self.anchor_tree.make(vpath, revision, "symlink", self._link_end(node))
        raise OSError(errno.EACCES, "device files are not served")

    def _link_end(self, node: Node) -> str:
        """Where a symlink leads, as an absolute path for the kernel: the host path it
        reaches, or its place in /cvmfs (where no host has our tree)."""
        t = resolve(self, node.vpath.logical, None, True)
        if t.host is not None:
            return t.host
        if t.vpath is not None:
            return t.vpath.logical
        return node.target  # dangling or looping: the anchor module spells it absolutely

    def anchor_to_vpath(self, host: str | None) -> VPath | None:
        return self.anchor_tree.vpath(host)

    def materialize(self, node: Node) -> str:
        """The verified local file of a regular file (fetched on first use), under a
        name of its own: files with equal contents share a cache object, but a descriptor
        must tell which of them it was opened as (fstat, /proc/self/fd), so each inode
        gets its own alias of the object."""
        path = node.repo.local_path(node.entry)
        if self.cache is not None:
            path = self.cache.alias(path, f"{self.attrs(node).ino:x}")
        self.cache_paths[path] = node.vpath
        return path

    def is_cache_path(self, host: str) -> bool:
        return self.tiers.holds(host)

    def vpath_of_host(self, host: str) -> VPath | None:
        """The /cvmfs path behind an anchor or a cache file we served."""
        v = self.anchor_to_vpath(host)
        if v is not None:
            return v
        host = host.removesuffix(" (deleted)")
        v = self.cache_paths.get(host)
        if v is None and self.kept_path is not None:
            logical = self.kept_path(host)
            if logical is not None:
                from .paths import vpath_of_logical

                v = vpath_of_logical(logical)
        return v

    def count_opens(self, served: list[str]) -> None:
        """Count the opens C answered (`served`: every one so far) in their repositories'
        n_open (user.nopen), as the opens Python answers are."""
        for backing in served[self.c_opens_counted :]:
            v = self.vpath_of_host(backing)
            repo = self.repos.get(v.repo) if v is not None else None
            if repo is not None:
                repo.n_open += 1
        self.c_opens_counted = len(served)

    # -- statistics -------------------------------------------------------------------------------

    def transfer_stats(self) -> tuple[int, int, int, int]:
        """(objects downloaded, bytes received, cache hits, cache misses)."""
        n = b = 0
        for r in self.repos.values():
            for d in (r.downloader, r.external):
                if d is not None:
                    n += d.n_downloads
                    b += d.bytes_received
        c = self.cache
        return n, b, (c.hits if c else 0), (c.misses if c else 0)

    def prefetch_stats(self) -> tuple[int, int, int]:
        """(objects prefetched, their bytes, those the job then read)."""
        n = b = used = 0
        for r in self.repos.values():
            p = r.prefetcher
            if p is not None:
                n, b, used = n + p.fetched, b + p.bytes, used + p.used
        return n, b, used

    def close(self) -> None:
        for r in self.repos.values():
            r.close()
        self.repos.clear()
        if self.cache is not None:
            self.cache.close()
        self.anchor_tree.close()
