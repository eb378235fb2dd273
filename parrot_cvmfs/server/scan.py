"""The source tree of a publication, read into Nodes: each entry's lstat, symlink
target and extended attributes, and where nested catalogs begin (a
`.cvmfscatalog` marker or a dirtab rule)."""

from __future__ import annotations

import os
import stat as st

from ..errors import ConfigError
from ..format.dirtab import Dirtab
from ..format.entry import kind_of
from ..format.hashes import ContentHash

# A nested catalog begins where this file is, or where a dirtab rule matches: then the
# publisher adds it as the real server does. (`.cvmfsautocatalog` is the autocatalog
# balancer's, which may merge such a catalog away again; we write none.)
CATALOG_MARKER = ".cvmfscatalog"


class Node:
    """One entry of the source tree, and what publishing it learned (its content hash
    or chunks, its flags)."""

    __slots__ = (
        "path",
        "name",
        "lstat",
        "kind",
        "children",
        "target",
        "xattrs",
        "nested",
        "dirtab_marker",
        "hash",
        "chunks",
        "flags_extra",
    )

    def __init__(self, path: str, name: str, lstat: os.stat_result, kind: str):
        self.path = path
        self.name = name
        self.lstat = lstat
        self.kind = kind
        self.children: list[Node] = []
        self.target = ""
        self.xattrs: dict[str, bytes] = {}
        self.nested = False
        self.dirtab_marker = False
        self.hash: ContentHash | None = None
        self.chunks: list[tuple[int, int, ContentHash]] = []
        self.flags_extra = 0


def _read_xattrs(src: str, path: str, warnings: list[str]) -> dict[str, bytes]:
    """The extended attributes of `src`; those too long for a catalog are left out
    with a warning."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            v = os.getxattr(src, n, follow_symlinks=False)
        except OSError:
            continue
        if len(n.encode()) > 255 or len(v) > 255:
            warnings.append(
                f"{path or '/'}: extended attribute {n} too long for a catalog, left out"
            )
            continue
        out[n] = v
    return out


def scan(source: str, dirtab: Dirtab | None, *, xattrs: bool, warnings: list[str]) -> Node:
    """The tree below `source`, names sorted, with the entries' extended attributes if
    `xattrs`; `warnings` collects what is left out."""

    def read_xattrs(src: str, path: str) -> dict[str, bytes]:
        return _read_xattrs(src, path, warnings) if xattrs else {}

    src = os.path.abspath(source)
    try:
        root_st = os.lstat(src)
    except OSError as e:
        raise ConfigError(f"cannot read source {src}: {e.strerror}") from None
    if not st.S_ISDIR(root_st.st_mode):
        raise ConfigError(f"source {src} is not a directory")
    root = Node("", "", root_st, "dir")
    root.xattrs = read_xattrs(src, "")
    stack = [(root, src)]
    while stack:
        node, real = stack.pop()
        try:
            entries = sorted(os.scandir(real), key=lambda e: e.name)
        except OSError as e:
            raise ConfigError(f"cannot list {real}: {e.strerror}") from None
        for e in entries:
            path = f"{node.path}/{e.name}"
            try:
                s = e.stat(follow_symlinks=False)
            except OSError as err:
                raise ConfigError(f"cannot stat {e.path}: {err.strerror}") from None
            child = Node(path, e.name, s, kind_of(s.st_mode))
            if child.kind == "symlink":
                child.target = os.readlink(e.path)
            child.xattrs = read_xattrs(e.path, path)
            node.children.append(child)
            if child.kind == "dir":
                stack.append((child, e.path))
        if node.path:
            marker = next((c for c in node.children if c.name == CATALOG_MARKER), None)
            if marker is not None and marker.kind == "file":
                node.nested = True
            elif dirtab is not None and dirtab.matches(node.path):
                if marker is not None:  # the real server's open(O_CREAT) fails there too
                    raise ConfigError(
                        f"dirtab makes {node.path} a nested catalog, but its {CATALOG_MARKER}"
                        f" is a {marker.kind}, not a file"
                    )
                node.nested = True
                node.dirtab_marker = True
    return root
