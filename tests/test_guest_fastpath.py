"""A warm `--root` run answered in C: the shapes of bench/bench_container.py's jobs give
chroot's output and, on a second run, hand (almost) nothing to Python; paths below host
binds shown at their own place pass to the kernel (csrc/tracer/passthrough.c) only
where its answer is the guest's."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest

from .conftest import base_env, repo_spec
from .test_container_root import chroot, ok
from .test_parrot_run import PARROT

PROCS = (
    "i=0; while [ $i -lt 5 ]; do /bin/true; cat /etc/debian_version >/dev/null;"
    " ls /usr/bin >/dev/null; i=$((i+1)); done; ls /usr/lib/python3.9 >list; wc -l <list; pwd"
)
IMPORTS = "import json, email.mime.text, http.client, sqlite3, argparse, os; print(os.getcwd())"


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def guest(request, userlands, tmp_path_factory):
    """parrot_run with the published Debian 11 userland as root, in one mode, with one
    cache for the module (so that later runs are warm)."""
    u = userlands("bullseye")
    cache = str(tmp_path_factory.mktemp("cache"))
    env = base_env(PARROT_CVMFS_CACHE=cache, PARROT_CVMFS_MODE=request.param)
    env["PARROT_CVMFS_REPO"] = repo_spec(u.name, f"{u.url}/{u.name}", u.published.pubkey)

    def run(*cmd, options=(), cwd=None, user=None, cache=cache, root=True):
        rooted = ["--root", u.cvmfs] if root else []
        argv = [*PARROT, "--cache-dir", cache, *rooted, *options, "--", *cmd]
        if user:
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
        return subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd, timeout=300)

    run.tree, run.cvmfs = u.tree, u.cvmfs
    return run


def by_call(stderr: str) -> dict[str, tuple[int, int, int]]:
    """--stats' counts per call: (passed through, answered in C, handled in Python)."""
    line = next(x for x in stderr.splitlines() if "by call" in x)
    return {
        name: (int(a), int(b), int(c))
        for name, a, b, c in re.findall(r"(\w+) \d+ \((\d+)/(\d+)/(\d+)\)", line)
    }


def python_handled(stderr: str, *names: str) -> dict[str, int]:
    counts = by_call(stderr)
    return {n: counts[n][2] for n in names if n in counts and counts[n][2]}


def test_bench_jobs_warm_in_c(guest, tmp_path):
    """The procs and python jobs as chroot runs them; a warm run hands Python none of
    their stat, getcwd, open, statfs, readlink and listing calls (the cwd and /tmp are
    host binds, /dev/null a device in one)."""
    cwd = str(tmp_path)
    want_procs = subprocess.run(
        [
            "chroot",
            guest.tree,
            "/bin/sh",
            "-c",
            PROCS.replace("; pwd", "").replace(" >list; wc -l <list", " | wc -l"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    want_py = chroot(guest.tree, "python3", "-c", IMPORTS.replace(", os; print(os.getcwd())", ""))
    for _ in range(2):  # the first run teaches (and keeps), the second is warm
        procs = guest("/bin/sh", "-c", PROCS, options=("--stats",), cwd=cwd)
        py = guest("python3", "-c", IMPORTS, options=("--stats",), cwd=cwd)
    assert ok(procs) == want_procs + f"{cwd}\n"
    assert ok(py) == want_py + f"{cwd}\n"
    calls = ("stat", "newfstatat", "statx", "openat", "getcwd", "statfs", "getdents64")
    assert python_handled(procs.stderr, *calls, "execve") == {}  # execs from kept recipes
    handled = python_handled(py.stderr, *calls, "readlink")
    # the default bind of /etc/localtime shows a host file (the zone's) at another place
    assert handled.pop("openat", 0) <= 1 and handled == {}
    assert by_call(py.stderr)["getcwd"][0] > 0  # passed through: the kernel's is the guest's


def test_relative_paths_in_the_root_through_c(guest, tmp_path):
    """Paths relative to a directory of the root are keyed by its guest name: once
    Python has answered one, C answers it (".." too), in this run and the next."""
    script = (
        "cd /usr/share; for i in 1 2 3 4 5 6 7 8; do"
        " stat -c %F doc ../bin ../../etc/debian_version ../../../usr/nothere 2>&1; done; pwd"
    )
    want = ["directory", "directory", "regular file"]
    for run in range(2):
        p = guest("/bin/sh", "-c", script, options=("--stats",), cwd=str(tmp_path))
        lines = p.stdout.splitlines()
        assert lines[-1] == "/usr/share" and len(lines) == 4 * 8 + 1, p.stdout
        for i in range(8):
            assert lines[4 * i : 4 * i + 3] == want and "No such file" in lines[4 * i + 3]
        handled = python_handled(p.stderr, "statx").get("statx", 0)  # stat(1)'s
        assert handled <= (4 + 1 if run == 0 else 0), p.stderr  # the first: no key yet


def test_host_binds_through_c(guest, tmp_path):
    """Paths below a host bind at its own place, as the guest sees them: a symlink to an
    absolute path leads into the guest, /proc/self is the job's, a creation takes the
    job's umask, /dev/null is the device; plain calls pass through in C."""
    d = tmp_path / "bound"
    d.mkdir()
    (d / "file").write_text("host file\n")
    os.symlink("/etc/debian_version", d / "abs-link")
    os.mkdir(d / "sub")
    script = (
        "cat abs-link; cat file; cat sub/../file; readlink abs-link; stat -c %F sub;"
        " umask 077; echo new > made; stat -c %a made; mkdir dir; stat -c %a dir; rmdir dir;"
        " echo gone > /dev/null; wc -c < /dev/null; readlink /proc/self/exe;"
        " readlink /proc/self/cwd; pwd; ls"
    )
    p = guest("/bin/sh", "-c", script, options=("--stats",), cwd=str(d))
    version = chroot(guest.tree, "cat", "/etc/debian_version")
    assert ok(p).splitlines() == [
        version.strip(),
        "host file",
        "host file",
        "/etc/debian_version",
        "directory",
        "600",
        "700",
        "0",
        "/usr/bin/readlink",
        str(d),
        str(d),
        "abs-link",
        "file",
        "made",
        "sub",
    ]
    assert (d / "made").read_text() == "new\n"
    assert os.stat(d / "made").st_mode & 0o777 == 0o600
    counts = by_call(p.stderr)
    assert counts["openat"][0] > 0 and counts["mkdir"][0] == 1


def test_out_of_a_bind_and_read_only_binds(guest, tmp_path):
    """`..` above a bind's destination leaves it (into the guest's root, where the
    directories on the way are glue); a read-only bind refuses writes with EROFS and
    the kernel's errno precedence, and serves reads."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "file").write_text("read me\n")
    up = "../" * len(d.parts[1:])
    script = (
        f"cat {d}/file; cat {up}etc/debian_version; ls ..;"
        f" touch {d}/new 2>&1; echo x 2>&1 > {d}/file; mkdir {d}/dir 2>&1;"
        f" touch {d}/missing/x 2>&1; true"
    )
    p = guest(
        "/bin/sh",
        "-c",
        script,
        options=("--no-default-binds", "-B", f"{d}:{d}:ro", "--stats"),
        cwd=str(d),
    )
    out = ok(p).splitlines()
    assert out[0] == "read me"
    assert out[1] == chroot(guest.tree, "cat", "/etc/debian_version").strip()
    assert out[2] == "ro"  # the glue directory shows the mount point only
    assert "Read-only file system" in out[3] and "Read-only file system" in out[4]
    assert "Read-only file system" in out[5]
    assert "No such file or directory" in out[6]  # ENOENT before EROFS, as the kernel says
    assert not (d / "new").exists() and (d / "file").read_text() == "read me\n"
    assert by_call(p.stderr)["openat"][0] > 0  # the reads passed through in C


def test_unprivileged_creation_in_the_cwd(guest):
    """As nobody: a file made in the bound cwd is nobody's, with the job's umask."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o777)
        script = "umask 027; echo x > f; id -un; stat -c %a f"
        cache = os.path.join(d, "cache")  # nobody's own
        p = guest("/bin/sh", "-c", script, options=("--stats",), cwd=d, user=True, cache=cache)
        assert ok(p).split() == ["nobody", "640"]
        st = os.stat(os.path.join(d, "f"))
        assert st.st_uid != 0 and st.st_mode & 0o777 == 0o640
        assert by_call(p.stderr)["openat"][0] > 0


def test_execs_in_c_show_guest_names(guest, tmp_path):
    """An exec C makes from a kept recipe shows what the kernel shows natively (chroot
    has no /proc to compare with): /proc/self/exe, AT_EXECFN (the path exec was given,
    not the file exec'd in its place) and the process's name (after that path)."""
    getauxval = (
        "import ctypes; f = ctypes.CDLL(None).getauxval; f.restype = ctypes.c_char_p;"
        " print(f(31).decode())"
    )
    script = (
        # (no pipeline: a child's SIGCHLD during a slow first stat makes dash skip a PATH
        # entry, as it would natively, and the second run would exec another grep)
        "readlink /proc/self/exe; LD_SHOW_AUXV=1 /bin/true > auxv; grep AT_EXECFN auxv;"
        " cat /proc/self/comm;"
        f" sh -c 'cat /proc/$$/comm'; /usr/bin/python3 -c '{getauxval}';"
        " /bin/dash -c 'cat /proc/$$/comm'"
    )
    for _ in range(2):  # Python's execs, then C's
        p = guest("/bin/sh", "-c", script, options=("--stats",), cwd=str(tmp_path))
        assert ok(p).split() == [
            "/usr/bin/readlink",
            "AT_EXECFN:",
            "/bin/true",
            "cat",
            "sh",
            "/usr/bin/python3",
            "dash",
        ]
    assert python_handled(p.stderr, "execve") == {}


def test_execfn_longer_than_the_host_path(guest, tmp_path):
    """AT_EXECFN is the path exec was given even where it is longer than the file
    exec'd in its place (the patched copy in the cache): the new program's initial
    stack moves down to make room, and its argv, environment and auxv still work."""
    long = "/usr/bin" + "/." * 120 + "/true"
    script = f"LD_SHOW_AUXV=1 X=1 {long} a b > auxv; grep -E 'AT_EXECFN|AT_RANDOM' auxv"
    check = (
        "import ctypes, os, sys; f = ctypes.CDLL(None).getauxval;"
        " f.restype = ctypes.c_char_p; print(f(31).decode() == sys.argv[1],"
        " sys.argv[2:], os.environ['X'])"
    )
    for _ in range(2):  # Python's exec, then C's
        p = guest("/bin/sh", "-c", script, cwd=str(tmp_path))
        lines = ok(p).splitlines()
        assert [x.split()[1] for x in lines if x.startswith("AT_EXECFN")] == [long], lines
        assert any(x.startswith("AT_RANDOM") for x in lines), lines
        py = "/usr/bin" + "/." * 120 + "/python3"
        p = guest("env", "X=2", py, "-c", check, py, "a", "b")
        assert ok(p).split() == ["True", "['a',", "'b']", "2"]


def test_execfn_of_a_cvmfs_program_without_root(guest):
    """Without --root, a program exec'd from /cvmfs (its cache file in its place) sees
    the /cvmfs path it was given as AT_EXECFN."""
    true = f"{guest.cvmfs}/usr/bin/true"
    p = guest("env", "LD_SHOW_AUXV=1", true, root=False)
    assert [x.split()[1] for x in ok(p).splitlines() if x.startswith("AT_EXECFN")] == [true]


@pytest.mark.parametrize("root", [True, False])
def test_getcwd_in_the_repository_in_c(guest, root):
    """getcwd in a directory of the repository (the root's, or /cvmfs's without a root)
    gives its spelling; a warm run answers it in C."""
    where = "/usr/share" if root else f"{guest.cvmfs}/usr/share"
    script = f"cd {where} && /bin/pwd && /usr/bin/python3 -c 'import os; print(os.getcwd())'"
    for _ in range(2):
        p = guest("/bin/sh", "-c", script, options=("--stats",), root=root)
        assert ok(p).split() == [where, where]
    assert python_handled(p.stderr, "getcwd") == {}


def test_statfs_of_the_repository_in_c(guest):
    """statfs and fstatfs of repository paths give what Python gives (cvmfs's FUSE shape,
    the cache's figures) and, on a warm run, are answered in C ('S' record)."""
    usr = f"{guest.cvmfs}/usr"
    script = (
        f"ls {usr} >/dev/null; stat -f -c '%T %s %l %i' {usr} {usr}/bin/true;"
        f' python3 -c \'import os; s = os.fstatvfs(os.open("{usr}", os.O_RDONLY));'
        " print(s.f_bsize, s.f_namemax, s.f_flag & 1)'"
    )
    runs = [guest("/bin/sh", "-c", script, options=("--stats",), root=False) for _ in range(2)]
    assert ok(runs[0]) == ok(runs[1])
    lines = ok(runs[1]).split("\n")
    assert lines[0].split()[:3] == ["fuseblk", "4096", "255"] and lines[0] == lines[1]
    assert lines[2] == "4096 255 1"
    assert python_handled(runs[1].stderr, "statfs", "fstatfs") == {}
