"""The catalog tree of one mounted revision: which catalog answers for a path,
nested catalogs attached on demand, lookups and listings.

Paths here are logical repository paths: "" is the root, "/a/b" below it, no
trailing slash, no symlink processing (see Repository.resolve for that).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import CatalogError
from ..format.catalog import Catalog
from ..format.entry import DirEntry
from ..format.hashes import ContentHash

CatalogLoader = Callable[[ContentHash, str, int], Catalog]

_CACHE_LIMIT = 200_000


class Namespace:
    """Resolves logical paths against a root catalog and its nested catalogs."""

    def __init__(self, root: Catalog, load_catalog: CatalogLoader):
        self.root = root
        self._load = load_catalog
        self.mounted: dict[str, Catalog] = {"": root}
        self._entries: dict[str, DirEntry | None] = {}
        self._lock = threading.RLock()
        self.n_listed = 0  # directory listings served (user.ndiropen)

    # -- catalogs ---------------------------------------------------------------------------

    def _deepest_catalog(self, path: str) -> Catalog:
        """The mounted catalog whose mountpoint is the longest component prefix of path."""
        p = path
        while True:
            cat = self.mounted.get(p)
            if cat is not None:
                return cat
            if not p:
                return self.root
            p = p[: p.rfind("/")]

    def _mount(self, mountpoint: str, content_hash: ContentHash, size: int) -> Catalog:
        with self._lock:
            cat = self.mounted.get(mountpoint)
            if cat is None:
                cat = self._load(content_hash, mountpoint, size)
                self.mounted[mountpoint] = cat
            return cat

    def _nested_for(self, cat: Catalog, path: str) -> tuple[str, ContentHash, int] | None:
        """The nested catalog of `cat` whose mountpoint is path or an ancestor of it."""
        nested = cat.nested_catalogs()
        if not nested:
            return None
        p = path
        while len(p) > len(cat.mountpoint):
            hit = nested.get(p)
            if hit is not None:
                return p, hit[0], hit[1]
            p = p[: p.rfind("/")]
        return None

    # -- entries ----------------------------------------------------------------------------

    def lookup(self, path: str) -> DirEntry | None:
        """The entry of a logical path, or None. A transition point is answered by the
        parent catalog without loading the nested one."""
        try:
            return self._entries[path]
        except KeyError:
            pass
        entry = self._lookup(path)
        if len(self._entries) >= _CACHE_LIMIT:
            self._entries.clear()
        self._entries[path] = entry
        return entry

    def _lookup(self, path: str) -> DirEntry | None:
        # a mountpoint is answered by its parent catalog (the transition point entry)
        start = path[: path.rfind("/")] if path and path in self.mounted else path
        cat = self._deepest_catalog(start)
        while True:
            entry = cat.lookup(path)
            if entry is not None:
                return entry
            hit = self._nested_for(cat, path)
            if hit is None:
                return None
            next_cat = self._mount(*hit)
            if next_cat is cat:
                return None
            cat = next_cat

    def children_catalog(self, entry: DirEntry) -> Catalog:
        """The catalog holding the children of a directory entry."""
        if entry.is_nested_mountpoint or entry.is_bind_mountpoint:
            nested = entry.catalog.nested_catalogs().get(entry.path)
            if nested is None:
                raise CatalogError(
                    f"malformed {entry.catalog.what}: entry {entry.path or '/'!r}: a nested"
                    " catalog's mountpoint, but none is listed for it"
                )
            return self._mount(entry.path, *nested)
        return entry.catalog

    def listdir(self, entry: DirEntry, include_hidden: bool = False) -> list[DirEntry]:
        """Children of a directory entry (without '.' and '..')."""
        self.n_listed += 1
        children = self.children_catalog(entry).listing(entry.path)
        if not include_hidden:
            children = [c for c in children if not c.is_hidden]
        return children

    def dir_entry(self, entry: DirEntry) -> DirEntry:
        """For a transition point, the nested catalog's root entry (same attributes,
        the owning catalog of its children); otherwise the entry itself."""
        if entry.is_nested_mountpoint or entry.is_bind_mountpoint:
            child = self.children_catalog(entry)
            root = child.lookup(entry.path)
            if root is not None:
                return root
        return entry

    def close(self) -> None:
        for cat in self.mounted.values():
            cat.close()
        self.mounted.clear()
        self._entries.clear()
