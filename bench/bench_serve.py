#!/usr/bin/env python3
"""`parrot_cvmfs serve` against nginx on the same stratum, on loopback.

(1) Cold runs of workload P (bench_workload.py's numpy/scipy import from a venv
published into a repository): parrot_run with an empty cache each run, alternating
between the two servers; medians. (2) Raw throughput: 2,000 objects (90% 3 KB, 10%
200 KB) fetched by curl over one kept-alive connection, then by 4 curls at once.
Target: the cold run with `serve` within 5% of nginx's.

    python bench/bench_serve.py [--runs 5] [--tree DIR] [--serve-from FILE]

`--serve-from` loads `StratumServer` from another serve.py (a baseline checkout's),
for before/after figures with the same client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench.bench_workload import IMPORTS, NAME, make_venv  # noqa: E402
from bench.common import stratum_server_class, workdir  # noqa: E402
from parrot_cvmfs.server.publisher import PublishOptions, publish  # noqa: E402
from tests.servers import Nginx  # noqa: E402


def cold_run(url: str, keys: str, work: str, i: int) -> float:
    env = dict(os.environ)
    env["PARROT_CVMFS_REPO"] = f"{NAME}:url={url}/{NAME},pubkey={keys}/{NAME}.pub"
    env["PARROT_CVMFS_CONFIG_DIR"] = "/nonexistent"
    launcher = os.path.join(os.path.dirname(sys.executable), "parrot_run")
    cache = os.path.join(work, f"cache{i}")
    cmd = [launcher, "--cache-dir", cache, "--", f"/cvmfs/{NAME}/venv/bin/python", "-c", IMPORTS]
    t = time.monotonic()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.monotonic() - t
    if p.returncode != 0:
        raise RuntimeError(f"parrot_run failed: {p.stderr.decode()[-500:]}")
    subprocess.run(["rm", "-rf", cache], check=True)
    return dt


def curl_load(url: str, work: str) -> tuple[float, float]:
    """Seconds for 2,000 GETs on one connection, and for 4 x 2,000 on four."""
    root = os.path.join(work, "load", "load.bench.org", "data")
    cfg = os.path.join(work, f"urls{abs(hash(url))}.cfg")
    with open(cfg, "w") as f:
        for i in range(2000):
            f.write(f'url = "{url}/load.bench.org/data/f{i}"\noutput = "/dev/null"\n')
    assert os.path.isdir(root)
    t = time.monotonic()
    subprocess.run(["curl", "-sf", "-K", cfg], check=True)
    one = time.monotonic() - t
    t = time.monotonic()
    procs = [subprocess.Popen(["curl", "-sf", "-K", cfg]) for _ in range(4)]
    if not all(p.wait() == 0 for p in procs):
        raise RuntimeError("curl failed")
    return one, time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tree", help="a directory holding venv/ with numpy and scipy")
    ap.add_argument("--serve-from", help="serve.py to take StratumServer from")
    args = ap.parse_args()
    server_class = stratum_server_class(args.serve_from)
    with workdir("bench-serve.") as work:
        tree = args.tree or make_venv(os.path.join(work, "tree"))
        strata, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
        r = publish(PublishOptions(source=tree, name=NAME, stratum=strata, keys_dir=keys))
        print(f"published {tree}: {r.files} files")
        load = os.path.join(work, "load", "load.bench.org", "data")
        os.makedirs(load)
        for i in range(2000):
            with open(os.path.join(load, f"f{i}"), "wb") as f:
                f.write(os.urandom(3000 if i % 10 else 200_000))
        os.symlink(os.path.join(work, "load", "load.bench.org"), f"{strata}/load.bench.org")
        ours = server_class(strata)
        ours.start_background()
        nginx = Nginx(strata, os.path.join(work, "nginx"))
        servers = {"serve": ours.url, "nginx": nginx.url}
        try:
            times: dict[str, list[float]] = {k: [] for k in servers}
            for i in range(args.runs):
                for k, url in servers.items():
                    times[k].append(cold_run(url, keys, work, i))
            for k, v in times.items():
                print(f"cold run, {k:>5}: median {statistics.median(v):.2f} s  (min {min(v):.2f})")
            ratio = statistics.median(times["serve"]) / statistics.median(times["nginx"])
            print(f"ratio serve / nginx: {ratio:.2f} (target <= 1.05)")
            for k, url in servers.items():
                one, four = curl_load(url, work)
                print(
                    f"curl, {k:>5}: 2,000 GETs on one connection {one:.2f} s, 4 x 2,000 {four:.2f} s"
                )
        finally:
            nginx.stop()
            ours.shutdown()
            ours.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
