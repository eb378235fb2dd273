#!/usr/bin/env python3
"""parrot_run on whole workloads, against native and PRoot (issue 14's rows).

Rows (`--rows`, comma-separated; all by default):
  p        workload P: `python -c "import numpy, scipy.linalg, ..."` from a venv
           published into a repository. Target <= 1.12x native. A row running the venv
           from local disk under parrot_run (every call the filter stops is handed
           back to the kernel) splits the cost into interception and answering.
  true     `parrot_run /bin/true` against `/bin/true`: start-up. Target within 8 ms.
  find     `find -type f` over the published venv against native over the local one.
           Target <= 3x. Also `ls -lR`, without a target.
  compile  the machine's gcc, binutils, headers and crt files published as a sysroot
           tree (bench/toolchain.py): 10 C files compiled and linked with the
           toolchain from /cvmfs (`/cvmfs/<repo>/usr/bin/gcc --sysroot=/cvmfs/<repo>`),
           natively from the local tree, under PRoot. Target <= 1.11x native (the FUSE
           client's figure). `gcc -v` checks that cc1, as, ld and the headers really
           come from /cvmfs.
  cold     parrot_run with an empty cache, alternating with warm native runs, against
           `parrot_cvmfs serve` and against nginx. Targets: within 4.0x warm native
           with `serve`, and below the FUSE client's 1.28 s.

Every row runs alternating (medians, and minimums: on a shared host the traced runs,
which switch between processes thousands of times, move more with the load than the
native ones). `--baseline PARROT_RUN` adds another checkout's parrot_run (e.g.
/work/wt-r14base/.venv/bin/parrot_run) to every row, so that before and after come
from one run. PRoot (Debian `proot`) runs where it is installed, the tree bind-mounted
at the same /cvmfs path.

The venv (numpy and scipy, from pip) and the toolchain tree are built once and kept
under ${PARROT_CVMFS_TEST_CACHE:-/var/tmp/parrot-cvmfs-test-cache}.

    python bench/bench_workload.py [--rows p,true,find,compile,cold] [--runs 21]
        [--cold-runs 7] [--tree DIR] [--baseline PARROT_RUN] [--mode notify|ptrace]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from bench.common import published_and_served, workdir  # noqa: E402
from bench.toolchain import toolchain_tree  # noqa: E402

ROWS = ("p", "true", "find", "compile", "cold")
P_TARGET = 1.12  # parrot_run / native, workload P
TRUE_TARGET_MS = 8.0  # parrot_run /bin/true - native /bin/true
FIND_TARGET = 3.0
COMPILE_TARGET = 1.11  # the FUSE client's ratio (issue 14)
COLD_TARGET_RATIO = 4.0  # cold parrot_run / warm native, with `parrot_cvmfs serve`
FUSE_COLD = 1.28  # seconds: the FUSE client's cold run against nginx (issue 14)

IMPORTS = (
    "import numpy, scipy.linalg, scipy.sparse, scipy.optimize, json, email.mime.text, http.client"
)
VENV_REPO = "venv.bench.org"
TOOLCHAIN_REPO = "toolchain.bench.org"
C_FILES = 10
HEADERS = (
    "stdio.h stdlib.h string.h math.h errno.h limits.h stdint.h inttypes.h ctype.h time.h"
    " signal.h assert.h locale.h wchar.h fcntl.h unistd.h pthread.h dirent.h sys/types.h"
    " sys/stat.h sys/time.h sys/mman.h sys/socket.h netinet/in.h arpa/inet.h netdb.h"
    " poll.h stdatomic.h stdbool.h complex.h"
).split()


def cache_base() -> str:
    return os.environ.get("PARROT_CVMFS_TEST_CACHE") or "/var/tmp/parrot-cvmfs-test-cache"


def venv_tree() -> str:
    """A directory holding venv/ with numpy and scipy, made once and kept."""
    final = os.path.join(cache_base(), "bench-venv")
    os.makedirs(cache_base(), exist_ok=True)
    with open(final + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(final):
            return final
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        venv = os.path.join(partial, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        pip = os.path.join(venv, "bin", "pip")
        subprocess.run([pip, "install", "-q", "numpy", "scipy"], check=True)
        os.rename(partial, final)
    # the venv's scripts name the directory they were made in
    return final


def timed(cmd: list[str], env: dict, cwd: str | None = None, pass_fds: tuple = ()) -> float:
    t = time.monotonic()
    p = subprocess.run(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds
    )
    dt = time.monotonic() - t
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {p.stderr.decode()[-500:]}")
    return dt


def compile_package(launcher: list[str]) -> None:
    """Bytecode for the package a launcher runs, as an installed package has it (an
    editable checkout under PYTHONDONTWRITEBYTECODE has none: every parrot_run would
    compile its modules again, ~150 ms, which no user pays). The jobs' environment is
    left as it is."""
    python = launcher[0]
    if not python.endswith(("python", "python3")):
        with open(python, "rb") as f:
            first = f.readline().decode(errors="replace")
        python = first[2:].strip() if first.startswith("#!") else sys.executable
    where = subprocess.run(
        [python, "-c", "import os, parrot_cvmfs; print(os.path.dirname(parrot_cvmfs.__file__))"],
        cwd="/",  # not the package of the directory the benchmark runs in
        capture_output=True,
        text=True,
    )
    if where.returncode == 0:
        subprocess.run([python, "-m", "compileall", "-q", where.stdout.strip()], check=False)


class Bench:
    """What the rows share: the launchers (ours, the baseline's), the scratch directory,
    the number of runs."""

    def __init__(self, args: argparse.Namespace, work: str):
        self.work = work
        self.runs = args.runs
        self.cold_runs = args.cold_runs
        self.mode = args.mode
        # the installed launcher, as users run it (python -m adds runpy's imports)
        ours = os.path.join(os.path.dirname(sys.executable), "parrot_run")
        if not os.access(ours, os.X_OK):
            ours = shutil.which("parrot_run") or ""
        self.launchers = {
            "parrot_run": [ours] if ours else [sys.executable, "-m", "parrot_cvmfs.tracer.main"]
        }
        if args.baseline:
            self.launchers["baseline"] = [os.path.abspath(args.baseline)]
        self.proot = shutil.which("proot")
        self.pass_fds: tuple = ()  # descriptors the jobs inherit (bench_accel's table)
        for launcher in self.launchers.values():
            compile_package(launcher)

    def parrot(self, which: str, repo: str, job: list[str], *extra: str) -> list[str]:
        """`job` under launcher `which`, with a warm cache of its own per repository."""
        cache = os.path.join(self.work, f"cache-{which}-{repo}")
        return [*self.launchers[which], "--cache-dir", cache, *extra, "--", *job]

    def parrots(self, repo: str, job: list[str]) -> dict[str, list[str]]:
        return {k: self.parrot(k, repo, job) for k in self.launchers}

    def warm(self, cmds: dict[str, list[str]], env: dict, cwd: str | None = None) -> None:
        """Each traced command run twice: objects fetched, then the answers kept. PRoot
        is dropped from `cmds` where it does not run (Debian's proot 5.1 knows no
        statx: `ls -l` of a bound path fails)."""
        for k, cmd in list(cmds.items()):
            if k == "native":
                continue
            try:
                timed(cmd, env, cwd)
            except RuntimeError as e:
                if k != "proot":
                    raise
                print(f"  proot does not run this row: {str(e).strip().splitlines()[-1]}")
                del cmds[k]
                continue
            timed(cmd, env, cwd)

    def compare(
        self,
        title: str,
        cmds: dict[str, list[str]],
        env: dict,
        cwd: str | None = None,
        warmed: bool = False,
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Alternating runs of `cmds` (warmed first unless `warmed`); (medians,
        minimums), printed under the title (what the warm-up says, too)."""
        print(f"== {title}")
        if not warmed:
            self.warm(cmds, env, cwd)
        results: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(self.runs):
            for k, cmd in cmds.items():
                results[k].append(timed(cmd, env, cwd, self.pass_fds))
        med = {k: statistics.median(v) for k, v in results.items()}
        low = {k: min(v) for k, v in results.items()}
        for k, v in results.items():
            print(
                f"{k:>24}: median {1000 * med[k]:8.1f} ms  (min {1000 * low[k]:.1f},"
                f" max {1000 * max(v):.1f}, n={len(v)})"
            )
        return med, low

    def ratios(self, med: dict, low: dict, target: float, base: str = "native") -> None:
        for k in med:
            if k == base:
                continue
            mark = "" if k not in self.launchers else f" (target <= {target})"
            print(
                f"  ratio {k} / {base}: {med[k] / med[base]:.2f}{mark};"
                f" of minimums {low[k] / low[base]:.2f}"
            )

    def stats(self, repo: str, job: list[str], env: dict, cwd: str | None = None) -> None:
        """What the filter stops in a warm run, and who answers (parrot_run --stats)."""
        cmd = self.parrot("parrot_run", repo, job, "--stats")
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for line in p.stderr.decode().splitlines():
            if "intercepted calls" in line or "by call" in line:
                print(f"  {line.strip()}")


# -- the rows ------------------------------------------------------------------------------------


def row_p(b: Bench, tree: str, env: dict) -> None:
    job = [f"/cvmfs/{VENV_REPO}/venv/bin/python", "-c", IMPORTS]
    native = [os.path.join(tree, "venv", "bin", "python"), "-c", IMPORTS]
    cmds = {"native": native, **b.parrots(VENV_REPO, job)}
    cmds["parrot_run, local venv"] = b.parrot("parrot_run", VENV_REPO, native)
    if b.proot:
        cmds["proot"] = [b.proot, "-b", f"{tree}:/cvmfs/{VENV_REPO}", *job]
    med, low = b.compare("workload P (numpy/scipy import)", cmds, env)
    b.stats(VENV_REPO, job, env)
    b.ratios(med, low, P_TARGET)
    local = "parrot_run, local venv"
    print(
        f"  of parrot_run's {1000 * (med['parrot_run'] - med['native']):.0f} ms over native:"
        f" interception {1000 * (med[local] - med['native']):.0f} ms (the local-venv run),"
        f" answering from /cvmfs {1000 * (med['parrot_run'] - med[local]):.0f} ms"
    )


def row_true(b: Bench, env: dict) -> None:
    cmds = {"native": ["/bin/true"], **b.parrots(VENV_REPO, ["/bin/true"])}
    med, low = b.compare("parrot_run /bin/true (start-up)", cmds, env)
    for k in b.launchers:
        print(
            f"  {k} - native: {1000 * (med[k] - med['native']):.1f} ms"
            f" (target <= {TRUE_TARGET_MS:.0f} ms); of minimums"
            f" {1000 * (low[k] - low['native']):.1f} ms"
        )


def row_find(b: Bench, tree: str, env: dict) -> None:
    at = f"/cvmfs/{VENV_REPO}/venv"
    local = os.path.join(tree, "venv")
    for title, args, target in (
        ("find -type f over the venv", ["-type", "f"], FIND_TARGET),
        ("ls -lR of the venv", None, None),
    ):

        def job(root: str, args=args) -> list[str]:
            return ["find", root, *args] if args is not None else ["ls", "-lR", root]

        cmds = {"native": job(local), **b.parrots(VENV_REPO, job(at))}
        if b.proot:
            cmds["proot"] = [b.proot, "-b", f"{tree}:/cvmfs/{VENV_REPO}", *job(at)]
        med, low = b.compare(title, cmds, env)
        b.stats(VENV_REPO, job(at), env)
        if target is None:
            for k in med:
                if k != "native":
                    print(f"  ratio {k} / native: {med[k] / med['native']:.2f} (no target)")
        else:
            b.ratios(med, low, target)


def c_sources(d: str) -> list[str]:
    """C_FILES translation units, each including the usual headers (a compiler that
    canonicalises every header path, component by component, as gcc does)."""
    os.makedirs(d, exist_ok=True)
    names = []
    for i in range(C_FILES):
        name = f"f{i}.c"
        body = "".join(f"#include <{h}>\n" for h in HEADERS)
        body += (
            f"double f{i}(int n) {{ double s = 0; for (int k = 1; k <= n; k++)"
            f" s += sqrt((double)k) / (k + {i}); return s; }}\n"
        )
        if i == 0:
            body += (
                "".join(f"double f{j}(int);\n" for j in range(1, C_FILES))
                + "int main(void) { double s = f0(10)"
                + "".join(f" + f{j}(10)" for j in range(1, C_FILES))
                + '; printf("%f\\n", s); return 0; }\n'
            )
        with open(os.path.join(d, name), "w") as f:
            f.write(body)
        names.append(name)
    return names


def compile_script(sysroot: str, src: str, names: list[str]) -> list[str]:
    """The compile of `names` and the link, with the toolchain at `sysroot`, as one
    shell run in the output directory."""
    cc = f"{sysroot}/usr/bin/gcc --sysroot={sysroot}"
    lines = [f"{cc} -O2 -c {src}/{n} -o {n[:-2]}.o" for n in names]
    lines.append(f"{cc} -o prog {' '.join(n[:-2] + '.o' for n in names)} -lm")
    return ["/bin/sh", "-ec", " && ".join(lines)]


def check_from_cvmfs(b: Bench, env: dict, src: str, out: str) -> None:
    """`gcc -v` under parrot_run: cc1, as, collect2 and ld, the header directories,
    from /cvmfs (nothing of the host's toolchain)."""
    root = f"/cvmfs/{TOOLCHAIN_REPO}"
    job = ["/bin/sh", "-c", f"{root}/usr/bin/gcc --sysroot={root} -v -O2 {src}/f1.c -c -o v.o"]
    p = subprocess.run(
        b.parrot("parrot_run", TOOLCHAIN_REPO, job),
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"gcc -v under parrot_run failed: {p.stderr[-500:]}")
    lines = p.stderr.splitlines()
    progs = [
        ln.split()[0] for ln in lines if ln.startswith(" /") and ("/cc1 " in ln or "/as " in ln)
    ]
    incs = []
    if "#include <...> search starts here:" in lines:
        i = lines.index("#include <...> search starts here:") + 1
        while i < len(lines) and lines[i].startswith(" "):
            incs.append(lines[i].strip())
            i += 1
    bad = [x for x in progs + incs if not os.path.normpath(x).startswith(root + "/")]
    if len(progs) < 2 or not incs or bad:
        raise RuntimeError(f"the compile does not run from {root}: {bad or lines[-20:]}")
    print(f"  gcc -v: cc1, as and {len(incs)} header directories from {root}")
    objs = " ".join(f"f{i}.o" for i in range(C_FILES))
    link = ["/bin/sh", "-c", f"{root}/usr/bin/gcc --sysroot={root} -v -o v {objs} -lm"]
    p = subprocess.run(
        b.parrot("parrot_run", TOOLCHAIN_REPO, link),
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
    )
    lines = p.stderr.splitlines()
    collect2 = [ln.split()[0] for ln in lines if "/collect2 " in ln]
    # collect2 finds ld on the COMPILER_PATH the driver gives it
    path = [ln.partition("=")[2] for ln in lines if ln.startswith("COMPILER_PATH=")]
    dirs = [os.path.normpath(d) for d in (path[0].split(":") if path else []) if d]
    if p.returncode != 0 or not collect2 or not dirs:
        raise RuntimeError(f"gcc -v (link) under parrot_run failed: {p.stderr[-500:]}")
    bad = [x for x in collect2 + dirs if not os.path.normpath(x).startswith(root + "/")]
    if bad:
        raise RuntimeError(f"the link does not run from {root}: {bad}")
    print(f"  gcc -v: collect2, and the COMPILER_PATH its ld is found on, from {root}")


def row_compile(b: Bench) -> None:
    tree = toolchain_tree()
    src = os.path.join(b.work, "csrc")
    names = c_sources(src)
    pub = os.path.join(b.work, "toolchain")  # a stratum of its own
    os.makedirs(pub)
    with published_and_served(tree, pub, TOOLCHAIN_REPO, b.mode) as (env, r):
        print(f"published the toolchain tree {tree}: {r.files} files")
        root = f"/cvmfs/{TOOLCHAIN_REPO}"
        out = os.path.join(b.work, "cout")
        os.makedirs(out, exist_ok=True)
        job = compile_script(root, src, names)
        cmds = {"native": compile_script(tree, src, names), **b.parrots(TOOLCHAIN_REPO, job)}
        if b.proot:
            cmds["proot"] = [b.proot, "-b", f"{tree}:{root}", *job]
        b.warm(cmds, env, out)
        check_from_cvmfs(b, env, src, out)
        b.stats(TOOLCHAIN_REPO, job, env, out)
        med, low = b.compare(
            f"compile and link {C_FILES} C files, toolchain in /cvmfs", cmds, env, out, warmed=True
        )
        b.ratios(med, low, COMPILE_TARGET)


def row_cold(b: Bench, tree: str, env: dict) -> None:
    """Cold parrot_run (a fresh cache each run) alternating with warm native, against
    the embedded server and against nginx serving the same stratum."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from tests.servers import Nginx

    job = [f"/cvmfs/{VENV_REPO}/venv/bin/python", "-c", IMPORTS]
    native = [os.path.join(tree, "venv", "bin", "python"), "-c", IMPORTS]
    repo = env["PARROT_CVMFS_REPO"]
    name, _, rest = repo.partition(":url=")
    url, _, keys = rest.partition(",")
    nginx = Nginx(os.path.join(b.work, "stratum"), os.path.join(b.work, "nginx"))
    print("== cold workload P (an empty cache each run)")
    try:
        servers = {
            "serve": env,
            "nginx": {**env, "PARROT_CVMFS_REPO": f"{name}:url={nginx.url}/{name},{keys}"},
        }
        for label, senv in servers.items():
            cold: dict[str, list[float]] = {k: [] for k in b.launchers}
            warm = []
            for i in range(b.cold_runs):
                for k, launcher in b.launchers.items():
                    cache = os.path.join(b.work, f"cold-{label}-{k}-{i}")
                    cold[k].append(timed([*launcher, "--cache-dir", cache, "--", *job], senv))
                    shutil.rmtree(cache, ignore_errors=True)
                warm.append(timed(native, senv))
            w = statistics.median(warm)
            for k, v in cold.items():
                c = statistics.median(v)
                print(
                    f"  cold {k} ({label}): median {c:.3f} s (min {min(v):.3f}, n={len(v)}),"
                    f" {c / w:.2f}x warm native {w:.3f} s"
                    f" (targets: <= {COLD_TARGET_RATIO}x with serve; < {FUSE_COLD} s)"
                )
    finally:
        nginx.stop()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--cold-runs", type=int, default=7, help="cold runs per server")
    ap.add_argument("--tree", help="a directory holding venv/ with numpy and scipy")
    ap.add_argument("--baseline", metavar="PARROT_RUN", help="another parrot_run, in every row")
    ap.add_argument("--mode", choices=["notify", "ptrace"], help="force parrot_run's mode")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {','.join(unknown)} (known: {','.join(ROWS)})")
    with workdir("bench-workload.") as work:
        b = Bench(args, work)
        if not b.proot:
            print("proot not installed: no PRoot comparison")
        venv_rows = [r for r in rows if r in ("p", "true", "find", "cold")]
        if venv_rows:
            tree = args.tree or venv_tree()
            with published_and_served(tree, work, VENV_REPO, args.mode) as (env, r):
                print(f"published {tree}: {r.files} files")
                for row in venv_rows:
                    if row == "p":
                        row_p(b, tree, env)
                    elif row == "true":
                        row_true(b, env)
                    elif row == "find":
                        row_find(b, tree, env)
                    elif row == "cold" and args.cold_runs > 0:
                        row_cold(b, tree, env)
        if "compile" in rows:
            row_compile(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
