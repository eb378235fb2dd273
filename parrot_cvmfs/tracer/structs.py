"""Kernel structures the supervisor writes into programs' memory: struct stat,
struct statx, struct statfs, directory entries. Layouts per architecture."""

from __future__ import annotations

import os
import stat
import struct
from collections import namedtuple

STATX_BASIC_STATS = 0x7FF
FUSE_SUPER_MAGIC = 0x65735546
ST_RDONLY, ST_NOSUID, ST_NODEV = 1, 2, 4

DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12


class Attrs(
    namedtuple(
        "Attrs",
        "dev ino mode nlink uid gid rdev size blksize blocks mtime mtime_nsec"
        " atime atime_nsec ctime ctime_nsec",
    )
):
    """What stat reports, independent of the structure layout."""

    __slots__ = ()

    dev: int
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    mtime: int
    mtime_nsec: int
    atime: int
    atime_nsec: int
    ctime: int
    ctime_nsec: int


def _attrs(s, rdev: int, mtime: tuple, atime: tuple, ctime: tuple) -> Attrs:
    """Attrs from a stat result's identity, mode and size, with the given times
    (seconds, nanoseconds)."""
    return Attrs(
        s.st_dev,
        s.st_ino,
        s.st_mode,
        s.st_nlink,
        s.st_uid,
        s.st_gid,
        rdev,
        s.st_size,
        s.st_blksize,
        s.st_blocks,
        *mtime,
        *atime,
        *ctime,
    )


def stat_attrs(s, rdev: int, mtime: int, mtime_nsec: int) -> Attrs:
    """The Attrs of a repository entry's stat: cvmfs reports its mtime as the atime
    and the ctime too."""
    t = (mtime, mtime_nsec)
    return _attrs(s, rdev, t, t, t)


def host_attrs(s: os.stat_result) -> Attrs:
    """The Attrs of a host file's os.stat_result: its own three times."""
    ns = 10**9
    return _attrs(
        s,
        s.st_rdev,
        divmod(s.st_mtime_ns, ns),
        divmod(s.st_atime_ns, ns),
        divmod(s.st_ctime_ns, ns),
    )


# struct stat, padding and the fields cvmfs leaves zero as "x" bytes (the values: Attrs
# order, x86_64's nlink before mode, then atime, mtime and ctime)
# x86_64: 144 bytes
_STAT_X86 = struct.Struct("<QQQIII4xQqqqqqqqqq24x")
# aarch64 (asm-generic): 128 bytes
_STAT_A64 = struct.Struct("<QQIIIIQ8xqi4xqqQqQqQ8x")
_STATX_HEAD = struct.Struct("<IIQIIIHHQQQQ")
_TS = struct.Struct("<qIi")
_STATX_TAIL = struct.Struct("<IIIIQII")
_STATFS = struct.Struct("<qqqqqqqiiqqq32x")  # the generic 64-bit struct statfs: both arches


def pack_stat(a: Attrs, arch: str) -> bytes:
    times = (a.atime, a.atime_nsec, a.mtime, a.mtime_nsec, a.ctime, a.ctime_nsec)
    if arch == "x86_64":
        return _STAT_X86.pack(
            a.dev,
            a.ino,
            a.nlink,
            a.mode,
            a.uid,
            a.gid,
            a.rdev,
            a.size,
            a.blksize,
            a.blocks,
            *times,
        )
    return _STAT_A64.pack(*a[:10], *times)


def pack_statx(a: Attrs) -> bytes:
    """Every basic field filled and claimed; birth time and the rest are not."""
    mtime = _TS.pack(a.mtime, a.mtime_nsec, 0)
    head = _STATX_HEAD.pack(
        STATX_BASIC_STATS,
        a.blksize,
        0,
        a.nlink,
        a.uid,
        a.gid,
        a.mode,
        0,
        a.ino,
        a.size,
        a.blocks,
        0,
    )
    tail = _STATX_TAIL.pack(
        os.major(a.rdev), os.minor(a.rdev), os.major(a.dev), os.minor(a.dev), 0, 0, 0
    )
    atime, ctime = _TS.pack(a.atime, a.atime_nsec, 0), _TS.pack(a.ctime, a.ctime_nsec, 0)
    out = head + atime + _TS.pack(0, 0, 0) + ctime + mtime + tail  # atime btime ctime mtime
    return out + bytes(256 - len(out))


def pack_statfs(blocks: int, free: int, files: int, fsid: int) -> bytes:
    """What a FUSE-mounted cvmfs reports: read-only, nosuid, nodev."""
    return _STATFS.pack(
        FUSE_SUPER_MAGIC,
        4096,
        blocks,
        free,
        free,
        files,
        files,
        fsid & 0xFFFFFFFF,
        fsid >> 32 & 0xFFFFFFFF,
        255,
        4096,
        ST_RDONLY | ST_NOSUID | ST_NODEV,
    )


_DTYPES = {
    stat.S_IFDIR: DT_DIR,
    stat.S_IFREG: DT_REG,
    stat.S_IFLNK: DT_LNK,
    stat.S_IFIFO: DT_FIFO,
    stat.S_IFCHR: DT_CHR,
    stat.S_IFBLK: DT_BLK,
    stat.S_IFSOCK: DT_SOCK,
}


def dtype_of(mode: int) -> int:
    return _DTYPES.get(stat.S_IFMT(mode), DT_UNKNOWN)


def pack_dirents(
    entries: list[tuple[int, int, int, bytes]], start: int, count: int, legacy: bool = False
) -> tuple[bytes, int]:
    """linux_dirent64 records (or old linux_dirent ones) for entries[start:] that fit in
    `count` bytes; entries are (ino, d_off, d_type, name). Returns (bytes, next index)."""
    out = bytearray()
    i = start
    while i < len(entries):
        ino, off, dtype, name = entries[i]
        if legacy:  # ino, off, reclen, name\0, pad, type
            reclen = (8 + 8 + 2 + len(name) + 2 + 7) & ~7
            rec = struct.pack("<QqH", ino, off, reclen) + name + b"\0"
            rec += bytes(reclen - len(rec) - 1) + bytes([dtype])
        else:  # ino, off, reclen, type, name\0, pad
            reclen = (8 + 8 + 2 + 1 + len(name) + 1 + 7) & ~7
            rec = struct.pack("<QqHB", ino, off, reclen, dtype) + name + b"\0"
            rec += bytes(reclen - len(rec))
        if len(out) + reclen > count:
            break
        out += rec
        i += 1
    return bytes(out), i
