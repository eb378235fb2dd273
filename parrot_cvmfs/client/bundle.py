"""Preload bundles: one verified repository revision as a zstandard-compressed tar file,
for carrying to a site whose nodes cannot download (`preload --bundle`, `unbundle`).

A bundle carries every object as the stratum serves it (compressed: the bytes its name
hashes), so that the site can check each byte against the signed chain; unbundling
verifies and inflates. Format 2, members in this order (a reader refuses any other):

    parrot-cvmfs-bundle          b"parrot-cvmfs bundle 2\\n"
    whitelist.FQRN               as served (signed by a master key)
    manifest.FQRN                as served (signed by the certificate)
    data/xx/...X                 the certificate the manifest names
    data/xx/...M                 the metainfo it names, if it names one
    dirtab.FQRN                  the preload's dirtab, if it had one
    data/xx/...C                 the catalogs, each after the one naming it (root first):
                                 exactly those the dirtab selects (all without one)
    data/xx/...[P]               each object of those catalogs once, in catalog order

The tar subset is plain ustar: regular files, names in the 100-byte field, octal sizes.

Unbundling reads the stream once and checks as it goes: the chain (whitelist, expiry,
certificate, manifest signature) with the keys given or else the ones configured for
the repository, each catalog against the hash its parent or the manifest gives, each
object against its name, and inflated sizes against the catalogs' (a member is refused
as soon as it exceeds what it can be, so a zlib bomb writes no more than its catalog
size). Names must match exactly; members that are not regular files, not referenced by
a verified catalog, repeated or missing refuse the bundle. Everything is staged in
DIR/txn, and only a bundle verified to its end is moved into place: objects, catalogs
(children first), then the revision files, the breadcrumb last. A refused bundle leaves
DIR as it was.

Objects whose inflated size no catalog states (hashed directories) are left out:
nothing in a bundle is without a bound.
"""

from __future__ import annotations

import errno
import os
import re
import stat as st
import zlib
from typing import NamedTuple

from ..atomic import discard
from ..errors import CacheError, CatalogError, CvmfsError, IntegrityError
from .catalog import Catalog
from .download import MAX_DATABASE, MAX_SMALL, object_limit, wire_limit
from .hashes import ContentHash, new_hasher
from .repository import Breadcrumb

FORMAT_MEMBER = "parrot-cvmfs-bundle"
FORMAT = b"parrot-cvmfs bundle 2\n"

_FQRN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
META_NAME = re.compile(rf"(whitelist|manifest|dirtab)\.({_FQRN})")
DATA_NAME = re.compile(r"data/([0-9a-f]{2})/([0-9a-f]{38}(?:-rmd160|-shake128)?)([CPXM]?)")
# what version 1 bundles (decompressed objects, cut revision files) held
_OLD_NAME = re.compile(
    rf"[0-9a-f]{{2}}/[0-9a-f]{{30,}}(-[a-z0-9]+)?|(manifest|whitelist|cvmfschecksum|dirtab)\.{_FQRN}"
)

OBJECT_MODE = 0o555  # as preload stores them: for every user of the site, executable
DIR_MODE = 0o755
META_MODE = 0o644
_BLOCK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_MEMBER_MAX = 8**11 - 1  # what the octal size field holds
_BATCH_BYTES = 256 << 20  # raw bytes staged at once while writing a bundle
_BATCH_ITEMS = 4096


class BundleWritten(NamedTuple):
    members: int
    bytes: int  # of the bundle file


class BundleResult(NamedTuple):
    fqrn: str
    revision: int
    objects: int  # objects and catalogs written
    present: int  # already in the directory
    taken: bool  # False: the directory holds a newer revision, whose files were kept


class _Object(NamedTuple):
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


def _root(manifest) -> _Object:
    h, size = manifest.root_hash, manifest.root_size
    size = size if isinstance(size, int) and size > 0 else None  # B absent: not recorded
    return _Object(h, "C", True, size, f"root catalog {h.hex}", "")


def _contents(catalog: Catalog, select) -> tuple[list[_Object], list[_Object]]:
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
        nested.append(_Object(h, "C", True, size or None, f"catalog {h.hex} at {mp}", mp))
    objects = []
    for h, suffix, compressed, size in catalog.objects():
        if size is None:
            continue  # a hashed directory: no bound, and nothing reads it
        if not isinstance(size, int) or size < 0:
            raise CatalogError(f"{where}: object {h.hex}{suffix} has size {size!r}")
        objects.append(_Object(h, suffix, compressed, size, f"object of {where}"))
    return nested, objects


# -- the tar subset ----------------------------------------------------------------------------


def _header(name: str, size: int, mtime: int) -> bytes:
    b = bytearray(512)
    raw = name.encode("ascii")
    b[0 : len(raw)] = raw
    b[100:108] = b"0000444\0"
    b[108:116] = b[116:124] = b"0000000\0"
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"%011o\0" % max(0, min(mtime, _MEMBER_MAX))
    b[148:156] = b" " * 8
    b[156:157] = b"0"
    b[257:265] = b"ustar\x0000"
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def _octal(field: bytes) -> int | None:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits:
        return 0
    if not all(0x30 <= c <= 0x37 for c in digits):
        return None
    return int(digits, 8)


class _Member(NamedTuple):
    name: str  # printable: undecodable bytes as escapes
    kind: bytes  # the type flag
    size: int


_KINDS = {
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


class _Reader:
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

    def next(self) -> _Member | None:
        """The next member's header (the previous one's data skipped), None at the end."""
        while self.left:
            self.read_data(_BLOCK)
        if self.pad:
            self._read(self.pad)
            self.pad = 0
        block = self._read(512)
        if block == bytes(512):
            return None
        stored = _octal(block[148:156])
        if block[257:265] != b"ustar\x0000" or stored != sum(block) - sum(block[148:156]) + 256:
            raise CvmfsError(f"{self.what} is damaged: a member header is not a ustar header")
        field = block[0:100]
        name = field.split(b"\0", 1)[0]
        if field[len(name) :].strip(b"\0"):
            name = field.rstrip(b"\0")  # bytes after the end: kept, so that the name is refused
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
        size = _octal(block[124:136])
        if size is None:
            raise CvmfsError(f"{self.what} is damaged: member {_show(name)!r} has a bad size")
        kind = block[156:157]
        self.left, self.pad = size, -size % 512
        return _Member(_show(name), b"0" if kind == b"\0" else kind, size)

    def read_data(self, n: int) -> bytes:
        n = min(n, self.left)
        data = self._read(n) if n else b""
        self.left -= n
        return data

    def read_all(self) -> bytes:
        return self.read_data(self.left)


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


# -- writing --------------------------------------------------------------------------------


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
    extra = [_Object(manifest.certificate, "X", True, None, f"certificate of {fqrn}")]
    if manifest.metainfo is not None:
        extra.append(_Object(manifest.metainfo, "M", True, None, f"metainfo of {fqrn}"))
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
                    z.write(_header(name, len(data), stamp))
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


def _walk_stored(cache, manifest, select) -> tuple[list[_Object], list[_Object]]:
    """The catalogs (root first, each before those it names) and objects of a revision
    stored in a preloaded directory, as a bundle carries them."""
    todo, catalogs, objects, seen = [_root(manifest)], [], {}, set()
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
            nested, objs = _contents(catalog, select)
        finally:
            catalog.close()
        for ob in objs:
            objects.setdefault(ob.hash.hex, ob)
        # depth first, in mountpoint order: the reader learns each hash before its catalog
        todo += reversed(nested)
    return catalogs, [o for h, o in objects.items() if h not in seen]


def _fetch_into(z, objs: list[_Object], cache, downloader, jobs: int, stamp: int) -> int:
    """Fetch `objs` raw (verified against their names, in batches staged in txn/) and
    append them to the tar stream `z` in order; returns how many."""
    from . import cfetch

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
                    if why or size > _MEMBER_MAX:
                        why = why or "is too large for a bundle"
                        raise IntegrityError(f"{o.where} ({o.hash.hex}{o.suffix}) {why}")
                    z.write(_header(o.name, size, stamp))
                    while block := f.read(_BLOCK):
                        z.write(block)
                    z.write(bytes(-size % 512))
                os.unlink(t)
                count += 1
        finally:
            for t in tmps:
                discard(t)
    return count


def _batches(objs: list[_Object]):
    start = total = 0
    for i, o in enumerate(objs):
        total += wire_limit(o.size or 0, True)
        if i + 1 - start >= _BATCH_ITEMS or total >= _BATCH_BYTES:
            yield start, i + 1
            start, total = i + 1, 0
    if start < len(objs):
        yield start, len(objs)


# -- reading --------------------------------------------------------------------------------


def unbundle(
    path: str,
    directory: str,
    *,
    pubkeys: str | None = None,
    config=None,
    verify_at: float | None = None,
) -> BundleResult:
    """Verify the bundle at `path` and install it into `directory` (made if missing).
    `pubkeys`: colon-separated master key files (default: the ones configured for the
    repository); `verify_at`: check the whitelist's expiry as of this time. Objects
    already in the directory are kept; the revision files are taken unless the directory
    holds a newer revision. Raises CvmfsError naming the first bad member, with the
    directory left as it was."""
    import zstandard

    try:
        raw = open(path, "rb")
    except OSError as e:
        raise CvmfsError(f"cannot read bundle {path}: {e.strerror}") from None
    with raw:
        target = _Target(directory)
        try:
            check = _Check(path, target, pubkeys, config, verify_at)
            try:
                with zstandard.ZstdDecompressor().stream_reader(raw) as zin:
                    reader = _Reader(zin, f"bundle {path}")
                    while (member := reader.next()) is not None:
                        check.member(member, reader)
            except (zstandard.ZstdError, EOFError) as e:
                raise CvmfsError(f"bundle {path} is damaged: {e}") from None
            except OSError as e:  # a full disk, an I/O error: named, not an errno repr
                if isinstance(e, CvmfsError):
                    raise
                raise CacheError(
                    f"unbundling {path} into {directory} failed: {e.strerror}"
                ) from None
            check.finish()
            result = target.commit(check)
        except BaseException:
            target.abandon()
            raise
        target.close()
    return result


class _Check:
    """The members of a bundle in their order, each verified as it is read and staged."""

    def __init__(self, path: str, target: _Target, pubkeys, config, verify_at):
        self.path, self.target = path, target
        self.pubkeys, self.config, self.verify_at = pubkeys, config, verify_at
        self.phase = "format"
        self.fqrn: str | None = None
        self.small: dict[str, bytes] = {}  # trust files and dirtab by kind
        self.manifest = None
        self.select = None
        self.catalogs: dict[str, _Object] = {}  # expected, not received yet
        self.objects: dict[str, _Object] = {}  # expected, not received yet
        self.received: set[str] = set()
        self.staged_catalogs: list[_Object] = []
        self.staged_objects: list[_Object] = []
        self.staged_trust: list[_Object] = []

    def refuse(self, member: str, why: str, cls=CvmfsError):
        raise cls(f"bundle {self.path}: member {member!r} {why}")

    def member(self, m: _Member, reader: _Reader) -> None:
        if self.phase == "format":
            return self._format(m, reader)
        if m.kind != b"0":
            self.refuse(m.name, f"is {_KINDS.get(m.kind, 'of an unknown type')}, not a file")
        meta = META_NAME.fullmatch(m.name)
        data = DATA_NAME.fullmatch(m.name)
        kind = meta.group(1) if meta else data.group(3) if data else None
        if meta and self.fqrn is not None and meta.group(2) != self.fqrn:
            self.refuse(m.name, f"is for another repository than {self.fqrn}")
        if self.phase == "whitelist":
            if kind != "whitelist":
                self.refuse(m.name, "comes where the whitelist should")
            self.fqrn = meta.group(2)
            self.small["whitelist"] = self._small(m, reader)
            self.phase = "manifest"
        elif self.phase == "manifest":
            if kind != "manifest":
                self.refuse(m.name, "comes where the manifest should")
            self.small["manifest"] = self._small(m, reader)
            self._expect_certificate(m.name)
            self.phase = "certificate"
        elif self.phase == "certificate":
            if kind != "X":
                self.refuse(m.name, "comes where the certificate should")
            self._object(m, data, reader, self.staged_trust)
            self._verify_chain()
            self.phase = "extras"
        elif kind == "dirtab" and self.phase == "extras":
            if "dirtab" in self.small:
                self.refuse(m.name, "appears twice")
            self.small["dirtab"] = self._small(m, reader)
            self.select = self._selection(m.name)
        elif kind == "M" and self.phase == "extras":
            self._object(m, data, reader, self.staged_trust)
        elif kind == "C" and self.phase in ("extras", "catalogs"):
            self._leave_extras(m)
            self._object(m, data, reader, self.staged_catalogs)
            self._read_catalog(self.staged_catalogs[-1])
        elif kind in ("", "P"):
            self._leave_extras(m)
            self.phase = "objects"
            self._object(m, data, reader, self.staged_objects)
        elif kind == "C":
            self.refuse(m.name, "is a catalog after the objects, where none may be")
        elif meta or data:
            self.refuse(m.name, "comes where no such member may")
        else:
            self.refuse(m.name, "has a name no bundle member has (names must match exactly)")

    def _format(self, m: _Member, reader: _Reader) -> None:
        if m.name != FORMAT_MEMBER:
            if _OLD_NAME.fullmatch(m.name) or m.kind in (b"x", b"g"):
                raise CvmfsError(
                    f"bundle {self.path} is of the old format (decompressed objects), which "
                    "cannot be verified: make it again with `parrot_cvmfs preload --bundle` "
                    "of this version"
                )
            self.refuse(m.name, "comes where a parrot-cvmfs bundle names its format")
        if m.kind != b"0":
            self.refuse(m.name, f"is {_KINDS.get(m.kind, 'of an unknown type')}, not a file")
        if m.size > 64:
            self.refuse(m.name, f"is {m.size} bytes, above the limit of 64")
        text = reader.read_all()
        if text != FORMAT:
            raise CvmfsError(
                f"bundle {self.path} is of format {text[:40].decode('ascii', 'replace').strip()!r},"
                " which this version cannot read"
            )
        self.phase = "whitelist"

    def _small(self, m: _Member, reader: _Reader) -> bytes:
        if m.size > MAX_SMALL:
            self.refuse(m.name, f"is {m.size} bytes, above the limit of {MAX_SMALL}")
        return reader.read_all()

    def _expect_certificate(self, name: str) -> None:
        from .manifest import Manifest

        try:
            manifest = Manifest.parse(self.small["manifest"], f"manifest of {self.fqrn}")
        except CvmfsError as e:
            self.refuse(name, f"is not a manifest: {e}")
        if manifest.certificate is None:
            self.refuse(name, "names no certificate (field X)")
        cert = _Object(manifest.certificate, "X", True, None, f"certificate of {self.fqrn}")
        self.objects[cert.hash.hex] = cert

    def _verify_chain(self) -> None:
        """The checks of an offline mount, on the staged whitelist, manifest and
        certificate: master key, expiry, name, certificate listed, signature."""
        from .config import Configuration
        from .repository import Repository

        fqrn = self.fqrn
        self.target.write_meta(f"whitelist.{fqrn}", self.small["whitelist"])
        self.target.write_meta(f"manifest.{fqrn}", self.small["manifest"])
        base = self.config or Configuration()
        overrides = {"CVMFS_PUBLIC_KEY": self.pubkeys} if self.pubkeys else {}
        config = Configuration(base.env, base.sysdir, {**base.overrides, **overrides})
        try:
            settings = config.settings(fqrn)
        except CvmfsError as e:
            raise type(e)(f"bundle {self.path} is refused: {e}") from None
        if settings.fqrn != fqrn:
            self.refuse(f"whitelist.{fqrn}", f"names {fqrn}, which is not a full repository name")
        try:
            repo = Repository(
                settings,
                self.target.stage_cache(),
                None,
                config=config,
                verify_at=self.verify_at,
                offline=True,
            )
            try:
                self.manifest = manifest = repo.verify(store=False)
            finally:
                repo.close()
        except CvmfsError as e:
            raise type(e)(f"bundle {self.path} is refused: {e}") from None
        if manifest.metainfo is not None:
            mi = _Object(manifest.metainfo, "M", True, None, f"metainfo of {fqrn}")
            self.objects[mi.hash.hex] = mi
        root = _root(manifest)
        self.catalogs[root.hash.hex] = root

    def _selection(self, name: str):
        from .preload import selection

        try:
            return selection(self.small["dirtab"], name)
        except (CvmfsError, ValueError) as e:
            self.refuse(name, f"is not a dirtab: {e}")

    def _leave_extras(self, m: _Member) -> None:
        """After the extras: the metainfo the manifest names has come."""
        if self.phase == "extras":
            missing = [o for o in self.objects.values() if o.suffix == "M"]
            if missing:
                self.refuse(m.name, f"comes where the {missing[0].where} should")
            self.phase = "catalogs"

    def _object(self, m: _Member, name: re.Match, reader: _Reader, staged: list) -> None:
        """Stage a data member that a verified catalog (or the manifest) names."""
        hexname = name.group(1) + name.group(2)
        table = self.catalogs if name.group(3) == "C" else self.objects
        o = table.get(hexname)
        if o is None or o.name != m.name:
            if hexname in self.received:
                self.refuse(m.name, "appears twice")
            if name.group(3) == "C":
                self.refuse(m.name, "is not a catalog the verified ones before it name and select")
            self.refuse(m.name, "is not an object of the verified catalogs before it")
        del table[hexname]
        self.received.add(hexname)
        self._receive(m, o, reader)
        staged.append(o)

    def _receive(self, m: _Member, o: _Object, reader: _Reader) -> None:
        """Stage member `m` as object `o`: hashed, inflated within its size, written."""
        why = o.check_served_size(m.size)
        if why:
            self.refuse(m.name, f"({o.where}) {why}")
        limit, _, bound = o.limits()
        hasher = new_hasher(o.hash.algorithm)
        inflater = zlib.decompressobj() if o.compressed else None
        produced, problem = 0, None
        too_big = f"inflates beyond {bound}"
        with self.target.new_object(o) as out:
            while block := reader.read_data(_BLOCK):
                hasher.update(block)
                if problem:
                    continue  # hashed to its end (a bounded size): a wrong byte is named
                try:
                    while block:
                        piece = inflater.decompress(block, _BLOCK) if inflater else block
                        block = inflater.unconsumed_tail if inflater else b""
                        produced += len(piece)
                        if produced > limit:
                            problem = too_big
                            break
                        out.write(piece)
                except zlib.error as e:
                    problem = f"is not a zlib stream: {e}"
            if hasher.digest() != o.hash.digest:
                self.refuse(
                    m.name,
                    f"({o.where}) does not match its name"
                    + (f" (and {problem})" if problem else ""),
                    IntegrityError,
                )
            if not problem and inflater is not None:
                try:
                    tail = inflater.flush()
                except zlib.error as e:
                    problem = f"is not a zlib stream: {e}"
                else:
                    produced += len(tail)
                    if not inflater.eof:
                        problem = "is a truncated zlib stream"
                    elif produced > limit:
                        problem = too_big
                    else:
                        out.write(tail)
            if not problem and o.size is not None and produced != o.size:
                problem = f"inflates to {produced} bytes, not {bound}"
            if problem:
                self.refuse(m.name, f"({o.where}) {problem}", IntegrityError)

    def _read_catalog(self, o: _Object) -> None:
        catalog = Catalog(self.target.staged_path(o.hash), o.hash, o.mountpoint)
        try:
            nested, objects = _contents(catalog, self.select)
        except CvmfsError as e:
            raise type(e)(f"bundle {self.path}: {e}") from None
        finally:
            catalog.close()
        for n in nested:
            if n.hash.hex not in self.received:
                self.catalogs.setdefault(n.hash.hex, n)
        for ob in objects:
            h = ob.hash.hex
            if h not in self.received and h not in self.catalogs:
                self.objects.setdefault(h, ob)

    def finish(self) -> None:
        if self.phase in ("format", "whitelist", "manifest", "certificate", "extras"):
            raise CvmfsError(f"bundle {self.path} is incomplete: it ends before its catalogs")
        for table in (self.catalogs, self.objects):
            if table:
                o = next(iter(table.values()))
                raise CvmfsError(
                    f"bundle {self.path} is incomplete: it lacks {o.name} ({o.where})"
                    + (f" and {len(table) - 1} more" if len(table) > 1 else "")
                )


class _Target:
    """The directory a bundle goes to, and the staging directory in its txn/ (made with
    the layout, and reached through a descriptor: never through a link planted on the
    way). Whatever this made is removed again unless the bundle is committed."""

    def __init__(self, directory: str):
        self.dir = directory
        self.made: list[str] = []  # directories made here, outermost first
        self.made_txn = False
        self.dfd = self.txnfd = self.stagefd = self.certfd = -1
        self.stage = ""
        self.subfds: dict[str, int] = {}  # DIR's object directories
        try:
            self._make_dirs(directory)
            self.dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.txnfd, self.made_txn = self._subdir("txn")
            _remove_stale_stages(self.txnfd)
            name = f"unbundle.{os.getpid()}.{os.urandom(4).hex()}"
            os.mkdir(name, 0o700, dir_fd=self.txnfd)
            self.stagefd = os.open(name, _DIR_FLAGS, dir_fd=self.txnfd)
            self.stage_name = name
            self.stage = f"/proc/self/fd/{self.stagefd}"  # a path for the few that need one
            for sub in ("ff", "txn"):  # what makes it a cache directory (see stage_cache)
                os.mkdir(sub, 0o700, dir_fd=self.stagefd)
        except OSError as e:
            self.abandon()
            if isinstance(e, CvmfsError):
                raise
            raise CacheError(f"cannot unbundle into {directory}: {e.strerror}") from None

    def _make_dirs(self, directory: str) -> None:
        missing, d = [], os.path.abspath(directory)
        while not os.path.lexists(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            os.mkdir(d, DIR_MODE)
            self.made.append(d)

    def _subdir(self, name: str) -> tuple[int, bool]:
        """A descriptor for DIR/name, and whether it was made here; a link is refused."""
        made = False
        try:
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=self.dfd), made
            except FileNotFoundError:
                os.mkdir(name, DIR_MODE, dir_fd=self.dfd)
                made = True
                return os.open(name, _DIR_FLAGS, dir_fd=self.dfd), made
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CacheError(f"{self.dir}/{name} is not a directory (a link?)") from None
            raise

    # -- staging -------------------------------------------------------------------------------

    # Objects are staged flat, named by their hash; the certificate alone where a cache
    # keeps it, for the chain's check to find it in the staging directory as a cache
    # (whose layout is taken as made: `ff` exists).

    def stage_cache(self):
        from .cache import ObjectCache

        return ObjectCache(self.stage, object_mode=OBJECT_MODE, dir_mode=0o700)

    def staged_path(self, h: ContentHash) -> str:
        return f"{self.stage}/{h.hex}"

    def _staged(self, o: _Object) -> tuple[int, str]:
        """(directory descriptor, name) of a staged object; the certificate's directory
        is made on the first call."""
        if o.suffix != "X":
            return self.stagefd, o.hash.hex
        sub, rest = o.hash.cache_name().split("/")
        if self.certfd < 0:
            if sub != "ff":
                os.mkdir(sub, 0o700, dir_fd=self.stagefd)
            self.certfd = os.open(sub, _DIR_FLAGS, dir_fd=self.stagefd)
        return self.certfd, rest

    def new_object(self, o: _Object):
        dfd, name = self._staged(o)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, OBJECT_MODE, dir_fd=dfd)
        if _UMASK & OBJECT_MODE:
            os.fchmod(fd, OBJECT_MODE)
        return open(fd, "wb")

    def write_meta(self, name: str, data: bytes) -> None:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            META_MODE,
            dir_fd=self.stagefd,
        )
        with open(fd, "wb") as f:
            os.fchmod(fd, META_MODE)
            f.write(data)

    # -- moving into place -------------------------------------------------------------------

    def commit(self, check: _Check) -> BundleResult:
        """Move the staged bundle into the directory: objects, catalogs children first,
        certificate and metainfo, then the revision files (breadcrumb last) unless the
        directory holds a newer revision."""
        try:
            for sub in [f"{i:02x}" for i in range(256)] + ["quarantaine"]:
                fd = self.subfds.get(sub)
                if fd is None:
                    self.subfds[sub] = self._subdir(sub)[0]
            written = present = 0
            for o in [*check.staged_objects, *reversed(check.staged_catalogs), *check.staged_trust]:
                if self._move(o):
                    written += 1
                else:
                    present += 1
            fqrn, manifest = check.fqrn, check.manifest
            old = self._revision(f"cvmfschecksum.{fqrn}")
            taken = manifest.revision >= old
            if taken:
                if "dirtab" in check.small:
                    self.write_meta(f"dirtab.{fqrn}", check.small["dirtab"])
                    os.rename(
                        f"dirtab.{fqrn}",
                        f"dirtab.{fqrn}",
                        src_dir_fd=self.stagefd,
                        dst_dir_fd=self.dfd,
                    )
                else:
                    try:
                        os.unlink(f"dirtab.{fqrn}", dir_fd=self.dfd)
                    except FileNotFoundError:
                        pass
                crumb = Breadcrumb(
                    manifest.root_hash.hex, manifest.timestamp or 1, manifest.revision
                )
                self.write_meta(f"cvmfschecksum.{fqrn}", str(crumb).encode())
                for name in (f"whitelist.{fqrn}", f"manifest.{fqrn}", f"cvmfschecksum.{fqrn}"):
                    os.rename(name, name, src_dir_fd=self.stagefd, dst_dir_fd=self.dfd)
            try:
                os.stat("uuid", dir_fd=self.dfd, follow_symlinks=False)
            except FileNotFoundError:
                import uuid

                self.write_meta("uuid", str(uuid.uuid4()).encode())
                os.rename("uuid", "uuid", src_dir_fd=self.stagefd, dst_dir_fd=self.dfd)
        except OSError as e:
            if isinstance(e, CvmfsError):
                raise
            raise CacheError(f"cannot unbundle into {self.dir}: {e.strerror}") from None
        self.made = []  # kept
        return BundleResult(fqrn, manifest.revision, written, present, taken)

    def _move(self, o: _Object) -> bool:
        """Move one staged object into place; False if the directory has it already (a
        regular file of the right size: anything else there is replaced)."""
        name = o.hash.cache_name()
        sub, rest = name[:2], name[3:]
        fd = self.subfds[sub]
        try:
            s = os.stat(rest, dir_fd=fd, follow_symlinks=False)
            if st.S_ISREG(s.st_mode) and (o.size is None or s.st_size == o.size):
                return False
        except FileNotFoundError:
            pass
        src_fd, src = self._staged(o)
        os.rename(src, rest, src_dir_fd=src_fd, dst_dir_fd=fd)
        return True

    def _revision(self, name: str) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dfd)
        except OSError:
            return -1
        with open(fd, "rb") as f:
            text = f.read(4096).decode("ascii", "replace")
        crumb = Breadcrumb.parse(text)
        return crumb.revision if crumb is not None else -1

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        import shutil

        for fd in self.subfds.values():
            os.close(fd)
        self.subfds.clear()
        if self.certfd >= 0:
            os.close(self.certfd)
            self.certfd = -1
        if self.stagefd >= 0:
            os.close(self.stagefd)
            self.stagefd = -1
            shutil.rmtree(self.stage_name, dir_fd=self.txnfd, ignore_errors=True)
        for fd in (self.txnfd, self.dfd):
            if fd >= 0:
                os.close(fd)
        self.txnfd = self.dfd = -1

    def abandon(self) -> None:
        """Remove the staging directory and whatever else this made."""
        made_txn = self.made_txn
        dfd = os.dup(self.dfd) if self.dfd >= 0 else -1
        self.close()
        if dfd >= 0:
            if made_txn:
                try:
                    os.rmdir("txn", dir_fd=dfd)
                except OSError:
                    pass
            os.close(dfd)
        for d in reversed(self.made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self.made = []


def _remove_stale_stages(txnfd: int) -> None:
    """Staging directories of unbundles that were killed."""
    import shutil

    from .cache import pid_alive

    for name in os.listdir(txnfd):
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "unbundle" and parts[1].isdigit():
            if not pid_alive(int(parts[1])):
                shutil.rmtree(name, dir_fd=txnfd, ignore_errors=True)
