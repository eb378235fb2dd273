"""The machine's C toolchain as a sysroot tree, for the compile row of bench_workload.

The tree holds what a compile and a link need and nothing of the rest of /usr: the
gcc driver and its cc1, collect2 and lto-wrapper, binutils' `as` and `ld`, the C
headers, the crt files, libc and libgcc. The files are found by asking gcc where its
programs and files are (`-print-prog-name`, `-print-file-name`), asking dpkg which
packages those belong to (`dpkg -S`) and copying what those packages install
(`dpkg -L`, documentation left out). The shared libraries the compiler's own programs
load (libisl, libmpc, libbfd...) stay the host's: the tree is a sysroot, not a root.

The tree is built once into `<cache>/toolchain/<gcc version>.partial` and renamed to
its final name when complete, under `${PARROT_CVMFS_TEST_CACHE:-/var/tmp/
parrot-cvmfs-test-cache}` (as tests/userlands.py caches the Debian userlands).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess

GCC = "gcc-12"
# asked of gcc: where its programs are, and files a link of a C program reads
PROGRAMS = ("cc1", "collect2", "lto-wrapper")
FILES = ("crt1.o", "crti.o", "crtbegin.o", "libc.so", "libc_nonshared.a", "libgcc.a", "libgcc_s.so")
# named outright: what the files above point at (libc.so's GROUP, libgcc_s.so's),
# binutils' real programs (gcc finds `as` and `ld` on PATH here) and a header of each
# header package
EXTRA = (
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/usr/bin/x86_64-linux-gnu-as",
    "/usr/bin/x86_64-linux-gnu-ld.bfd",
    "/usr/include/stdio.h",
    "/usr/include/linux/limits.h",
)
SKIP = ("/usr/share/", "/lto1", "/lto-dump")  # documentation, and LTO (not used)
TRIPLET = "x86_64-linux-gnu"


def cache_dir() -> str:
    """Where built toolchain trees live (outside the checkout, kept between runs)."""
    base = os.environ.get("PARROT_CVMFS_TEST_CACHE") or "/var/tmp/parrot-cvmfs-test-cache"
    return os.path.join(base, "toolchain")


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _package_of(path: str) -> str:
    """The package that installed `path` (tried as given, resolved, and with the
    merged-/usr spelling dpkg may know it by)."""
    real = os.path.realpath(path)
    tries = [path, real]
    for short in ("/lib/", "/lib64/", "/bin/"):
        if real.startswith("/usr" + short):
            tries.append(real[len("/usr") :])
    for p in tries:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":", 1)[0].split(",")[0].strip()
    raise RuntimeError(f"no package installed {path}")


def packages() -> list[str]:
    """The packages holding gcc's programs, the files a link needs, and EXTRA."""
    paths = [shutil.which(GCC) or GCC]
    paths += [_out(GCC, f"-print-prog-name={p}") for p in PROGRAMS]
    paths += [_out(GCC, f"-print-file-name={f}") for f in FILES]
    paths += list(EXTRA)
    return sorted({_package_of(os.path.realpath(p)) for p in paths})


def _copy_package(pkg: str, tree: str) -> int:
    """Copy what `pkg` installs (files and links, merged-/usr paths as the host has
    them) into `tree`; the number of files."""
    n = 0
    for path in _out("dpkg", "-L", pkg).splitlines():
        if any(s in path for s in SKIP) or not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            continue
        # the directory as it really is (/lib/x86_64-linux-gnu is /usr/lib/... here)
        src = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        dest = tree + src
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            continue
        if os.path.islink(src):
            os.symlink(os.readlink(src), dest)
        else:
            shutil.copy2(src, dest)
        n += 1
    return n


def build(tree: str) -> None:
    """Build the sysroot tree at `tree` (which must not exist)."""
    os.makedirs(os.path.join(tree, "usr", "lib64"))
    for top in ("bin", "lib", "lib64", "sbin"):  # the merged /usr of the host
        os.symlink(f"usr/{top}", os.path.join(tree, top))
    for pkg in packages():
        _copy_package(pkg, tree)
    # where the relocated driver looks for binutils (its program search path has
    # <prefix>/TRIPLET/bin), so that `as` and `ld` come from the tree, not from PATH
    bindir = os.path.join(tree, "usr", TRIPLET, "bin")
    os.makedirs(bindir, exist_ok=True)
    os.symlink(f"../../bin/{TRIPLET}-as", os.path.join(bindir, "as"))
    os.symlink(f"../../bin/{TRIPLET}-ld.bfd", os.path.join(bindir, "ld"))
    gcc = os.path.realpath(shutil.which(GCC) or GCC)
    os.symlink(os.path.basename(gcc), os.path.join(tree, "usr", "bin", "gcc"))


def toolchain_tree() -> str:
    """The sysroot tree for this machine's gcc, built on first use."""
    d = cache_dir()
    os.makedirs(d, exist_ok=True)
    version = _out(GCC, "-dumpfullversion")
    final = os.path.join(d, f"gcc-{version}")
    with open(os.path.join(d, f"gcc-{version}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(final):
            return final
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        os.rename(partial, final)
    return final
