#!/usr/bin/env python3
"""Workload C: a Debian 11 userland as the job's root.

Two jobs, each run alternating with a warm cache:
  procs   /bin/sh running 60 short processes (20 x true, cat, ls), the shape of a
          job script or a configure step;
  python  python3 -c "import json, email.mime.text, http.client, sqlite3, argparse".

Rows: `chroot` of the tree on local disk (the floor; needs root), parrot_run
`--root /cvmfs/<repo>` of the same tree published by our publisher, and PRoot
`-r` of the local tree. Prints medians and the ratios against the targets:
parrot_run <= 1.5x chroot, and faster than PRoot (measured 1.6-1.9x chroot).

    python bench/bench_container.py [--runs 15] [--tree DIR] [--rows chroot,proot,parrot]
        [--mode notify|ptrace] [--baseline PARROT_RUN] [--stats]

--baseline adds a row `base`: another checkout's parrot_run (e.g. its .venv/bin/parrot_run)
run alternating with this one, with its own cache, for before/after figures in one run.
--stats prints, per job, the --stats line of a warm run of each parrot_run (the calls
handed to Python).

The tree is the tests' Debian 11 userland (tests/userlands.py: built with debootstrap
once, cached in ${PARROT_CVMFS_TEST_CACHE:-/var/tmp/parrot-cvmfs-test-cache}) unless
--tree names one. parrot_run's row needs `parrot_run --root`: without it the benchmark
stops with one line (give `--rows chroot,proot` to measure the others alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench.common import published_and_served, workdir  # noqa: E402

NAME = "bullseye.bench.org"
IMPORTS = "import json, email.mime.text, http.client, sqlite3, argparse"
PROCS = (
    "i=0; while [ $i -lt 20 ]; do /bin/true; cat /etc/debian_version >/dev/null;"
    " ls /usr/bin >/dev/null; i=$((i+1)); done"
)
JOBS = {"procs": ["/bin/sh", "-c", PROCS], "python": ["/usr/bin/python3", "-c", IMPORTS]}
GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
ROWS = ("chroot", "parrot", "proot")


def timed(cmd: list[str], env: dict) -> float:
    t = time.monotonic()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"bench_container: {cmd[0]} failed: {p.stderr.decode()[-300:]}")
    return dt


def warm_stats(cmd: list[str], env: dict) -> str:
    """The counts of intercepted calls of one run of a parrot_run command (--stats)."""
    at = cmd.index("--")
    p = subprocess.run(
        [*cmd[:at], "--stats", *cmd[at:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines = p.stderr.decode(errors="replace").splitlines()
    return " | ".join(
        x.removeprefix("parrot_run: ") for x in lines if "intercepted" in x or "by call" in x
    )


def parrot_launcher() -> list[str]:
    """The installed parrot_run, as users run it (python -m adds runpy's imports)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "parrot_run")
    if os.access(launcher, os.X_OK):
        return [launcher]
    found = shutil.which("parrot_run")
    return [found] if found else [sys.executable, "-m", "parrot_cvmfs.tracer.main"]


def has_root_option(launcher: list[str]) -> bool:
    p = subprocess.run([*launcher, "--help"], capture_output=True, timeout=60)
    return "--root" in p.stdout.decode()


def default_tree() -> str:
    from tests.userlands import UserlandBuildFailed, UserlandUnavailable, ensure_userland

    try:
        return ensure_userland("bullseye")
    except (UserlandUnavailable, UserlandBuildFailed) as e:
        raise SystemExit(f"bench_container: no Debian 11 userland: {e} (or give --tree)") from None


def commands(
    rows, tree: str, launcher: list[str], cache: str, baseline: str | None = None
) -> dict[str, dict[str, list]]:
    """{job: {row: argv}} for the rows asked."""
    out: dict[str, dict[str, list]] = {}
    parrots = {"parrot": (launcher, cache)}
    if baseline:
        parrots["base"] = ([baseline], cache + "-base")
    for job, argv in JOBS.items():
        cmds: dict[str, list] = {}
        if "chroot" in rows:
            cmds["chroot"] = ["chroot", tree, *argv]
        if "parrot" in rows:
            for row, (run, where) in parrots.items():
                cmds[row] = [*run, "--cache-dir", where, "--root", f"/cvmfs/{NAME}", "--", *argv]
        if "proot" in rows:
            cmds["proot"] = [shutil.which("proot") or "proot", "-r", tree, *argv]
        out[job] = cmds
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--tree", help="a Debian 11 root on local disk (default: the tests' one)")
    ap.add_argument("--rows", default=",".join(ROWS), help="which of chroot,parrot,proot to run")
    ap.add_argument("--mode", choices=["notify", "ptrace"], help="force parrot_run's mode")
    ap.add_argument("--baseline", help="another parrot_run to compare with (row `base`)")
    ap.add_argument("--stats", action="store_true", help="print a warm run's --stats lines")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if not rows or any(r not in ROWS for r in rows):
        raise SystemExit(f"bench_container: --rows takes some of {','.join(ROWS)}")
    launcher = parrot_launcher()
    if "parrot" in rows and not has_root_option(launcher):
        raise SystemExit(
            "bench_container: this parrot_run has no --root option yet"
            " (run with --rows chroot,proot to measure the others)"
        )
    if "chroot" in rows and os.geteuid() != 0:
        raise SystemExit("bench_container: the chroot row needs root (or --rows parrot,proot)")
    if "proot" in rows and shutil.which("proot") is None:
        raise SystemExit("bench_container: proot is not installed (or leave it out of --rows)")
    tree = os.path.realpath(args.tree) if args.tree else default_tree()
    with workdir("bench-container.") as work:
        with published_and_served(tree, work, NAME, args.mode) as (env, r):
            print(f"published {tree}: {r.files} files")
            env = {**env, **GUEST_ENV}
            cache = os.path.join(work, "cache")
            table = commands(rows, tree, launcher, cache, args.baseline)
            for cmds in table.values():  # warm: cache filled, page cache hot
                for cmd in cmds.values():
                    timed(cmd, env)
                    timed(cmd, env)
            if args.stats:
                for job, cmds in table.items():
                    for k in ("parrot", "base"):
                        if k in cmds:
                            print(f"{job} {k}: {warm_stats(cmds[k], env)}")
            for job, cmds in table.items():
                results: dict[str, list[float]] = {k: [] for k in cmds}
                for _ in range(args.runs):
                    for k, cmd in cmds.items():
                        results[k].append(timed(cmd, env))
                med = {k: statistics.median(v) for k, v in results.items()}
                print(f"{job}: {' '.join(JOBS[job])[:70]}")
                for k, v in results.items():
                    print(
                        f"  {k:>7}: median {1000 * med[k]:7.1f} ms"
                        f"  (min {1000 * min(v):.1f}, max {1000 * max(v):.1f}, n={len(v)})"
                    )
                if "chroot" in med:
                    for k in ("parrot", "base", "proot"):
                        if k in med:
                            target = "  (target <= 1.5)" if k == "parrot" else ""
                            print(f"  ratio {k} / chroot: {med[k] / med['chroot']:.2f}{target}")
                if "parrot" in med and "proot" in med:
                    verdict = "faster" if med["parrot"] < med["proot"] else "NOT faster"
                    print(
                        f"  parrot_run is {verdict} than PRoot:"
                        f" {med['proot'] / med['parrot']:.2f}x (target > 1)"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
