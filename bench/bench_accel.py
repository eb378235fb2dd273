#!/usr/bin/env python3
"""The in-process accelerator experiment (issue 14): csrc/accel/accel.c, preloaded
into the job, answers readlink, stat, lstat, access and realpath of /cvmfs paths from
a sealed memfd holding the kept answers, so that those calls never reach the seccomp
filter. Not part of parrot_run: this benchmark builds the library, writes the table
from the memo file a warm run kept (tracer/memo.py), and passes both to the job
(`--env LD_PRELOAD=...`, `--env PARROT_ACCEL_FD=N`, the memfd inherited).

Rows: the compile of bench_workload (10 C files with the toolchain from /cvmfs) and
`find -type f` over the published venv, each natively, under parrot_run, and under
parrot_run with the accelerator; medians of alternating runs, and what the filter
still stops (--stats). The compile's output must be the same program.

    python bench/bench_accel.py [--runs 11] [--rows compile,find]
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench.bench_workload import (  # noqa: E402
    TOOLCHAIN_REPO,
    VENV_REPO,
    Bench,
    c_sources,
    compile_script,
    venv_tree,
)
from bench.common import published_and_served, workdir  # noqa: E402
from bench.toolchain import toolchain_tree  # noqa: E402
from parrot_cvmfs.tracer.memo import MAGIC as MEMO_MAGIC  # noqa: E402

ACCEL_MAGIC = b"PCACCEL1"  # csrc/accel/accel.h
ACCEL_HEAD = 16
RECORD = struct.Struct("<BBHI")


def build_library(work: str) -> str:
    out = os.path.join(work, "libparrot_accel.so")
    src = os.path.join(HERE, "..", "csrc", "accel", "accel.c")
    # the NULL checks of nonnull arguments stay: a NULL path goes to the real call
    flags = ["-O2", "-shared", "-fPIC", "-fno-delete-null-pointer-checks", "-Wno-nonnull-compare"]
    subprocess.run(["gcc", *flags, "-o", out, src, "-ldl"], check=True)
    return out


def fnv1a(b: bytes) -> int:
    h = 1469598103934665603
    for c in b:
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def memo_answers(cache: str) -> dict[tuple[int, bytes], bytes]:
    """The 'A' records of every memo file of `cache` (a later one wins, as in C)."""
    out: dict[tuple[int, bytes], bytes] = {}
    for path in sorted(glob.glob(os.path.join(cache, "memo", "*.memo"))):
        with open(path, "rb") as f:
            b = f.read()
        if not b.startswith(MEMO_MAGIC):
            continue
        (slen,) = struct.unpack_from("<I", b, len(MEMO_MAGIC))
        p = len(MEMO_MAGIC) + 4 + slen
        while p + RECORD.size <= len(b):
            kind, follow, klen, plen = RECORD.unpack_from(b, p)
            end = p + RECORD.size + klen + plen
            if end > len(b):
                break
            if kind == ord("A"):
                out[(follow, b[p + RECORD.size : p + RECORD.size + klen])] = b[p:end]
            p = end
    return out


def table_bytes(answers: dict[tuple[int, bytes], bytes]) -> bytes:
    """The accelerator's table (accel.h) of `answers`."""
    n = 1
    while n < 2 * max(1, len(answers)):
        n *= 2
    slots = [0] * n
    body = bytearray()
    base = ACCEL_HEAD + 4 * n
    for (follow, key), rec in answers.items():
        i = (fnv1a(key) ^ follow) & (n - 1)
        while slots[i]:
            i = (i + 1) & (n - 1)
        slots[i] = base + len(body)
        body += rec
    return ACCEL_MAGIC + struct.pack("<II", n, 0) + struct.pack(f"<{n}I", *slots) + bytes(body)


def sealed_memfd(data: bytes) -> int:
    """A memfd holding `data`, sealed against any change (the job maps it read-only and
    cannot make it say anything else); inheritable."""
    fd = os.memfd_create("parrot-accel", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(
        fd,
        fcntl.F_ADD_SEALS,
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
    )
    os.set_inheritable(fd, True)
    return fd


def accel_cmd(b: Bench, repo: str, job: list[str], lib: str, fd: int, *extra: str) -> list[str]:
    env = ["--env", f"LD_PRELOAD={lib}", "--env", f"PARROT_ACCEL_FD={fd}"]
    return b.parrot("parrot_run", repo, job, *env, *extra)


def run_row(
    b: Bench,
    title: str,
    repo: str,
    native: list[str],
    job: list[str],
    env: dict,
    cwd: str,
    lib: str,
) -> None:
    plain = b.parrot("parrot_run", repo, job)
    b.warm({"parrot_run": plain}, env, cwd)
    cache = plain[plain.index("--cache-dir") + 1]
    answers = memo_answers(cache)
    fd = sealed_memfd(table_bytes(answers))
    try:
        accel = accel_cmd(b, repo, job, lib, fd)
        for label, cmd in (("parrot_run", plain), ("parrot_run + accel", accel)):
            stats = [*cmd[: cmd.index("--")], "--stats", *cmd[cmd.index("--") :]]
            p = subprocess.run(
                stats,
                env=env,
                cwd=cwd,
                capture_output=True,
                pass_fds=(fd,),
            )
            lines = [
                ln.strip()
                for ln in p.stderr.decode().splitlines()
                if "intercepted" in ln or "by call" in ln
            ]
            print(f"  {label}: {' / '.join(lines)[:400]}")
        cmds = {"native": native, "parrot_run": plain, "parrot_run + accel": accel}
        print(f"  the table: {len(answers)} answers")
        b.pass_fds = (fd,)
        try:
            med, low = b.compare(title, cmds, env, cwd, warmed=True)
        finally:
            b.pass_fds = ()
        for k in ("parrot_run", "parrot_run + accel"):
            print(
                f"  ratio {k} / native: {med[k] / med['native']:.2f}; of minimums {low[k] / low['native']:.2f}"
            )
    finally:
        os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--rows", default="compile,find")
    ap.add_argument("--mode", choices=["notify", "ptrace"], help="force parrot_run's mode")
    args = ap.parse_args()
    args.baseline, args.cold_runs = None, 0
    rows = args.rows.split(",")
    with workdir("bench-accel.") as work:
        b = Bench(args, work)
        lib = build_library(work)
        if "compile" in rows:
            tree = toolchain_tree()
            src = os.path.join(work, "csrc")
            names = c_sources(src)
            pub = os.path.join(work, "toolchain")
            os.makedirs(pub)
            out = os.path.join(work, "cout")
            os.makedirs(out)
            with published_and_served(tree, pub, TOOLCHAIN_REPO, args.mode) as (env, _):
                root = f"/cvmfs/{TOOLCHAIN_REPO}"
                job = compile_script(root, src, names)
                run_row(b, "compile, toolchain in /cvmfs", TOOLCHAIN_REPO,
                        compile_script(tree, src, names), job, env, out, lib)  # fmt: skip
                # the accelerated compile makes the same program
                shutil.copy(os.path.join(out, "prog"), os.path.join(work, "prog.accel"))
                subprocess.run(compile_script(tree, src, names), cwd=out, check=True)
                with (
                    open(os.path.join(out, "prog"), "rb") as f1,
                    open(os.path.join(work, "prog.accel"), "rb") as f2,
                ):
                    same = f1.read() == f2.read()
                print(
                    f"  the accelerated compile's program is {'the same' if same else 'DIFFERENT'}"
                )
        if "find" in rows:
            tree = venv_tree()
            pub = os.path.join(work, "venv")
            os.makedirs(pub)
            with published_and_served(tree, pub, VENV_REPO, args.mode) as (env, _):
                job = ["find", f"/cvmfs/{VENV_REPO}/venv", "-type", "f"]
                native = ["find", os.path.join(tree, "venv"), "-type", "f"]
                run_row(b, "find -type f over the venv", VENV_REPO, native, job, env, work, lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
