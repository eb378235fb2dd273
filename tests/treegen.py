"""A source tree with every awkward case a repository can hold."""

from __future__ import annotations

import os
import random
import stat

from parrot_cvmfs.server.publisher import PublishOptions, publish

BIG_SIZE = 22 * 1024 * 1024 + 12345  # above the 4 MiB chunking threshold, several chunks

ODD_NAMES = [
    "ünïcödé.txt",
    "日本語のファイル",
    "emoji-🚀-file",
    "nbsp\u00a0name",
    "zero\u200bwidth",
    "tab\tname",
    "back\\slash",
    "quote'and\"double",
    "-leading-dash",
    "with space",
    "x" * 200,
    "percent%20sign",
    "star*question?",
]


def _write(path: str, data: bytes, mode: int = 0o644, mtime: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, ns=(mtime * 10**9, mtime * 10**9 + 123456789))


def make_tree(root: str, *, big: bool = True, seed: int = 7) -> str:
    rnd = random.Random(seed)
    os.makedirs(root)
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    _write(j("README"), b"parrot-cvmfs test tree\n", mtime=1_600_000_000)
    _write(j("empty-file"), b"")
    os.makedirs(j("empty-dir"))
    os.makedirs(j("deep/a/b/c/d/e"))
    _write(j("deep/a/b/c/d/e/leaf.txt"), b"leaf\n")

    os.makedirs(j("odd"))
    for i, name in enumerate(ODD_NAMES):
        _write(j("odd", name), f"odd {i}\n".encode())

    os.makedirs(j("modes"))
    _write(j("modes/private"), b"secret\n", 0o600)
    _write(j("modes/readonly"), b"ro\n", 0o444)
    _write(j("modes/setgid"), b"sg\n", 0o2755)
    if os.geteuid() == 0:  # only root can publish a file nobody may read
        _write(j("modes/noperm"), b"none\n", 0o000)
    os.makedirs(j("modes/sticky"))
    os.chmod(j("modes/sticky"), 0o1777)
    os.makedirs(j("modes/closed-dir"))
    _write(j("modes/closed-dir/inside"), b"inside\n")
    os.chmod(j("modes/closed-dir"), 0o700)

    os.makedirs(j("bin"))
    _write(j("bin/hello.sh"), b'#!/bin/sh\necho hello from $0 "$@"\n', 0o755)
    _write(j("bin/noexec.sh"), b"#!/bin/sh\necho should not run\n", 0o644)

    os.makedirs(j("links/sub"))
    _write(j("links/target.txt"), b"target\n")
    os.symlink("target.txt", j("links/rel"))
    os.symlink("../README", j("links/up"))
    os.symlink("sub", j("links/dirlink"))
    os.symlink("rel", j("links/chain"))
    os.symlink("does/not/exist", j("links/dangling"))
    os.symlink("/etc/hostname", j("links/abs-outside"))
    os.symlink("/nonexistent/abs", j("links/dangling-abs"))
    os.symlink("loop-b", j("links/loop-a"))
    os.symlink("loop-a", j("links/loop-b"))
    os.symlink("ファイル ü", j("links/unicode-target"))
    os.symlink("$(PARROT_TEST_VAR:-default)/x", j("links/variant"))

    os.makedirs(j("hardlinks/other"))
    _write(j("hardlinks/a"), b"hardlinked content\n")
    os.link(j("hardlinks/a"), j("hardlinks/b"))
    os.link(j("hardlinks/a"), j("hardlinks/other/c"))
    _write(j("hardlinks/pair1"), b"second group\n")
    os.link(j("hardlinks/pair1"), j("hardlinks/pair2"))

    # nested catalogs, one inside another, and a hardlink across a catalog boundary
    os.makedirs(j("nested/inner/deeper"))
    _write(j("nested/.cvmfscatalog"), b"")
    _write(j("nested/file"), b"in nested\n")
    _write(j("nested/inner/.cvmfscatalog"), b"")
    _write(j("nested/inner/deeper/file"), b"in inner\n")
    os.link(j("hardlinks/pair1"), j("nested/cross-catalog-link"))
    os.symlink("../README", j("nested/link-out"))

    os.makedirs(j("xattrs"))
    _write(j("xattrs/file"), b"with xattrs\n")
    os.setxattr(j("xattrs/file"), "user.foo", b"bar")
    os.setxattr(j("xattrs/file"), "user.binary", bytes(range(16)))
    os.setxattr(j("xattrs/file"), "user.empty", b"")
    os.setxattr(j("xattrs"), "user.on-dir", b"dir value")

    os.makedirs(j("special"))
    os.mkfifo(j("special/fifo"))

    os.makedirs(j("data"))
    for i in range(30):
        size = rnd.choice([1, 100, 4095, 4096, 4097, 65536, 300_000])
        _write(j("data", f"f{i:03d}.bin"), rnd.randbytes(size))
    _write(j("data/compressible.txt"), b"abc" * 200_000)
    _write(j("data/exactly-4MiB"), rnd.randbytes(4 * 1024 * 1024))
    if big:
        os.makedirs(j("large"))
        _write(j("large/big.bin"), rnd.randbytes(BIG_SIZE))

    # directory mtimes last, once their contents are final
    for dirpath, _dirnames, _ in os.walk(root, topdown=False):
        if os.path.basename(dirpath) != "closed-dir":
            os.utime(dirpath, (1_650_000_000, 1_650_000_000))
    return root


def publish_files(base: str, name: str, files: dict[str, bytes], chunk_sizes) -> tuple[str, str]:
    """`files` (path below the root: contents) written below base/src and published as
    `name` with `chunk_sizes` to base/stratum, keys in base/keys: (stratum, keys)."""
    src = os.path.join(base, "src")
    for path, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(src, path.lstrip("/"))), exist_ok=True)
        with open(os.path.join(src, path.lstrip("/")), "wb") as f:
            f.write(data)
    stratum, keys = os.path.join(base, "stratum"), os.path.join(base, "keys")
    options = PublishOptions(
        source=src, name=name, stratum=stratum, keys_dir=keys, chunk_sizes=chunk_sizes
    )
    publish(options)
    return stratum, keys


def source_entries(root: str):
    """(repository path, lstat) for every entry, '/' first, like `find`."""
    out = [("/", os.lstat(root))]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            out.append(("/" + os.path.relpath(p, root), os.lstat(p)))
    return out


KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


def kind_of(mode: int) -> str:
    """The catalog's kind of an entry of this mode."""
    return KINDS.get(stat.S_IFMT(mode), "special")
