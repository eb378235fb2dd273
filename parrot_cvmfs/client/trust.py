"""The trust chain of one repository and the choice of the revision it mounts.

master key -> whitelist -> certificate -> manifest, verified from the servers or
(offline) from the stored copies; a revision older than the one this cache already
accepted (the breadcrumb) is refused unless a revision is pinned; the pinned
revision (a tag, a date or a root hash) is chosen against the history database.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

from ..errors import (
    CacheError,
    CatalogError,
    ConfigError,
    CvmfsError,
    RollbackError,
    SignatureError,
)
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

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from ..format.history import History, Tag
    from .cache import ObjectCache
    from .config import RepositorySettings
    from .download import Downloader
    from .fetch import Fetcher


class Breadcrumb(namedtuple("Breadcrumb", "root_hash timestamp revision")):
    """The newest revision a cache accepted of a repository (`cvmfschecksum.FQRN`)."""

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


def parse_root_hash(text: str) -> ContentHash:
    """A pinned root catalog hash (CVMFS_ROOT_HASH), with no suffix or `C`."""
    try:
        h, suffix = ContentHash.from_suffixed_hex(text.strip())
    except ValueError:
        raise ConfigError(f"invalid root catalog hash {text!r}") from None
    if suffix not in ("", "C"):
        raise ConfigError(f"invalid root catalog hash {text!r}")
    return h


def source_of(downloader: Downloader | None) -> str:
    """Where the trust chain was read from: the current host, or the cache."""
    if downloader is None:
        return "the cache"
    return downloader.path.current()[1]


class TrustChain:
    """The verified manifest, whitelist and certificate of one repository, and the
    pinned revision (tag, date or root hash) if any."""

    def __init__(
        self,
        settings: RepositorySettings,
        cache: ObjectCache,
        downloader: Downloader | None,
        fetcher: Fetcher,
        *,
        offline: bool,
        verify_at: float | None,
        tag: str | None,
        date: str | None,
        root_hash: str | None,
    ):
        self.fqrn = settings.fqrn
        self.settings = settings
        self.cache = cache
        self.downloader = downloader
        self.fetcher = fetcher
        self.offline = offline
        self.verify_at = verify_at
        self.pinned_tag = tag or settings.get("CVMFS_REPOSITORY_TAG")
        self.pinned_date = date or settings.get("CVMFS_REPOSITORY_DATE")
        self.pinned_root = root_hash or settings.get("CVMFS_ROOT_HASH")
        self.manifest: Manifest | None = None
        self.whitelist: Whitelist | None = None
        self.certificate = None
        self.raw: tuple[bytes, bytes] | None = None  # the manifest and whitelist verified
        self.tag: Tag | None = None
        self._history: History | None = None

    @property
    def is_pinned(self) -> bool:
        return bool(self.pinned_tag or self.pinned_date or self.pinned_root)

    # -- verification ----------------------------------------------------------------------------

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
        does it with `store` once the revision's objects are all there)."""
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
            source = source_of(self.downloader)
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
            wl_what = f"whitelist of {fqrn} from {source_of(self.downloader)}"
        whitelist = Whitelist.parse(wl_raw, wl_what)
        whitelist.verify(fqrn, keys, now=self.verify_at, what=wl_what)
        whitelist.check_certificate(certificate, blacklist, wl_what)
        min_rev = blacklist.min_revisions.get(fqrn)
        if min_rev is not None and manifest.revision < min_rev:
            raise RollbackError(
                f"revision {manifest.revision} of {fqrn} is blacklisted (< {min_rev})"
            )
        crumb = self._breadcrumb(search_alien=self.offline)
        if crumb is not None and not self.is_pinned:
            if manifest.revision < crumb.revision or (manifest.timestamp or 0) < crumb.timestamp:
                raise RollbackError(
                    f"{what} offers revision {manifest.revision}, older than revision"
                    f" {crumb.revision} already accepted by this cache (rollback refused;"
                    " pin a revision to read an older one)"
                )
        self.manifest, self.whitelist, self.certificate = manifest, whitelist, certificate
        self.raw = (raw, wl_raw)
        if not self.offline and store:
            self.store()
        return manifest

    def _breadcrumb(self, search_alien: bool) -> Breadcrumb | None:
        crumb_raw = self.cache.read_meta(f"cvmfschecksum.{self.fqrn}", search_alien=search_alien)
        return Breadcrumb.parse(crumb_raw.decode("ascii", "replace")) if crumb_raw else None

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

    def store(self) -> None:
        """Keep the verified manifest and whitelist in the cache, for offline mounts and
        for the rollback check (the breadcrumb only ever moves forward)."""
        fqrn, manifest = self.fqrn, self.manifest
        raw, wl_raw = self.raw
        crumb = self._breadcrumb(search_alien=False)
        self.cache.write_meta(f"manifest.{fqrn}", raw)
        self.cache.write_meta(f"whitelist.{fqrn}", wl_raw)
        self.cache.write_meta(f"trust.{fqrn}", self._stamp())
        if crumb is None or manifest.revision >= crumb.revision:
            crumb = Breadcrumb(manifest.root_hash.hex, manifest.timestamp or 1, manifest.revision)
            self.cache.write_meta(f"cvmfschecksum.{fqrn}", str(crumb).encode())

    def reuse_fresh(self) -> bool:
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
        ttl = self._ttl(manifest)
        if whitelist.is_expired(self.verify_at) or manifest.fqrn not in (None, self.fqrn):
            return False
        if not 0 <= age < ttl and not self._published_unchanged(raw, path):
            return False
        self.manifest, self.whitelist = manifest, whitelist
        return True

    def _ttl(self, manifest: Manifest) -> int:
        """How long a stored manifest is reused without asking the server (its TTL,
        bounded by CVMFS_MAX_TTL)."""
        max_ttl = self.settings.number("CVMFS_MAX_TTL", 0) * 60
        return min(manifest.ttl, max_ttl) if max_ttl > 0 else manifest.ttl

    def fresh_until(self) -> float:
        """Until when a later mount would reuse this manifest as `reuse_fresh` does (its
        stored copy's age within the TTL, the whitelist unexpired); 0 if not at all."""
        if self.is_pinned:
            return float("inf")  # a pinned revision never changes
        if self.manifest is None or self.whitelist is None:
            return 0.0
        try:
            stored = os.stat(self.cache.meta_path(f"manifest.{self.fqrn}")).st_mtime
        except OSError:
            return 0.0
        until = stored + self._ttl(self.manifest)
        if self.verify_at is not None:  # checked as of that date, which does not move
            return until
        return min(until, float(self.whitelist.expiry_epoch()))

    def _stamp(self) -> bytes:
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
        if self.cache.read_meta(f"trust.{self.fqrn}", search_alien=False) != self._stamp():
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

    # -- the revision ----------------------------------------------------------------------------

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

    def select_root(self) -> tuple[ContentHash, int | None]:
        """The root catalog to mount and the size recorded for it (the manifest's `B`,
        the tag's size; none for a pinned hash)."""
        if self.pinned_root:
            return parse_root_hash(self.pinned_root), None
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

    def close(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None
