"""Preloading a repository into a directory that clients use as a read-only alien
cache, as `cvmfs_preload` does (format notes §10.5): for sites whose compute nodes
have no network.

The manifest chain is verified first. The root catalog, and every nested catalog
whose mountpoint the dirtab selects, are pulled with all the objects they reference
(file contents and chunks; external files excluded), verified and stored
decompressed under `DIR/xx/rest`. A catalog is stored only after everything below it
is, and the manifest, whitelist and breadcrumb last: an interrupted preload leaves a
directory that still serves the previous revision, and a rerun skips what is there.
A later revision costs only the objects it does not share with what is stored.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..atomic import discard, write_atomic
from ..errors import CvmfsError
from ..format.catalog import Catalog
from ..format.dirtab import RelaxedPathFilter, selection
from ..format.hashes import ContentHash
from . import cfetch
from .cache import ObjectCache
from .config import Configuration
from .download import Downloader
from .fetch import Fetcher
from .limits import database_limit, object_limit
from .network import DownloadSettings
from .repository import Repository

if TYPE_CHECKING:
    from .bundle import BundleWritten

DEFAULT_JOBS = 16
OBJECT_MODE = 0o555  # read by every user of the site, and executable in place
DIR_MODE = 0o755


class PreloadResult(NamedTuple):
    fqrn: str
    revision: int
    root_hash: str
    catalogs_pulled: int
    catalogs_current: int  # already stored: skipped with everything below them
    fetched: int
    skipped: int  # objects already stored
    bytes_fetched: int  # stored (inflated) bytes of the fetched objects
    seconds: float
    bundle: BundleWritten | None = None  # with `bundle`: what was written

    def summary(self, directory: str) -> str:
        rate = self.bytes_fetched / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"preloaded {self.fqrn} revision {self.revision} into {directory}: fetched "
            f"{self.fetched} objects ({self.bytes_fetched / 1e6:.1f} MB), skipped {self.skipped} "
            f"already present; catalogs pulled {self.catalogs_pulled}, up to date "
            f"{self.catalogs_current}; {self.seconds:.1f} s, {rate:.1f} MB/s"
        )


class _Object(NamedTuple):
    hash: ContentHash
    suffix: str
    compressed: bool
    size: int | None


def preload(
    url: str,
    directory: str,
    *,
    name: str | None = None,
    dirtab: str | None = None,
    pubkeys: str | None = None,
    jobs: int = DEFAULT_JOBS,
    config: Configuration | None = None,
    verify_at: float | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    bundle: str | None = None,
) -> PreloadResult:
    """Preload the repository served at `url` (`http://host/cvmfs/NAME`) into
    `directory`. `dirtab` is a dirtab file selecting subtrees; `pubkeys` colon-separated
    master key files (default: the configured keys for the name); `progress(done_files,
    total_files, done_bytes, total_bytes)` is called as objects arrive; `bundle`: then
    also write the preloaded revision to this file (`bundle.write_bundle`)."""
    started = time.monotonic()
    url = url.rstrip("/")
    fqrn = name or url.rsplit("/", 1)[-1]
    if not fqrn or "." not in fqrn:
        raise CvmfsError(f"cannot tell the repository name from {url} (give --name)")
    overrides = {"CVMFS_SERVER_URL": url}
    if pubkeys:
        overrides["CVMFS_PUBLIC_KEY"] = pubkeys
    base = config or Configuration()
    config = base.with_overrides(overrides)
    settings = config.settings(fqrn)
    select = None
    dirtab_text = None
    if dirtab:
        try:
            with open(dirtab, "rb") as f:
                dirtab_text = f.read()
        except OSError as e:
            raise CvmfsError(f"cannot read dirtab {dirtab}: {e.strerror}") from None
        select = selection(dirtab_text, dirtab)
    cache = ObjectCache(directory, object_mode=OBJECT_MODE, dir_mode=DIR_MODE)
    downloader = Downloader(DownloadSettings.from_settings(settings))
    repo = Repository(settings, cache, downloader, config=config, verify_at=verify_at)
    repo.shared_cache = True  # closed here
    walker = bundled = None
    try:
        manifest = repo.verify(store=False)
        # another selection than last time: the stored catalogs are walked again
        rescan = cache.read_meta(f"dirtab.{fqrn}", search_alien=False) != dirtab_text
        walker = _Walker(cache, repo.fetcher, fqrn, select, rescan)
        walker.visit(manifest.root_hash, "", manifest.root_size)
        fetched, nbytes = _fetch_all(repo.fetcher, fqrn, walker.objects, jobs, progress)
        for h, tmp in walker.pending:  # children before parents
            cache.commit(tmp, h, kind=1)
        if manifest.metainfo is not None:
            repo.fetcher.fetch(manifest.metainfo, "M", what=f"metainfo of {fqrn}")
        if dirtab_text is not None:
            write_atomic(os.path.join(cache.dir, f"dirtab.{fqrn}"), dirtab_text, 0o644)
        else:
            try:
                os.unlink(os.path.join(cache.dir, f"dirtab.{fqrn}"))
            except FileNotFoundError:
                pass
        if not os.path.exists(os.path.join(cache.dir, "uuid")):
            write_atomic(os.path.join(cache.dir, "uuid"), str(uuid.uuid4()).encode(), 0o644)
        repo.store_trust()
        for meta in (f"manifest.{fqrn}", f"whitelist.{fqrn}", f"cvmfschecksum.{fqrn}"):
            os.chmod(os.path.join(cache.dir, meta), 0o644)  # for every user of the site
        seconds = time.monotonic() - started
        if bundle is not None:
            from .bundle import write_bundle

            manifest_raw, whitelist_raw = repo.trust.raw  # the bytes just verified
            bundled = write_bundle(
                bundle,
                fqrn=fqrn,
                manifest=manifest,
                manifest_raw=manifest_raw,
                whitelist_raw=whitelist_raw,
                dirtab_text=dirtab_text,
                select=select,
                cache=cache,
                downloader=repo.downloader,
                jobs=jobs,
            )
    finally:
        if walker is not None:
            walker.discard()
        repo.close()
        cache.close()
    return PreloadResult(
        fqrn,
        manifest.revision,
        manifest.root_hash.hex,
        walker.pulled,
        walker.current,
        fetched,
        walker.skipped,
        nbytes,
        seconds,
        bundled,
    )


class _Walker:
    """The catalogs to pull (kept in txn/ until their subtree is stored) and the
    objects they reference that the directory does not have yet."""

    def __init__(
        self,
        cache: ObjectCache,
        fetcher: Fetcher,
        fqrn: str,
        select: RelaxedPathFilter | None,
        rescan: bool,
    ):
        self.cache, self.fetcher, self.fqrn = cache, fetcher, fqrn
        self.select, self.rescan = select, rescan
        self.objects: dict[str, _Object] = {}
        self.pending: list[tuple[ContentHash, str]] = []
        self.pulled = self.current = self.skipped = 0
        self._seen: set[str] = set()

    def _stored(self, h: ContentHash, size: int | None = None) -> bool:
        # the cache's own check: a link, a truncated file... counts as missing, fetched again
        return self.cache.find(h, size=size) is not None

    def visit(self, h: ContentHash, mountpoint: str, recorded: int | None) -> None:
        """Walk the catalog `h` at `mountpoint`, of the size its parent `recorded`."""
        if h.hex in self._seen:
            return
        self._seen.add(h.hex)
        where = mountpoint or "/"
        stored = self._stored(h)
        if stored and not self.rescan:
            self.current += 1  # "catalog up to date": with everything below it
            return
        if stored:
            path = self.cache.path(h)
        else:
            path = self._download_catalog(h, where, recorded)
            self.pulled += 1
        catalog = Catalog(path, h, mountpoint)
        try:
            for mp, (nested, nested_size) in sorted(catalog.nested_catalogs().items()):
                if self.select is None or self.select.matches(mp):
                    self.visit(nested, mp, nested_size)
            for ch, suffix, compressed, size in catalog.objects():
                if ch.hex in self.objects:
                    continue
                if self._stored(ch, size):
                    if ch.hex not in self._seen:
                        self._seen.add(ch.hex)
                        self.skipped += 1
                    continue
                self.objects[ch.hex] = _Object(ch, suffix, compressed, size)
        finally:
            catalog.close()
        if not stored:
            self.pending.append((h, path))

    def _download_catalog(self, h: ContentHash, where: str, recorded: int | None) -> str:
        downloader = self.fetcher.downloader
        fd, tmp = self.cache.new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                downloader.fetch(
                    h.object_path("C"),
                    what=f"catalog {h.hex} of {self.fqrn}:{where}",
                    expected=h,
                    decompress=True,
                    limit=database_limit(recorded),
                    out=out,
                )
        except BaseException:
            discard(tmp)
            raise
        return tmp

    def discard(self) -> None:
        """Remove the catalogs not committed (after a failure)."""
        for _h, tmp in self.pending:
            discard(tmp)


def _fetch_all(
    fetcher: Fetcher,
    fqrn: str,
    objects: dict[str, _Object],
    jobs: int,
    progress: Callable[[int, int, int, int], None] | None,
) -> tuple[int, int]:
    """Download the objects; (objects fetched, bytes stored). The C bulk fetcher takes
    them first over the host and proxy the trust chain was fetched through; what it
    could not get goes to the Python downloader, with all its fail-over rules."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    todo = list(objects.values())
    total = len(todo)
    total_bytes = sum(o.size or 0 for o in todo)
    if progress is not None:
        progress(0, total, 0, total_bytes)
    todo, done, nbytes = _fetch_in_c(fetcher, todo, jobs, progress, total, total_bytes)
    lock = threading.Lock()

    def one(o: _Object) -> int:
        p = fetcher.fetch(
            o.hash,
            o.suffix,
            compressed=o.compressed,
            size=o.size,
            what=f"object {o.hash.hex}{o.suffix} of {fqrn}",
            c_first=False,  # the C fetcher has had its try
        )
        return os.path.getsize(p)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(one, o) for o in todo]
        try:
            for fut in as_completed(futures):
                size = fut.result()
                with lock:
                    done += 1
                    nbytes += size
                if progress is not None:
                    progress(done, total, nbytes, total_bytes)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    if progress is not None:
        progress(done, total, nbytes, total_bytes)
    return done, nbytes


def _fetch_in_c(
    fetcher: Fetcher,
    todo: list[_Object],
    jobs: int,
    progress: Callable[[int, int, int, int], None] | None,
    total: int,
    total_bytes: int,
) -> tuple[list[_Object], int, int]:
    """(objects left over, objects fetched, bytes stored) of a pass of the C fetcher."""
    cache = fetcher.cache
    items = [
        cfetch.Item(
            o.hash,
            o.suffix,
            o.compressed,
            o.size,
            o.size if o.size is not None else object_limit(o.suffix),
            cache.temp_path("preload"),
            cache.destination(o.hash),
        )
        for o in todo
    ]
    report = None if progress is None else (lambda n, b: progress(n, total, b, total_bytes))
    stored = cfetch.fetch(
        fetcher.downloader, items, mode=cache.object_mode, jobs=jobs, progress=report
    )
    left = [o for o, r in zip(todo, stored, strict=True) if r.stored is None]
    fetched = [r.stored for r in stored if r.stored is not None]
    return left, len(fetched), sum(fetched)


def tqdm_progress(
    stream=None,
) -> tuple[Callable[[int, int, int, int], None] | None, Callable[[], None]]:
    """A progress bar (files, bytes, rate) when `stream` is a terminal; else nothing."""
    stream = stream or sys.stdout
    if not stream.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int, nbytes: int, total_bytes: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=stream,
                desc="preload",
                # the terminal's width, or 100 where it reports none
                ncols=shutil.get_terminal_size((100, 24)).columns or 100,
            )
        bar.n = min(nbytes, total_bytes)
        bar.set_postfix_str(f"{done}/{total} files", refresh=False)
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close
