"""Writing objects into a stratum directory: `NAME/data/xx/<hash><suffix>`.

Objects are compressed (zlib, unless stored uncompressed), hashed over the
stored bytes, written to `data/txn/` and renamed into place; an object that
already exists is not written again (content addressing deduplicates)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib

from ..atomic import discard
from ..format.hashes import Algorithm, ContentHash, new_hasher


class StratumStore:
    def __init__(self, repo_dir: str, algorithm: Algorithm = Algorithm.SHA1):
        self.repo_dir = repo_dir
        self.data = os.path.join(repo_dir, "data")
        self.algorithm = algorithm
        self.written = 0
        self.reused = 0
        self.bytes_written = 0
        if not os.path.isdir(os.path.join(self.data, "ff")):
            for i in range(256):
                os.makedirs(os.path.join(self.data, f"{i:02x}"), exist_ok=True)
        os.makedirs(os.path.join(self.data, "txn"), exist_ok=True)

    def object_file(self, h: ContentHash, suffix: str = "") -> str:
        return os.path.join(self.repo_dir, h.object_path(suffix).lstrip("/"))

    def has(self, h: ContentHash, suffix: str = "") -> bool:
        return os.path.exists(self.object_file(h, suffix))

    def temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=os.path.join(self.data, "txn"), prefix="obj.")

    def commit(self, tmp: str, h: ContentHash, suffix: str) -> str:
        dest = self.object_file(h, suffix)
        if os.path.exists(dest):
            os.unlink(tmp)
            self.reused += 1
        else:
            os.chmod(tmp, 0o644)
            self.bytes_written += os.path.getsize(tmp)
            os.rename(tmp, dest)
            self.written += 1
        return dest

    def put(self, data: bytes, suffix: str = "", compress: bool = True) -> ContentHash:
        """Store one object from memory; returns its hash."""
        stored = zlib.compress(data) if compress else data
        h = new_hasher(self.algorithm)
        h.update(stored)
        ch = ContentHash(self.algorithm, h.digest())
        if self.has(ch, suffix):
            self.reused += 1
            return ch
        fd, tmp = self.temp()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(stored)
            self.commit(tmp, ch, suffix)
        except BaseException:
            discard(tmp)
            raise
        return ch

    def read(self, h: ContentHash, suffix: str = "", compressed: bool = True) -> bytes:
        with open(self.object_file(h, suffix), "rb") as f:
            data = f.read()
        return zlib.decompress(data) if compressed else data


class StreamingObject:
    """Compresses and hashes a stream into a temporary object file."""

    def __init__(self, store: StratumStore, compress: bool):
        self.store = store
        self.fd, self.tmp = store.temp()
        self.f = os.fdopen(self.fd, "wb")
        self.z = zlib.compressobj() if compress else None
        self.h = new_hasher(store.algorithm)
        self.size = 0

    def write(self, data) -> None:
        self.size += len(data)
        out = self.z.compress(data) if self.z is not None else bytes(data)
        if out:
            self.h.update(out)
            self.f.write(out)

    def finish(self, suffix: str) -> ContentHash:
        if self.z is not None:
            out = self.z.flush()
            self.h.update(out)
            self.f.write(out)
        self.f.close()
        ch = ContentHash(self.store.algorithm, self.h.digest())
        self.store.commit(self.tmp, ch, suffix)
        return ch

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
        discard(self.tmp)
