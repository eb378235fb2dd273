"""The local object cache: verified, decompressed objects by content hash.

Layout follows the cvmfs posix cache (`00/`..`ff/`, `txn/`, files named
`xx/<rest of hex><algo id>` without a type suffix), so a directory filled by
`cvmfs_preload` or our own preload serves as a read-only "alien" tier that is
consulted first.

A writable cache belongs to one user (its directories are 0700): `resolve_cache`
refuses a directory owned by someone else, and uses a populated one it cannot write
(a read-only file system) as an alien tier.

Sharing between concurrent processes of that user:
- objects are written under txn/ and renamed into place: readers never see
  partial files;
- a download takes an open-file-description lock on one byte of `lock_objects`
  chosen by the hash, so concurrent processes fetch each object once;
- with a quota, `cachedb` (SQLite, WAL) records size and last use; clean-up
  evicts least recently used objects down to half the limit, skipping any file
  that a process has open or mapped (found in /proc) and objects used in the
  last few seconds (handed out but not opened yet).

Everything found in a cache is checked before it is used, never followed as a
symbolic link: an object must be a regular file of the size its catalog entry gives
(`find`; a file of the right size is trusted, as the cvmfs client trusts its cache),
an alias a link to its object, metadata files regular and small, the directories
real directories.

The rooms: `layout` (where a cache is, its tiers and names), `files` (opening what is
found there), `locks`, `quota` (LRU eviction), `store` (ObjectCache).
"""

from .files import open_in_dir, open_regular, open_subdir, pid_alive
from .layout import CONFIG, CacheTiers, make_layout, resolve_cache, resolve_tiers, split_aliens
from .quota import open_files_under
from .store import OBJECT_MODE, ObjectCache

# what the rest of the package asks of the cache
__all__ = [
    "CONFIG",
    "OBJECT_MODE",
    "CacheTiers",
    "ObjectCache",
    "make_layout",
    "open_files_under",
    "open_regular",
    "open_in_dir",
    "open_subdir",
    "pid_alive",
    "resolve_cache",
    "resolve_tiers",
    "split_aliens",
]
