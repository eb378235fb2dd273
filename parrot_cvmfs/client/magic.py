"""The magic extended attributes (`user.fqrn`, `user.hash`, ...) that the cvmfs client
computes for every entry: one table of name -> (which entries have it, getter), as the
real client registers one class per attribute (magic_xattr.cc, and cvmfs.cc for expires,
inode_max, maxfd, pid, uptime). The names listed and the values returned both come
from it; names are listed in their own order, as the real client's map of them is."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

from .._version import __version__
from ..errors import CacheError, DownloadError
from ..format.catalog import COUNTERS
from ..format.entry import DirEntry
from ..format.hashes import ContentHash

# A getter takes the Repository (not imported here: repository.py imports this module)
# and the entry.
Getter = Callable[[object, DirEntry], "str | None"]


def _every(e: DirEntry) -> bool:
    return True


def _has_hash(e: DirEntry) -> bool:
    return e.hash is not None


def _regular(e: DirEntry) -> bool:
    return e.is_regular


def _external_file(e: DirEntry) -> bool:
    return e.is_regular and e.is_external


def _symlink(e: DirEntry) -> bool:
    return e.is_symlink


LHASH_MEMO = 1024  # objects whose lhash is remembered (per repository)


def _lhash(repo, e: DirEntry) -> str:
    """The hash of the cached object as the real cache re-makes it: its bytes
    compressed with zlib at the default level while hashing (cache.cc ChecksumFd), so a
    zlib object's lhash is its `user.hash`. A chunked file's whole object is never
    cached, only its chunks: "Not in cache", as there. Computed when asked, from at most
    the catalog's size, and remembered per cached file."""
    import zlib

    from .cache.files import open_regular

    try:
        path = repo.cache.find(e.hash, size=e.size)
        fd = open_regular(path, repo.cache.dir) if path is not None else None
    except CacheError:  # an unfit copy in an alien tier: not served, so not cached here
        fd = None
    if fd is None:
        return "Not in cache"
    try:
        s = os.fstat(fd)
        key = (e.hash.hex, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)
        memo = repo.lhash_memo
        if key in memo:
            return memo[key]
        from ..format.hashes import new_hasher

        h = new_hasher(e.hash.algorithm)
        z = zlib.compressobj()
        left = e.size
        while left > 0:
            block = os.read(fd, min(left, 1 << 20))
            if not block:
                break
            left -= len(block)
            h.update(z.compress(block))
        if left:
            return f"I/O error ({-errno.EIO})"
        h.update(z.flush())
    except OSError as err:
        return f"I/O error ({-(err.errno or errno.EIO)})"
    finally:
        os.close(fd)
    if len(memo) >= LHASH_MEMO:
        memo.clear()
    memo[key] = ContentHash(e.hash.algorithm, h.digest()).hex
    return memo[key]


def _chunk_list(repo, e: DirEntry) -> str:
    chunks = repo.chunks(e)
    lines = ["hash,offset,size"]
    if chunks:
        lines += [f"{h.hex},{o},{s}" for o, s, h in chunks]
    else:
        lines.append(f"{e.hash.hex if e.hash else ''},0,{e.size}")
    return "\n".join(lines) + "\n"


def _expires(repo, e: DirEntry) -> str:
    if repo.is_pinned or repo.offline:
        return "never (fixed root catalog)"
    return str(max(0, int((repo.mounted_at + repo.ttl - time.time()) // 60)))


def _hitrate(repo, e: DirEntry) -> str:
    total = repo.cache.hits + repo.cache.misses
    return f"{100.0 * repo.cache.hits / total:.3f}" if total else "n/a"


def _repo_counters(counters: dict[str, int]) -> str:
    """Self and subtree counters added up, as CSV lines in the names' order (the map of
    catalog_counters.cc GetCsvMap)."""
    return "".join(
        f"{n},{counters.get('self_' + n, 0) + counters.get('subtree_' + n, 0)}\n"
        for n in sorted(COUNTERS)
    )


def _catalog_counters(repo, e: DirEntry) -> str:
    ns = repo._namespace()
    cat = ns.children_catalog(e) if e.is_dir else e.catalog
    # the root catalog's mountpoint is the empty path, as LookupCounters gives it
    head = (
        f"catalog_hash: {cat.hash.hex if cat.hash else ''}\ncatalog_mountpoint: {cat.mountpoint}\n"
    )
    return head + _repo_counters(cat.counters())


def _metainfo(repo, e: DirEntry) -> str:
    if repo.manifest is None or repo.manifest.metainfo is None:
        return "metainfo not available"
    try:
        p = repo.fetcher.fetch(repo.manifest.metainfo, "M", what=f"metainfo of {repo.fqrn}")
    except (DownloadError, CacheError):
        return "metainfo not available"
    with open(p, "rb") as f:
        return f.read(65536).decode("utf-8", "replace")


def _pubkeys(repo, e: DirEntry) -> str:
    out = []
    for path in repo.settings.public_key_files:
        try:
            with open(path) as f:
                out.append(f.read())
        except OSError:
            pass
    return "".join(out)


def _network(get: Callable, offline: str) -> Getter:
    """A getter of the downloader's state, `offline` when there is no downloader."""
    return lambda repo, e: get(repo.downloader) if repo.downloader else offline


def _proxy_list(path) -> str:
    return "\n".join(path.proxy_list()) + "\n"


def _external_settings(repo):
    """The external downloader's settings; without CVMFS_EXTERNAL_URL the real client's
    external manager has no host, and its timeouts and proxies are still the configured ones."""
    if repo.external is not None:
        return repo.external.settings
    from .network import DownloadSettings

    return DownloadSettings.from_settings(repo.settings, hosts=[], external=True)


def _external_host(repo, e: DirEntry) -> str:
    if repo.external is None:
        return "internal error: no hosts defined"
    return repo.external.path.current()[1]


def _external_proxies(repo, e: DirEntry) -> str:
    if repo.external is not None:
        return _proxy_list(repo.external.path)
    from .network import parse_proxy_groups

    groups = parse_proxy_groups(_external_settings(repo).proxy)
    return "\n".join([p for g in groups for p in g] or ["DIRECT"]) + "\n"


def _speed(dl) -> str:
    """Average KB/s of the downloads, as SpeedMagicXattr computes it."""
    ms = dl.transfer_seconds * 1000
    return str(int(1000 * (dl.bytes_received // 1024) / ms)) if ms > 0 else "n/a"


def _last_ioerr(dl) -> str:
    return str(int(dl.failures[-1][0])) if dl.failures else "0"


def _logbuffer(dl) -> str:
    """The recent failures, newest first, as `[local time] message` lines."""
    return "".join(
        f"[{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(t))}] {msg}\n"
        for t, msg in reversed(dl.failures)
    )


def _ncleanup24(repo, e: DirEntry) -> str:
    """Cache clean-ups of the last 24 hours; -1 for an unmanaged cache (no quota)."""
    quota = repo.cache.quota
    if quota is None:
        return "-1"
    since = time.time() - 24 * 3600
    return str(sum(1 for t in quota.cleanup_times if t >= since))


def _maxfd(repo, e: DirEntry) -> str:
    """The descriptors the client may use for files: its limit less the 512 that the real
    client keeps for itself (cvmfs.cc kNumReservedFd)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return str(max(0, soft - 512)) if soft != resource.RLIM_INFINITY else str(1 << 20)


# The largest inode number this client gives: inodes are 63-bit hashes (inode_of).
INODE_MAX = (1 << 63) - 1

# name -> (which entries have it, its value; None: fall back to a stored attribute).
# Listed in the names' order, as the real client's std::map of them is.
MAGIC: dict[str, tuple[Callable[[DirEntry], bool], Getter]] = {
    "user.fqrn": (_every, lambda repo, e: repo.fqrn),
    "user.revision": (_every, lambda repo, e: str(repo.revision)),
    "user.root_hash": (_every, lambda repo, e: repo.root_hash.hex if repo.root_hash else ""),
    "user.host": (_every, _network(lambda dl: dl.path.current()[1], "internal error: no network")),
    "user.host_list": (_every, _network(lambda dl: ";".join(dl.path.host_list()), "")),
    "user.proxy": (_every, _network(lambda dl: dl.path.current()[2], "DIRECT")),
    "user.proxy_list": (_every, _network(lambda dl: _proxy_list(dl.path), "DIRECT\n")),
    "user.timeout": (_every, _network(lambda dl: str(int(dl.settings.timeout)), "0")),
    "user.timeout_direct": (
        _every,
        _network(lambda dl: str(int(dl.settings.timeout_direct)), "0"),
    ),
    "user.external_host": (_every, _external_host),
    "user.external_timeout": (
        _every,
        lambda repo, e: str(int(_external_settings(repo).timeout_direct)),
    ),
    "user.proxy_list_external": (_every, _external_proxies),
    "user.expires": (_every, _expires),
    "user.nclg": (_every, lambda repo, e: str(len(repo._namespace().mounted))),
    "user.ndownload": (_every, _network(lambda dl: str(dl.n_downloads), "0")),
    "user.hitrate": (_every, _hitrate),
    "user.rx": (_every, _network(lambda dl: str(dl.bytes_received // 1024), "0")),
    "user.speed": (_every, _network(_speed, "n/a")),
    "user.version": (_every, lambda repo, e: __version__),
    "user.tag": (_every, lambda repo, e: repo.trust.pinned_tag or ""),
    "user.repo_counters": (
        _every,
        lambda repo, e: _repo_counters(repo._namespace().root.counters()),
    ),
    "user.catalog_counters": (_every, _catalog_counters),
    "user.repo_metainfo": (_every, _metainfo),
    "user.pubkeys": (_every, _pubkeys),
    "user.pid": (_every, lambda repo, e: str(os.getpid())),
    "user.uptime": (_every, lambda repo, e: str(int(time.time() - repo.mounted_at) // 60)),
    "user.nioerr": (_every, _network(lambda dl: str(dl.n_failures), "0")),
    "user.timestamp_last_ioerr": (_every, _network(_last_ioerr, "0")),
    "user.logbuffer": (_every, _network(_logbuffer, "")),
    "user.ncleanup24": (_every, _ncleanup24),
    # opens and listings the client served (the job's kernel then reads the cache file:
    # the client holds no descriptor per open file or directory, usedfd/useddirp 0)
    "user.nopen": (_every, lambda repo, e: str(repo.n_open)),
    "user.ndiropen": (_every, lambda repo, e: str(repo.ns.n_listed if repo.ns else 0)),
    "user.usedfd": (_every, lambda repo, e: "0"),
    "user.useddirp": (_every, lambda repo, e: "0"),
    "user.maxfd": (_every, _maxfd),
    "user.inode_max": (_every, lambda repo, e: str(INODE_MAX)),
    "user.hash": (_has_hash, lambda repo, e: e.hash.hex if e.hash else None),
    "user.lhash": (_has_hash, _lhash),
    "user.chunks": (_regular, lambda repo, e: str(len(repo.chunks(e)) or 1)),
    "user.chunk_list": (_regular, _chunk_list),
    "user.compression": (_regular, lambda repo, e: "zlib" if e.is_compressed else "none"),
    "user.direct_io": (_regular, lambda repo, e: "1" if e.is_direct_io else "0"),
    "user.external_file": (_regular, lambda repo, e: "1" if e.is_external else "0"),
    "user.external_url": (
        _external_file,
        lambda repo, e: (repo.external.path.current()[1] + e.path) if repo.external else "",
    ),
    "user.rawlink": (_symlink, lambda repo, e: e.symlink),
    "xfsroot.rawlink": (_symlink, lambda repo, e: e.symlink),
}
LISTED = sorted(MAGIC)


def magic_names(entry: DirEntry) -> list[str]:
    """The magic attributes `entry` has, in the order the real client lists them."""
    return [name for name in LISTED if MAGIC[name][0](entry)]


def magic_value(repo, entry: DirEntry, name: str) -> str | None:
    """The value of magic attribute `name` of `entry`; None if it has no such one (or
    the getter has no value: a stored attribute of that name is then read)."""
    row = MAGIC.get(name)
    if row is None or not row[0](entry):
        return None
    return row[1](repo, entry)
