"""A directory entry of a catalog: the row's flag bits, the decoded entry, and the
MD5 path key its row is stored under (shared by the reader and the catalog writer)."""

from __future__ import annotations

import stat as st
import struct

from .hashes import Algorithm, md5_digest

FLAG_DIR = 1
FLAG_NESTED_MOUNTPOINT = 2
FLAG_FILE = 4
FLAG_LINK = 8
FLAG_SPECIAL = 16
FLAG_NESTED_ROOT = 32
FLAG_CHUNKED = 64
FLAG_EXTERNAL = 128
FLAG_BIND_MOUNTPOINT = 0x4000
FLAG_HIDDEN = 0x8000
FLAG_DIRECT_IO = 0x10000
FLAG_POS_HASH = 8
FLAG_POS_COMPRESSION = 11

COMPRESSION_ZLIB = 0
COMPRESSION_NONE = 1

_MD5_SPLIT = struct.Struct("<qq")


def md5path(path: str) -> tuple[int, int]:
    """The (md5path_1, md5path_2) key of a repository path ("" is the root)."""
    return _MD5_SPLIT.unpack(md5_digest(path.encode("utf-8", "surrogateescape")))


_KINDS = {st.S_IFDIR: "dir", st.S_IFREG: "file", st.S_IFLNK: "symlink"}


def kind_of(mode: int) -> str:
    """'dir', 'file', 'symlink' or 'special': an entry's kind by its mode's type bits."""
    return _KINDS.get(st.S_IFMT(mode), "special")


def _flag(bit: int) -> property:
    """A DirEntry property: whether its flags have `bit`."""
    return property(lambda self: bool(self.flags & bit))


class DirEntry:
    """A catalog row, decoded. `path` is the logical path inside the repository."""

    __slots__ = (
        "path",
        "name",
        "mode",
        "size",
        "mtime",
        "mtime_ns",
        "flags",
        "hash",
        "symlink",
        "linkcount",
        "hardlink_group",
        "uid",
        "gid",
        "xattr_blob",
        "catalog",
        "rowid",
    )

    def __init__(
        self,
        path,
        name,
        mode,
        size,
        mtime,
        mtime_ns,
        flags,
        hash_,
        symlink,
        hardlinks,
        uid,
        gid,
        xattr_blob,
        catalog,
        rowid,
    ):
        self.path = path
        self.name = name
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.mtime_ns = mtime_ns
        self.flags = flags
        self.hash = hash_
        self.symlink = symlink
        self.linkcount = hardlinks & 0xFFFFFFFF
        self.hardlink_group = hardlinks >> 32
        self.uid = uid
        self.gid = gid
        self.xattr_blob = xattr_blob
        self.catalog = catalog
        self.rowid = rowid

    # The type comes from the mode; the markers from the flags.
    @property
    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return st.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return st.S_ISREG(self.mode)

    @property
    def is_special(self) -> bool:
        return not (self.is_dir or self.is_symlink or self.is_regular)

    @property
    def kind(self) -> str:
        """'dir', 'file', 'symlink' or 'special'."""
        return kind_of(self.mode)

    is_nested_mountpoint = _flag(FLAG_NESTED_MOUNTPOINT)
    is_bind_mountpoint = _flag(FLAG_BIND_MOUNTPOINT)
    is_nested_root = _flag(FLAG_NESTED_ROOT)
    is_chunked = _flag(FLAG_CHUNKED)
    is_external = _flag(FLAG_EXTERNAL)
    is_hidden = _flag(FLAG_HIDDEN)
    is_direct_io = _flag(FLAG_DIRECT_IO)

    @property
    def hash_algorithm(self) -> Algorithm:
        """The algorithm of the content (and chunk) hashes (checked when the row was read)."""
        if self.hash is not None:
            return self.hash.algorithm
        algorithm = self.catalog._algorithm(self.flags)
        return algorithm if algorithm is not None else Algorithm.SHA1

    @property
    def compression(self) -> int:
        return (self.flags >> FLAG_POS_COMPRESSION) & 7

    @property
    def is_compressed(self) -> bool:
        return self.compression == COMPRESSION_ZLIB

    @property
    def md5(self) -> tuple[int, int]:
        return md5path(self.catalog.internal_path(self.path))

    @property
    def rdev(self) -> int:
        return self.size if (st.S_ISCHR(self.mode) or st.S_ISBLK(self.mode)) else 0

    def __repr__(self) -> str:
        return f"DirEntry({self.path!r}, mode={oct(self.mode)}, size={self.size})"
