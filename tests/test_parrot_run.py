"""parrot_run with real programs under the real tracer, in both of its modes
(seccomp notifications where the kernel has them, ptrace stops everywhere).

Differential tests run each command natively on the source tree and under
parrot_run on /cvmfs/<repo>, and compare the outputs with the paths substituted."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import PARROT_RUN, REAL_REPOS, base_env, published_env, repo_spec
from .servers import serving

pytestmark = pytest.mark.tracer

HERE = os.path.dirname(os.path.abspath(__file__))
PARROT = PARROT_RUN


def run(cmd, env, timeout=300, **kw):
    return subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, **kw)


class Parrot:
    def __init__(self, env: dict[str, str], cache: str):
        self.env, self.cache = env, cache

    def __call__(self, *cmd, env=None, timeout=300, options=(), **kw):
        e = dict(self.env)
        e.update(env or {})
        return run([*PARROT, "--cache-dir", self.cache, *options, "--", *cmd], e, timeout, **kw)

    def sh(self, script, **kw):
        return self("/bin/sh", "-c", script, **kw)


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def mode(request):
    return {"PARROT_CVMFS_MODE": request.param}


@pytest.fixture(scope="module")
def round_server(published):
    with serving(StratumServer(published.stratum)) as srv:
        yield srv


@pytest.fixture(scope="module")
def parrot(published, round_server, tmp_path_factory, mode):
    env = {**published_env(published, round_server.url), **mode}
    return Parrot(env, str(tmp_path_factory.mktemp("parrot-cache")))


# -- differential tests on the generated tree ------------------------------------------------------

# links of one inode the publisher splits into groups (one per directory, none across a
# catalog boundary, as the real server): their link counts differ from the source's
CROSS_CATALOG = {
    "./hardlinks/pair1",
    "./hardlinks/pair2",
    "./nested/cross-catalog-link",
    "./hardlinks/a",
    "./hardlinks/b",
    "./hardlinks/other/c",
}


def differential(parrot, published, script: str) -> tuple[str, str]:
    """(native output, output under parrot_run), with the tree's root written <ROOT>."""
    src = published.src
    mnt = f"/cvmfs/{published.name}"
    native = run(["/bin/sh", "-c", f"cd {src} && {script}"], base_env(ROOT=src))
    traced = parrot.sh(f"cd {mnt} && {script}", env={"ROOT": mnt})
    assert traced.returncode == native.returncode, (script, native.stderr, traced.stderr)
    n = native.stdout.decode("utf-8", "surrogateescape").replace(src, "<ROOT>")
    t = traced.stdout.decode("utf-8", "surrogateescape").replace(mnt, "<ROOT>")
    return n, t


VARIANT_RAW = "$(PARROT_TEST_VAR:-default)/x"


def _expand_variant(native: str) -> str:
    """The variant symlink: the real client shows it expanded (PARROT_TEST_VAR unset)."""
    out = []
    for line in native.splitlines():
        if line.startswith("./links/variant|"):
            line = line.replace(VARIANT_RAW, "default/x").replace(f"|{len(VARIANT_RAW)}|", "|9|")
        out.append(line)
    return "\n".join(out)


def _drop_cross_catalog_nlink(line: str) -> str:
    """The catalog boundary breaks a hardlink group: link counts differ there (as on the
    real server)."""
    return line.split("|", 1)[0] if line.split("|", 1)[0] in CROSS_CATALOG else line


def test_find_printf_every_attribute(parrot, published):
    fmt = "%p|%y|%Y|%m|%s|%n|%T@|%l|%U|%G\\n"
    n, t = differential(parrot, published, f"find . -printf '{fmt}' | LC_ALL=C sort")
    assert [_drop_cross_catalog_nlink(x) for x in t.splitlines()] == [
        _drop_cross_catalog_nlink(x) for x in _expand_variant(n).splitlines()
    ]
    assert len(t.splitlines()) > 100


def test_ls_laR(parrot, published):
    def clean(out: str) -> list[str]:
        lines = []
        for line in out.splitlines():
            if line.startswith("total ") or line.endswith(" ..") and "./" not in line:
                continue
            if " variant -> " in line:  # expanded by the client, raw natively
                continue
            names = {c.rsplit("/", 1)[-1] for c in CROSS_CATALOG}
            if line.startswith("-") and line.rsplit(" ", 1)[-1] in names:
                line = line.split(None, 2)[0]
            lines.append(line)
        return lines

    n, t = differential(parrot, published, "LC_ALL=C ls -laR --time-style=full-iso .")
    assert clean(t) == clean(n)


def test_stat_readlink_du_sha256(parrot, published):
    script = (
        "find . -path ./nested/cross-catalog-link -prune -o -path './hardlinks/*' -type f -prune -o "
        "-path ./links/variant -prune -o "
        "-print0 | LC_ALL=C sort -z | xargs -0 stat -c '%n %F %a %s %h %Y %N'; "
        "find . -type l ! -name variant | LC_ALL=C sort | while read -r l; do "
        'echo "$l $(readlink -f "$l")"; done; '
        "du -abl --exclude=variant . | LC_ALL=C sort -k2; "
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum"
    )
    n, t = differential(parrot, published, script)
    assert t == n
    assert "big.bin" in t


def test_tar_and_cp_a(parrot, published, tmp_path):
    n, t = differential(parrot, published, "tar cf - . | tar tf - | LC_ALL=C sort")
    assert t == n and "./large/big.bin" in t
    dest = tmp_path / "copy"
    p = parrot("cp", "-a", f"/cvmfs/{published.name}", str(dest))
    assert p.returncode == 0, p.stderr
    d = run(
        ["diff", "-r", "--no-dereference", "-x", "fifo", "-x", "variant", published.src, str(dest)],
        base_env(),
    )
    assert d.returncode == 0, d.stdout
    fmt = "%P|%y|%m|%s|%T@|%l\\n"
    a = run(["find", published.src, "!", "-name", "variant", "-printf", fmt], base_env()).stdout
    b = run(["find", str(dest), "!", "-name", "variant", "-printf", fmt], base_env()).stdout
    assert sorted(a.splitlines()) == sorted(b.splitlines())
    assert os.readlink(dest / "links" / "variant") == "default/x"


def test_cd_pwd(parrot, published):
    script = (
        "cd nested/inner && pwd && pwd -P && /bin/pwd && cd ../../links/dirlink && pwd "
        "&& pwd -P && /bin/pwd && ls && cd .. && pwd"
    )
    n, t = differential(parrot, published, script)
    assert t == n
    assert "<ROOT>/links/sub" in t


def test_errors_seen_by_programs(parrot, published):
    mnt = f"/cvmfs/{published.name}"
    p = parrot.sh(
        f"cat {mnt}/nope; echo rc=$?; touch {mnt}/new; echo rc=$?; "
        f"mkdir {mnt}/data; echo rc=$?; rm -f {mnt}/README; echo rc=$?; "
        f"ls /cvmfs/no-such.example.org; echo rc=$?; cat {mnt}/links/loop-a; echo rc=$?",
        env={"LC_ALL": "C"},
    )
    err = p.stderr.decode()
    assert "No such file or directory" in err and "Read-only file system" in err
    assert "File exists" in err and "Too many levels of symbolic links" in err
    assert p.stdout.decode().count("rc=1") >= 5


def test_answers_kept_across_runs(parrot, published, tmp_path):
    """A second run over the same revision is answered from the kept answers, in C,
    and sees exactly what the first saw."""
    import re

    fresh = Parrot(parrot.env, str(tmp_path / "cache"))
    mnt = f"/cvmfs/{published.name}"
    script = (
        f"find {mnt} -printf '%p %y %m %s %T@ %n %i\\n' | sort; ls -laR {mnt} >/dev/null; "
        # coreutils stat asks statx: the kept answers hold struct stat, C derives statx
        f"find {mnt} -exec stat -c '%n %f %s %Y %X %Z %h %i %u %g %d %t %T %b %B' {{}} + | sort; "
        f"cat {mnt}/README {mnt}/nested/inner/deep.txt | sha256sum"
    )
    outs, in_python = [], []
    for _ in range(2):
        p = fresh("/bin/sh", "-c", script, options=("--stats",))
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
        m = re.search(rb"(\d+) answered in C, (\d+) handled in Python", p.stderr)
        assert m, p.stderr
        in_python.append((int(m.group(1)), int(m.group(2))))
    assert outs[0] == outs[1]
    assert in_python[0][1] > 100, in_python  # the first run taught the table
    assert in_python[1][1] <= 5 and in_python[1][0] > 500, in_python
    # the per-call breakdown adds up to the totals, and names what the warm run answered
    totals = re.search(
        rb"(\d+) intercepted calls .*: (\d+) passed through in C, (\d+) answered in C, "
        rb"(\d+) handled in Python",
        p.stderr,
    )
    line = re.search(rb"by call, passed through/answered in C/handled in Python: (.*)", p.stderr)
    assert totals and line, p.stderr
    per_call = {
        m[0].decode(): tuple(int(x) for x in m[1:])
        for m in re.findall(rb"(\w+) \d+ \((\d+)/(\d+)/(\d+)\)", line.group(1))
    }
    sums = [sum(v[k] for v in per_call.values()) for k in range(3)]
    assert [sum(sums), *sums] == [int(x) for x in totals.groups()], (per_call, totals.groups())
    assert per_call["getdents64"][1] > 0 and per_call["execve"][0] > 0, per_call


def test_files_opened_in_c_count_as_used_by_the_cache_clean_up(parrot, published, tmp_path):
    """Opens answered in C from the kept answers still count as uses of their objects in
    the cache's LRU, so a quota clean-up does not evict a job's everyday files first."""
    import re
    import sqlite3

    from parrot_cvmfs.client.config import Configuration
    from parrot_cvmfs.client.repository import Repository

    cache = str(tmp_path / "cache")
    fresh = Parrot(parrot.env, cache)
    with Repository.mount(
        published.name, cache_dir=str(tmp_path / "probe"), config=Configuration(env=parrot.env)
    ) as repo:
        name = repo.lookup("/README").hash.cache_name()

    def cachedb(sql: str, *args):
        con = sqlite3.connect(os.path.join(cache, "cachedb"))
        try:
            with con:
                return con.execute(sql, args).fetchone()
        finally:
            con.close()

    # the first call mounts the repository (in Python), then cat opens README
    mnt = f"/cvmfs/{published.name}"
    script = f"test -d {mnt} && cat {mnt}/README"
    assert fresh("sh", "-c", script).returncode == 0
    cachedb("UPDATE objects SET atime = 1000 WHERE name = ?", name)  # long unused
    p = fresh("sh", "-c", script, options=("--stats",))
    assert p.returncode == 0, p.stderr
    opens = re.search(rb"openat \d+ \((\d+)/(\d+)/(\d+)\)", p.stderr)
    assert opens and int(opens.group(2)) >= 1, p.stderr  # opened in C, from kept answers
    assert cachedb("SELECT atime FROM objects WHERE name = ?", name)[0] > time.time() - 600


# -- the real repository written by cvmfs 2.12 ----------------------------------------------------


@pytest.fixture(scope="module")
def real_parrot(real_env, tmp_path_factory, mode):
    return Parrot({**real_env, **mode}, str(tmp_path_factory.mktemp("real-cache")))


def test_real_repository_walked(real_parrot):
    with open(os.path.join(REAL_REPOS, "ref.test.org", "tree-v2.jsonl")) as f:
        tree = {r["path"]: r for r in map(json.loads, f)}
    mnt = "/cvmfs/ref.test.org"
    p = real_parrot("find", mnt, "-printf", "%P\\0%y\\0%m\\0%s\\0%T@\\0%n\\0%l\\0")
    assert p.returncode == 0, p.stderr
    fields = p.stdout.decode().split("\0")[:-1]
    seen = {}
    types = {"d": "dir", "f": "file", "l": "symlink", "p": "special"}
    for i in range(0, len(fields), 7):
        rel, y, m, s, t, nl, link = fields[i : i + 7]
        seen["/" + rel if rel else "/"] = (
            types[y],
            int(m, 8),
            int(s),
            int(float(t)),
            int(nl),
            link,
        )
    assert sorted(seen) == sorted(tree)
    for path, r in tree.items():
        kind, mode, size, mtime, nlink, link = seen[path]
        assert (kind, mode & 0o7777, mtime, nlink) == (
            r["type"],
            r["mode"] & 0o7777,
            r["mtime"],
            r["nlink"],
        ), path
        if kind == "symlink":
            assert link == (r["symlink"] if path != "/links/variant" else "x86_64/lib"), path
        elif kind != "special":
            assert size == r["size"], path
    p = real_parrot("sh", "-c", f"cd {mnt} && find . -type f -print0 | xargs -0 sha256sum --zero")
    assert p.returncode == 0, p.stderr
    sums = {line[66:].lstrip("."): line[:64] for line in p.stdout.decode().split("\0") if line}
    assert {k: v for k, v in sums.items()} == {
        k: r["sha256"] for k, r in tree.items() if r["type"] == "file"
    }
    p = real_parrot("getfattr", "-d", "-e", "hex", f"{mnt}/xattr/one.txt")
    assert "user.foo=0x626172" in p.stdout.decode()
    assert "user.binary=0x000102030405060708090a0b0c0d0e0f" in p.stdout.decode()
    p = real_parrot("getfattr", "-n", "user.fqrn", "--only-values", f"{mnt}/")
    assert p.stdout == b"ref.test.org"
    p = real_parrot("stat", "-c", "%F", f"{mnt}/special/fifo")
    assert p.stdout.decode().strip() == "fifo"
    p = real_parrot("readlink", f"{mnt}/links/variant")
    assert p.stdout.decode().strip() == "x86_64/lib"
    p = real_parrot("readlink", f"{mnt}/links/variant", env={"CVMFS_ARCH": "aarch64"})
    assert p.stdout.decode().strip() == "aarch64/lib"


# -- exec, processes, signals -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def progs(tmp_path_factory):
    d = tmp_path_factory.mktemp("progs")
    out = str(d / "ptest")
    subprocess.run(
        ["cc", "-O1", "-pthread", "-o", out, os.path.join(HERE, "progs", "ptest.c")], check=True
    )
    return out


@pytest.fixture(scope="module")
def exec_repo(tmp_path_factory, progs, mode):
    """A repository with programs: a C binary, one whose ELF interpreter is in /cvmfs,
    scripts with host and /cvmfs interpreters, a Python package, a C library, a git repo."""
    base = tmp_path_factory.mktemp("exec")
    src = base / "src"
    name = "exec.test.org"
    for d in ("bin", "lib64", "lib", "include", "py/mypkg"):
        (src / d).mkdir(parents=True)
    hello = base / "hello.c"
    hello.write_text(
        "#include <stdio.h>\n#include <unistd.h>\nint main(int c, char **v){char b[4096];"
        'ssize_t n=readlink("/proc/self/exe",b,sizeof b-1);b[n>0?n:0]=0;'
        'printf("exe=%s argv0=%s argc=%d\\n",b,v[0],c);return 3;}\n'
    )
    subprocess.run(["cc", "-o", str(src / "bin/hello"), str(hello)], check=True)
    forker = base / "forker.c"  # children that ask at once, before they do anything else
    forker.write_text(
        "#include <stdio.h>\n#include <string.h>\n#include <unistd.h>\n#include <sys/wait.h>\n"
        "int main(int c, char **v){int bad=0;for(int i=0;i<40;i++){pid_t p=fork();"
        'if(!p){char b[4096];ssize_t n=readlink("/proc/self/exe",b,sizeof b-1);'
        "b[n>0?n:0]=0;_exit(strcmp(b,v[1])!=0);}int st;waitpid(p,&st,0);"
        'bad+=!WIFEXITED(st)||WEXITSTATUS(st);}printf("%d\\n",bad);return 0;}\n'
    )
    subprocess.run(["cc", "-o", str(src / "bin/forker"), str(forker)], check=True)
    ld = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    shutil.copy(ld, src / "lib64/ld-linux-x86-64.so.2")
    subprocess.run(
        [
            "cc",
            "-o",
            str(src / "bin/hello-interp"),
            f"-Wl,--dynamic-linker=/cvmfs/{name}/lib64/ld-linux-x86-64.so.2",
            str(hello),
        ],
        check=True,
    )
    shutil.copy(progs, src / "bin/ptest")
    shutil.copy("/bin/dash" if os.path.exists("/bin/dash") else "/bin/sh", src / "bin/dash")
    (src / "bin/script.sh").write_text('#!/bin/sh\necho "script $0 args: $*"\n')
    (src / "bin/dscript").write_text(
        f'#!/cvmfs/{name}/bin/dash -e\necho "dash-script $0 args: $*"\n'
    )
    (src / "bin/nested-script").write_text(f"#!/cvmfs/{name}/bin/script.sh\n")
    (src / "bin/argv-script").write_text(
        f"#!/cvmfs/{name}/bin/dash -e\n"
        "printf '%s|' \"$0\" \"$#\" \"$@\"; echo; tr '\\0' '|' </proc/$$/cmdline; echo\n"
        "readlink /proc/$$/exe\n"
    )
    (src / "bin/not-exec").write_text("#!/bin/sh\necho no\n")
    shutil.copy(src / "bin/dash", src / "bin/dash-unexecutable")
    os.chmod(src / "bin/dash-unexecutable", 0o644)
    (src / "bin/bad-interp").write_text(f"#!/cvmfs/{name}/bin/dash-unexecutable\necho ran\n")
    (src / "bin/rel-interp").write_text("#!bin/dash\necho relative ran\n")
    chain = [f"/cvmfs/{name}/bin/dash"] + [f"/cvmfs/{name}/bin/chain{i}" for i in range(1, 7)]
    for i in range(1, 7):  # chain1 runs on dash, chainN on chain(N-1)
        (src / f"bin/chain{i}").write_text(f"#!{chain[i - 1]}\necho chain{i} $0\n")
        os.chmod(src / f"bin/chain{i}", 0o755)
    for f in ("script.sh", "dscript", "nested-script", "argv-script", "bad-interp", "rel-interp"):
        os.chmod(src / "bin" / f, 0o755)
    (src / "include/mylib.h").write_text("int mylib_answer(void);\n")
    lib_c = base / "mylib.c"
    lib_c.write_text("int mylib_answer(void){return 42;}\n")
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(src / "lib/libmylib.so"), str(lib_c)], check=True
    )
    (src / "py/mypkg/__init__.py").write_text("VALUE = 42\nfrom . import sub\n")
    (src / "py/mypkg/sub.py").write_text("NAME = 'sub'\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", str(src / "gitrepo")], check=True)
    (src / "gitrepo/a.txt").write_text("hello\n")
    subprocess.run([*git, "-C", str(src / "gitrepo"), "add", "a.txt"], check=True)
    subprocess.run([*git, "-C", str(src / "gitrepo"), "commit", "-qm", "first commit"], check=True)
    (src / "README").write_text("exec repository\n")
    (src / "data.bin").write_bytes(os.urandom(200_000))
    os.symlink("data.bin", src / "data-link")
    os.symlink("$(PARROT_TEST_VAR:-bin)", src / "vlink")  # its target: the job's environment
    os.symlink("../README", src / "py/up")  # leaves a bind of py for the bind's guest parent
    os.symlink("nothere", src / "py/dangling")
    os.symlink("../README/x", src / "py/notdir")
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(PublishOptions(source=str(src), name=name, stratum=stratum, keys_dir=keys))
    srv = StratumServer(stratum)
    srv.start_background()
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(name, f"{srv.url}/{name}", f"{keys}/{name}.pub"), **mode
    )
    yield Parrot(env, str(base / "cache")), f"/cvmfs/{name}", str(src), stratum
    srv.shutdown()


def test_exec_binaries_and_scripts(exec_repo):
    parrot, mnt, _, _ = exec_repo
    p = parrot(f"{mnt}/bin/hello", "a", "b")
    assert p.returncode == 3
    assert p.stdout.decode() == f"exe={mnt}/bin/hello argv0={mnt}/bin/hello argc=3\n"
    p = parrot(f"{mnt}/bin/hello-interp", "x")  # PT_INTERP inside /cvmfs
    assert p.returncode == 3, p.stderr
    assert p.stdout.decode() == f"exe={mnt}/bin/hello-interp argv0={mnt}/bin/hello-interp argc=2\n"
    p = parrot(f"{mnt}/bin/script.sh", "1", "2")
    assert p.stdout.decode() == f"script {mnt}/bin/script.sh args: 1 2\n"
    p = parrot(f"{mnt}/bin/dscript", "a")  # the interpreter itself is in /cvmfs
    assert p.stdout.decode() == f"dash-script {mnt}/bin/dscript args: a\n", p.stderr
    p = parrot(f"{mnt}/bin/nested-script", "z")  # a script as the interpreter of a script
    assert p.stdout.decode() == f"script {mnt}/bin/script.sh args: {mnt}/bin/nested-script z\n", (
        p.stderr
    )
    p = parrot(f"{mnt}/bin/not-exec")
    assert p.returncode == 126 and "Permission denied" in p.stderr.decode()
    p = parrot(f"{mnt}/bin/nothing")
    assert p.returncode == 127 and "No such file or directory" in p.stderr.decode()
    # argv[0] as the caller sets it, exec through PATH and through env
    p = parrot("bash", "-c", f"PATH={mnt}/bin:$PATH; exec -a custom hello")
    assert p.stdout.decode() == f"exe={mnt}/bin/hello argv0=custom argc=1\n", p.stderr
    p = parrot("env", f"{mnt}/bin/hello")
    assert p.returncode == 3


def test_children_see_their_program_from_their_first_call(exec_repo):
    """A child asking for /proc/self/exe before anything else sees its parent's /cvmfs
    program: its fork event reaches the supervisor before the child runs (a child's
    first stop may come before its parent's fork event)."""
    parrot, mnt, _, _ = exec_repo
    for _ in range(3):  # the first run taught by Python, then kept answers
        p = parrot(f"{mnt}/bin/forker", f"{mnt}/bin/forker")
        assert (p.returncode, p.stdout) == (0, b"0\n"), p.stderr


def test_kept_script_execs_have_the_kernels_argv(exec_repo):
    """A script whose `#!` interpreter lies in its own revision is exec'd by C from its
    kept recipe after the first time, with the argv the kernel's `#!` rule makes (the
    interpreter, its argument, the path as given, argv[1:]) and the interpreter as
    /proc/self/exe, as Python made them the first time."""
    parrot, mnt, _, _ = exec_repo
    script = f"{mnt}/bin/argv-script"
    job = f'for i in 1 2 3; do {script} "a b" "" c; done; cd {mnt}/bin && ./argv-script rel'
    p = parrot("/bin/sh", "-c", job, options=["--stats"])
    assert p.returncode == 0, p.stderr
    once = f"{script}|3|a b||c|\n{mnt}/bin/dash|-e|{script}|a b||c|\n{mnt}/bin/dash\n"
    rel = f"./argv-script|1|rel|\n{mnt}/bin/dash|-e|./argv-script|rel|\n{mnt}/bin/dash\n"
    assert p.stdout.decode() == once * 3 + rel
    execs = re.search(r"\bexecve \d+ \((\d+)/(\d+)/(\d+)\)", p.stderr.decode())
    assert execs and int(execs.group(2)) >= 2, p.stderr  # the second and third: C's


def test_script_interpreters_as_the_kernel_takes_them(exec_repo):
    """An interpreter that is not executable is EACCES; a relative one is found from the
    process's cwd; five `#!` rewrites run, a sixth is ELOOP (the kernel's exec_binprm)."""
    parrot, mnt, _, _ = exec_repo
    p = parrot(f"{mnt}/bin/bad-interp")
    assert p.returncode == 126 and "Permission denied" in p.stderr.decode(), p.stderr
    p = parrot("/bin/sh", "-c", f"cd {mnt} && ./bin/rel-interp; cd /tmp && {mnt}/bin/rel-interp")
    assert p.stdout.decode() == "relative ran\n" and p.returncode == 127, p.stderr
    p = parrot(f"{mnt}/bin/chain5")
    assert (p.returncode, p.stdout.decode()) == (0, f"chain1 {mnt}/bin/chain1\n"), p.stderr
    p = parrot(f"{mnt}/bin/chain6")
    assert p.returncode == 126 and "Too many levels" in p.stderr.decode(), p.stderr


def test_python_c_compile_git(exec_repo, tmp_path):
    parrot, mnt, _, _ = exec_repo
    p = parrot(
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, '{mnt}/py'); import mypkg; "
        "print(mypkg.VALUE, mypkg.sub.NAME, mypkg.__file__)",
    )
    assert p.stdout.decode() == f"42 sub {mnt}/py/mypkg/__init__.py\n", p.stderr
    src = tmp_path / "use.c"
    src.write_text(
        '#include <mylib.h>\n#include <stdio.h>\nint main(void){printf("%d\\n", mylib_answer());}\n'
    )
    out = tmp_path / "use"
    p = parrot(
        "cc",
        f"-I{mnt}/include",
        f"-L{mnt}/lib",
        f"-Wl,-rpath,{mnt}/lib",
        "-o",
        str(out),
        str(src),
        "-lmylib",
    )
    assert p.returncode == 0, p.stderr
    p = parrot(str(out))
    assert p.stdout == b"42\n", p.stderr
    p = parrot("git", "-C", f"{mnt}/gitrepo", "log", "--format=%s")
    assert p.stdout == b"first commit\n", p.stderr
    p = parrot("git", "-C", f"{mnt}/gitrepo", "status", "--porcelain")
    assert p.returncode == 0 and p.stdout == b"", p.stderr


def test_exit_status_and_signals(exec_repo):
    parrot, mnt, _, _ = exec_repo
    assert parrot("sh", "-c", "exit 7").returncode == 7
    assert parrot("sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    assert parrot("sh", "-c", "kill -SEGV $$").returncode == 128 + signal.SIGSEGV
    # a handler sees its signal unchanged
    p = parrot("sh", "-c", "trap 'echo got USR1' USR1; kill -USR1 $$; echo after")
    assert p.stdout == b"got USR1\nafter\n"
    # group stop and continue
    p = parrot(
        "sh",
        "-c",
        "sleep 0.3 & pid=$!; kill -STOP $pid; sleep 0.2; kill -CONT $pid; "
        "wait $pid; echo waited $?",
    )
    assert p.stdout == b"waited 0\n"
    # stdin and the working directory pass through
    p = parrot("cat", input=b"from stdin\n")
    assert p.stdout == b"from stdin\n"
    p = parrot("pwd", cwd="/tmp")
    assert p.stdout == b"/tmp\n"


def test_opens_leave_the_programs_cpu_affinity_alone(exec_repo):
    """An open's descriptor is handed over with the program held to the supervisor's
    CPU (respond.c); the program must never see that mask."""
    parrot, mnt, _, _ = exec_repo
    script = (
        "import os, threading\n"
        "seen = set()\n"
        "def opener():\n"
        "    for _ in range(300):\n"
        f"        open('{mnt}/README').close()\n"
        "        seen.add(tuple(sorted(os.sched_getaffinity(0))))\n"
        "ts = [threading.Thread(target=opener) for _ in range(3)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(sorted(seen))\n"
    )
    mine = tuple(sorted(os.sched_getaffinity(0)))
    p = parrot(sys.executable, "-c", script)
    assert p.stdout.decode().strip() == str([mine]), p.stderr
    # a program already held to one CPU keeps it
    p = parrot("taskset", "-c", "0", sys.executable, "-c", script)
    assert p.stdout.decode().strip() == "[(0,)]", p.stderr


def test_many_short_children_and_make(exec_repo, tmp_path):
    parrot, mnt, _, _ = exec_repo
    p = parrot(
        "sh",
        "-c",
        f"i=0; while [ $i -lt 1000 ]; do cat {mnt}/README >/dev/null || exit 1; "
        "i=$((i+1)); done; echo done",
    )
    assert p.stdout == b"done\n", p.stderr
    mk = tmp_path / "Makefile"
    mk.write_text(
        "".join(f"t{i}:\n\t@cat {mnt}/README > /dev/null && echo t{i}\n" for i in range(40))
        + "all: "
        + " ".join(f"t{i}" for i in range(40))
        + "\n"
    )
    p = parrot("make", "-j2", "-f", str(mk), "all")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 40, p.stderr


def test_ptest_scenarios(exec_repo):
    parrot, mnt, src, _ = exec_repo
    ptest = f"{mnt}/bin/ptest"
    env = {"ROOT": mnt}
    p = parrot(ptest, "vfork-exec", f"{mnt}/bin/hello", env=env)
    assert p.stdout.decode().endswith("vfork child exit 3\n"), p.stderr
    p = parrot(ptest, "self-exe", env=env)
    assert p.stdout.decode() == f"{ptest}\n{ptest}\nsame size 1\n", p.stderr
    p = parrot(ptest, "threads", f"{mnt}/README", "8", "300", env=env)
    assert p.stdout == b"threads done, errors 0\n", p.stderr
    p = parrot(ptest, "chdir-threads", env=env)
    assert p.stdout.decode().splitlines()[1:] == [
        f"cwd {mnt}",
        f"entries in . {len(os.listdir(src)) + 2}",
    ]
    p = parrot(ptest, "mmaps", f"{mnt}/data.bin", "2000", env=env)
    assert p.stdout == b"2000 mappings agree\n", p.stderr
    p = parrot(ptest, "threads-fork", "400", env=env)
    assert p.stdout == b"400 of 400 forked children saw /cvmfs\n", p.stderr
    n = len(os.listdir(f"{src}/bin")) + 2
    line = f"entries {n} small-buffer-same 1 readdir-same 1 tiny-einval 1 seek-same 1\n"
    assert (
        run([f"{src}/bin/ptest", "getdents", f"{src}/bin"], base_env()).stdout.decode() == line * 3
    )
    for _ in range(2):  # the second run is answered from the kept answers
        p = parrot(ptest, "getdents", f"{mnt}/bin", env=env)
        assert p.stdout.decode() == line * 3, p.stderr


def test_descriptor_numbers_reused(exec_repo, tmp_path):
    """One descriptor number holding, in turn, /cvmfs directories, a host directory and
    files (close and reopen, dup2 over it), used from two threads: every fd-relative
    answer is about the file now at that number, as natively (any cache of what a
    descriptor names must see it change hands)."""
    parrot, mnt, src, _ = exec_repo
    host = tmp_path / "hostdir"
    (host / "mypkg").mkdir(parents=True)
    (host / "hello").write_text("")
    rel = ["py/mypkg", "bin", None, "py", "bin/hello", "", "py/mypkg/__init__.py", "lib"]

    def args(top: str) -> list[str]:
        paths = [str(host) if r is None else f"{top}/{r}".rstrip("/") for r in rel]
        return ["fd-reuse", *paths, "--", "mypkg", "hello", "bin", "py", "sub.py", "nothing"]

    def out(text: str, top: str) -> str:  # the top directory's own name differs
        return text.replace(f" /{os.path.basename(top)}\n", " /TOP\n")

    want = out(run([f"{src}/bin/ptest", *args(src)], base_env()).stdout.decode(), src)
    assert want.count("fstat-same 1 link-base-same 1") == 6 * 2 * len(rel), want
    for _ in range(2):  # the second run is answered from the kept answers
        p = parrot(f"{mnt}/bin/ptest", *args(mnt))
        assert p.returncode == 0 and out(p.stdout.decode(), mnt) == want, p.stderr


def test_locks_released_at_the_jobs_close(exec_repo):
    """A /cvmfs directory or file the job used by descriptor (fstat, fstatat, openat,
    getdents64, from two threads), locked with flock and closed, can be locked again at
    once, as natively: nothing of ours keeps the job's open file (and with it the lock)
    past its close."""
    parrot, mnt, src, _ = exec_repo
    rel = ["", "py", "py/mypkg", "bin/hello", "py/mypkg/__init__.py"]

    def paths(top: str) -> list[str]:
        return [f"{top}/{r}".rstrip("/") for r in rel]

    def out(text: str, top: str) -> str:  # the top directory's own name differs
        return text.replace(f"/{os.path.basename(top)}: ", "/TOP: ")

    want = out(
        run([f"{src}/bin/ptest", "lock-after-use", *paths(src)], base_env()).stdout.decode(), src
    )
    assert want.count("lock ok, relock after close ok") == 2 * len(rel), want
    for _ in range(2):  # the second run is answered from the kept answers
        p = parrot(f"{mnt}/bin/ptest", "lock-after-use", *paths(mnt))
        assert p.returncode == 0 and out(p.stdout.decode(), mnt) == want, p.stderr


@pytest.mark.parametrize("refused", [1, 38])  # EPERM (a container's profile), ENOSYS
def test_locks_released_where_kcmp_is_refused(exec_repo, progs, refused):
    """With kcmp refused to the supervisor, nothing of the job's is held (held.c), so a
    lock ends with the job's close there too, and the job's answers are the same."""
    parrot, mnt, src, _ = exec_repo
    rel = ["", "py", "py/mypkg", "bin/hello"]

    def out(text: str, top: str) -> str:  # the top directory's own name differs
        return text.replace(f"/{os.path.basename(top)}: ", "/TOP: ")

    want = out(
        run(
            [progs, "lock-after-use", *(f"{src}/{r}".rstrip("/") for r in rel)], base_env()
        ).stdout.decode(),
        src,
    )
    assert want.count("relock after close ok") == 2 * len(rel), want
    wrap = [progs, "no-kcmp", str(refused), *PARROT, "--cache-dir", parrot.cache, "--"]
    for _ in range(2):  # the second run is answered from the kept answers
        p = run(
            [*wrap, progs, "lock-after-use", *(f"{mnt}/{r}".rstrip("/") for r in rel)], parrot.env
        )
        assert p.returncode == 0 and out(p.stdout.decode(), mnt) == want, p.stderr


def test_leases_after_the_jobs_close(exec_repo):
    """A write lease on a /cvmfs file (as natively: refused while another open of it
    lives) is granted once the job has closed its other open: nothing of ours keeps one."""
    parrot, mnt, src, _ = exec_repo
    rel = ["README", "bin/hello", "py/mypkg/__init__.py"]
    native = run(
        [f"{src}/bin/ptest", "lease-after-close", *(f"{src}/{r}" for r in rel)], base_env()
    ).stdout.decode()
    assert native.count("lease ok") == len(rel), native
    for _ in range(2):  # the second run is answered from the kept answers
        p = parrot(f"{mnt}/bin/ptest", "lease-after-close", *(f"{mnt}/{r}" for r in rel))
        assert p.returncode == 0 and p.stdout.decode() == native, p.stderr


@pytest.mark.parametrize("flags", ["r", "-", "rl"])  # SA_RESTART; EINTR retried; a lock
def test_no_descriptor_left_by_an_interrupted_open(exec_repo, flags):
    """Opens of /cvmfs files (answered in C, a directory and Python's first answers)
    under a 50 µs timer: a signal that ends the job's wait after its descriptor was
    installed but before the answer must not leave that descriptor in the job (its call,
    made again, gets the one installed), nor must an answer the kernel takes while the
    signal has already woken the job (the thread's installs are then made in one step).
    With a POSIX lock held on one of the files, putting a descriptor back at its number
    (a close, for the kernel) must not drop the lock."""
    parrot, mnt, src, _ = exec_repo
    rel = ["README", "bin/hello", "py/mypkg/__init__.py", "py", "bin"]
    want = b"failed 0 strays 0" + (b" lock held" if "l" in flags else b"") + b"\n"
    for _ in range(2):  # the second run is answered from the kept answers
        rounds = "300" if "l" in flags else "100"
        p = parrot(f"{mnt}/bin/ptest", "open-storm", flags, rounds, *(f"{mnt}/{r}" for r in rel))
        assert p.returncode == 0 and p.stdout == want, (p.stdout, p.stderr)


def test_exec_failures_answered_in_c(exec_repo):
    """execve of /cvmfs paths that cannot be exec'd (a shell or execvp trying each PATH
    directory, a directory, a file without x bits) fails with the kernel's errno; once
    Python has seen a path, C fails its next execs itself, in the same run and in the
    next (from the kept answers)."""
    import re

    parrot, mnt, src, _ = exec_repo
    rel = ["bin/nothere", "nodir/x", "bin/hello/x", "README/", "bin", "README", "bin/hello"]

    def paths(top: str) -> list[str]:
        return [f"{top}/{r}" for r in rel]

    want = run([f"{src}/bin/ptest", "exec-errors", *paths(src)], base_env()).stdout.decode()
    assert want.startswith("/nothere: ENOENT ENOENT ENOENT\n/x: ENOENT ENOENT ENOENT\n"), want
    assert want.endswith(
        "/bin: EACCES EACCES EACCES\n/README: EACCES EACCES EACCES\n/hello: ran ran ran\n"
    )
    for run_no in range(2):
        p = parrot(f"{mnt}/bin/ptest", "exec-errors", *paths(mnt), options=("--stats",))
        assert p.returncode == 0 and p.stdout.decode() == want, (p.stdout, p.stderr)
        m = re.search(rb"execve (\d+) \((\d+)/(\d+)/(\d+)\)", p.stderr)
        assert m, p.stderr
        total, in_c, in_python = int(m.group(1)), int(m.group(3)), int(m.group(4))
        # each path reaches Python at most once (ptest's own exec too), the next run never
        assert total == 3 * len(rel) + 1, p.stderr
        assert in_python <= (len(rel) + 1 if run_no == 0 else 0), p.stderr
        assert in_c == total - in_python, p.stderr


def test_variant_link_answers_follow_the_environment(exec_repo):
    """A path through a `$(VAR)` symlink is answered for this run's environment: what a
    run with another value found (a file, ENOTDIR, ELOOP, ENOENT) is not replayed from
    the kept answers, by C or by Python, for exec as for stat."""
    parrot, mnt, _, _ = exec_repo
    for top, options in [(mnt, ()), ("/vx", ("-M", f"/vx={mnt}"))]:  # the guest walk too
        _variant_runs(parrot, top, options)


def _variant_runs(parrot, top: str, options) -> None:
    rel = ["hello", "hello/x", "README", "bin/hello"]
    want = {  # the link's target -> each path's answer (exec-errors' three tries)
        "bin": ["ran", "ENOTDIR", "ENOENT", "ENOENT"],
        "README": ["ENOTDIR"] * 4,
        ".": ["ENOENT", "ENOENT", "EACCES", "ran"],
        "nothere": ["ENOENT"] * 4,
        "vlink": ["ELOOP"] * 4,
    }
    kind = {"bin": "directory", "README": "regular file", ".": "directory"}
    for value in ["README", "bin", "vlink", ".", "nothere", "README", "bin", "."]:
        env = {"PARROT_TEST_VAR": value} if value != "bin" else {}
        args = [f"{top}/vlink/{r}" for r in rel]
        p = parrot(f"{top}/bin/ptest", "exec-errors", *args, env=env, options=options)
        got = [line.split(": ", 1)[1] for line in p.stdout.decode().splitlines()]
        assert got == [" ".join([w] * 3) for w in want[value]], (top, value, p.stdout, p.stderr)
        p = parrot("stat", "-L", "-c", "%F", f"{top}/vlink", env=env, options=options)
        assert p.stdout.decode().strip() == kind.get(value, ""), (top, value, p.stdout, p.stderr)


def test_guest_relative_paths_walk_the_guest(exec_repo, tmp_path):
    """In a guest namespace a path relative to a /cvmfs directory is walked from the
    directory's guest name: ".." (given or in a link's target) leaves a bind for its
    guest parent, a bind below the directory hides what lies there. Such a path is
    answered for the guest, in C too, even after its /cvmfs spelling or its guest one
    (which, walked from "/", may lead elsewhere) was answered; and a listing teaches
    nothing a bind hides."""
    parrot, mnt, _, _ = exec_repo
    host = tmp_path / "h"  # h/lnk -> real: the bind's destination h/lnk/x is h/real/x
    (host / "real/x/mypkg").mkdir(parents=True)
    (host / "real/x/mypkg/sub.py").write_text("host\n")
    os.symlink("real", host / "lnk")
    at_host, sub_py = f"{host}/lnk/x/mypkg/sub.py", "NAME = 'sub'"
    name = os.path.basename(mnt)
    gone = "No such file or directory"

    def stat(*paths: str) -> str:
        return f"for i in 1 2; do for p in {' '.join(paths)}; do " + (
            "stat -L -c %F $p 2>&1 | sed 's/.*: //'; done; done; "
        )

    cases = [
        (  # /vx/bin/../.. is /, /cvmfs/<name>/bin/../.. is /cvmfs
            ("-M", f"/vx={mnt}"),
            f"{stat(f'{mnt}/bin/../../{name}/README', f'{mnt}/bin/../README')} cd /vx/bin; "
            + stat(f"../../{name}/README", "../README"),
            ["regular file"] * 4 + [gone, "regular file"] * 2,
        ),
        (  # py/up is ../README: from /vx, /README
            ("-M", f"/vx={mnt}/py"),
            f"{stat(f'{mnt}/py/up')} cd /vx; {stat('up')}",
            ["regular file"] * 2 + [gone] * 2,
        ),
        (  # /vx/lib is include
            ("-M", f"/vx={mnt}", "-M", f"/vx/lib={mnt}/include"),
            f"{stat(f'{mnt}/lib/libmylib.so')} cd /vx; {stat('lib/libmylib.so', 'lib/mylib.h')}",
            ["regular file"] * 2 + [gone, "regular file"] * 2,
        ),
        (  # relative from py: the bind's; h/lnk/x walked from "/": the host's h/real/x
            ("-M", f"{host}/lnk/x={mnt}/py"),
            f"cat {at_host}; cd {mnt}/py; cat mypkg/sub.py mypkg/sub.py; cat {at_host}",
            ["host", sub_py, sub_py, "host"],
        ),
        (
            ("-M", f"{host}/lnk/x={mnt}/py"),
            f"cd {mnt}/py; cat mypkg/sub.py; cat {at_host} {at_host}; cat mypkg/sub.py",
            [sub_py, "host", "host", sub_py],
        ),
        (  # <mnt>/lib is include: the listing of <mnt> must not teach the catalog's lib
            ("-M", f"{mnt}/lib={mnt}/include"),
            f"cd {mnt}; stat -c %i include lib; ls -l . >/dev/null; stat -c %i lib {mnt}/lib",
            None,
        ),
    ]
    for options, script, want in cases:
        for _run in range(2):  # the second from the kept answers
            p = parrot("/bin/sh", "-c", script, options=options)
            got = p.stdout.decode().splitlines()
            if want is None:  # the same inode each time lib is asked (include's)
                assert len(got) == 4 and len(set(got)) == 1, (got, p.stderr)
            else:
                assert got == want, (options, got, p.stderr)


def test_guest_link_errors_are_the_targets(exec_repo):
    """Through a bind, a link whose target fails (missing, not a directory) is itself
    there: stat follows it to the error, lstat and readlink answer the link, in
    whichever order they come and from the kept answers too."""
    parrot, mnt, _, _ = exec_repo
    links = ["dangling", "notdir"]
    follow = "".join(f"stat -L -c %F /vx/py/{n} 2>&1 | sed 's/.*: //'; " for n in links)
    own = "".join(f"stat -c %F /vx/py/{n}; readlink /vx/py/{n}; " for n in links)
    want_follow = ["No such file or directory", "Not a directory"]
    want_own = ["symbolic link", "nothere", "symbolic link", "../README/x"]
    for script, want in [
        (follow + own, want_follow + want_own),
        (own + follow, want_own + want_follow),
    ]:
        for _run in range(2):
            p = parrot("/bin/sh", "-c", script, options=("-M", f"/vx={mnt}"))
            assert p.stdout.decode().splitlines() == want, (script, p.stdout, p.stderr)


def test_openat_edge_cases(parrot, published, progs):
    mnt = f"/cvmfs/{published.name}"
    p = parrot(progs, "openat", env={"ROOT": mnt})
    got = dict(line.split(": ", 1) for line in p.stdout.decode().splitlines() if ": " in line)
    expect = {
        "open dir O_DIRECTORY": "ok",
        "openat relative": "ok",
        "openat ..": "ok",
        "openat O_NOFOLLOW symlink": "ELOOP",
        "openat O_PATH|O_NOFOLLOW symlink": "ok",
        "openat O_DIRECTORY file": "ENOTDIR",
        "openat trailing slash file": "ENOTDIR",
        "openat dirlink/": "ok",
        "openat O_RDWR": "EROFS",
        "openat O_CREAT new": "EROFS",
        "openat O_CREAT|O_EXCL existing": "EEXIST",
        "openat O_RDONLY|O_CREAT existing": "ok",
        "openat missing": "ENOENT",
        "openat loop": "ELOOP",
        "openat dangling": "ENOENT",
        "openat2 NO_SYMLINKS plain": "ok",
        "openat2 NO_SYMLINKS link": "ELOOP",
        "fstatat AT_EMPTY_PATH": "ok",
        "mkdirat new": "EROFS",
        "mkdirat existing": "EEXIST",
        "unlinkat": "EROFS",
        "unlinkat missing": "EROFS",
        "rename in": "EXDEV",
        "chmod": "EROFS",
        "chmod missing": "ENOENT",
        "truncate": "EROFS",
        "access W_OK": "EROFS",
        "access R_OK": "ok",
        "symlink into": "EEXIST",
        "fchmod on fd": "EROFS",
    }
    for k, v in expect.items():
        if k in got:
            assert got[k] == v, (k, got[k], v)
    missing = set(expect) - set(got)
    assert not missing, missing
    out = p.stdout.decode()
    assert "readlink target.txt" in out
    assert "same inode 1 same dev 1" in out and "dir same inode 1 nlink 1" in out
    assert f"fd link {mnt}/README" in out


def test_tracing_unavailable_is_one_line(exec_repo, progs):
    """Where the job cannot be traced, parrot_run says why in one line and exits 1."""
    parrot, mnt, _, _ = exec_repo
    cases = {
        "ptrace": "cannot trace the job: Operation not permitted (a seccomp filter on parrot_run",
        "seccomp": "cannot install the seccomp filter: Operation not permitted",
    }
    for what, expect in cases.items():
        p = run(
            [
                progs,
                "deny",
                what,
                *PARROT,
                "--cache-dir",
                parrot.cache,
                "--",
                "cat",
                f"{mnt}/README",
            ],
            parrot.env,
        )
        err = p.stderr.decode()
        assert p.returncode == 1 and p.stdout == b"", (what, err)
        assert err.startswith("parrot_run: " + expect) and err.count("\n") == 1, err
    # a tracer that follows children (strace -f, installed by .ci/system-packages) takes ours
    p = run(
        ["strace", "-f", "-o", "/dev/null", *PARROT, "--cache-dir", parrot.cache, "--", "true"],
        parrot.env,
    )
    err = p.stderr.decode()
    assert p.returncode == 1 and "is itself traced by process" in err and "(strace)" in err, err


def test_killed_supervisor_leaves_no_job(exec_repo, tmp_path):
    parrot, mnt, _, _ = exec_repo
    marker = tmp_path / "alive"
    e = dict(parrot.env)
    proc = subprocess.Popen(
        [
            *PARROT,
            "--cache-dir",
            parrot.cache,
            "--",
            "sh",
            "-c",
            f"cat {mnt}/README >/dev/null; while true; do touch {marker}; sleep 0.1; done",
        ],
        env=e,
    )
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists(), "the job kept running after the supervisor was killed"


def test_unavailable_repository_and_download_failure(exec_repo, tmp_path):
    parrot, mnt, _, stratum = exec_repo
    p = parrot("ls", "/cvmfs/exec.test.org", options=("--cvmfs", "missing.example.org"))
    assert p.returncode == 1
    assert p.stderr.decode().startswith("parrot_run: cannot mount /cvmfs/missing.example.org:")
    # a file whose object is gone from the server: EIO for the program, one line for the user
    from parrot_cvmfs.client.config import Configuration
    from parrot_cvmfs.client.repository import Repository

    with Repository.mount(
        "exec.test.org", cache_dir=str(tmp_path / "probe"), config=Configuration(env=parrot.env)
    ) as repo:
        h = repo.lookup("/README").hash
        url = repo.downloader.path.current()[1]
    path = os.path.join(stratum, "exec.test.org", h.object_path().lstrip("/"))
    saved = path + ".saved"
    os.rename(path, saved)
    try:
        fresh = Parrot(parrot.env, str(tmp_path / "fresh-cache"))
        p = fresh("sh", "-c", f"cat {mnt}/README; echo rc=$?", options=("--stats",))
        assert b"rc=1" in p.stdout
        err = p.stderr.decode()
        assert "Input/output error" in err
        assert (
            f"parrot_run: cannot download exec.test.org:/README: {url}{h.object_path()}: HTTP 404"
            in err
        )
        assert "I/O errors 1" in err
    finally:
        os.rename(saved, path)
