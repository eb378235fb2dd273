#!/usr/bin/env python3
"""Catalog micro-benchmarks: lookups and listings in an open catalog of a real
repository (the hot path), and the cost of reopening a catalog closed by the bound on
open catalogs.

    python bench/bench_catalogs.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from parrot_cvmfs.format.catalog import Catalog  # noqa: E402
from parrot_cvmfs.format.hashes import ContentHash  # noqa: E402
from tests.conftest import REAL_REPOS  # noqa: E402


def largest_catalog(tmp: str) -> tuple[str, ContentHash]:
    best = None
    for dp, _, fs in os.walk(os.path.join(REAL_REPOS, "ref.test.org", "stratum")):
        for f in fs:
            if f.endswith("C"):
                p = os.path.join(dp, f)
                if best is None or os.path.getsize(p) > os.path.getsize(best):
                    best = p
    assert best is not None
    h = ContentHash.from_hex(os.path.basename(os.path.dirname(best)) + os.path.basename(best)[:-1])
    out = os.path.join(tmp, "catalog.db")
    with open(best, "rb") as f, open(out, "wb") as o:
        o.write(zlib.decompress(f.read()))
    return out, h


def per_op(fn, items, repeat: int) -> float:
    """Median microseconds per call of fn over items, of `repeat` rounds."""
    rounds = []
    for _ in range(repeat):
        t = time.perf_counter()
        for x in items:
            fn(x)
        rounds.append((time.perf_counter() - t) / len(items) * 1e6)
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path, h = largest_catalog(tmp)
        cat = Catalog(path, h, "")
        rows = cat._query("SELECT md5path_1, md5path_2, flags, name, parent_1 FROM catalog", ())
        # every path of the catalog, by walking it from the root
        paths, dirs, todo = [], [], [""]
        while todo:
            d = todo.pop()
            dirs.append(d)
            for e in cat.listing(d):
                paths.append(e.path)
                if e.is_dir and not e.is_nested_mountpoint:
                    todo.append(e.path)
        print(f"catalog {h.hex}: {len(rows)} rows, {len(paths)} paths, {len(dirs)} directories")
        print(f"lookup of an existing path: {per_op(cat.lookup, paths, args.repeat):.2f} us")
        missing = [p + "/missing" for p in dirs]
        print(f"lookup of a missing path:   {per_op(cat.lookup, missing, args.repeat):.2f} us")
        print(f"listing of a directory:     {per_op(cat.listing, dirs, args.repeat):.2f} us")
        cat.close()

        def open_close(_):
            Catalog(path, h, "").close()

        print(f"open + close of the catalog: {per_op(open_close, range(200), args.repeat):.1f} us")
        database = sys.modules["parrot_cvmfs.format.database"]
        if hasattr(database, "_open"):  # the bound on open databases
            cat = Catalog(path, h, "")
            cat.lookup("")

            def evicted_lookup(p):
                with cat._db._lock:  # as a sweep of the open databases closes one
                    cat._db._disconnect()
                database._open.discard(cat._db)
                cat.lookup(p)

            us = per_op(evicted_lookup, paths[:200], args.repeat)
            print(f"lookup after its catalog was closed (reopen): {us:.1f} us")
            cat.close()


if __name__ == "__main__":
    main()
