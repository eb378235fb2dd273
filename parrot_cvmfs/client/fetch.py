"""The fetcher: objects into the cache, downloading (once) what is missing.

Whole-file objects, catalogs, certificates and history databases are cached
under their hash. A chunked file is assembled into one local file (its
chunks downloaded in parallel straight into place, each verified) and cached
under a key derived from its chunk list, because programs need one real file
to read and map.
"""

from __future__ import annotations

import os
import threading

from ..atomic import discard
from ..errors import CacheError, CvmfsError
from ..format.hashes import Algorithm, ContentHash
from . import cfetch, progress
from .cache import ObjectCache, open_regular
from .download import Downloader
from .limits import object_limit

ASSEMBLED = ".file"  # cache name suffix of assembled chunked files


class _StoreFailed(Exception):
    """Writing into the cache failed (a full disk, say): not the transfer's fault, so
    not an OSError the downloader could take for one; the fetcher names the cache."""

    def __init__(self, error: OSError):
        super().__init__(error.strerror)
        self.error = error


class _RegionWriter:
    """Minimal file-like writer on a raw descriptor from `offset` on, with pwrite (no
    buffering, no lseek). Used for whole objects (offset 0, truncated on retries) and,
    without truncation, for chunks written in parallel into one file."""

    def __init__(self, fd: int, offset: int, truncate: bool = False):
        self.fd = fd
        self.base = offset
        self.pos = offset
        self.may_truncate = truncate

    def seek(self, pos: int) -> None:
        self.pos = self.base + pos

    def truncate(self) -> None:
        if self.may_truncate:
            try:
                os.ftruncate(self.fd, self.pos)
            except OSError as e:
                raise _StoreFailed(e) from None

    def tell(self) -> int:
        return self.pos - self.base

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, self.pos)
            except OSError as e:
                raise _StoreFailed(e) from None
            self.pos += n
            view = view[n:]

    def flush(self) -> None:
        pass


def chunk_list_key(chunks: list[tuple[int, int, ContentHash]]) -> ContentHash:
    """A stable cache key for a chunked file's content."""
    import hashlib

    h = hashlib.sha1()
    for offset, size, ch in chunks:
        h.update(f"{offset}:{size}:{ch.hex}\n".encode())
    return ContentHash(Algorithm.SHA1, h.digest())


class Fetcher:
    def __init__(
        self,
        cache: ObjectCache,
        downloader: Downloader | None,
        external: Downloader | None = None,
        offline: bool = False,
        parallel: int = 4,
    ):
        self.cache = cache
        self.downloader = downloader
        self.external = external
        self.offline = offline or downloader is None
        self._pool = None  # a ThreadPoolExecutor, made for the first chunked file
        self._parallel = parallel
        self._pool_lock = threading.Lock()

    def _require_network(self, what: str, h: ContentHash) -> Downloader:
        if self.offline or self.downloader is None:
            raise CacheError(
                f"{what} (object {h.hex}) is not in the cache and the client is offline"
            )
        return self.downloader

    def fetch(
        self,
        h: ContentHash,
        suffix: str = "",
        *,
        compressed: bool = True,
        size: int | None = None,
        limit: int | None = None,
        what: str,
        kind: int = 0,
        external_path: str | None = None,
        c_first: bool = True,
    ) -> str:
        """Local path of the verified, decompressed object; downloads it if needed (by the
        C fetcher unless `c_first` is false, then by the Python downloader). `size` is its
        exact inflated size (a cache file of another is never served); without one it may
        inflate to `limit` bytes at most (default: the cap for its suffix)."""
        if limit is None:
            limit = size if size is not None else object_limit(suffix)
        p = self.cache.find(h, size=size)
        if p is not None:
            return p
        downloader = self.external if external_path else self.downloader
        if external_path and downloader is None:
            raise CvmfsError(f"{what} is an external file but CVMFS_EXTERNAL_URL is not set")
        if downloader is None or self.offline:
            self._require_network(what, h)
        with self.cache.lock(h.hex):
            p = self.cache.find(h, size=size)
            if p is not None:
                return p
            progress.begin(what)
            p = None
            try:
                p = self._download(
                    h, suffix, compressed, size, limit, what, kind, external_path, c_first
                )
                return p
            finally:
                progress.end(None if p is None else _stored_size(p, size))

    def _download(
        self,
        h: ContentHash,
        suffix: str,
        compressed: bool,
        size: int | None,
        limit: int,
        what: str,
        kind: int,
        external_path: str | None,
        c_first: bool,
    ) -> str:
        """`fetch` of an object known to be missing (its lock held): its cache path."""
        downloader = self.external if external_path else self.downloader
        bad_data = False
        if not external_path and c_first:
            # the C fetcher first; the Python downloader for whatever it cannot get
            tmp = self.cache.temp_path()
            item = cfetch.Item(h, suffix, compressed, size, limit, tmp, None)
            got = cfetch.fetch(downloader, [item], mode=self.cache.object_mode)[0]
            if got.stored is not None:
                return self.cache.commit(tmp, h, kind=kind)
            bad_data = got.bad_data
        fd, tmp = self.cache.new_temp()
        try:
            downloader.fetch(
                h.object_path(suffix),
                what=what,
                expected=h,
                decompress=compressed,
                size=size,
                limit=limit,
                out=_RegionWriter(fd, 0, truncate=True),
                url_for=_external_url(external_path),
                bad_data_seen=bad_data,
            )
        except BaseException as e:
            self._abandon(tmp, e, what)
            raise
        finally:
            os.close(fd)
        return self.cache.commit(tmp, h, kind=kind)

    def _abandon(self, tmp: str, e: BaseException, what: str) -> None:
        """Remove the temporary file of a fetch that failed with `e`; a failed write
        into the cache is raised as the cache's one line instead."""
        discard(tmp)
        if isinstance(e, _StoreFailed):
            raise self.cache.store_error(e.error, what) from None

    def _executor(self):
        from concurrent.futures import ThreadPoolExecutor

        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._parallel, thread_name_prefix="chunks")
            return self._pool

    def fetch_chunked(
        self,
        chunks: list[tuple[int, int, ContentHash]],
        total_size: int,
        *,
        compressed: bool,
        what: str,
        bulk: ContentHash | None = None,
        external_path: str | None = None,
    ) -> str:
        """Local path of a chunked file, assembled and verified chunk by chunk."""
        if not chunks:
            raise CvmfsError(f"{what} is marked chunked but its catalog lists no chunks")
        expect = 0
        for offset, size, _ in chunks:
            if offset != expect:
                raise CvmfsError(f"{what}: chunk list is not contiguous at offset {expect}")
            expect += size
        if expect != total_size:
            raise CvmfsError(f"{what}: chunks cover {expect} bytes, file has {total_size}")
        key = chunk_list_key(chunks)
        p = self.cache.find(key, ASSEMBLED, size=total_size)
        if p is not None:
            return p
        if bulk is not None and not external_path:
            # a preloaded whole-file object (legacy bulk chunk)
            p = self.cache.find(bulk, size=total_size)
            if p is not None:
                return p
        with self.cache.lock(key.hex):
            p = self.cache.find(key, ASSEMBLED, size=total_size)
            if p is not None:
                return p
            fd, tmp = self.cache.new_temp()
            try:
                os.ftruncate(fd, total_size)
                jobs = []
                for i, (offset, size, ch) in enumerate(chunks):
                    local = self.cache.find(ch, size=size)
                    if local is not None:
                        _copy_into(local, fd, offset, size, what)
                        continue
                    if external_path and self.external is None:
                        raise CvmfsError(
                            f"{what} is an external file but CVMFS_EXTERNAL_URL is not set"
                        )
                    downloader = self.external if external_path else self._require_network(what, ch)
                    headers = (
                        {"Range": f"bytes={offset}-{offset + size - 1}"} if external_path else None
                    )
                    jobs.append((downloader, ch, offset, size, f"chunk {i} of {what}", headers))
                if jobs:
                    progress.begin(what)
                    try:
                        self._download_chunks(fd, jobs, compressed, external_path)
                    except BaseException:
                        progress.end(None)
                        raise
                    progress.end(sum(job[3] for job in jobs))
                os.close(fd)
                fd = -1
            except BaseException as e:
                if fd >= 0:
                    os.close(fd)
                self._abandon(tmp, e, what)
                raise
            return self.cache.commit(tmp, key, ASSEMBLED)

    def _download_chunks(self, fd: int, jobs: list, compressed: bool, external_path) -> None:
        """The missing chunks into their regions of `fd`: all at once by the C fetcher
        (at most `parallel` threads, each verified), then by the Python downloader, in
        parallel too, whatever C could not get."""
        bad = set()
        if not external_path:
            items = [
                cfetch.Item(ch, "P", compressed, size, size, None, None, fd, offset)
                for _d, ch, offset, size, _w, _h in jobs
            ]
            got = cfetch.fetch(jobs[0][0], items, mode=0o600, jobs=min(self._parallel, len(items)))
            left = []
            for job, outcome in zip(jobs, got, strict=True):
                if outcome.stored is None:
                    left.append(job)
                    if outcome.bad_data:
                        bad.add(job[2])
            jobs = left
        if len(jobs) == 1:
            _download_region(fd, *jobs[0], compressed, external_path, jobs[0][2] in bad)
        elif jobs:
            futures = [
                self._executor().submit(
                    _download_region, fd, *job, compressed, external_path, job[2] in bad
                )
                for job in jobs
            ]
            errors = []
            for fut in futures:
                try:
                    fut.result()
                except Exception as e:  # keep the first, but wait for all writers
                    errors.append(e)
            if errors:
                raise errors[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _stored_size(path: str, size: int | None) -> int:
    """The bytes a download stored at `path` (its catalog size when known)."""
    if size is not None:
        return size
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _external_url(path: str | None):
    """External files live at <external host><repository path>."""
    if path is None:
        return None
    import urllib.parse

    quoted = urllib.parse.quote(path, safe="/:.@+-_~[],")
    return lambda host: host + quoted


def _download_region(
    fd,
    downloader: Downloader,
    ch,
    offset,
    size,
    what,
    headers,
    compressed,
    external_path,
    bad_data_seen=False,
):
    downloader.fetch(
        ch.object_path("P"),
        what=what,
        expected=ch,
        decompress=compressed,
        size=size,
        out=_RegionWriter(fd, offset),
        headers=headers,
        url_for=_external_url(external_path),
        bad_data_seen=bad_data_seen,
    )


def _copy_into(src: str, fd: int, offset: int, size: int, what: str) -> None:
    sfd = open_regular(src, f"cached chunk of {what}")
    if sfd is None:
        raise CacheError(f"cached chunk {src} of {what} went away")
    try:
        data = os.read(sfd, size + 1)
    except OSError as e:
        raise CacheError(f"cannot read cached chunk {src} of {what}: {e.strerror}") from None
    finally:
        os.close(sfd)
    if len(data) != size:
        raise CacheError(f"cached chunk {src} of {what} has the wrong size")
    try:
        os.pwrite(fd, data, offset)
    except OSError as e:
        raise _StoreFailed(e) from None
