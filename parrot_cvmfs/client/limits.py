"""What a body may be: the most bytes an object may inflate to and arrive as, and the
time one transfer of it may take (the Python downloader's and the C fetcher's rule)."""

from __future__ import annotations

# A manifest, whitelist, certificate or metainfo: a few KB each in practice (the real
# client allows 1 MiB in memory; 64 KiB keeps one trickled at 2 KB/s to half a minute).
MAX_SMALL = 64 << 10
MAX_DATABASE = 1 << 30  # a catalog or history database whose size nothing records


def database_limit(recorded: int | None) -> int:
    """The most bytes a catalog (or history database) may inflate to: the size its parent
    catalog, the manifest (`B`) or a tag records, capped at MAX_DATABASE, which is also
    the limit where none is recorded (schema 2.5 revision 0, 2.4 and older)."""
    if not isinstance(recorded, int) or recorded <= 0:
        return MAX_DATABASE
    return min(recorded, MAX_DATABASE)


def object_limit(suffix: str) -> int:
    """The most bytes an object of no recorded size may inflate to, by its suffix."""
    return MAX_SMALL if suffix in ("X", "M") else MAX_DATABASE


def wire_limit(limit: int, compressed: bool) -> int:
    """The most body bytes an object that stores at most `limit` bytes may arrive as.
    Deflate's worst case for incompressible data is 5 bytes per stored block of up to
    64 KiB plus 6 of zlib framing (zlib's compressBound allows n/4096 + n/16384 + 13);
    n/256 + 1 KiB leaves room for any encoder."""
    return limit + (limit >> 8) + 1024 if compressed else limit


def transfer_budget(wire: int, timeout: float, low_speed_limit: int) -> float:
    """Seconds one attempt may take in all: a timeout to connect, one for the response
    headers, one of slack, and `wire` body bytes at the low-speed limit (what a transfer
    that never trips the low-speed rule needs at most). The deadline of the Python
    downloader and of the C fetcher alike."""
    return 3 * timeout + wire / max(low_speed_limit, 1)
