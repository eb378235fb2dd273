#!/usr/bin/env python3
"""Huge directories: N entries in one directory (or spread over --dirs directories).

A repository made by our publisher (kept in ~/.cache/parrot-cvmfs-bench, it takes a while
for a million entries), served on loopback. Prints, each a median of --rounds:
- `parrot_cvmfs ls -l` of the directory, cold cache (the baseline);
- `parrot_run ls -l` of it, cold and warm cache, and their ratios to the baseline
  (target: cold <= 5x);
- with --dirs > 1, `parrot_run find -printf '%s %p'` over the whole repository instead;
- the supervisor's peak resident memory (target: below 300 MB).

    python bench/bench_bigdir.py [--entries 100000] [--dirs 1] [--rounds 3] [--mode notify|ptrace]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from parrot_cvmfs.server.publisher import PublishOptions, publish  # noqa: E402
from parrot_cvmfs.server.serve import StratumServer  # noqa: E402

NAME = "bigdir.bench.org"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "parrot-cvmfs-bench")


def repository(entries: int, dirs: int) -> tuple[str, str]:
    """(stratum, public key) of a repository with `entries` files in `dirs` directories."""
    base = os.path.join(CACHE, f"bigdir-{entries}-{dirs}")
    stratum, keys = os.path.join(base, "stratum"), os.path.join(base, "keys")
    if os.path.exists(os.path.join(base, "done")):
        return stratum, os.path.join(keys, f"{NAME}.pub")
    shutil.rmtree(base, ignore_errors=True)
    src = os.path.join(base, "src")
    per = -(-entries // dirs)
    n = 0
    for d in range(dirs):
        dd = os.path.join(src, "big" if dirs == 1 else f"d{d:05d}")
        os.makedirs(dd)
        for i in range(min(per, entries - n)):
            with open(os.path.join(dd, f"file{i:07d}.dat"), "w") as f:
                f.write(f"{i % 97}\n")  # 97 distinct contents: few objects
            n += 1
    t = time.monotonic()
    publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys))
    print(f"published {entries} entries in {dirs} directories in {time.monotonic() - t:.0f} s")
    shutil.rmtree(src)
    open(os.path.join(base, "done"), "w").close()
    return stratum, os.path.join(keys, f"{NAME}.pub")


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.monotonic()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.monotonic() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.decode()[-400:]}")
    return dt, p.stderr.decode()


def peak_mb(stderr: str) -> float:
    m = re.search(r"supervisor peak memory (\d+) MB", stderr)
    return float(m.group(1)) if m else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=("notify", "ptrace"), default=None)
    args = ap.parse_args()
    stratum, pub = repository(args.entries, args.dirs)
    srv = StratumServer(stratum)
    srv.start_background()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CVMFS_", "PARROT_CVMFS"))}
    env["PARROT_CVMFS_REPO"] = f"{NAME}:url={srv.url}/{NAME},pubkey={pub}"
    env["PARROT_CVMFS_CONFIG_DIR"] = "/nonexistent"
    if args.mode:
        env["PARROT_CVMFS_MODE"] = args.mode
    py = sys.executable
    cli = [py, "-m", "parrot_cvmfs"]
    run = [py, "-m", "parrot_cvmfs.tracer.main", "--stats"]
    mnt = f"/cvmfs/{NAME}"
    if args.dirs == 1:
        job, cli_args = ["ls", "-l", f"{mnt}/big"], ["ls", NAME, "/big", "-l"]
        what = f"ls -l of {args.entries} entries"
    else:
        job, cli_args = ["find", mnt, "-printf", "%s %p\\n"], ["find", NAME, "/", "--json"]
        what = f"find over {args.entries} entries in {args.dirs} directories"
    rows: dict[str, list[float]] = {"cli": [], "cold": [], "warm": []}
    peaks: dict[str, list[float]] = {"cold": [], "warm": []}
    work = tempfile.mkdtemp(prefix="bench-bigdir.")
    try:
        for r in range(args.rounds):
            c = os.path.join(work, f"cli{r}")
            rows["cli"].append(timed([*cli, *cli_args, "--cache-dir", c], env)[0])
            p = os.path.join(work, f"run{r}")
            for kind in ("cold", "warm"):
                dt, err = timed([*run, "--cache-dir", p, "--", *job], env)
                rows[kind].append(dt)
                peaks[kind].append(peak_mb(err))
            shutil.rmtree(c, ignore_errors=True)
            shutil.rmtree(p, ignore_errors=True)
    finally:
        srv.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{what} ({args.rounds} rounds, medians):")
    print(f"  parrot_cvmfs {' '.join(cli_args[:1])} (cold cache) {med['cli']:8.2f} s")
    for kind in ("cold", "warm"):
        print(
            f"  parrot_run, {kind} cache     {med[kind]:8.2f} s  ratio {med[kind] / med['cli']:5.2f}"
            f"  supervisor peak {max(peaks[kind]):5.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
