"""What a bundle holds: its format, the objects it carries (the one rule the writer and
the reader share) and the subset of ustar it is written in."""

from __future__ import annotations

import re
from typing import NamedTuple

from ...errors import CatalogError, CvmfsError
from ...format.catalog import Catalog
from ...format.hashes import ContentHash
from ..limits import MAX_DATABASE, object_limit, wire_limit

FORMAT_MEMBER = "parrot-cvmfs-bundle"
FORMAT = b"parrot-cvmfs bundle 2\n"

_FQRN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
META_NAME = re.compile(rf"(whitelist|manifest|dirtab)\.({_FQRN})")
DATA_NAME = re.compile(r"data/([0-9a-f]{2})/([0-9a-f]{38}(?:-rmd160|-shake128)?)([CPXM]?)")
# what version 1 bundles (decompressed objects, cut revision files) held
OLD_NAME = re.compile(
    rf"[0-9a-f]{{2}}/[0-9a-f]{{30,}}(-[a-z0-9]+)?|(manifest|whitelist|cvmfschecksum|dirtab)\.{_FQRN}"
)

BLOCK = 1 << 20
MEMBER_MAX = 8**11 - 1  # what the octal size field holds


class BundleWritten(NamedTuple):
    members: int
    bytes: int  # of the bundle file


class BundleResult(NamedTuple):
    fqrn: str
    revision: int
    objects: int  # objects and catalogs written
    present: int  # already in the directory
    taken: bool  # False: the directory holds a newer revision, whose files were kept


class BundledObject(NamedTuple):
    hash: ContentHash
    suffix: str
    compressed: bool
    size: int | None  # inflated; None: unknown (catalogs of old repositories only)
    where: str  # what it is, for messages
    mountpoint: str | None = None  # of a catalog

    @property
    def name(self) -> str:
        return f"data/{self.hash.hex[:2]}/{self.hash.hex[2:]}{self.suffix}"

    def limits(self) -> tuple[int, int, str]:
        """(inflated size, most bytes it can have as served, what the first is): the
        client's own limits (download.py)."""
        if self.size is not None and (self.suffix != "C" or self.size <= MAX_DATABASE):
            size, bound = self.size, f"its size of {self.size} bytes"
        else:
            size = object_limit(self.suffix)
            bound = f"the limit of {size} bytes"
        return size, wire_limit(size, self.compressed), bound

    def served_size(self) -> int | None:
        """Its exact size as served, where known (not compressed)."""
        return None if self.compressed else self.size

    def check_served_size(self, n: int) -> str | None:
        """Why `n` bytes as served cannot be this object, or None."""
        size, most, bound = self.limits()
        if n > most or (not self.compressed and n != size):
            return f"is {n} bytes, " + (
                f"more than a zlib stream of {bound} can be" if self.compressed else f"not {bound}"
            )
        return None


def root_object(manifest) -> BundledObject:
    h, size = manifest.root_hash, manifest.root_size
    size = size if isinstance(size, int) and size > 0 else None  # B absent: not recorded
    return BundledObject(h, "C", True, size, f"root catalog {h.hex}", "")


def contents_of(catalog: Catalog, select) -> tuple[list[BundledObject], list[BundledObject]]:
    """(nested catalogs `select` takes, objects) of a catalog, as a bundle carries them:
    the one rule the writer and the reader share."""
    where = (
        f"catalog {catalog.hash.hex if catalog.hash else '?'} at /{catalog.mountpoint.lstrip('/')}"
    )
    nested = []
    for mp, (h, size) in sorted(catalog.nested_catalogs().items()):
        if select is not None and not select.matches(mp):
            continue
        if not isinstance(size, int) or size < 0:
            raise CatalogError(f"{where}: nested catalog {mp} has size {size!r}")
        # size 0: not recorded (schema 2.4 and older)
        nested.append(BundledObject(h, "C", True, size or None, f"catalog {h.hex} at {mp}", mp))
    objects = []
    for h, suffix, compressed, size in catalog.objects():
        if size is None:
            continue  # a hashed directory: no bound, and nothing reads it
        if not isinstance(size, int) or size < 0:
            raise CatalogError(f"{where}: object {h.hex}{suffix} has size {size!r}")
        objects.append(BundledObject(h, suffix, compressed, size, f"object of {where}"))
    return nested, objects


# -- the tar subset ----------------------------------------------------------------------------


def tar_header(name: str, size: int, mtime: int) -> bytes:
    b = bytearray(512)
    raw = name.encode("ascii")
    b[0 : len(raw)] = raw
    b[100:108] = b"0000444\0"
    b[108:116] = b[116:124] = b"0000000\0"
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"%011o\0" % max(0, min(mtime, MEMBER_MAX))
    b[148:156] = b" " * 8
    b[156:157] = b"0"
    b[257:265] = b"ustar\x0000"
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def octal_field(field: bytes) -> int | None:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits:
        return 0
    if not all(0x30 <= c <= 0x37 for c in digits):
        return None
    return int(digits, 8)


class TarMember(NamedTuple):
    name: str  # printable: undecodable bytes as escapes
    kind: bytes  # the type flag
    size: int


TAR_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a fifo",
    b"x": "a pax header",
    b"g": "a pax header",
    b"L": "a GNU long name",
    b"K": "a GNU long link",
    b"S": "a sparse file",
}


class TarReader:
    """Members of a ustar stream, one at a time; raises CvmfsError on anything malformed."""

    def __init__(self, stream, what: str):
        self.stream, self.what = stream, what
        self.left = 0  # data bytes of the current member not read yet
        self.pad = 0

    def _read(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            b = self.stream.read(n - got)
            if not b:
                raise CvmfsError(f"{self.what} is damaged: it ends in the middle of a member")
            parts.append(b)
            got += len(b)
        return b"".join(parts)

    def next(self) -> TarMember | None:
        """The next member's header (the previous one's data skipped), None at the end."""
        while self.left:
            self.read_data(BLOCK)
        if self.pad:
            self._read(self.pad)
            self.pad = 0
        block = self._read(512)
        if block == bytes(512):
            return None
        stored = octal_field(block[148:156])
        if block[257:265] != b"ustar\x0000" or stored != sum(block) - sum(block[148:156]) + 256:
            raise CvmfsError(f"{self.what} is damaged: a member header is not a ustar header")
        field = block[0:100]
        name = field.split(b"\0", 1)[0]
        if field[len(name) :].strip(b"\0"):
            name = field.rstrip(b"\0")  # bytes after the end: kept, so that the name is refused
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
        size = octal_field(block[124:136])
        if size is None:
            raise CvmfsError(f"{self.what} is damaged: member {shown(name)!r} has a bad size")
        kind = block[156:157]
        self.left, self.pad = size, -size % 512
        return TarMember(shown(name), b"0" if kind == b"\0" else kind, size)

    def read_data(self, n: int) -> bytes:
        n = min(n, self.left)
        data = self._read(n) if n else b""
        self.left -= n
        return data

    def read_all(self) -> bytes:
        return self.read_data(self.left)


def shown(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")
