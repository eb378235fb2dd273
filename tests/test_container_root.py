"""parrot_run --root DIR and binds (-B, -M, -m): a whole Debian userland as the job's
root, from a host directory and from /cvmfs (published by our publisher), compared with
chroot of the same tree where it can be."""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from .conftest import base_env, repo_spec
from .test_parrot_run import PARROT


@pytest.fixture(scope="session")
def debian11(userlands):
    """Debian 11 (glibc 2.31, older than the host's): built, published and served by
    the userlands fixture (tests/userlands.py, cached outside the checkout)."""
    return userlands("bullseye")


@pytest.fixture(scope="session")
def bullseye(debian11) -> str:
    """The Debian 11 tree on the host (never written to: it backs a cached publication)."""
    return debian11.tree


class Run:
    def __init__(self, env: dict[str, str], root: str):
        self.env, self.root = env, root

    def __call__(self, *cmd, options=(), root=True, user=None, cwd=None, timeout=300):
        argv = [*PARROT, *(["--root", self.root] if root else []), *options, "--", *cmd]
        if user:
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd
        )

    def sh(self, script, **kw):
        return self("/bin/sh", "-c", script, **kw)


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def mode(request):
    return {"PARROT_CVMFS_MODE": request.param}


def _run(request, bullseye, tmp_path_factory):
    mode, where = request.param.split("-")
    cache = str(tmp_path_factory.mktemp("cache"))
    os.chmod(cache, 0o777)
    env = base_env(PARROT_CVMFS_CACHE=cache, PARROT_CVMFS_MODE=mode)
    if where == "host":
        yield Run(env, bullseye)
        return
    u = request.getfixturevalue("debian11")
    env["PARROT_CVMFS_REPO"] = repo_spec(u.name, f"{u.url}/{u.name}", u.published.pubkey)
    yield Run(env, u.cvmfs)


@pytest.fixture(params=["notify-host", "notify-cvmfs"])
def run(request, bullseye, tmp_path_factory):
    """parrot_run with the userland as root: a host directory, or its /cvmfs copy."""
    yield from _run(request, bullseye, tmp_path_factory)


@pytest.fixture(params=["notify-host", "notify-cvmfs", "ptrace-cvmfs"])
def run_modes(request, bullseye, tmp_path_factory):
    """`run`, and in ptrace mode too (where every call is rewritten, not emulated)."""
    yield from _run(request, bullseye, tmp_path_factory)


@pytest.fixture(params=["notify-cvmfs", "ptrace-cvmfs"])
def run_cvmfs(request, bullseye, tmp_path_factory):
    """`run` with the userland's /cvmfs copy as root, in both modes."""
    yield from _run(request, bullseye, tmp_path_factory)


def ok(p) -> str:
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


def chroot(root: str, *cmd) -> str:
    p = subprocess.run(["chroot", root, *cmd], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_guest_files_libraries_and_tools(run, bullseye):
    """The guest's own files, glibc (older than the host's), Python modules with C
    extensions, dpkg's database and perl, as chroot shows them."""
    assert ok(run("cat", "/etc/debian_version")) == chroot(bullseye, "cat", "/etc/debian_version")
    out = ok(run("ldd", "--version"))
    assert "GLIBC 2.31" in out.splitlines()[0]
    assert ok(run("python3", "-c", "import json, sqlite3, ssl; print(ssl.OPENSSL_VERSION)")) == (
        chroot(bullseye, "python3", "-c", "import ssl; print(ssl.OPENSSL_VERSION)")
    )
    assert ok(run("dpkg", "-l")) == chroot(bullseye, "dpkg", "-l")
    assert ok(run("perl", "-e", "print 6*7, qq(\\n)")) == "42\n"
    script = "for i in $(seq 20); do /bin/true; done; echo done $i"
    assert ok(run.sh(script)) == "done 20\n"


def test_newer_glibc_than_the_host(tmp_path, userlands):
    """Debian 13 (glibc 2.41, newer than most hosts'): its own loader and libraries."""
    trixie = userlands("trixie").tree
    env = base_env(PARROT_CVMFS_CACHE=str(tmp_path / "cache"))
    out = ok(
        Run(env, trixie).sh(
            "ldd --version | head -1; python3 -c 'import json, sqlite3, ssl; print(1)'"
        )
    )
    assert "GLIBC 2.41" in out.splitlines()[0] and out.splitlines()[1] == "1"


def test_results_in_guest_terms(run_modes):
    """getcwd, readlink of /proc/self/exe and /proc/self/cwd and /proc/self/fd/N show
    guest paths; `..` stops at the guest root."""
    out = ok(
        run_modes.sh(
            "cd /usr/lib && pwd && /bin/pwd && readlink /proc/self/cwd;"
            " readlink /proc/self/exe; cd ../../../.. && pwd;"
            " exec 3</etc/debian_version; readlink /proc/self/fd/3"
        )
    )
    assert out.splitlines() == [
        "/usr/lib",
        "/usr/lib",
        "/usr/lib",
        "/usr/bin/readlink",
        "/",
        "/etc/debian_version",
    ]


def test_a_place_shown_at_two_paths(run_modes):
    """A directory bound at two places: getcwd, /proc/self/cwd and `..` follow the path
    the process came in by, as with bind mounts, and a child inherits it."""
    share = f"{run_modes.root}/usr/share"
    binds = ("-B", f"{share}:/a", "-B", f"{share}:/b", "-B", f"{share}:/x/y")
    out = ok(
        run_modes.sh(
            "cd /a && /bin/pwd && readlink /proc/self/cwd; cd /b && /bin/pwd && pwd -P;"
            " cd /a/doc && /bin/pwd; cd /b/doc && /bin/pwd; cd /x/y && cd .. && /bin/pwd;"
            " ls -d y/doc; cd /a/doc && (cd .. && sh -c '/bin/pwd; cd ../x && /bin/pwd')",
            options=binds,
        )
    )
    assert out.split() == [
        *("/a", "/a", "/b", "/b", "/a/doc", "/b/doc", "/x", "y/doc", "/a", "/x"),
    ]


def test_the_root_by_its_cvmfs_path(run_cvmfs):
    """A root in /cvmfs shows at `/` and at its /cvmfs path (/cvmfs stays visible): a
    job that goes in by the /cvmfs path is there, and `..` climbs that path."""
    top = run_cvmfs.root
    out = ok(
        run_cvmfs.sh(
            f"cd {top}/usr/share && /bin/pwd && cd .. && pwd -P; cd /usr/share && /bin/pwd"
            f" && cd .. && /bin/pwd; cd {top}/usr/share; sh -c 'cd ..; /bin/pwd; ls -d ../usr'"
        )
    )
    assert out.split() == [
        *(f"{top}/usr/share", f"{top}/usr", "/usr/share", "/usr", f"{top}/usr", "../usr"),
    ]


def test_a_start_directory_bound_elsewhere_too(run, tmp_path):
    """The cwd (bound at its own path by default) is also bound deeper elsewhere, which
    sorts first: the job starts at its own path (apptainer's), and is at the other
    only by name."""
    elsewhere = f"/work{tmp_path}"
    out = ok(
        run.sh(
            f"/bin/pwd; cd {elsewhere} && /bin/pwd && cd .. && /bin/pwd",
            options=("-B", f"{tmp_path}:{elsewhere}"),
            cwd=str(tmp_path),
        )
    )
    assert out.split() == [str(tmp_path), elsewhere, os.path.dirname(elsewhere)]


def test_default_binds_cwd_tmp_and_cvmfs(run, tmp_path):
    """The host's cwd and /tmp show through apptainer's default binds; the root's
    listing shows /cvmfs even where the tree has no such directory."""
    (tmp_path / "here.txt").write_text("from the host cwd\n")
    out = ok(run.sh("cat here.txt; pwd", cwd=str(tmp_path)))
    assert out.splitlines() == ["from the host cwd", str(tmp_path)]
    name = f"/tmp/croot-{os.getpid()}"
    try:
        ok(run.sh(f"umask 077; echo written > {name}"))
        with open(name) as f:
            assert f.read() == "written\n"
        assert os.stat(name).st_mode & 0o777 == 0o600  # the job's umask, not ours
    finally:
        os.unlink(name)
    top = ok(run("ls", "/")).split()
    assert "cvmfs" in top and "usr" in top
    first = str(tmp_path).strip("/").split("/")[0]
    assert first in top  # the cwd's bind point, glue if the tree lacks it
    # a place on the way to a bind that the root lacks is a directory one can enter
    glue = ok(
        run.sh(
            "cd /opt/on/the && pwd && ls && stat -c %F .. && touch x 2>&1; true",
            options=["-B", f"{tmp_path}:/opt/on/the/way"],
        )
    )
    assert glue.splitlines()[:3] == ["/opt/on/the", "way", "directory"], glue
    assert "Read-only file system" in glue


def test_a_root_directory_a_bind_hides_is_reached_through_cvmfs(run_cvmfs, tmp_path):
    """A directory of a /cvmfs root that a bind hides at its guest place is still one at
    /cvmfs/...: entered there, getcwd names it so and relative paths start from it."""
    (tmp_path / "bound").write_text("the bind\n")
    doc = f"{run_cvmfs.root}/usr/share/doc"
    script = f"cd {doc}; pwd -P; ls | grep -c . ; stat -c %F dpkg ../doc/dpkg; ls /usr/share"
    out = ok(run_cvmfs.sh(script, options=["-B", f"{tmp_path}:/usr/share"]))
    lines = out.splitlines()
    assert lines[0] == doc and int(lines[1]) > 1, out
    assert lines[2:4] == ["directory"] * 2 and lines[4:] == ["bound"], out


def test_root_is_read_only(run_modes):
    """Writes into the root fail with EROFS, in the kernel's order (an existing name
    on mkdir is EEXIST first)."""
    p = run_modes.sh(
        "echo x > /etc/new 2>&1; touch /usr/bin/true 2>&1; mkdir /etc 2>&1; rm /bin/true 2>&1;"
        " mkdir /opt/x 2>&1; ln -s a /opt/l 2>&1; mv /etc/hostname /etc/h2 2>&1; true"
    )
    out = p.stdout + p.stderr
    assert out.count("Read-only file system") == 6, out
    assert "File exists" in out
    # through a descriptor too (the mode given is the file's own: nothing changes if
    # the kernel were let through)
    code = (
        "import os, stat\n"
        "fd = os.open('/etc/hostname', os.O_RDONLY)\n"
        "try:\n"
        "    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode))\n"
        "except OSError as e:\n"
        "    print(e.strerror)\n"
    )
    assert ok(run_modes("python3", "-c", code)) == "Read-only file system\n"
    # chroot would take the guest's path as the host's: refused as for a normal user
    p = run_modes(
        "python3", "-c", "import os\ntry: os.chroot('/usr')\nexcept OSError as e: print(e.errno)"
    )
    assert ok(p) == "1\n"


def test_unix_socket_server_and_client(run_modes, tmp_path):
    """A server and a client on a socket in a bind: bind and connect reach the host
    location, getsockname and getpeername show the guest path."""
    code = (
        "import socket, os, sys\n"
        "p = sys.argv[1]\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(p); s.listen(1)\n"
        "if os.fork() == 0:\n"
        "    c = socket.socket(socket.AF_UNIX); c.connect(p); c.sendall(b'hi')\n"
        "    print(c.getpeername(), flush=True); os._exit(0)\n"
        "a, _ = s.accept(); os.wait(); print(a.recv(2).decode(), s.getsockname())\n"
    )
    out = ok(run_modes("python3", "-c", code, "/data/sock", options=["-B", f"{tmp_path}:/data"]))
    assert out.split() == ["/data/sock", "hi", "/data/sock"]
    assert os.path.exists(tmp_path / "sock")


def test_as_nobody(run):
    """An unprivileged user: the same guest, the root still read-only, cwd bound."""
    work = tempfile.mkdtemp(prefix="croot-nobody-", dir="/tmp")  # nobody reaches it
    try:
        os.chmod(work, 0o777)
        run.env = dict(run.env, PARROT_CVMFS_CACHE=os.path.join(work, "cache"))
        out = ok(
            run.sh(
                "cat /etc/debian_version; id -un; touch /etc/x 2>&1; pwd",
                user="nobody",
                cwd=work,
            )
        )
    finally:
        shutil.rmtree(work)
    lines = out.splitlines()
    assert lines[1] == "nobody"
    assert "Read-only file system" in lines[2]
    assert lines[3] == work


def test_binds_with_and_without_root(run, tmp_path):
    """-B SRC:DST, -M DST=SRC and -m FILE onto the root, the last one given winning."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A\n")
    (b / "f").write_text("B\n")
    mf = tmp_path / "mounts"
    mf.write_text(f"# a comment\n/opt/m {b}\n")
    out = ok(
        run.sh(
            "cat /opt/a/f /opt/b/f /opt/m/f /srv/deep/er/f; ls /srv",
            options=[
                "-B",
                f"{a}:/opt/a",
                "-M",
                f"/opt/b={b}",
                "-m",
                str(mf),
                "-B",
                f"{a}:/srv/deep/er",
            ],
        )
    )
    assert out.split() == ["A", "B", "B", "A", "deep"]


def test_binds_on_the_host_tree(tmp_path, mode):
    """-M/-B without --root: the host's own tree, with a directory shown elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "cert.pem").write_text("cert\n")
    env = base_env(PARROT_CVMFS_CACHE=str(tmp_path / "cache"), **mode)
    dst = f"/etc/grid-security-{os.getpid()}"
    for opt in (["-M", f"{dst}={src}"], ["-B", f"{src}:{dst}"]):
        p = subprocess.run(
            [
                *PARROT,
                *opt,
                "--",
                "sh",
                "-c",
                f"cat {dst}/cert.pem; cd {dst} && pwd; cat /etc/hostname",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        host_name = open("/etc/hostname").read() if os.path.exists("/etc/hostname") else ""
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"cert\n{dst}\n{host_name}"


def test_a_cvmfs_directory_mapped_on_the_host_tree(run_cvmfs):
    """-M DST=/cvmfs/... without --root (Parrot's habit): the /cvmfs directory is at
    both places, and each is where the job went in by (`..` included)."""
    share = f"{run_cvmfs.root}/usr/share"
    out = ok(
        run_cvmfs.sh(
            f"cd {share}/doc && cd .. && /bin/pwd && cd .. && /bin/pwd;"
            " cd /opt/share && /bin/pwd && cd .. && /bin/pwd",
            root=False,
            options=("-M", f"/opt/share={share}"),
        )
    )
    assert out.split() == [share, f"{run_cvmfs.root}/usr", "/opt/share", "/opt"]


@pytest.mark.unprivileged
@pytest.mark.parametrize("via", ["cvmfs", "host"])
def test_binds_below_a_directory_the_user_cannot_search(published, published_server, via):
    """A bind's destination below a host directory the user has no x on is out of reach,
    as under a real bind mount: the kernel never sees that directory (the path it gets
    is the bind's source), so the walk judges it; a searchable way still leads there,
    and a missing directory on the way (made up for the bind) is searchable."""
    work = tempfile.mkdtemp(prefix="croot-noexec-", dir="/tmp")  # nobody reaches it
    try:
        os.chmod(work, 0o755)
        cache = os.path.join(work, "cache")
        os.mkdir(cache)
        nobody = pwd.getpwnam("nobody")
        os.chown(cache, nobody.pw_uid, nobody.pw_gid)  # a writable cache is its user's
        src = os.path.join(work, "src")
        os.mkdir(src)
        with open(os.path.join(src, "README"), "w") as f:
            f.write("host\n")
        pubkey = shutil.copy(published.pubkey, work)  # nobody reads it there
        locked, open_ = os.path.join(work, "locked"), os.path.join(work, "open")
        for d in (locked, open_):
            os.makedirs(os.path.join(d, "way"))
        os.chmod(locked, 0o700)  # root's: nobody may not look up names in it
        repo = published.name
        source = f"/cvmfs/{repo}" if via == "cvmfs" else src
        binds = []
        for d in (locked, open_):
            binds += ["-M", f"{d}/way/in={source}", "-M", f"{d}/made/up/in={source}"]
        env = base_env(
            PARROT_CVMFS_CACHE=cache,
            PARROT_CVMFS_REPO=repo_spec(repo, f"{published_server.url}/{repo}", pubkey),
        )
        script = "; ".join(
            f"cat {d}/{w}/in/README 2>&1 | sed 's/.*: //'; ls {d}/{w} 2>&1 | sed 's/.*: //'"
            for d in (locked, open_)
            for w in ("way", "made/up")
        )
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *PARROT]
        p = subprocess.run(
            [*argv, *binds, "--", "sh", "-c", script],
            env=env, capture_output=True, text=True, timeout=120, cwd=work,
        )  # fmt: skip
    finally:
        shutil.rmtree(work)
    top = open(os.path.join(published.src, "README")).read() if via == "cvmfs" else "host\n"
    denied = "Permission denied\n"
    assert p.stdout == denied * 4 + (top + "in\n") * 2, (p.stdout, p.stderr)


def test_bad_bind_is_one_line(tmp_path):
    env = base_env(PARROT_CVMFS_CACHE=str(tmp_path / "cache"))
    for opt, word in (
        (["-B", "/nonexistent-src:/x"], "/nonexistent-src"),
        (["-M", "/x"], "DST=SRC"),
        (["--root", "/nonexistent-root"], "--root"),
    ):
        p = subprocess.run(
            [*PARROT, *opt, "--", "true"], env=env, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 1 and word in p.stderr and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_path_is_the_guests(run):
    env_out = ok(run("sh", "-c", "echo $PATH"))
    assert env_out.strip() == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    given = ok(run("sh", "-c", "echo $PATH", options=["--env", "PATH=/bin"]))
    assert given.strip() == "/bin"


def test_relative_path_entries_start_from_the_jobs_directory(run, tmp_path):
    """PATH entries `bin` and `` are looked up from where the job starts (the cwd, a
    default bind), as execvp looks them up: not from the guest's root, whose /bin/true
    the job could not exec as bin/true from there."""
    (tmp_path / "bin").mkdir()
    mine = tmp_path / "bin" / "mine"
    mine.write_text("#!/bin/sh\necho mine in $PWD\n")
    mine.chmod(0o755)
    opts = ["--env", "PATH=bin:/usr/bin:/bin"]
    assert ok(run("true", options=opts, cwd=tmp_path)) == ""
    assert ok(run("mine", options=opts, cwd=tmp_path)) == f"mine in {tmp_path}\n"
    (tmp_path / "here").write_text("#!/bin/sh\necho here\n")
    (tmp_path / "here").chmod(0o755)
    assert ok(run("here", options=["--env", "PATH=:/usr/bin"], cwd=tmp_path)) == "here\n"


# -- --overlay: the root's writable layer --------------------------------------------------

_CHANGES = (
    "echo new > /etc/newfile && echo more >> /etc/debian_version && rm /etc/issue"
    " && mv /etc/issue.net /etc/renamed && mkdir /etc/made && mkdir /opt/gone"
    " && rmdir /opt/gone && ln -s newfile /etc/soft && ln /etc/newfile /etc/hard"
    " && chmod 600 /etc/hostname && touch /usr/share/touched && rm -r /etc/cron.daily"
    " && mkdir /etc/cron.daily && echo x > /etc/cron.daily/only && umask 027 && python3 -c"
    " 'import os; os.close(os.open(\"/etc/excl\", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))'"
)
_LOOK = (
    "cat /etc/newfile /etc/soft /etc/hard /etc/debian_version; ls /etc/issue 2>&1;"
    " ls /opt/gone 2>&1; ls /etc/cron.daily; stat -c '%a %h' /etc/hostname /etc/hard /etc/excl;"
    " cat /etc/renamed >/dev/null && echo renamed; ls -d /etc/made; ls -A /etc; echo --; ls -A /"
)


_BOUND_ETC = ("resolv.conf", "hosts", "localtime", "passwd", "group")


def _looked(out: str, root: str) -> None:
    lines = out.splitlines()
    release = open(os.path.join(root, "etc/debian_version")).read().strip()
    assert lines[:5] == ["new", "new", "new", release, "more"], out
    assert "No such file or directory" in lines[5] and "No such file or directory" in lines[6]
    assert lines[7:13] == ["only", "600 1", "644 2", "640 1", "renamed", "/etc/made"], out
    # listings merged: the upper's names over the root's, whiteouts and ours hidden
    etc = set(os.listdir(os.path.join(root, "etc"))) - {"issue", "issue.net"}
    etc |= {"newfile", "soft", "hard", "renamed", "made", "excl"}
    etc |= {n for n in _BOUND_ETC if os.path.lexists(f"/etc/{n}")}  # default binds
    i = lines.index("--")
    assert len(lines[13:i]) == len(etc) and set(lines[13:i]) == etc, out
    assert set(lines[i + 1 :]) >= set(os.listdir(root)), out


def test_overlay_changes_persist_and_the_root_stays(run_modes, bullseye, tmp_path):
    """Create, modify, remove, rename, mkdir, rmdir, symlink, hard link, chmod and an
    opaque directory land in the overlay; a second run sees them, the root does not
    change (the host tree compared with what it held)."""
    before = {p: os.lstat(os.path.join(bullseye, p)) for p in ("etc", "etc/debian_version")}
    release = open(os.path.join(bullseye, "etc/debian_version")).read().strip()
    ov = str(tmp_path / "ov")
    ok(run_modes.sh(_CHANGES, options=["--overlay", ov]))
    _looked(ok(run_modes.sh(_LOOK, options=["--overlay", ov])), bullseye)
    assert os.path.exists(os.path.join(ov, "upper", "etc", ".wh.issue"))
    for p, s in before.items():  # the lower tree is the cached userland: untouched
        now = os.lstat(os.path.join(bullseye, p))
        assert (now.st_mtime_ns, now.st_size) == (s.st_mtime_ns, s.st_size)
    assert os.path.exists(os.path.join(bullseye, "etc", "issue"))
    # without the overlay the root is as it was
    p = run_modes.sh("cat /etc/debian_version; ls /etc/newfile 2>&1; true")
    assert ok(p).splitlines()[0] == release and "No such file" in p.stdout


def test_overlay_programs_the_job_writes(run_modes, tmp_path):
    """A program written into the overlay runs as it is now: rewritten in the same
    run, the new one runs (no plan of the old copy kept)."""
    p = run_modes.sh(
        "cp /bin/true /usr/local/bin/x; /usr/local/bin/x; echo $?;"
        " cp /bin/false /usr/local/bin/x; /usr/local/bin/x; echo $?",
        options=["--overlay", str(tmp_path / "ov")],
    )
    assert ok(p).split() == ["0", "1"]


def test_overlay_as_nobody_and_one_job_at_a_time(run, tmp_path):
    """An unprivileged user's overlay; a second job on the same overlay is refused
    with one line while the first runs."""
    work = tempfile.mkdtemp(prefix="croot-overlay-", dir="/tmp")
    try:
        os.chmod(work, 0o777)
        ov = os.path.join(work, "ov")
        run.env = dict(run.env, PARROT_CVMFS_CACHE=os.path.join(work, "cache"))
        opts = ["--overlay", ov]
        out = ok(
            run.sh(
                "echo mine > /etc/mine; id -un; cat /etc/mine",
                options=opts,
                user="nobody",
                cwd=work,
            )
        )
        assert out.split() == ["nobody", "mine"]
        assert os.stat(os.path.join(ov, "upper", "etc", "mine")).st_uid != 0
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *PARROT]
        first = subprocess.Popen(
            [*argv, "--root", run.root, *opts, "--", "/bin/sh", "-c", "read x"],
            env=run.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=work,
        )  # fmt: skip
        try:
            ok(
                run(
                    "true",
                    options=["--overlay", os.path.join(work, "other")],
                    user="nobody",
                    cwd=work,
                )
            )
            lock = os.path.join(ov, "work", "parrot.lock")
            for _ in range(1200):  # until the first job holds the lock (bounded)
                if _locked(lock) or first.poll() is not None:
                    break
                time.sleep(0.05)
            p = run("true", options=opts, user="nobody", cwd=work)
        finally:
            first.communicate("\n", timeout=60)
        assert p.returncode == 1, p
        assert p.stderr.count("\n") == 1 and "in use" in p.stderr, p.stderr
        assert first.returncode == 0
    finally:
        shutil.rmtree(work)


def _locked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_overlay_and_run_need_a_root(tmp_path):
    for opt in (["--overlay", str(tmp_path / "ov")], ["--run"]):
        p = subprocess.run([*PARROT, *opt, "--", "true"], capture_output=True, text=True)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "needs --root" in p.stderr
        assert not os.path.exists(tmp_path / "ov")


# -- images as apptainer runs them ------------------------------------------------------------


def test_image_environment_and_runscript(run, tmp_path):
    """A root with /.singularity.d (shown by a bind, the userland staying as it is):
    the environment is its scripts' (the user's --env beats them), --run starts its
    runscript with the command's words."""
    sd = tmp_path / "sd"
    (sd / "env").mkdir(parents=True)
    (sd / "env" / "90-environment.sh").write_text(
        "#!/bin/sh\nexport IMAGE_NAME=tiny\nexport PATH=/opt/tiny/bin:$PATH\n"
        "if [ -d /etc/apt ]; then export HAS_APT=yes; fi\nexport OVERRIDDEN=image\n"
    )
    (sd / "runscript").write_text('#!/bin/sh\necho "runscript $IMAGE_NAME $*"\n')
    (sd / "runscript").chmod(0o755)
    opts = ["-B", f"{sd}:/.singularity.d", "--env", "OVERRIDDEN=user"]
    out = ok(run.sh('echo "$IMAGE_NAME $HAS_APT $OVERRIDDEN $PATH"', options=opts))
    assert out.split() == ["tiny", "yes", "user", "/opt/tiny/bin:" + _DEFAULT_PATH]
    argv = [*PARROT, "--root", run.root, *opts, "--run", "a", "b c"]
    p = subprocess.run(argv, env=run.env, capture_output=True, text=True, timeout=300)
    assert ok(p) == "runscript tiny a b c\n"


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
