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
import stat as st
import time
import zlib
from collections import namedtuple
from collections.abc import Callable, Iterator

from .._version import __version__
from ..errors import (
    CacheError,
    CatalogError,
    ConfigError,
    CvmfsError,
    DownloadError,
    RollbackError,
    SignatureError,
)
from ..format.catalog import COUNTERS, Catalog, DirEntry, expand_variant_symlink
from ..format.hashes import ContentHash, md5_digest
from ..format.manifest import Manifest
from ..format.signature import (
    Blacklist,
    certificate_fingerprint,
    load_certificate,
    load_public_keys,
)
from ..format.values import decimal
from ..format.whitelist import Whitelist
from ..format.xattrs import decode_xattrs
from .cache import ObjectCache, resolve_cache
from .config import Configuration, RepositorySettings
from .download import Downloader, DownloadSettings, database_limit
from .fetch import Fetcher
from .namespace import Namespace

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..format.history import History, Tag

MAX_SYMLINKS = 40
CVMFS_ROOT = "/cvmfs"


def split_path(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def canonical(path: str) -> str:
    """'/', '', 'a/b/', '/a//b' -> '' / '/a/b' (lexical; no '..' processing)."""
    parts = split_path(path)
    return "/" + "/".join(parts) if parts else ""


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


class Breadcrumb(namedtuple("Breadcrumb", "root_hash timestamp revision")):
    __slots__ = ()

    root_hash: str
    timestamp: int
    revision: int

    @classmethod
    def parse(cls, text: str) -> Breadcrumb | None:
        text = text.strip()
        if "T" not in text:
            return None
        h, _, rest = text.partition("T")
        ts, _, rev = rest.partition("R")
        timestamp, revision = decimal(ts), decimal(rev or "0")
        if not h or not timestamp or revision is None:
            return None
        return cls(h, timestamp, revision)

    def __str__(self) -> str:
        return f"{self.root_hash}T{self.timestamp}R{self.revision}"


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
        self.verify_at = verify_at
        self.pinned_tag = tag or settings.get("CVMFS_REPOSITORY_TAG")
        self.pinned_date = date or settings.get("CVMFS_REPOSITORY_DATE")
        self.pinned_root = root_hash or settings.get("CVMFS_ROOT_HASH")
        self.manifest: Manifest | None = None
        self.whitelist: Whitelist | None = None
        self.certificate = None
        self.root_hash: ContentHash | None = None
        self.tag: Tag | None = None
        self.ns: Namespace | None = None
        self._history: History | None = None
        self.mounted_at = 0.0
        self.shared_cache = False
        self.uid = os.getuid() if settings.flag("CVMFS_CLAIM_OWNERSHIP", True) else None
        self.gid = os.getgid() if settings.flag("CVMFS_CLAIM_OWNERSHIP", True) else None
        self.dev = device_of(self.fqrn)
        self.mount_dir = CVMFS_ROOT
        self.variant_env = (
            config.variant_env(settings)
            if config is not None
            else {**settings.params, **os.environ}
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
            config = Configuration(config.env, config.sysdir, {**config.overrides, **options})
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
            offline=offline,
            tag=tag,
            root_hash=root_hash,
            date=date,
        )
        repo.shared_cache = shared
        try:
            if repo.pinned_root:
                repo.root_hash = _parse_root_hash(repo.pinned_root)
            elif not (reuse_fresh and not offline and repo._reuse_fresh_manifest()):
                repo.verify()
            if attach:
                repo.remount()
            elif repo.is_pinned:
                repo.root_hash = repo._select_root()  # a pin that names nothing is an error
        except BaseException:
            repo.close()
            raise
        return repo

    @property
    def is_pinned(self) -> bool:
        return bool(self.pinned_tag or self.pinned_date or self.pinned_root)

    # -- trust chain ----------------------------------------------------------------------------

    def _keys(self):
        files = self.settings.public_key_files
        if not files:
            raise ConfigError(
                f"no public master key for {self.fqrn} (set CVMFS_PUBLIC_KEY or CVMFS_KEYS_DIR,"
                " or pubkey= in PARROT_CVMFS_REPO)"
            )
        return load_public_keys(files)

    def _blacklist(self) -> Blacklist:
        paths = [p for p in (self.settings.get("CVMFS_BLACKLIST") or "").split(":") if p]
        return Blacklist.load(paths)

    def verify(self, store: bool = True) -> Manifest:
        """Fetch (or, offline, read the stored copy of) and verify the manifest chain.
        `store`: keep the manifest, whitelist and breadcrumb in the cache now (a preload
        does it with `store_trust` once the revision's objects are all there)."""
        keys = self._keys()
        blacklist = self._blacklist()
        attempts = 1 if self.offline else min(2, len(self.downloader.path.hosts))
        for attempt in range(attempts):
            try:
                return self._verify_once(keys, blacklist, store)
            except (SignatureError, CatalogError) as e:
                if attempt + 1 >= attempts or isinstance(e, RollbackError):
                    raise
                # like the real client: one more try on the next stratum 1
                host_idx, _, _ = self.downloader.path.current()
                self.downloader.path.switch_host(host_idx)
        raise AssertionError("unreachable")

    def _host(self) -> str:
        if self.downloader is None:
            return "the cache"
        return self.downloader.path.current()[1]

    def _verify_once(self, keys, blacklist: Blacklist, store: bool = True) -> Manifest:
        fqrn = self.fqrn
        stored_in = None
        if self.offline:
            raw, stored_in = self._newest_stored_manifest()
            if raw is None:
                raise CacheError(
                    f"no stored manifest of {fqrn} in {self.cache.dir}"
                    + (f" or {', '.join(self.cache.alien)}" if self.cache.alien else "")
                    + " (offline: run once online or preload the repository first)"
                )
            source = "stored copy"
        else:
            raw = self.downloader.fetch("/.cvmfspublished", what=f"manifest of {fqrn}")
            source = self._host()
        what = f"manifest of {fqrn} from {source}"
        manifest = Manifest.parse(raw, what)
        manifest.check_name(fqrn, what)
        if manifest.certificate is None:
            raise SignatureError(f"{what} names no certificate (field X)")
        cert_path = self.fetcher.fetch(
            manifest.certificate, "X", what=f"certificate of {fqrn}", kind=0
        )
        with open(cert_path, "rb") as f:
            certificate = load_certificate(f.read(), f"{manifest.certificate.hex} of {fqrn}")
        manifest.verify(certificate, what)
        if self.offline:
            wl_raw = self.cache.read_meta_in(stored_in, f"whitelist.{fqrn}")
            if wl_raw is None:
                raise CacheError(f"no stored whitelist of {fqrn} in {stored_in} (offline)")
            wl_what = f"whitelist of {fqrn} (stored copy)"
        else:
            wl_raw = self.downloader.fetch("/.cvmfswhitelist", what=f"whitelist of {fqrn}")
            wl_what = f"whitelist of {fqrn} from {self._host()}"
        whitelist = Whitelist.parse(wl_raw, wl_what)
        whitelist.verify(fqrn, keys, now=self.verify_at, what=wl_what)
        whitelist.check_certificate(certificate, blacklist, wl_what)
        min_rev = blacklist.min_revisions.get(fqrn)
        if min_rev is not None and manifest.revision < min_rev:
            raise RollbackError(
                f"revision {manifest.revision} of {fqrn} is blacklisted (< {min_rev})"
            )
        crumb_raw = self.cache.read_meta(f"cvmfschecksum.{fqrn}", search_alien=self.offline)
        crumb = Breadcrumb.parse(crumb_raw.decode("ascii", "replace")) if crumb_raw else None
        if crumb is not None and not self.is_pinned:
            if manifest.revision < crumb.revision or (manifest.timestamp or 0) < crumb.timestamp:
                raise RollbackError(
                    f"{what} offers revision {manifest.revision}, older than revision"
                    f" {crumb.revision} already accepted by this cache (rollback refused;"
                    " pin a revision to read an older one)"
                )
        self.manifest, self.whitelist, self.certificate = manifest, whitelist, certificate
        self.root_hash = manifest.root_hash
        self._trust_raw = (raw, wl_raw)
        if not self.offline and store:
            self.store_trust()
        return manifest

    def _newest_stored_manifest(self) -> tuple[bytes | None, str | None]:
        """Offline: the stored manifest of the highest revision among this cache and its
        alien tiers (a preloaded directory may be newer than what an online run kept)."""
        best: tuple[int, bytes, str] | None = None
        for d, raw in self.cache.read_meta_everywhere(f"manifest.{self.fqrn}"):
            try:
                rev = Manifest.parse(raw).revision
            except CvmfsError:
                rev = -1  # reported by the verification below if it is the only one
            if best is None or rev > best[0]:
                best = (rev, raw, d)
        return (best[1], best[2]) if best else (None, None)

    def store_trust(self) -> None:
        """Keep the verified manifest and whitelist in the cache, for offline mounts and
        for the rollback check (the breadcrumb only ever moves forward)."""
        fqrn, manifest = self.fqrn, self.manifest
        raw, wl_raw = self._trust_raw
        crumb_raw = self.cache.read_meta(f"cvmfschecksum.{fqrn}", search_alien=False)
        crumb = Breadcrumb.parse(crumb_raw.decode("ascii", "replace")) if crumb_raw else None
        self.cache.write_meta(f"manifest.{fqrn}", raw)
        self.cache.write_meta(f"whitelist.{fqrn}", wl_raw)
        self.cache.write_meta(f"trust.{fqrn}", self._trust_stamp())
        if crumb is None or manifest.revision >= crumb.revision:
            crumb = Breadcrumb(manifest.root_hash.hex, manifest.timestamp or 1, manifest.revision)
            self.cache.write_meta(f"cvmfschecksum.{fqrn}", str(crumb).encode())

    def _reuse_fresh_manifest(self) -> bool:
        """Use the manifest this cache accepted, without verifying it again, when it is
        less than a TTL old, or when the server still publishes exactly those bytes
        and the keys and blacklist it was verified with are unchanged (the real client
        keeps its catalogs when a new manifest names the same root). A changed
        manifest, or anything unusual, goes through `verify`."""
        if self.is_pinned:
            return False
        path = self.cache.meta_path(f"manifest.{self.fqrn}")
        try:
            age = time.time() - os.stat(path).st_mtime
            raw = self.cache.read_meta(f"manifest.{self.fqrn}", search_alien=False)
            wl_raw = self.cache.read_meta(f"whitelist.{self.fqrn}", search_alien=False)
        except (OSError, CvmfsError):
            return False
        if raw is None or wl_raw is None:
            return False
        try:
            manifest = Manifest.parse(raw)
            whitelist = Whitelist.parse(wl_raw)
        except CvmfsError:
            return False
        max_ttl = self.settings.number("CVMFS_MAX_TTL", 0) * 60
        ttl = min(manifest.ttl, max_ttl) if max_ttl > 0 else manifest.ttl
        if whitelist.is_expired(self.verify_at) or manifest.fqrn not in (None, self.fqrn):
            return False
        if not 0 <= age < ttl and not self._published_unchanged(raw, path):
            return False
        self.manifest, self.whitelist, self.root_hash = manifest, whitelist, manifest.root_hash
        return True

    def _trust_stamp(self) -> bytes:
        """A digest of what a verification depends on besides the manifest and
        whitelist themselves: the master keys and the blacklists."""
        parts = []
        paths = list(self.settings.public_key_files)
        paths += [p for p in (self.settings.get("CVMFS_BLACKLIST") or "").split(":") if p]
        for p in paths:
            try:
                with open(p, "rb") as f:
                    parts.append(p.encode() + b"\0" + f.read())
            except OSError:
                parts.append(p.encode() + b"\0-")
        return md5_digest(b"\0\1".join(parts)).hex().encode()

    def _published_unchanged(self, stored: bytes, path: str) -> bool:
        """Whether the server publishes the stored manifest still (fetched by the C
        fetcher: no HTTP library or signature code to load for the common answer),
        and it was verified against today's keys and blacklist; restarts its TTL."""
        if self.downloader is None:
            return False
        if self.cache.read_meta(f"trust.{self.fqrn}", search_alien=False) != self._trust_stamp():
            return False
        from .cfetch import fetch_unverified

        try:
            current = fetch_unverified(
                self.downloader, "/.cvmfspublished", self.cache.temp_path("manifest")
            )
        except OSError:
            return False
        if current != stored:
            return False
        try:
            os.utime(path)
        except OSError:
            return False
        return True

    def certificate_fingerprint(self) -> str | None:
        if self.certificate is None or self.manifest is None:
            return None
        algorithm = self.manifest.root_hash.algorithm
        return certificate_fingerprint(self.certificate, algorithm).fingerprint()

    # -- history and mounting -------------------------------------------------------------------

    def history(self) -> History | None:
        """The tag database of the verified manifest (None if the repository has none)."""
        if self._history is None:
            if self.manifest is None:
                self.verify()
            h = self.manifest.history if self.manifest else None
            if h is None:
                return None

            def fetch() -> str:
                return self.fetcher.fetch(h, "H", what=f"history database of {self.fqrn}")

            from ..format.history import History  # tags only: kept off the start-up path

            what = f"history database {h.hex} of {self.fqrn}"
            self._history = History(fetch(), what, reopen=fetch)
        return self._history

    def tags(self) -> list[Tag]:
        hist = self.history()
        return hist.tags() if hist is not None else []

    def _select_root(self) -> tuple[ContentHash, int | None]:
        """The root catalog to mount and the size recorded for it (the manifest's `B`,
        the tag's size; none for a pinned hash)."""
        if self.pinned_root:
            return _parse_root_hash(self.pinned_root), None
        if self.manifest is None:
            self.verify()
        if self.pinned_tag:
            hist = self.history()
            t = hist.get(self.pinned_tag) if hist else None
            if t is None:
                raise ConfigError(f"repository {self.fqrn} has no tag {self.pinned_tag!r}")
            self.tag = t
            return t.root_hash, t.size
        if self.pinned_date:
            from ..format.history import parse_repository_date

            try:
                when = parse_repository_date(self.pinned_date)
            except ConfigError as e:
                raise ConfigError(f"cannot pin a revision of {self.fqrn}: {e}") from None
            hist = self.history()
            t = hist.at(when) if hist else None
            if t is None:
                raise ConfigError(
                    f"repository {self.fqrn} has no state as early as {self.pinned_date}"
                )
            self.tag = t
            return t.root_hash, t.size
        return self.manifest.root_hash, self.manifest.root_size

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
        ns = self._namespace()
        todo = split_path(path)
        todo.reverse()
        cur = ""
        entry = ns.lookup("")
        if entry is None:
            raise CatalogError(f"root catalog of {self.fqrn} has no root entry")
        links = 0
        while todo:
            name = todo.pop()
            if name == "..":
                if not cur:
                    raise OSError(errno.EXDEV, f"{path}: '..' leaves repository {self.fqrn}")
                cur = cur[: cur.rfind("/")]
                entry = ns.lookup(cur)
                continue
            if not entry.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            child = f"{cur}/{name}"
            found = ns.lookup(child)
            if found is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if found.is_symlink and (todo or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
                target = self.expand_symlink(found)
                if target.startswith("/"):
                    inside = self._strip_mount(canonical_abs(target))
                    if inside is None:
                        raise OSError(
                            errno.EXDEV,
                            f"{path}: symlink {child} -> {target} leaves repository {self.fqrn}",
                        )
                    cur, entry = "", ns.lookup("")
                    parts = split_path(inside)
                else:
                    parts = split_path(target)
                todo.extend(reversed(parts))
                continue
            cur, entry = child, found
        return entry

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
        return self.fetcher.fetch(
            e.hash, compressed=e.is_compressed, size=e.size, what=what, external_path=ext
        )

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
        names = [
            "user.fqrn",
            "user.revision",
            "user.root_hash",
            "user.host",
            "user.host_list",
            "user.proxy",
            "user.proxy_list",
            "user.timeout",
            "user.timeout_direct",
            "user.expires",
            "user.nclg",
            "user.ndownload",
            "user.hitrate",
            "user.rx",
            "user.version",
            "user.tag",
            "user.repo_counters",
            "user.catalog_counters",
            "user.repo_metainfo",
            "user.pubkeys",
            "user.pid",
            "user.nioerr",
        ]
        if entry.hash is not None:
            names += ["user.hash", "user.lhash"]
        if entry.is_regular:
            names += [
                "user.chunks",
                "user.chunk_list",
                "user.compression",
                "user.direct_io",
                "user.external_file",
            ]
            if entry.is_external:
                names.append("user.external_url")
        if entry.is_symlink:
            names += ["user.rawlink", "xfsroot.rawlink"]
        return names

    def listxattr(self, entry: DirEntry) -> list[str]:
        names = list(self.stored_xattrs(entry))
        vis = (self.settings.get("CVMFS_MAGIC_XATTRS_VISIBILITY") or "rootonly").lower()
        hide = self.settings.get("CVMFS_HIDE_MAGIC_XATTRS")
        if hide is not None and self.settings.get("CVMFS_MAGIC_XATTRS_VISIBILITY") is None:
            vis = "never" if self.settings.flag("CVMFS_HIDE_MAGIC_XATTRS") else "always"
        if vis == "always" or (vis == "rootonly" and entry.path == ""):
            names += [n for n in self.magic_xattr_names(entry) if n not in names]
        return names

    def getxattr(self, entry: DirEntry, name: str) -> bytes:
        """Magic attributes shadow stored ones; ENODATA if neither exists."""
        if name in self.magic_xattr_names(entry):
            value = self._magic(entry, name)
            if value is not None:
                return value.encode("utf-8", "surrogateescape")
        stored = self.stored_xattrs(entry)
        if name in stored:
            return stored[name]
        raise OSError(errno.ENODATA, "No data available", name)

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The stored (catalog) extended attributes of a path."""
        return self.stored_xattrs(self.lookup(path))

    def _magic(self, e: DirEntry, name: str) -> str | None:
        ns = self._namespace()
        dl = self.downloader
        if name == "user.fqrn":
            return self.fqrn
        if name == "user.revision":
            return str(self.revision)
        if name == "user.root_hash":
            return self.root_hash.hex if self.root_hash else ""
        if name == "user.hash":
            return e.hash.hex if e.hash else None
        if name == "user.lhash":
            p = self._cached_path(e)
            if p is None:
                return "Not in cache"
            from ..format.hashes import new_hasher

            h = new_hasher(e.hash.algorithm)
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return ContentHash(e.hash.algorithm, h.digest()).hex
        if name == "user.chunks":
            return str(len(self.chunks(e)) or 1)
        if name == "user.chunk_list":
            chunks = self.chunks(e)
            lines = ["hash,offset,size"]
            if chunks:
                lines += [f"{h.hex},{o},{s}" for o, s, h in chunks]
            else:
                lines.append(f"{e.hash.hex if e.hash else ''},0,{e.size}")
            return "\n".join(lines) + "\n"
        if name == "user.compression":
            return "zlib" if e.is_compressed else "none"
        if name == "user.direct_io":
            return "1" if e.is_direct_io else "0"
        if name == "user.external_file":
            return "1" if e.is_external else "0"
        if name == "user.external_url":
            return (self.external.path.current()[1] + e.path) if self.external else ""
        if name in ("user.rawlink", "xfsroot.rawlink"):
            return e.symlink
        if name == "user.host":
            return dl.path.current()[1] if dl else "internal error: no network"
        if name == "user.host_list":
            return ";".join(dl.path.host_list()) if dl else ""
        if name == "user.proxy":
            return dl.path.current()[2] if dl else "DIRECT"
        if name == "user.proxy_list":
            return "\n".join(dl.path.proxy_list()) + "\n" if dl else "DIRECT\n"
        if name == "user.timeout":
            return str(int(dl.settings.timeout)) if dl else "0"
        if name == "user.timeout_direct":
            return str(int(dl.settings.timeout_direct)) if dl else "0"
        if name == "user.expires":
            if self.is_pinned or self.offline:
                return "never (fixed root catalog)"
            return str(max(0, int((self.mounted_at + self.ttl - time.time()) // 60)))
        if name == "user.nclg":
            return str(len(ns.mounted))
        if name == "user.ndownload":
            return str(dl.n_downloads if dl else 0)
        if name == "user.hitrate":
            total = self.cache.hits + self.cache.misses
            return f"{100.0 * self.cache.hits / total:.3f}" if total else "n/a"
        if name == "user.rx":
            return str((dl.bytes_received if dl else 0) // 1024)
        if name == "user.version":
            return __version__
        if name == "user.tag":
            return self.pinned_tag or ""
        if name == "user.repo_counters":
            return _counters_csv(_repo_counters(ns.root.counters()))
        if name == "user.catalog_counters":
            cat = ns.children_catalog(e) if e.is_dir else e.catalog
            head = f"catalog_hash: {cat.hash.hex if cat.hash else ''}\ncatalog_mountpoint: {cat.mountpoint or '/'}\n"
            return head + _counters_csv(_repo_counters(cat.counters()))
        if name == "user.repo_metainfo":
            if self.manifest is None or self.manifest.metainfo is None:
                return "metainfo not available"
            try:
                p = self.fetcher.fetch(self.manifest.metainfo, "M", what=f"metainfo of {self.fqrn}")
            except (DownloadError, CacheError):
                return "metainfo not available"
            with open(p, "rb") as f:
                return f.read(65536).decode("utf-8", "replace")
        if name == "user.pubkeys":
            out = []
            for path in self.settings.public_key_files:
                try:
                    with open(path) as f:
                        out.append(f.read())
                except OSError:
                    pass
            return "".join(out)
        if name == "user.pid":
            return str(os.getpid())
        if name == "user.nioerr":
            return str(dl.n_failures if dl else 0)
        return None

    def _cached_path(self, e: DirEntry) -> str | None:
        if e.is_chunked:
            from .fetch import ASSEMBLED, chunk_list_key

            return self.cache.find(chunk_list_key(self.chunks(e)), ASSEMBLED, size=e.size)
        return self.cache.find(e.hash, size=e.size) if e.hash else None

    # -- misc -------------------------------------------------------------------------------------

    def info(self) -> dict[str, str]:
        """Verified manifest fields (works without the root catalog)."""
        m = self.manifest
        out = {"fqrn": self.fqrn}
        if m is not None:
            out.update(
                revision=str(m.revision),
                root_hash=m.root_hash.hex,
                root_catalog_size=str(m.root_size) if m.root_size is not None else "",
                ttl=str(m.ttl),
                timestamp=str(m.timestamp or 0),
                published=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.timestamp or 0)),
                hash_algorithm=m.root_hash.algorithm.name.lower(),
                certificate=m.certificate.hex if m.certificate else "",
                certificate_fingerprint=self.certificate_fingerprint() or "",
                history=m.history.hex if m.history else "",
                metainfo=m.metainfo.hex if m.metainfo else "",
                garbage_collectable="yes" if m.garbage_collectable else "no",
            )
        if self.whitelist is not None:
            y, mo, d, h = self.whitelist.expires
            out["whitelist_expires"] = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:00:00Z"
        if self.tag is not None:
            out["tag"] = self.tag.name
            out["mounted_root_hash"] = self.tag.root_hash.hex
        elif self.pinned_root and self.root_hash is not None:
            out["mounted_root_hash"] = self.root_hash.hex
        out["server"] = self._host()
        return out

    def close(self) -> None:
        if self.ns is not None:
            self.ns.close()
            self.ns = None
        if self._history is not None:
            self._history.close()
            self._history = None
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


def canonical_abs(path: str) -> str:
    """Lexically normalize an absolute symlink target ('..' against its prefix)."""
    out: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
            continue
        out.append(p)
    return "/" + "/".join(out)


def _parse_root_hash(text: str) -> ContentHash:
    try:
        h, suffix = ContentHash.from_suffixed_hex(text.strip())
    except ValueError:
        raise ConfigError(f"invalid root catalog hash {text!r}") from None
    if suffix not in ("", "C"):
        raise ConfigError(f"invalid root catalog hash {text!r}")
    return h


def _repo_counters(counters: dict[str, int]) -> dict[str, int]:
    return {n: counters.get("self_" + n, 0) + counters.get("subtree_" + n, 0) for n in COUNTERS}


def _counters_csv(c: dict[str, int]) -> str:
    return "".join(f"{k},{v}\n" for k, v in c.items())


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
