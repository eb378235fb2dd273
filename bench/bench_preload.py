#!/usr/bin/env python3
"""Preload benchmark: a ~5,000-file / ~250 MB repository served by loopback nginx.

Alternates, --rounds times, (1) `parrot_cvmfs preload` into an empty directory with
the default -j and (2) the baseline: a plain parallel download of the same objects
with curl (-j processes, each over one kept-alive connection, every object into a
file). Prints medians: MB/s of stored (uncompressed) data and files/s, and the ratio
of the two times. Then publishes a revision with one file changed and times an
incremental preload into the same directory, with what it fetched and skipped.
Target: >= 150 MB/s uncompressed on 2 cores; the incremental run fetches only the
changed objects. With --bundle, also a bundle round trip each round: the time
`preload --bundle` adds to the preload (fetching the objects raw again and writing the
archive) and an unbundle into an empty directory (verifying and inflating).

    python bench/bench_preload.py [--synthetic | --venv | --tree DIR] [--rounds 3] [--bundle]
                                  [--server nginx|serve [--serve-from FILE]]

`--server serve` serves the repository with `parrot_cvmfs serve` instead of nginx.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from bench_client import make_synthetic, make_venv, tree_stats  # noqa: E402

from parrot_cvmfs.client.bundle import unbundle  # noqa: E402
from parrot_cvmfs.client.preload import DEFAULT_JOBS, preload  # noqa: E402
from parrot_cvmfs.server.publisher import PublishOptions, publish  # noqa: E402
from tests.servers import Nginx  # noqa: E402

NAME = "preload.bench.org"


def curl_download(urls: list[str], out: str, jobs: int) -> float:
    os.makedirs(out)
    configs = []
    for k in range(jobs):
        cfg = os.path.join(out, f"curl{k}.cfg")
        with open(cfg, "w") as f:
            for i, u in enumerate(urls[k::jobs]):
                f.write(f'url = "{u}"\noutput = "{out}/{k}.{i}"\n')
        configs.append(cfg)
    os.sync()
    t = time.monotonic()
    procs = [subprocess.Popen(["curl", "-s", "-f", "-K", c]) for c in configs]
    if not all(p.wait() == 0 for p in procs):
        raise RuntimeError("curl failed")
    return time.monotonic() - t


class _Served:
    """`parrot_cvmfs serve` in the background, stopped as Nginx is."""

    def __init__(self, stratum: str, serve_py: str | None):
        from bench.common import stratum_server_class

        self.srv = stratum_server_class(serve_py)(stratum)
        self.srv.start_background()
        self.url = self.srv.url

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--synthetic", action="store_true", help="a generated tree (the default)")
    g.add_argument("--venv", action="store_true", help="a venv with numpy and scipy (needs PyPI)")
    g.add_argument("--tree", help="publish this existing directory")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS)
    ap.add_argument("--bundle", action="store_true", help="also time a bundle round trip")
    ap.add_argument("--server", choices=["nginx", "serve"], default="nginx")
    ap.add_argument("--serve-from", help="with --server serve: serve.py to take it from")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-preload.")
    nginx = None
    try:
        if args.tree:
            src = os.path.join(work, "tree")
            shutil.copytree(args.tree, src, symlinks=True)
        elif args.venv:
            src = make_venv(os.path.join(work, "tree"))
        else:
            src = make_synthetic(os.path.join(work, "tree"))
        nfiles, nbytes = tree_stats(src)
        stratum, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
        publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys))
        nginx = (
            Nginx(stratum, os.path.join(work, "nginx"))
            if args.server == "nginx"
            else _Served(stratum, args.serve_from)
        )
        url, pub = f"{nginx.url}/{NAME}", os.path.join(keys, f"{NAME}.pub")
        data = os.path.join(stratum, NAME, "data")
        urls = [
            f"{url}/data/{os.path.relpath(os.path.join(d, f), data)}"
            for d, _, fs in os.walk(data)
            for f in fs
            if not d.endswith("txn")
        ]
        print(f"repository: {nfiles} files, {nbytes / 1e6:.1f} MB, {len(urls)} objects")
        t_pre, t_curl, stored = [], [], 0
        for r in range(args.rounds):
            d = os.path.join(work, f"preload{r}")
            os.sync()
            res = preload(url, d, pubkeys=pub, jobs=args.jobs)
            t_pre.append(res.seconds)
            stored = res.bytes_fetched
            t_curl.append(curl_download(urls, os.path.join(work, f"curl{r}"), args.jobs))
            if r < args.rounds - 1:
                shutil.rmtree(d)
            shutil.rmtree(os.path.join(work, f"curl{r}"))
        pre, base = statistics.median(t_pre), statistics.median(t_curl)
        print(
            f"preload -j{args.jobs}: median {pre:.2f} s  {stored / pre / 1e6:.1f} MB/s stored "
            f"{res.fetched / pre:.0f} files/s  (runs: {', '.join(f'{t:.2f}' for t in t_pre)})"
        )
        print(
            f"curl -P{args.jobs}: median {base:.2f} s  {len(urls) / base:.0f} files/s  "
            f"(runs: {', '.join(f'{t:.2f}' for t in t_curl)})"
        )
        print(f"ratio preload / curl: {pre / base:.2f}   target: >= 150 MB/s stored")
        if args.bundle:
            t_bundle, t_unbundle = [], []
            for _ in range(args.rounds):
                b, site = os.path.join(work, "b.tar.zst"), os.path.join(work, "site")
                os.sync()
                t = time.monotonic()
                res_b = preload(
                    url, os.path.join(work, "bp"), pubkeys=pub, jobs=args.jobs, bundle=b
                )
                t_bundle.append(time.monotonic() - t - res_b.seconds)
                os.sync()
                t = time.monotonic()
                unbundle(b, site, pubkeys=pub)
                t_unbundle.append(time.monotonic() - t)
                size = os.path.getsize(b)
                shutil.rmtree(os.path.join(work, "bp"))
                shutil.rmtree(site)
                os.unlink(b)
            print(
                f"bundle: median {statistics.median(t_bundle):.2f} s ({size / 1e6:.1f} MB)  "
                f"unbundle: median {statistics.median(t_unbundle):.2f} s  (runs: "
                f"{', '.join(f'{a:.2f}+{u:.2f}' for a, u in zip(t_bundle, t_unbundle, strict=True))})"
            )
        # incremental: one file changes
        changed = max(
            (os.path.join(dp, f) for dp, _, fs in os.walk(src) for f in fs), key=os.path.getsize
        )
        with open(changed, "ab") as f:
            f.write(b"# one more line\n")
        publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys))
        res = preload(url, d, pubkeys=pub, jobs=args.jobs)
        print(
            f"incremental after changing {os.path.relpath(changed, src)}: {res.seconds:.2f} s, "
            f"fetched {res.fetched} objects ({res.bytes_fetched / 1e6:.2f} MB), skipped "
            f"{res.skipped}, catalogs pulled {res.catalogs_pulled}"
        )
    finally:
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
