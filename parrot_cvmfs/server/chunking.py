"""Where the publisher cuts large files into chunks (the C core does the scan)."""

from __future__ import annotations

from dataclasses import dataclass

from .._core import ffi, lib

MiB = 1 << 20


@dataclass(frozen=True)
class ChunkSizes:
    """CVMFS_MIN/AVG/MAX_CHUNK_SIZE; files larger than `minimal` are chunked."""

    minimal: int = 4 * MiB
    average: int = 8 * MiB
    maximal: int = 16 * MiB

    def __post_init__(self):
        if not (32 <= self.minimal < self.average < self.maximal):
            raise ValueError("chunk sizes must satisfy 32 <= min < avg < max")


class Chunker:
    """Streaming cut-mark detector; feed() returns absolute cut offsets."""

    def __init__(self, sizes: ChunkSizes):
        self.sizes = sizes
        self._c = ffi.new("pc_chunker *")
        lib.pc_chunker_init(self._c, sizes.minimal, sizes.average, sizes.maximal)

    def feed(self, data: bytes) -> list[int]:
        room = len(data) // self.sizes.minimal + 2
        cuts = ffi.new("uint64_t[]", room)
        n = lib.pc_chunker_feed(self._c, ffi.from_buffer(data), len(data), cuts, room)
        return [cuts[i] for i in range(n)]


def chunk_boundaries(path: str, sizes: ChunkSizes, block: int = 4 * MiB) -> list[tuple[int, int]]:
    """(offset, size) of each chunk of the file; one entry means 'do not chunk'."""
    chunker = Chunker(sizes)
    cuts: list[int] = []
    total = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                break
            cuts += chunker.feed(data)
            total += len(data)
    bounds = [0] + [c for c in cuts if 0 < c < total] + [total]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False) if b > a] or [(0, 0)]
