"""Writing a bundle: the stored revision walked, each object fetched again as served."""

from __future__ import annotations

import os

from ...atomic import discard
from ...errors import CacheError, CvmfsError, IntegrityError
from ...format.catalog import Catalog
from ..limits import MAX_SMALL, wire_limit
from .members import (
    BLOCK,
    FORMAT,
    FORMAT_MEMBER,
    MEMBER_MAX,
    BundledObject,
    BundleWritten,
    contents_of,
    root_object,
    tar_header,
)

_BATCH_BYTES = 256 << 20  # raw bytes staged at once while writing a bundle
_BATCH_ITEMS = 4096


def write_bundle(
    out_path: str,
    *,
    fqrn: str,
    manifest,
    manifest_raw: bytes,
    whitelist_raw: bytes,
    dirtab_text: bytes | None,
    select,
    cache,
    downloader,
    jobs: int,
    level: int = 3,
) -> BundleWritten:
    """Write the revision `manifest` of `fqrn`, preloaded into `cache`'s directory, as a
    bundle: the catalogs `select` takes (the stored ones are walked), their objects and
    the trust files, each object fetched again raw (as served) through `downloader`."""
    import zstandard

    catalogs, objects = _walk_stored(cache, manifest, select)
    extra = [BundledObject(manifest.certificate, "X", True, None, f"certificate of {fqrn}")]
    if manifest.metainfo is not None:
        extra.append(BundledObject(manifest.metainfo, "M", True, None, f"metainfo of {fqrn}"))
    stamp = manifest.timestamp or 0
    tmp = f"{out_path}.{os.getpid()}.tmp"
    members = 0
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except OSError as e:
        raise CvmfsError(f"cannot write bundle {out_path}: {e.strerror}") from None
    try:
        with open(fd, "wb") as raw:
            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=-1)
            with cctx.stream_writer(raw, closefd=False) as z:

                def small(name: str, data: bytes) -> None:
                    nonlocal members
                    if len(data) > MAX_SMALL:  # a bundle no reader would take
                        raise CvmfsError(f"{name} is above the limit of {MAX_SMALL} bytes")
                    z.write(tar_header(name, len(data), stamp))
                    z.write(data + bytes(-len(data) % 512))
                    members += 1

                small(FORMAT_MEMBER, FORMAT)
                small(f"whitelist.{fqrn}", whitelist_raw)
                small(f"manifest.{fqrn}", manifest_raw)
                members += _fetch_into(z, extra, cache, downloader, jobs, stamp)
                if dirtab_text is not None:
                    small(f"dirtab.{fqrn}", dirtab_text)
                members += _fetch_into(z, catalogs, cache, downloader, jobs, stamp)
                members += _fetch_into(z, objects, cache, downloader, jobs, stamp)
                z.write(bytes(1024))
        os.rename(tmp, out_path)
    except BaseException as e:
        discard(tmp)
        if isinstance(e, OSError) and not isinstance(e, CvmfsError):
            raise CvmfsError(f"cannot write bundle {out_path}: {e.strerror}") from None
        raise
    return BundleWritten(members, os.path.getsize(out_path))


def _walk_stored(cache, manifest, select) -> tuple[list[BundledObject], list[BundledObject]]:
    """The catalogs (root first, each before those it names) and objects of a revision
    stored in a preloaded directory, as a bundle carries them."""
    todo, catalogs, objects, seen = [root_object(manifest)], [], {}, set()
    while todo:
        o = todo.pop()
        mp = o.mountpoint
        if o.hash.hex in seen:
            continue
        seen.add(o.hash.hex)
        path = cache.path(o.hash)
        if not os.path.isfile(path):
            raise CacheError(f"catalog {o.hash.hex} at /{mp.lstrip('/')} is not in {cache.dir}")
        catalogs.append(o)
        catalog = Catalog(path, o.hash, mp)
        try:
            nested, objs = contents_of(catalog, select)
        finally:
            catalog.close()
        for ob in objs:
            objects.setdefault(ob.hash.hex, ob)
        # depth first, in mountpoint order: the reader learns each hash before its catalog
        todo += reversed(nested)
    return catalogs, [o for h, o in objects.items() if h not in seen]


def _fetch_into(z, objs: list[BundledObject], cache, downloader, jobs: int, stamp: int) -> int:
    """Fetch `objs` raw (verified against their names, in batches staged in txn/) and
    append them to the tar stream `z` in order; returns how many."""
    from .. import cfetch

    count = 0
    for start, end in _batches(objs):
        batch = objs[start:end]
        tmps = [cache.temp_path("bundle") for _ in batch]
        try:
            # raw: stored as served, verified against the name (not inflated)
            items = [
                cfetch.Item(o.hash, o.suffix, False, o.served_size(), o.limits()[1], t, None)
                for o, t in zip(batch, tmps, strict=True)
            ]
            got = cfetch.fetch(downloader, items, mode=0o600, jobs=jobs)
            for o, t, r in zip(batch, tmps, got, strict=True):
                if r.stored is None:  # the Python downloader, with all its fail-over
                    with open(t, "w+b") as out:
                        downloader.fetch(
                            o.hash.object_path(o.suffix),
                            what=f"{o.where} ({o.hash.hex}{o.suffix})",
                            expected=o.hash,
                            decompress=False,
                            size=o.served_size(),
                            limit=o.limits()[1],
                            out=out,
                        )
            for o, t in zip(batch, tmps, strict=True):
                fd = os.open(t, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with open(fd, "rb") as f:
                    size = os.fstat(fd).st_size
                    why = o.check_served_size(size)
                    if why or size > MEMBER_MAX:
                        why = why or "is too large for a bundle"
                        raise IntegrityError(f"{o.where} ({o.hash.hex}{o.suffix}) {why}")
                    z.write(tar_header(o.name, size, stamp))
                    while block := f.read(BLOCK):
                        z.write(block)
                    z.write(bytes(-size % 512))
                os.unlink(t)
                count += 1
        finally:
            for t in tmps:
                discard(t)
    return count


def _batches(objs: list[BundledObject]):
    start = total = 0
    for i, o in enumerate(objs):
        total += wire_limit(o.size or 0, True)
        if i + 1 - start >= _BATCH_ITEMS or total >= _BATCH_BYTES:
            yield start, i + 1
            start, total = i + 1, 0
    if start < len(objs):
        yield start, len(objs)
