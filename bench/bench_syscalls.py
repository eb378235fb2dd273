#!/usr/bin/env python3
"""The cost of one intercepted system call.

(1) `statloop stat /cvmfs/<repo>/file N` under parrot_run (warm cache), against
    `mini_tracer` (bench/mini_tracer.c), a tracer that does nothing but answer
    stat() with a canned result at a single stop: once with ptrace (one
    SECCOMP_RET_TRACE stop; the issue's baseline) and once with a seccomp user
    notification (the mechanism parrot_run uses by default). Target: parrot_run /
    minimal tracer <= 1.3.
(2) The same loop on a local path under parrot_run, against native: what we add to
    calls that are not ours.
Also fstat() of a descriptor opened from /cvmfs, open()+close() of a /cvmfs file, and
stat() over 3,000 different paths (a new path at every call, as in a real program):
answered from /cvmfs, handed back to the kernel (local paths), native.

Each configuration runs --rounds times, alternating; medians of the per-call times.

    python bench/bench_syscalls.py [--calls 100000] [--rounds 5] [--mode notify|ptrace]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench.common import published_and_served, workdir  # noqa: E402

NAME = "syscalls.bench.org"
TREE_FILES = 3000  # as in statloop.c


def build(work: str) -> tuple[str, str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench_syscalls: a C compiler (cc) is needed to build the baseline tracer")
    out = []
    for name in ("statloop", "mini_tracer"):
        exe = os.path.join(work, name)
        subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, f"{name}.c")], check=True)
        out.append(exe)
    return out[0], out[1]


def per_call(cmd: list[str], env: dict) -> float:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()[-400:]}")
    return float(p.stdout.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=["notify", "ptrace"], help="force parrot_run's mode")
    args = ap.parse_args()
    with workdir("bench-syscalls.") as work:
        statloop, mini = build(work)
        src = os.path.join(work, "tree")
        os.makedirs(os.path.join(src, "dir"))
        for path in (os.path.join(src, "dir", "file"), os.path.join(work, "local-file")):
            with open(path, "wb") as f:
                f.write(b"x" * 1234)
        for tree in (os.path.join(src, "tree"), os.path.join(work, "local-tree")):
            os.makedirs(tree)
            for i in range(TREE_FILES):  # statloop's names
                with open(os.path.join(tree, str(i)), "wb") as f:
                    f.write(str(i).encode())
        with published_and_served(src, work, NAME, args.mode) as (env, _):
            parrot = [
                sys.executable,
                "-m",
                "parrot_cvmfs.tracer.main",
                "--cache-dir",
                os.path.join(work, "cache"),
                "--",
            ]
            cv, local, n = (
                f"/cvmfs/{NAME}/dir/file",
                os.path.join(work, "local-file"),
                str(args.calls),
            )
            ltree = os.path.join(work, "local-tree")
            runs = {
                "parrot_run stat /cvmfs": parrot + [statloop, "stat", cv, n],
                "mini ptrace stat /cvmfs": [mini, "--", statloop, "stat", cv, n],
                "mini notify stat /cvmfs": [mini, "--notify", "--", statloop, "stat", cv, n],
                "parrot_run stat local": parrot + [statloop, "stat", local, n],
                "native stat local": [statloop, "stat", local, n],
                "parrot_run fstat /cvmfs": parrot + [statloop, "fstat", cv, n],
                "native fstat local": [statloop, "fstat", local, n],
                "parrot_run open /cvmfs": parrot + [statloop, "open", cv, str(args.calls // 10)],
                "native open local": [statloop, "open", local, str(args.calls // 10)],
                "parrot_run stat /cvmfs tree": parrot
                + [statloop, "tree", f"/cvmfs/{NAME}/tree", n],
                "parrot_run stat local tree": parrot + [statloop, "tree", ltree, n],
                "native stat local tree": [statloop, "tree", ltree, n],
            }
            per_call(runs["parrot_run open /cvmfs"], env)  # warm: fetched, answers kept
            per_call(runs["parrot_run stat /cvmfs tree"], env)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, cmd in runs.items():
                    times[k].append(per_call(cmd, env))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{args.calls} calls a run, {args.rounds} rounds, medians (us per call):")
            for k, v in med.items():
                print(f"  {k:<26} {v:8.2f}   (min {min(times[k]):.2f}, max {max(times[k]):.2f})")
            p = med["parrot_run stat /cvmfs"]
            print(
                f"(1) parrot_run / one-stop ptrace tracer: {p / med['mini ptrace stat /cvmfs']:.2f}"
                "  (target <= 1.3)"
            )
            print(
                f"    parrot_run / one-stop notification tracer: {p / med['mini notify stat /cvmfs']:.2f}"
            )
            loc, nat = med["parrot_run stat local"], med["native stat local"]
            print(
                f"(2) a call that is not ours: {loc:.2f} us under parrot_run, {nat:.2f} us native "
                f"(+{loc - nat:.2f} us, {loc / nat:.1f}x)"
            )
            print(
                f"    fstat of a /cvmfs descriptor: {med['parrot_run fstat /cvmfs']:.2f} us "
                f"(native {med['native fstat local']:.2f}); open+close of a /cvmfs file: "
                f"{med['parrot_run open /cvmfs']:.2f} us (native {med['native open local']:.2f})"
            )
            print(
                f"    stat over {TREE_FILES} different paths: answered from /cvmfs"
                f" {med['parrot_run stat /cvmfs tree']:.2f} us, handed back to the kernel"
                f" {med['parrot_run stat local tree']:.2f} us, native {med['native stat local tree']:.2f} us"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
