"""Extended attributes: the catalog's serialized xattr lists (XattrList v1)."""

from __future__ import annotations

from ..errors import CatalogError

XATTR_VERSION = 1
USER_PREFIX = "user."

TYPE_CHECKING = False  # not typing's: parrot_run's start-up imports this module
if TYPE_CHECKING:
    from .entry import DirEntry


def reaches(entry: DirEntry, name: str) -> bool:
    """Whether a getxattr of `name` (or of a name under the prefix `name`) on `entry`
    reaches the file system at all: the kernel answers ENODATA itself for `user.*` on
    anything but a regular file or a directory (fs/xattr.c xattr_permission), so a
    FUSE client never sees `getfattr -h -n user.fqrn link`."""
    return not name.startswith(USER_PREFIX) or entry.is_regular or entry.is_dir


def decode_xattrs(blob: bytes | None, what: str = "xattr list") -> dict[str, bytes]:
    """u8 version=1, u8 count, then per entry u8 key length, u8 value length, key, value.
    Keys are non-empty and hold no NUL; a malformed list is a CatalogError naming `what`."""
    if blob is None or blob == b"":
        return {}
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "surrogateescape")
    if not isinstance(blob, bytes):
        raise CatalogError(f"malformed {what}: not a blob")
    if len(blob) < 2 or blob[0] != XATTR_VERSION:
        raise CatalogError(f"malformed {what}: unknown version")
    count = blob[1]
    pos = 2
    out: dict[str, bytes] = {}
    for _ in range(count):
        if pos + 2 > len(blob):
            raise CatalogError(f"malformed {what}: truncated")
        klen, vlen = blob[pos], blob[pos + 1]
        pos += 2
        if klen == 0 or pos + klen + vlen > len(blob):
            raise CatalogError(f"malformed {what}: bad entry")
        raw_key = blob[pos : pos + klen]
        if b"\0" in raw_key:
            raise CatalogError(f"malformed {what}: a key holds NUL")
        key = raw_key.decode("utf-8", "surrogateescape")
        out[key] = blob[pos + klen : pos + klen + vlen]
        pos += klen + vlen
    return out


def encode_xattrs(xattrs: dict[str, bytes]) -> bytes | None:
    """Serialize, keys sorted; None for an empty list (stored as NULL)."""
    if not xattrs:
        return None
    items = sorted((k.encode("utf-8", "surrogateescape"), v) for k, v in xattrs.items())
    if len(items) > 255:
        raise ValueError("more than 255 extended attributes")
    out = bytearray([XATTR_VERSION, len(items)])
    for k, v in items:
        if not 0 < len(k) < 256 or len(v) > 255 or b"\0" in k:
            raise ValueError(f"extended attribute {k!r} does not fit the catalog format")
        out += bytes([len(k), len(v)]) + k + v
    return bytes(out)
