#!/usr/bin/env python3
"""Client library benchmark: publish and read back a ~5,000-file / ~250 MB tree.

Reports files/s and MB/s for publish, cold read over loopback (nginx) and warm
read, and the ratio of the cold read to a plain parallel download of the same
objects (curl through `xargs -P`), measured in the same run.

    python bench/bench_client.py                 # a venv with numpy and scipy (needs PyPI)
    python bench/bench_client.py --synthetic     # a generated tree of the same shape, offline
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from parrot_cvmfs.client.config import Configuration  # noqa: E402
from parrot_cvmfs.client.repository import Repository  # noqa: E402
from parrot_cvmfs.server.publisher import PublishOptions, publish  # noqa: E402
from tests.servers import Nginx  # noqa: E402


def make_venv(path: str) -> str:
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    subprocess.run(
        [os.path.join(path, "bin", "pip"), "install", "-q", "numpy", "scipy"], check=True
    )
    return path


def make_synthetic(path: str, files: int = 5000, total_mb: int = 250, seed: int = 1) -> str:
    """Sizes drawn like a Python environment's: mostly small, a few large libraries."""
    rnd = random.Random(seed)
    sizes = [int(rnd.lognormvariate(8.0, 1.6)) for _ in range(files)]
    scale = total_mb * 1e6 / sum(sizes)
    for i, s in enumerate(sizes):
        d = os.path.join(path, f"pkg{i % 97:02d}", f"sub{i % 13}")
        os.makedirs(d, exist_ok=True)
        n = max(1, int(s * scale))
        # half random, half text: compressible like real code and libraries
        text = (b"value = compute(x, y)  # comment\n" * (n // 64 + 1))[: n - n // 2]
        with open(os.path.join(d, f"file{i}.py"), "wb") as f:
            f.write(os.urandom(n // 2) + text)
    return path


def tree_stats(path: str) -> tuple[int, int]:
    n = total = 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                n += 1
                total += os.path.getsize(p)
    return n, total


def read_all(repo: Repository, workers: int) -> tuple[int, int]:
    entries = [e for e in repo.walk("/") if e.is_regular]

    def one(e):
        with open(repo.local_path(e), "rb") as f:
            return len(f.read())

    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(one, entries))
    return len(entries), total


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--synthetic", action="store_true", help="generated tree instead of a numpy/scipy venv"
    )
    ap.add_argument("--tree", help="publish this existing directory")
    ap.add_argument("-j", "--jobs", type=int, default=8, help="parallel readers / curl processes")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-client.")
    try:
        if args.tree:
            src = args.tree
        elif args.synthetic:
            src = make_synthetic(os.path.join(work, "tree"))
        else:
            src = make_venv(os.path.join(work, "venv"))
        nfiles, nbytes = tree_stats(src)
        mb = nbytes / 1e6
        print(f"tree: {nfiles} files, {mb:.1f} MB")

        stratum, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
        t = time.monotonic()
        r = publish(
            PublishOptions(source=src, name="bench.test.org", stratum=stratum, keys_dir=keys)
        )
        dt = time.monotonic() - t
        print(
            f"publish: {dt:.2f} s  {nfiles / dt:.0f} files/s  {mb / dt:.1f} MB/s "
            f"({r.objects_written} objects, {r.catalogs} catalogs)"
        )

        nginx = Nginx(stratum, os.path.join(work, "nginx"))
        try:
            env = dict(os.environ)
            env["PARROT_CVMFS_REPO"] = (
                f"bench.test.org:url={nginx.url}/bench.test.org,"
                f"pubkey={keys}/bench.test.org.pub,CVMFS_QUOTA_LIMIT=-1"
            )
            env["PARROT_CVMFS_CONFIG_DIR"] = "/nonexistent"
            config = Configuration(env=env)

            # baseline: the same objects with curl, args.jobs in parallel
            objects = []
            for dirpath, _, filenames in os.walk(os.path.join(stratum, "bench.test.org", "data")):
                for f in filenames:
                    if not dirpath.endswith("txn"):
                        rel = os.path.relpath(os.path.join(dirpath, f), stratum)
                        objects.append(f"{nginx.url}/{rel}")
            # one curl per parallel slot, each fetching its share over one kept-alive
            # connection and storing every object in a file, as a download does
            configs = []
            dl = os.path.join(work, "curl-download")
            os.makedirs(dl)
            for k in range(args.jobs):
                cfg = os.path.join(work, f"curl{k}.cfg")
                with open(cfg, "w") as f:
                    for i, u in enumerate(objects[k :: args.jobs]):
                        f.write(f'url = "{u}"\noutput = "{dl}/{k}.{i}"\n')
                configs.append(cfg)
            t = time.monotonic()
            procs = [subprocess.Popen(["curl", "-s", "-f", "-K", c]) for c in configs]
            assert all(p.wait() == 0 for p in procs)
            base = time.monotonic() - t
            print(f"baseline curl -P{args.jobs}: {base:.2f} s for {len(objects)} objects")

            cache = os.path.join(work, "cache")
            t = time.monotonic()
            with Repository.mount("bench.test.org", cache_dir=cache, config=config) as repo:
                n, total = read_all(repo, args.jobs)
            cold = time.monotonic() - t
            assert total == nbytes, (total, nbytes)
            print(
                f"cold read ({args.jobs} threads): {cold:.2f} s  {n / cold:.0f} files/s  "
                f"{mb / cold:.1f} MB/s"
            )
            t = time.monotonic()
            with Repository.mount("bench.test.org", cache_dir=cache, config=config) as repo:
                n, total = read_all(repo, 1)
            warm = time.monotonic() - t
            print(
                f"warm read (1 thread): {warm:.2f} s  {n / warm:.0f} files/s  {mb / warm:.1f} MB/s"
            )
            print(f"ratio cold read / parallel curl download: {cold / base:.2f}")
        finally:
            nginx.stop()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
