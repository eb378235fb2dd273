"""Unbundling: a bundle read once, verified as it goes, staged and moved into place."""

from __future__ import annotations

import errno
import os
import re
import stat as st
import zlib

from ...errors import CacheError, CvmfsError, IntegrityError
from ...format.catalog import Catalog
from ...format.hashes import ContentHash, new_hasher
from ..limits import MAX_SMALL
from ..trust import Breadcrumb
from .members import (
    BLOCK,
    DATA_NAME,
    FORMAT,
    FORMAT_MEMBER,
    META_NAME,
    OLD_NAME,
    TAR_KINDS,
    BundledObject,
    BundleResult,
    TarMember,
    TarReader,
    contents_of,
    root_object,
)

OBJECT_MODE = 0o555  # as preload stores them: for every user of the site, executable
DIR_MODE = 0o755
META_MODE = 0o644
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
UMASK = os.umask(0o022)
os.umask(UMASK)


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
                    reader = TarReader(zin, f"bundle {path}")
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
        self.catalogs: dict[str, BundledObject] = {}  # expected, not received yet
        self.objects: dict[str, BundledObject] = {}  # expected, not received yet
        self.received: set[str] = set()
        self.staged_catalogs: list[BundledObject] = []
        self.staged_objects: list[BundledObject] = []
        self.staged_trust: list[BundledObject] = []

    def refuse(self, member: str, why: str, cls=CvmfsError):
        raise cls(f"bundle {self.path}: member {member!r} {why}")

    def member(self, m: TarMember, reader: TarReader) -> None:
        if self.phase == "format":
            return self._format(m, reader)
        if m.kind != b"0":
            self.refuse(m.name, f"is {TAR_KINDS.get(m.kind, 'of an unknown type')}, not a file")
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

    def _format(self, m: TarMember, reader: TarReader) -> None:
        if m.name != FORMAT_MEMBER:
            if OLD_NAME.fullmatch(m.name) or m.kind in (b"x", b"g"):
                raise CvmfsError(
                    f"bundle {self.path} is of the old format (decompressed objects), which "
                    "cannot be verified: make it again with `parrot_cvmfs preload --bundle` "
                    "of this version"
                )
            self.refuse(m.name, "comes where a parrot-cvmfs bundle names its format")
        if m.kind != b"0":
            self.refuse(m.name, f"is {TAR_KINDS.get(m.kind, 'of an unknown type')}, not a file")
        if m.size > 64:
            self.refuse(m.name, f"is {m.size} bytes, above the limit of 64")
        text = reader.read_all()
        if text != FORMAT:
            raise CvmfsError(
                f"bundle {self.path} is of format {text[:40].decode('ascii', 'replace').strip()!r},"
                " which this version cannot read"
            )
        self.phase = "whitelist"

    def _small(self, m: TarMember, reader: TarReader) -> bytes:
        if m.size > MAX_SMALL:
            self.refuse(m.name, f"is {m.size} bytes, above the limit of {MAX_SMALL}")
        return reader.read_all()

    def _expect_certificate(self, name: str) -> None:
        from ...format.manifest import Manifest

        try:
            manifest = Manifest.parse(self.small["manifest"], f"manifest of {self.fqrn}")
        except CvmfsError as e:
            self.refuse(name, f"is not a manifest: {e}")
        if manifest.certificate is None:
            self.refuse(name, "names no certificate (field X)")
        cert = BundledObject(manifest.certificate, "X", True, None, f"certificate of {self.fqrn}")
        self.objects[cert.hash.hex] = cert

    def _verify_chain(self) -> None:
        """The checks of an offline mount, on the staged whitelist, manifest and
        certificate: master key, expiry, name, certificate listed, signature."""
        from ..config import Configuration
        from ..repository import Repository

        fqrn = self.fqrn
        self.target.write_meta(f"whitelist.{fqrn}", self.small["whitelist"])
        self.target.write_meta(f"manifest.{fqrn}", self.small["manifest"])
        base = self.config or Configuration()
        overrides = {"CVMFS_PUBLIC_KEY": self.pubkeys} if self.pubkeys else {}
        config = base.with_overrides(overrides)
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
            mi = BundledObject(manifest.metainfo, "M", True, None, f"metainfo of {fqrn}")
            self.objects[mi.hash.hex] = mi
        root = root_object(manifest)
        self.catalogs[root.hash.hex] = root

    def _selection(self, name: str):
        from ...format.dirtab import selection

        try:
            return selection(self.small["dirtab"], name)
        except (CvmfsError, ValueError) as e:
            self.refuse(name, f"is not a dirtab: {e}")

    def _leave_extras(self, m: TarMember) -> None:
        """After the extras: the metainfo the manifest names has come."""
        if self.phase == "extras":
            missing = [o for o in self.objects.values() if o.suffix == "M"]
            if missing:
                self.refuse(m.name, f"comes where the {missing[0].where} should")
            self.phase = "catalogs"

    def _object(self, m: TarMember, name: re.Match, reader: TarReader, staged: list) -> None:
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

    def _receive(self, m: TarMember, o: BundledObject, reader: TarReader) -> None:
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
            while block := reader.read_data(BLOCK):
                hasher.update(block)
                if problem:
                    continue  # hashed to its end (a bounded size): a wrong byte is named
                try:
                    while block:
                        piece = inflater.decompress(block, BLOCK) if inflater else block
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

    def _read_catalog(self, o: BundledObject) -> None:
        catalog = Catalog(self.target.staged_path(o.hash), o.hash, o.mountpoint)
        try:
            nested, objects = contents_of(catalog, self.select)
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
            self.stagefd = os.open(name, DIR_FLAGS, dir_fd=self.txnfd)
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
                return os.open(name, DIR_FLAGS, dir_fd=self.dfd), made
            except FileNotFoundError:
                os.mkdir(name, DIR_MODE, dir_fd=self.dfd)
                made = True
                return os.open(name, DIR_FLAGS, dir_fd=self.dfd), made
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CacheError(f"{self.dir}/{name} is not a directory (a link?)") from None
            raise

    # -- staging -------------------------------------------------------------------------------

    # Objects are staged flat, named by their hash; the certificate alone where a cache
    # keeps it, for the chain's check to find it in the staging directory as a cache
    # (whose layout is taken as made: `ff` exists).

    def stage_cache(self):
        from ..cache import ObjectCache

        return ObjectCache(self.stage, object_mode=OBJECT_MODE, dir_mode=0o700)

    def staged_path(self, h: ContentHash) -> str:
        return f"{self.stage}/{h.hex}"

    def _staged(self, o: BundledObject) -> tuple[int, str]:
        """(directory descriptor, name) of a staged object; the certificate's directory
        is made on the first call."""
        if o.suffix != "X":
            return self.stagefd, o.hash.hex
        sub, rest = o.hash.cache_name().split("/")
        if self.certfd < 0:
            if sub != "ff":
                os.mkdir(sub, 0o700, dir_fd=self.stagefd)
            self.certfd = os.open(sub, DIR_FLAGS, dir_fd=self.stagefd)
        return self.certfd, rest

    def new_object(self, o: BundledObject):
        dfd, name = self._staged(o)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, OBJECT_MODE, dir_fd=dfd)
        if UMASK & OBJECT_MODE:
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
            moving = [*check.staged_objects, *reversed(check.staged_catalogs), *check.staged_trust]
            # the object directories these need, made if missing (as the cache makes its
            # own on first use), and all found real before anything moves
            for sub in sorted({o.hash.cache_name()[:2] for o in moving}):
                if sub not in self.subfds:
                    self.subfds[sub] = self._subdir(sub)[0]
            written = present = 0
            for o in moving:
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

    def _move(self, o: BundledObject) -> bool:
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

    from ..cache import pid_alive

    for name in os.listdir(txnfd):
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "unbundle" and parts[1].isdigit():
            if not pid_alive(int(parts[1])):
                shutil.rmtree(name, dir_fd=txnfd, ignore_errors=True)
