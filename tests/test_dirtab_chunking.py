"""Dirtab filters (t_relaxed_path_filter vectors) and the server's chunker."""

from __future__ import annotations

import hashlib
import os
import zlib

import pytest

from parrot_cvmfs.errors import ConfigError
from parrot_cvmfs.format.dirtab import Dirtab, RelaxedPathFilter
from parrot_cvmfs.server.chunking import Chunker, ChunkSizes, chunk_boundaries

from .conftest import REAL_REPOS


def test_relaxed_filter_vectors():
    f = RelaxedPathFilter(Dirtab("/usr/include/*\n/bin/bash\n! /usr/local/bin/*\n"))
    assert len(f.rules) == 6
    for p in ["/bin/bash", "/bin", "/usr/include/stdio.h", "/usr/include", "/usr"]:
        assert f.matches(p), p
    for p in ["/bin/foo", "/", ""]:
        assert not f.matches(p), p
    assert f.is_opposing("/usr/local/bin/foo")
    assert not f.is_opposing("/usr/local/bin") and not f.is_opposing("/usr/local")

    f = RelaxedPathFilter(
        Dirtab(
            "/software/releases\n/repo/sw/ASG\n! /software/releases/misc\n"
            "! /software/releases/experimental/misc\n"
        )
    )
    for p in [
        "/software",
        "/software/releases",
        "/software/releases/v1",
        "/software/releases/experimental",
        "/repo/sw/ASG",
        "/repo/sw/ASG/AnalysisTop",
    ]:
        assert f.matches(p), p
    for p in [
        "/software/apps",
        "/software/releases/misc",
        "/software/releases/misc/external",
        "/software/releases/experimental/misc",
        "/software/releases/experimental/misc/foo",
    ]:
        assert not f.matches(p), p

    f = RelaxedPathFilter(Dirtab("/usr/bin/\n! *.exe/\n! /usr/misc/\n"))
    assert f.matches("/usr/bin") and f.matches("/usr/bin/bash")
    assert not f.matches("/usr/misc") and not f.matches("/usr/bin/root.exe")


def test_plain_dirtab_and_errors():
    d = Dirtab("# comment\n\n  /bar/*\n! /bar/skip*\n/exact?\n")
    assert d.matches("/bar/1") and not d.matches("/bar/1/2") and not d.matches("/bar/skipme")
    assert d.matches("/exact1") and not d.matches("/exact12")
    with pytest.raises(ConfigError, match="must be absolute"):
        Dirtab("relative/path\n")
    with pytest.raises(ConfigError, match="both positive and negative"):
        Dirtab("/a\n! /a\n")


def _reassemble_real_40mib() -> bytes:
    """The 40 MiB file of ref.test.org, rebuilt from its five chunk objects."""
    import sqlite3
    import tempfile

    base = os.path.join(REAL_REPOS, "ref.test.org", "stratum")
    root = [
        line
        for line in open(os.path.join(base, ".cvmfspublished"), "rb").read().split(b"\n")
        if line.startswith(b"C")
    ][0][1:].decode()
    with open(os.path.join(base, "data", root[:2], root[2:] + "C"), "rb") as f:
        db = zlib.decompress(f.read())
    with tempfile.NamedTemporaryFile() as t:
        t.write(db)
        t.flush()
        con = sqlite3.connect(t.name)
        rows = con.execute("SELECT offset, size, hex(hash) FROM chunks ORDER BY offset").fetchall()
    out = bytearray()
    for _offset, _size, h in rows:
        h = h.lower()
        with open(os.path.join(base, "data", h[:2], h[2:] + "P"), "rb") as f:
            stored = f.read()
        assert hashlib.sha1(stored).hexdigest() == h
        out += zlib.decompress(stored)
    return bytes(out), rows


@pytest.mark.usefixtures("shared_data")
def test_chunker_cuts_where_the_real_server_cut(tmp_path):
    data, rows = _reassemble_real_40mib()
    f = tmp_path / "big"
    f.write_bytes(data)
    expected = [(o, s) for o, s, _ in rows]
    assert expected == [
        (0, 4246839),
        (4246839, 7890675),
        (12137514, 12798711),
        (24936225, 16777216),
        (41713441, 229599),
    ]
    for block in (1 << 22, 65536, 999_983):  # the cut marks do not depend on read sizes
        assert chunk_boundaries(str(f), ChunkSizes(), block) == expected
    # and our compression reproduces the server's objects byte for byte
    for o, s, h in rows:
        assert hashlib.sha1(zlib.compress(data[o : o + s])).hexdigest() == h.lower()


def test_chunker_small_sizes():
    c = Chunker(ChunkSizes(64, 128, 256))
    cuts = c.feed(os.urandom(10_000))
    assert cuts and all(b - a >= 64 for a, b in zip([0] + cuts, cuts, strict=False))
    assert all(b - a <= 256 for a, b in zip([0] + cuts, cuts, strict=False))
