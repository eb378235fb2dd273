"""A mounted revision of one repository: the public Python API.

    repo = Repository.mount("alice.cern.ch")
    entry = repo.stat("/bin/ls")
    names = repo.listdir("/")
    with repo.open("/README") as f: ...

Opening verifies the trust chain (master key -> whitelist -> certificate ->
manifest), refuses rollbacks, picks the revision (latest, a tag, a date or a
root hash) and mounts its root catalog; nested catalogs and file contents are
fetched on demand into the shared cache.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat as st
import time
import zlib
from collections import namedtuple
from collections.abc import Callable, Iterator

from ..errors import CacheError, CatalogError, CvmfsError
from ..format.catalog import Catalog, expand_variant_symlink
from ..format.entry import DirEntry
from ..format.hashes import ContentHash, md5_digest
from ..format.xattrs import decode_xattrs, reaches
from .cache import ObjectCache, resolve_cache
from .config import Configuration, RepositorySettings, symlink_variables
from .download import Downloader
from .fetch import Fetcher
from .limits import database_limit
from .lookup import resolve
from .namespace import Namespace
from .network import DownloadSettings
from .prefetch import Prefetcher
from .trust import TrustChain, parse_root_hash, source_of

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from ..format.history import History, Tag
    from ..format.manifest import Manifest
    from ..format.whitelist import Whitelist

CVMFS_ROOT = "/cvmfs"


class Stat(
    namedtuple(
        "Stat",
        "st_mode st_ino st_dev st_nlink st_uid st_gid st_size st_rdev st_blksize st_blocks st_mtime st_mtime_nsec",
    )
):
    """What stat(2) reports for an entry (cvmfs client semantics)."""

    __slots__ = ()

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_rdev: int
    st_blksize: int
    st_blocks: int
    st_mtime: int
    st_mtime_nsec: int

    @property
    def st_atime(self) -> int:
        return self.st_mtime

    @property
    def st_ctime(self) -> int:
        return self.st_mtime


def inode_of(entry: DirEntry) -> int:
    """Stable per path and revision; hardlink group members share one inode."""
    if entry.hardlink_group:
        cat = entry.catalog.hash.hex if entry.catalog.hash else entry.catalog.mountpoint
        key = f"{cat}:{entry.hardlink_group}"
    else:
        key = entry.path
    ino = int.from_bytes(md5_digest(key.encode("utf-8", "surrogateescape"))[:8], "little")
    return (ino & ((1 << 63) - 1)) or 1


def device_of(fqrn: str) -> int:
    """A per-repository fake device number (major 0, as for FUSE mounts)."""
    return os.makedev(0, 0x100 + (zlib.crc32(fqrn.encode()) & 0xFFF))


PREFETCH_MIB = 64  # PARROT_CVMFS_PREFETCH's default


class Repository:
    """One repository revision, mounted from the cache and its servers."""

    def __init__(
        self,
        settings: RepositorySettings,
        cache: ObjectCache,
        downloader: Downloader | None,
        *,
        config: Configuration | None = None,
        verify_at: float | None = None,
        offline: bool = False,
        tag: str | None = None,
        root_hash: str | None = None,
        date: str | None = None,
    ):
        self.fqrn = settings.fqrn
        self.settings = settings
        self.config = config
        self.cache = cache
        self.downloader = downloader
        self.offline = offline or downloader is None
        external = None
        if settings.get("CVMFS_EXTERNAL_URL") and not self.offline:
            hosts = settings.urls("CVMFS_EXTERNAL_URL")
            external = Downloader(
                DownloadSettings.from_settings(settings, hosts=hosts, external=True)
            )
        self.external = external
        self.fetcher = Fetcher(cache, downloader, external, offline=self.offline)
        self.prefetcher: Prefetcher | None = None  # start_prefetching
        mib = settings.number("PARROT_CVMFS_PREFETCH", PREFETCH_MIB)
        self.prefetch_budget = 0 if self.offline else int(mib * (1 << 20))
        if cache.quota is not None:
            self.prefetch_budget = min(self.prefetch_budget, cache.quota.limit // 8)
        self.verify_at = verify_at
        self.trust = TrustChain(
            settings,
            cache,
            downloader,
            self.fetcher,
            offline=self.offline,
            verify_at=verify_at,
            tag=tag,
            date=date,
            root_hash=root_hash,
        )
        self.root_hash: ContentHash | None = None
        self.ns: Namespace | None = None
        self.mounted_at = 0.0
        self.shared_cache = False
        self.n_open = 0  # files this client opened for a reader (user.nopen)
        self.lhash_memo: dict[tuple, str] = {}  # magic.py's, per cached file
        self.uid = os.getuid() if settings.flag("CVMFS_CLAIM_OWNERSHIP", True) else None
        self.gid = os.getgid() if settings.flag("CVMFS_CLAIM_OWNERSHIP", True) else None
        self.dev = device_of(self.fqrn)
        self.mount_dir = CVMFS_ROOT
        self.variant_env = (
            config.variant_env(settings)
            if config is not None
            else symlink_variables(settings.params, os.environ)
        )

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def mount(
        cls,
        name: str,
        *,
        cache_dir: str | None = None,
        config: Configuration | None = None,
        options: dict[str, str] | None = None,
        tag: str | None = None,
        root_hash: str | None = None,
        date: str | None = None,
        verify_at: float | None = None,
        offline: bool | None = None,
        alien_cache: str | None = None,
        attach: bool = True,
        cache: ObjectCache | None = None,
        reuse_fresh: bool = False,
    ) -> Repository:
        """Verify a repository and mount a revision of it (the latest, or `tag`, `date` or
        `root_hash`). `options` are CVMFS_* overrides; `attach=False` stops after the
        trust chain (no catalog is loaded). `cache` shares one ObjectCache between
        repositories (it is then not closed with the repository)."""
        if config is None:
            config = Configuration(overrides=options)
        elif options:
            config = config.with_overrides(options)
        settings = config.settings(name)
        shared = cache is not None
        if cache is None:
            cache = open_cache(settings, cache_dir, alien_cache)
        if offline is None:
            offline = settings.flag("PARROT_CVMFS_OFFLINE") or settings.flag("CVMFS_OFFLINE")
        downloader = None
        if not offline:
            downloader = Downloader(DownloadSettings.from_settings(settings))
        repo = cls(
            settings,
            cache,
            downloader,
            config=config,
            verify_at=verify_at,
            tag=tag,
            root_hash=root_hash,
            date=date,
        )  # offline: without a downloader
        repo.shared_cache = shared
        try:
            if repo.trust.pinned_root:
                repo.root_hash = parse_root_hash(repo.trust.pinned_root)
            elif reuse_fresh and not offline and repo.trust.reuse_fresh():
                repo.root_hash = repo.manifest.root_hash
            else:
                repo.verify()
            if attach:
                repo.remount()
            elif repo.is_pinned:
                repo.root_hash = repo._select_root()  # a pin that names nothing is an error
        except BaseException:
            repo.close()
            raise
        return repo

    # -- the trust chain and the revision: trust.py ------------------------------------------------

    @property
    def is_pinned(self) -> bool:
        return self.trust.is_pinned

    @property
    def manifest(self) -> Manifest | None:
        return self.trust.manifest

    @property
    def whitelist(self) -> Whitelist | None:
        return self.trust.whitelist

    @property
    def certificate(self):
        return self.trust.certificate

    @property
    def tag(self) -> Tag | None:
        return self.trust.tag

    def verify(self, store: bool = True) -> Manifest:
        """Fetch (or, offline, read the stored copy of) and verify the manifest chain.
        `store`: keep the manifest, whitelist and breadcrumb in the cache now (a preload
        does it with `store_trust` once the revision's objects are all there)."""
        manifest = self.trust.verify(store)
        self.root_hash = manifest.root_hash
        return manifest

    def store_trust(self) -> None:
        """Keep the verified manifest and whitelist in the cache (see TrustChain.store)."""
        self.trust.store()

    def certificate_fingerprint(self) -> str | None:
        return self.trust.certificate_fingerprint()

    def history(self) -> History | None:
        """The tag database of the verified manifest (None if the repository has none)."""
        if self.manifest is None:
            self.verify()
        return self.trust.history()

    def tags(self) -> list[Tag]:
        hist = self.history()
        return hist.tags() if hist is not None else []

    def _select_root(self) -> tuple[ContentHash, int | None]:
        if not self.trust.pinned_root and self.manifest is None:
            self.verify()
        return self.trust.select_root()

    # -- mounting ---------------------------------------------------------------------------------

    def _load_catalog(self, h: ContentHash, mountpoint: str, size: int | None = None) -> Catalog:
        """Open the catalog `h` at `mountpoint`, fetched if needed; `size` is the one its
        parent (or the manifest) records, the bound of what a server may send for it."""
        where = mountpoint or "/"

        def fetch() -> str:
            return self.fetcher.fetch(
                h,
                "C",
                limit=database_limit(size),
                what=f"catalog {h.hex} of {self.fqrn}:{where}",
                kind=1,
            )

        # reopened through the fetcher when its file was closed (the catalogs open at
        # once are bounded: database.py) and the cache evicted it meanwhile
        return Catalog(fetch(), h, mountpoint, reopen=fetch)

    def remount(self) -> None:
        """Attach the selected revision's root catalog (again)."""
        root, size = self._select_root()
        self.root_hash = root
        catalog = self._load_catalog(root, "", size)
        if self.ns is not None:
            self.ns.close()
        self.ns = Namespace(catalog, self._load_catalog)
        self.mounted_at = time.time()

    def _namespace(self) -> Namespace:
        if self.ns is None:
            self.remount()
        return self.ns

    @property
    def revision(self) -> int:
        return self._namespace().root.revision

    @property
    def ttl(self) -> int:
        ttl = self._namespace().root.ttl
        max_ttl = self.settings.number("CVMFS_MAX_TTL", 0) * 60
        return int(min(ttl, max_ttl)) if max_ttl > 0 else ttl

    def update(self) -> bool:
        """Re-check the manifest and switch to a newer revision; True if it changed."""
        if self.is_pinned or self.offline or not self.settings.flag("CVMFS_AUTO_UPDATE", True):
            return False
        old = self.root_hash
        self.verify()
        if self.manifest.root_hash != old:
            self.remount()
            return True
        return False

    # -- paths ----------------------------------------------------------------------------------

    def _strip_mount(self, target: str) -> str | None:
        """A /cvmfs/<fqrn>/... target as a repository path, else None."""
        prefix = f"{self.mount_dir}/{self.fqrn}"
        if target == prefix:
            return ""
        if target.startswith(prefix + "/"):
            return target[len(prefix) :]
        return None

    def expand_symlink(self, entry: DirEntry) -> str:
        return expand_variant_symlink(entry.symlink, self.variant_env)

    def resolve(self, path: str, follow: bool = True) -> DirEntry:
        """The entry at path, following symlinks in every component (and the last one
        if `follow`). Symlinks leaving the repository raise an OSError(EXDEV)."""
        return resolve(
            self._namespace(),
            path,
            follow,
            fqrn=self.fqrn,
            expand=self.expand_symlink,
            inside=self._strip_mount,
        )

    def lookup(self, path: str) -> DirEntry:
        """lstat-like: the entry itself, even if it is a symlink."""
        return self.resolve(path, follow=False)

    def stat(self, path: str, follow: bool = True) -> Stat:
        return self.stat_entry(self.resolve(path, follow))

    def stat_entry(self, e: DirEntry) -> Stat:
        size = e.size
        if e.is_symlink:
            size = len(self.expand_symlink(e).encode("utf-8", "surrogateescape"))
        elif st.S_ISCHR(e.mode) or st.S_ISBLK(e.mode):
            size = 0
        mode = e.mode
        if self.settings.flag("CVMFS_WORLD_READABLE"):
            mode |= 0o555 if e.is_dir else 0o444
        return Stat(
            st_mode=mode,
            st_ino=inode_of(e),
            st_dev=self.dev,
            st_nlink=e.linkcount,
            st_uid=self.uid if self.uid is not None else e.uid,
            st_gid=self.gid if self.gid is not None else e.gid,
            st_size=size,
            st_rdev=e.rdev if e.rdev else 1,
            st_blksize=4096,
            st_blocks=1 + size // 512,
            st_mtime=e.mtime,
            st_mtime_nsec=e.mtime_ns or 0,
        )

    def scandir(self, path: str = "/") -> list[DirEntry]:
        """Entries of a directory (symlinks followed), hidden ones left out."""
        entry = self.resolve(path)
        if not entry.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return sorted(self._namespace().listdir(entry), key=lambda e: e.name)

    def listdir(self, path: str = "/") -> list[str]:
        return [e.name for e in self.scandir(path)]

    def readlink(self, path: str, raw: bool = False) -> str:
        entry = self.lookup(path)
        if not entry.is_symlink:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return entry.symlink if raw else self.expand_symlink(entry)

    def chunks(self, entry: DirEntry) -> list[tuple[int, int, ContentHash]]:
        return entry.catalog.chunks(entry) if entry.is_chunked else []

    def local_path(self, path_or_entry: str | DirEntry) -> str:
        """A local file with the verified contents (fetched into the cache if needed)."""
        e = self.resolve(path_or_entry) if isinstance(path_or_entry, str) else path_or_entry
        if e.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", e.path or "/")
        if not e.is_regular:
            raise OSError(errno.EINVAL, "not a regular file", e.path)
        self.n_open += 1
        what = f"{self.fqrn}:{e.path}"
        ext = e.path if e.is_external else None
        if e.is_chunked:
            return self.fetcher.fetch_chunked(
                self.chunks(e),
                e.size,
                compressed=e.is_compressed,
                what=what,
                bulk=e.hash,
                external_path=ext,
            )
        if e.hash is None:
            if e.size == 0:
                return self._empty_file()
            raise CatalogError(f"{what} has no content hash")
        pf = self.prefetcher
        if pf is not None and not ext:
            pf.note_read(e.hash.digest)
            if self.cache.find(e.hash, size=e.size, count=False) is None:
                parent = posixpath.dirname(e.path)
                pf.around(parent, lambda n: self._listing(parent, n), e)
        return self.fetcher.fetch(
            e.hash, compressed=e.is_compressed, size=e.size, what=what, external_path=ext
        )

    def start_prefetching(self) -> None:
        """From now on, a read of a file missing from the cache also fetches, in the
        background, the files of its kind beside it (client/prefetch.py): at most
        PARROT_CVMFS_PREFETCH MiB a run (default 64; 0: never; an eighth of a quota),
        this repository's alone."""
        if self.prefetch_budget > 0 and self.prefetcher is None:
            self.prefetcher = Prefetcher(self.fetcher, self.prefetch_budget)

    def _listing(self, directory: str, limit: int) -> list[DirEntry] | None:
        """The entries of a directory, or None if it has more than `limit` or cannot be
        listed (for a guess: nothing is reported)."""
        try:
            d = self.lookup(directory or "/")
            if not d.is_dir:
                return None
            children = self._namespace().children_catalog(d).listing(d.path, limit + 1)
        except (CvmfsError, OSError):
            return None
        return None if len(children) > limit else children

    def _empty_file(self) -> str:
        from ..format.hashes import Algorithm, hash_bytes

        h = hash_bytes(Algorithm.SHA1, b"")
        p = self.cache.find(h, size=0)
        if p is None:
            fd, tmp = self.cache.new_temp()
            os.close(fd)
            p = self.cache.commit(tmp, h)
        return p

    def open(self, path: str):
        """A binary file object with the contents."""
        return open(self.local_path(path), "rb")

    def read(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def walk(
        self, path: str = "/", onerror: Callable[[CvmfsError], None] | None = None
    ) -> Iterator[DirEntry]:
        """Every entry below path (itself first), depth first, names sorted. A directory
        that cannot be listed raises, or with `onerror` is passed to it and skipped."""
        ns = self._namespace()
        stack = [self.lookup(path)]
        while stack:
            e = stack.pop()
            yield e
            if e.is_dir:
                try:
                    children = ns.listdir(e)
                except CvmfsError as err:
                    if onerror is None:
                        raise
                    onerror(err)
                    continue
                stack.extend(sorted(children, key=lambda c: c.name, reverse=True))

    # -- extended attributes ---------------------------------------------------------------------

    def stored_xattrs(self, entry: DirEntry) -> dict[str, bytes]:
        what = f"{entry.catalog.what}: entry {entry.path or '/'!r}: field xattr"
        return decode_xattrs(entry.xattr_blob, what)

    def magic_xattr_names(self, entry: DirEntry) -> list[str]:
        """The magic attributes of `entry` (magic.py, loaded with the first question)."""
        from .magic import magic_names

        return magic_names(entry)

    def listxattr(self, entry: DirEntry) -> list[str]:
        """The names a program lists: the stored ones, then the magic ones as far as
        CVMFS_MAGIC_XATTRS_VISIBILITY shows them; none a getxattr could not reach."""
        names = list(self.stored_xattrs(entry))
        vis = (self.settings.get("CVMFS_MAGIC_XATTRS_VISIBILITY") or "rootonly").lower()
        hide = self.settings.get("CVMFS_HIDE_MAGIC_XATTRS")
        if hide is not None and self.settings.get("CVMFS_MAGIC_XATTRS_VISIBILITY") is None:
            vis = "never" if self.settings.flag("CVMFS_HIDE_MAGIC_XATTRS") else "always"
        if vis == "always" or (vis == "rootonly" and entry.path == ""):
            names += [n for n in self.magic_xattr_names(entry) if n not in names]
        return [n for n in names if reaches(entry, n)]

    def getxattr(self, entry: DirEntry, name: str) -> bytes:
        """Magic attributes shadow stored ones; ENODATA if neither exists, or if the
        kernel would not pass the question on (format/xattrs.reaches)."""
        from .magic import magic_value

        if not reaches(entry, name):
            raise OSError(errno.ENODATA, "No data available", name)
        value = magic_value(self, entry, name)
        if value is not None:
            return value.encode("utf-8", "surrogateescape")
        stored = self.stored_xattrs(entry)
        if name in stored:
            return stored[name]
        raise OSError(errno.ENODATA, "No data available", name)

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The stored (catalog) extended attributes of a path."""
        return self.stored_xattrs(self.lookup(path))

    # -- misc -------------------------------------------------------------------------------------

    def info(self) -> dict[str, str]:
        """Verified manifest fields (works without the root catalog)."""
        m = self.manifest
        out = {"fqrn": self.fqrn}
        if m is not None:
            out.update(m.info(self.certificate_fingerprint() or ""))
        if self.whitelist is not None:
            y, mo, d, h = self.whitelist.expires
            out["whitelist_expires"] = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:00:00Z"
        if self.tag is not None:
            out["tag"] = self.tag.name
            out["mounted_root_hash"] = self.tag.root_hash.hex
        elif self.trust.pinned_root and self.root_hash is not None:
            out["mounted_root_hash"] = self.root_hash.hex
        out["server"] = source_of(self.downloader)
        return out

    def close(self) -> None:
        if self.prefetcher is not None:  # first: its fetches write into the cache
            self.prefetcher.close()
        if self.ns is not None:
            self.ns.close()
            self.ns = None
        self.trust.close()
        self.fetcher.close()
        for d in (self.downloader, self.external):
            if d is not None:
                d.close()
        if not self.shared_cache:
            self.cache.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_cache(
    settings: RepositorySettings,
    cache_dir: str | None,
    alien: str | None,
    warn: Callable[[str], None] | None = None,
) -> ObjectCache:
    """The cache for a repository: --cache-dir, PARROT_CVMFS_CACHE, CVMFS_CACHE_DIR from the
    environment, or the per-user default; alien tiers from --alien-cache / CVMFS_ALIEN_CACHE
    (see `resolve_cache`: a populated cache we cannot write is read as an alien tier, and
    `warn` is told so)."""
    aliens = [a for a in ((alien or settings.get("CVMFS_ALIEN_CACHE") or "").split(":")) if a]
    directory, aliens = resolve_cache(cache_dir, aliens, warn)
    quota_mb = settings.number("CVMFS_QUOTA_LIMIT", 4000)
    quota = int(quota_mb * 1024 * 1024) if quota_mb > 0 else None
    try:
        return ObjectCache(directory, quota, aliens)
    except CvmfsError:
        raise
    except OSError as e:
        raise CacheError(f"cannot use cache directory {directory}: {e.strerror}") from None
