"""A preloaded directory as one zstandard-compressed tar file, for carrying to a site
whose nodes cannot download (`preload --bundle`, `unbundle`).

The archive holds the objects first and the small files that name a revision
(manifest, whitelist, breadcrumb, dirtab) last, and unbundling writes every file
atomically and those last ones at the end: an interrupted transfer or extraction never
leaves a directory announcing a revision whose objects are not all there. Nothing but
object files and those few names is accepted from an archive.
"""

from __future__ import annotations

import os
import re
import tarfile
from typing import NamedTuple

from ..errors import CvmfsError
from .cache import make_layout, write_atomic
from .repository import Breadcrumb

OBJECT_NAME = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{30,}(-[a-z0-9]+)?$")
META_NAME = re.compile(r"^(manifest|whitelist|cvmfschecksum|dirtab)\.[A-Za-z0-9][A-Za-z0-9._-]*$")
META_ORDER = ("dirtab", "whitelist", "manifest", "cvmfschecksum")  # the breadcrumb last
OBJECT_MODE = 0o555


class BundleResult(NamedTuple):
    objects: int  # objects written
    present: int  # objects already there
    repositories: list[str]  # whose revision files were taken
    refused: list[str]  # whose bundled revision was older than the directory's


def write_bundle(directory: str, out_path: str, level: int = 3) -> int:
    """Write every object and revision file of `directory` to `out_path`
    (`.tar.zst`); returns the number of files archived."""
    import zstandard

    directory = os.path.abspath(directory)
    objects = []
    for i in range(256):
        sub = f"{i:02x}"
        try:
            names = sorted(os.listdir(os.path.join(directory, sub)))
        except FileNotFoundError:
            continue
        objects += [f"{sub}/{n}" for n in names if OBJECT_NAME.match(f"{sub}/{n}")]
    metas = [n for n in sorted(os.listdir(directory)) if META_NAME.match(n)]
    metas.sort(key=lambda n: META_ORDER.index(n.split(".", 1)[0]))
    tmp = f"{out_path}.{os.getpid()}.tmp"
    count = 0
    try:
        with open(tmp, "wb") as raw:
            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=-1)
            with cctx.stream_writer(raw, closefd=False) as zout:
                with tarfile.open(fileobj=zout, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for rel in objects + metas:
                        path = os.path.join(directory, rel)
                        info = tar.gettarinfo(path, arcname=rel)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                        count += 1
        os.rename(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return count


def unbundle(path: str, directory: str) -> BundleResult:
    """Extract a bundle into `directory` (made if missing); objects already present are
    kept, and a repository's revision files are taken only if they are not older than
    the ones the directory has."""
    import zstandard

    make_layout(directory, 0o755)
    txn = os.path.join(directory, "txn")
    written = present = 0
    metas: dict[str, bytes] = {}
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise CvmfsError(f"cannot read bundle {path}: {e.strerror}") from None
    try:
        with raw, zstandard.ZstdDecompressor().stream_reader(raw) as zin:
            with tarfile.open(fileobj=zin, mode="r|") as tar:
                for member in tar:
                    name = member.name
                    if member.isdir():
                        continue
                    if not member.isreg() or not (OBJECT_NAME.match(name) or META_NAME.match(name)):
                        raise CvmfsError(f"bundle {path} holds an unexpected member {name!r}")
                    f = tar.extractfile(member)
                    if META_NAME.match(name):
                        metas[name] = f.read(1 << 20)
                        continue
                    dest = os.path.join(directory, name)
                    if os.path.exists(dest):
                        present += 1
                        continue
                    tmp = os.path.join(txn, f"unbundle.{os.getpid()}.{written}")
                    try:
                        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OBJECT_MODE)
                        with os.fdopen(fd, "wb") as out:
                            while block := f.read(1 << 20):
                                out.write(block)
                        os.rename(tmp, dest)
                    except BaseException:
                        try:
                            os.unlink(tmp)
                        except OSError:
                            pass
                        raise
                    written += 1
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
        raise CvmfsError(f"bundle {path} is damaged: {e}") from None
    taken, refused = _take_revisions(directory, metas)
    return BundleResult(written, present, taken, refused)


def _take_revisions(directory: str, metas: dict[str, bytes]) -> tuple[list[str], list[str]]:
    by_repo: dict[str, dict[str, bytes]] = {}
    for name, data in metas.items():
        kind, fqrn = name.split(".", 1)
        by_repo.setdefault(fqrn, {})[kind] = data
    taken, refused = [], []
    for fqrn, files in sorted(by_repo.items()):
        new = _revision(files.get("cvmfschecksum"))
        try:
            with open(os.path.join(directory, f"cvmfschecksum.{fqrn}"), "rb") as f:
                old = _revision(f.read())
        except OSError:
            old = -1
        if new < old:
            refused.append(fqrn)
            continue
        for kind in META_ORDER:
            if kind in files:
                write_atomic(os.path.join(directory, f"{kind}.{fqrn}"), files[kind], 0o644)
        taken.append(fqrn)
    return taken, refused


def _revision(crumb: bytes | None) -> int:
    if not crumb:
        return -1
    try:
        b = Breadcrumb.parse(crumb.decode("ascii", "replace"))
    except (CvmfsError, ValueError):
        return -1
    return b.revision if b is not None else -1
