"""parrot_run's C start path (csrc/launcher/, tracer/startplan.py), through the installed
command of this venv: a first run writes a start plan, a later one starts the job from
it with no Python running (Python starts, in the same process, only when a call needs
it), and every change a plan depends on, or a plan that is not exactly ours, takes the
full start, which writes the plan again.

Whether Python ran is read from the launcher's own memory map while the job runs: the
job prints whether its parent (parrot_run) has the C core mapped (it always has) and
cffi's backend (only Python imports it)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time

import pytest

from parrot_cvmfs.server.serve import StratumServer
from parrot_cvmfs.tracer import startplan

from .conftest import PARROT_RUN, base_env, published_env, repo_spec
from .servers import serving

pytestmark = [
    pytest.mark.tracer,
    pytest.mark.skipif(len(PARROT_RUN) != 1, reason="the launcher is not built here"),
]

MNT = "/cvmfs/round.test.org"
# what the parent (parrot_run) has loaded: "c" if Python never started, "python" if it did
PROBE = (
    "grep -q _core.abi3 /proc/$PPID/maps || echo no-core;"
    " if grep -q _cffi_backend /proc/$PPID/maps; then echo python; else echo c; fi"
)
JOB = f"cat {MNT}/README; {PROBE}; exit 3"
README = "parrot-cvmfs test tree\n"


@pytest.fixture(scope="module")
def server(published):
    with serving(StratumServer(published.stratum)) as srv:
        yield srv


@pytest.fixture(params=["notify", "ptrace"])
def mode(request):
    return request.param


class Launch:
    """parrot_run with its own HOME (where plans live) and cache, as `user` if given."""

    def __init__(self, env: dict[str, str], home: str, user: str | None = None):
        self.env = {k: v for k, v in env.items() if k != "XDG_CACHE_HOME"}
        self.env["HOME"] = home
        self.home, self.cache, self.user = home, os.path.join(home, "cache"), user
        self.groups = ""  # the user's supplementary groups (setpriv --groups)

    def argv(self, *cmd, options=()):
        argv = [*PARROT_RUN, "--cache-dir", self.cache, *options, "--", *cmd]
        if self.user:
            groups = f"--groups={self.groups}" if self.groups else "--clear-groups"
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", groups, *argv]
        return argv

    def __call__(self, *cmd, env=None, options=(), timeout=60):
        e = {**self.env, **(env or {})}
        return subprocess.run(
            self.argv(*cmd, options=options), env=e, capture_output=True, text=True, timeout=timeout
        )

    def sh(self, script: str = JOB, **kw):
        return self("/bin/sh", "-c", script, **kw)

    def plans(self) -> list[str]:
        d = os.path.join(self.home, ".cache", "parrot-cvmfs", "start")
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, n) for n in os.listdir(d) if not n.endswith(".served"))

    def plan(self) -> str:
        (only,) = self.plans()
        return only


@pytest.fixture
def launch(published, server, mode, tmp_path):
    env = published_env(published, server.url)
    env["PARROT_CVMFS_MODE"] = mode
    home = tmp_path / "home"
    home.mkdir()
    return Launch(env, str(home))


def started_by(p: subprocess.CompletedProcess) -> str:
    """ "c" or "python" (the probe's last line), checking the rest of the job's output."""
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert p.stdout.startswith(README), p.stdout
    lines = p.stdout[len(README) :].splitlines()
    assert lines and lines[-1] in ("c", "python") and "no-core" not in lines, p.stdout
    return lines[-1]


def test_a_second_run_starts_without_python(launch):
    first = launch.sh()
    assert started_by(first) == "python"
    plan = launch.plan()
    st = os.lstat(plan)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()
    second = launch.sh()
    assert started_by(second) == "c"
    assert second.stderr == first.stderr == ""
    assert launch.sh().stdout == second.stdout  # and again


def test_a_call_the_table_cannot_answer_starts_python(launch):
    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
    p = launch.sh(f"cat {MNT}/deep/a/b/c/d/e/leaf.txt; ls {MNT}/deep/a; {PROBE}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["leaf", "b", "python"]
    # the adopted run kept what it learned, and wrote the plan again
    p = launch.sh(f"cat {MNT}/deep/a/b/c/d/e/leaf.txt; {PROBE}")
    assert p.stdout.splitlines() == ["leaf", "c"], p.stderr


def _records(data: bytes) -> list[tuple[bytes, int, int]]:
    """(tag, offset of the payload, its length) of a plan's records."""
    out, i = [], len(startplan.MAGIC)
    while i < len(data):
        (n,) = struct.unpack_from("<I", data, i + 4)
        out.append((data[i : i + 4], i + 8, n))
        i += 8 + n
    return out


def _rewrite(path: str, tag: bytes, payload: bytes) -> None:
    """Replace a record's payload, the rest of the plan left as it is (the same owner
    and mode: only the record tells this plan from a good one)."""
    data = open(path, "rb").read()
    for t, at, n in _records(data):
        if t == tag:
            data = data[: at - 4] + struct.pack("<I", len(payload)) + payload + data[at + n :]
            break
    else:
        raise AssertionError(tag)
    with open(path, "wb") as f:
        f.write(data)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _corrupt(path):
    data = bytearray(open(path, "rb").read())
    (_, at, _), *_ = _records(bytes(data))
    data[at - 4 : at] = b"\xff\xff\xff\x7f"  # the first record's length: past the end
    with open(path, "wb") as f:
        f.write(bytes(data))


def _symlink(path):
    copy = path + ".real"
    shutil.copy2(path, copy)
    os.unlink(path)
    os.symlink(copy, path)


def _foreign(path):
    os.chown(path, 65534, 65534)


def _group_writable(path):
    os.chmod(path, 0o620)


def _groups() -> list[int]:
    return sorted(set(os.getgroups()) | {os.getgid()})


def _user(uid: int, groups: list[int], gid: int | None = None) -> bytes:
    gid = os.getgid() if gid is None else gid
    return struct.pack(f"<II{len(groups)}I", uid, gid, *groups)


TAMPER = {
    "expired": lambda p: _rewrite(p, b"VALD", struct.pack("<d", 1.0)),
    "another build": lambda p: _rewrite(p, b"BILD", b"0" * 32),
    "another user": lambda p: _rewrite(p, b"UID_", _user(os.getuid() + 1, _groups())),
    "another group set": lambda p: _rewrite(p, b"UID_", _user(os.getuid(), _groups() + [4242])),
    "groups repeated": lambda p: _rewrite(p, b"UID_", _user(os.getuid(), _groups() * 2)),
    "another gid": lambda p: _rewrite(p, b"UID_", _user(os.getuid(), _groups(), 4242)),
    "truncated": _truncate,
    "corrupted": _corrupt,
    "symlinked": _symlink,
    "foreign-owned": _foreign,
    "group-writable": _group_writable,
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_a_plan_that_does_not_hold_is_ignored_and_replaced(published, server, tmp_path, how):
    home = tmp_path / "home"
    home.mkdir()
    launch = Launch(published_env(published, server.url), str(home))
    assert started_by(launch.sh()) == "python"
    plan = launch.plan()
    TAMPER[how](plan)
    assert started_by(launch.sh()) == "python"
    st = os.lstat(plan)  # replaced by a good one: ours, 0600, no link
    assert st.st_uid == os.getuid() and st.st_mode == 0o100600
    assert started_by(launch.sh()) == "c"


def _with_config_dir(published, server, tmp_path):
    """A Launch whose configuration directory is its own (returned too)."""
    home, etc = tmp_path / "home", tmp_path / "etc"
    home.mkdir()
    etc.mkdir()
    env = published_env(published, server.url)
    env["PARROT_CVMFS_CONFIG_DIR"] = str(etc)
    return Launch(env, str(home)), etc


def test_what_a_plan_depends_on(published, server, tmp_path):
    """A changed option, a relevant variable, a configuration file created or changed:
    each takes the full start (and that start's plan serves the next)."""
    launch, etc = _with_config_dir(published, server, tmp_path)
    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
    # another option: another plan
    assert started_by(launch.sh(options=["--offline"])) == "python"
    assert started_by(launch.sh(options=["--offline"])) == "c"
    assert len(launch.plans()) == 2
    # a variable the configuration reads
    assert started_by(launch.sh(env={"CVMFS_MAX_TTL": "10"})) == "python"
    assert started_by(launch.sh(env={"CVMFS_MAX_TTL": "10"})) == "c"
    assert started_by(launch.sh()) == "python"
    # a configuration file created, then changed
    (etc / "default.local").write_text("CVMFS_HTTP_PROXY=DIRECT\n")
    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
    (etc / "default.local").write_text("CVMFS_HTTP_PROXY='DIRECT'\n")
    assert started_by(launch.sh()) == "python"
    # a variable the configuration files name (any, not only CVMFS_*)
    (etc / "default.local").write_text("CVMFS_HTTP_PROXY=DIRECT\nCVMFS_FOO=$SITE_NAME\n")
    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
    assert started_by(launch.sh(env={"SITE_NAME": "a"})) == "python"
    assert started_by(launch.sh(env={"SITE_NAME": "a"})) == "c"
    assert started_by(launch.sh(env={"SITE_NAME": "b"})) == "python"
    # a module that makes what the plan holds, changed (an editable install)
    syscalls = startplan.generators()[0]
    st = os.stat(syscalls)
    os.utime(syscalls, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    try:
        assert started_by(launch.sh(env={"SITE_NAME": "b"})) == "python"
        assert started_by(launch.sh(env={"SITE_NAME": "b"})) == "c"
    finally:
        os.utime(syscalls, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert started_by(launch.sh(env={"SITE_NAME": "b"})) == "python"  # changed back
    # the job's own environment is no part of it
    assert started_by(launch.sh(env={"SITE_NAME": "b", "SOMETHING_ELSE": "1"})) == "c"


def test_a_command_that_does_not_exist(launch):
    python = os.path.join(os.path.dirname(PARROT_RUN[0]), "python")
    full = subprocess.run(  # as the Python script starts it
        [python, "-m", "parrot_cvmfs.tracer.main", "--cache-dir", launch.cache]
        + ["--", "/nonexistent/program"],
        env=launch.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert full.returncode == 127
    assert started_by(launch.sh()) in ("c", "python")
    assert started_by(launch.sh()) == "c"  # a plan for these options
    p = launch("/nonexistent/program")
    assert (p.returncode, p.stdout, p.stderr) == (127, "", full.stderr)
    assert p.stderr == "parrot_run: cannot run /nonexistent/program: No such file or directory\n"


def test_sigterm_during_a_fast_run(launch):
    assert started_by(launch.sh()) == "python"
    p = subprocess.Popen(
        launch.argv("/bin/sh", "-c", "echo ready; exec sleep 30"),
        env=launch.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline() == "ready\n"
        with open(f"/proc/{p.pid}/maps") as f:
            assert "_cffi_backend" not in f.read()  # a fast run
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 128 + signal.SIGTERM
        assert p.stderr.read() == ""
    finally:
        p.kill()
        p.wait()


@pytest.mark.unprivileged
def test_an_unprivileged_user_gets_plans(published, server, mode):
    home = tempfile.mkdtemp(prefix="launch-nobody-", dir="/tmp")
    try:
        os.chmod(home, 0o755)
        os.chown(home, 65534, 65534)
        key = shutil.copy(published.pubkey, home)  # the published one is root's
        os.chmod(key, 0o644)
        spec = repo_spec(published.name, f"{server.url}/{published.name}", key)
        env = base_env(PARROT_CVMFS_REPO=spec, PARROT_CVMFS_MODE=mode)
        launch = Launch(env, home, user="nobody")
        assert started_by(launch.sh()) == "python"
        assert os.stat(launch.plan()).st_uid == 65534
        assert started_by(launch.sh()) == "c"
        # the kept answers' access checks count the groups: another set, another plan
        launch.groups = "0"
        assert started_by(launch.sh()) == "python"
        assert started_by(launch.sh()) == "c"
        launch.groups = ""
        assert started_by(launch.sh()) == "python"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_opens_c_answered_count_for_the_cache_lru(launch):
    """A planned run records the cache files it served (the quota's LRU counts them as
    used, as in a run with Python); the next run with Python takes the record."""
    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
    served = launch.plan() + ".served"
    paths = open(served, "rb").read().split(b"\0")[:-1]
    assert paths and all(p.startswith(os.fsencode(launch.cache) + b"/") for p in paths)
    assert os.stat(served).st_mode & 0o777 == 0o600
    p = launch.sh(f"ls {MNT}/deep; {PROBE}")  # a miss: Python adopts the run
    assert p.stdout.splitlines()[-1] == "python", p.stderr
    assert not os.path.exists(served)


def test_an_adopted_run_keeps_the_revision_the_table_answered_from(tmp_path):
    """Python, started in the middle of a planned run, mounts the revision C answered
    from, even when the stored manifest has become stale meanwhile and the server
    publishes a newer one (the job would otherwise see two revisions at once)."""
    from parrot_cvmfs.server.publisher import PublishOptions, publish

    src, stratum, keys = tmp_path / "src", str(tmp_path / "stratum"), str(tmp_path / "keys")
    (src / "d").mkdir(parents=True)
    (src / "README").write_text("one\n")
    (src / "d" / "x").write_text("x1\n")
    options = PublishOptions(source=str(src), name="pin.test.org", stratum=stratum, keys_dir=keys)
    publish(options)
    with serving(StratumServer(stratum)) as srv:
        spec = repo_spec("pin.test.org", f"{srv.url}/pin.test.org", f"{keys}/pin.test.org.pub")
        home = tmp_path / "home"
        home.mkdir()
        launch = Launch(base_env(PARROT_CVMFS_REPO=spec), str(home))
        job = f"cat /cvmfs/pin.test.org/README; {PROBE}"
        assert launch.sh(job).stdout.splitlines() == ["one", "python"]
        assert launch.sh(job).stdout.splitlines() == ["one", "c"]
        (src / "README").write_text("two\n")
        (src / "d" / "x").write_text("x2\n")
        publish(options)
        # the stored manifest is past its TTL now: a fresh mount would take revision 2
        (manifest,) = [
            os.path.join(d, n)
            for d, _, names in os.walk(launch.cache)
            for n in names
            if n == "manifest.pin.test.org"
        ]
        os.utime(manifest, (0, 0))
        p = launch.sh(f"cat /cvmfs/pin.test.org/README /cvmfs/pin.test.org/d/x; {PROBE}")
        assert p.stdout.splitlines() == ["one", "x1", "python"], p.stderr


def test_plans_are_bounded(launch, monkeypatch):
    """One plan per option words, at most MAX_PLANS of them: the oldest go."""
    monkeypatch.setattr(startplan, "MAX_PLANS", 2)
    d = os.path.join(launch.home, ".cache", "parrot-cvmfs", "start")
    os.makedirs(d)
    for i in range(4):
        with open(os.path.join(d, f"old{i}"), "wb") as f:
            f.write(b"x")
        os.utime(os.path.join(d, f"old{i}"), (i, i))
    startplan.write(os.path.join(d, "new"), b"plan")
    assert sorted(os.listdir(d)) == ["new", "old3"]


SELFEXE = r"""
#include <stdio.h>
#include <unistd.h>
int main(void)
{
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n < 0)
        return 1;
    buf[n] = 0;
    puts(buf);
    return 0;
}
"""


def test_a_cvmfs_program_exec_d_in_a_planned_run_knows_its_name(tmp_path, mode):
    """A program of a repository exec'd in a planned run reads its /cvmfs path from
    /proc/self/exe. Its exec is kept (a static program: all of it from one revision),
    but C does not replay it before Python runs: Python would never learn what the
    process runs, and the kernel's link names the cache file."""
    from parrot_cvmfs.server.publisher import PublishOptions, publish

    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build a static program")
    src, stratum, keys = tmp_path / "src", str(tmp_path / "stratum"), str(tmp_path / "keys")
    (src / "bin").mkdir(parents=True)
    (tmp_path / "selfexe.c").write_text(SELFEXE)
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(src / "bin" / "selfexe"), str(tmp_path / "selfexe.c")],
        check=True,
    )
    publish(PublishOptions(source=str(src), name="exe.test.org", stratum=stratum, keys_dir=keys))
    program = "/cvmfs/exe.test.org/bin/selfexe"
    with serving(StratumServer(stratum)) as srv:
        spec = repo_spec("exe.test.org", f"{srv.url}/exe.test.org", f"{keys}/exe.test.org.pub")
        home = tmp_path / "home"
        home.mkdir()
        launch = Launch(base_env(PARROT_CVMFS_REPO=spec, PARROT_CVMFS_MODE=mode), str(home))
        for _ in range(3):  # full start (kept), planned, planned again
            p = launch(program)
            assert (p.returncode, p.stdout, p.stderr) == (0, program + "\n", "")
        assert launch.plans()


def test_the_job_environment_is_the_same_on_both_paths(launch):
    """Under a C locale the job gets exactly the environment it was given, on a full and
    on a planned start: Python's locale coercion (PEP 538) adds no LC_CTYPE."""
    env = {"LANG": "C", "LC_ALL": ""}
    script = f"cat {MNT}/README; env | grep -c '^LC_CTYPE=' || true; {PROBE}; exit 3"
    launch.env.pop("LC_CTYPE", None)
    full, planned = launch.sh(script, env=env), launch.sh(script, env=env)
    assert started_by(full) == "python" and started_by(planned) == "c"
    assert full.stdout.splitlines()[1] == planned.stdout.splitlines()[1] == "0"


def test_a_run_that_fails_before_its_job_leaves_no_plan(launch):
    """A mount that fails (exit 1, one line) writes no plan: the next run fails the same."""
    for _ in range(2):
        p = launch("/bin/true", options=("--cvmfs", "missing.test.org"))
        assert p.returncode == 1 and "missing.test.org" in p.stderr, p.stderr
        assert launch.plans() == []


def test_a_relative_inline_value_ties_the_plan_to_the_cwd(launch, tmp_path):
    """--cache-dir=c (inline) names a different cache in another directory: the plan
    made in one directory is not used in the other."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()

    def run(where):
        argv = [*PARROT_RUN, "--cache-dir=c", "--", "/bin/sh", "-c", JOB]
        return subprocess.run(argv, env=launch.env, cwd=where, capture_output=True, text=True)

    assert started_by(run(a)) == "python" and started_by(run(a)) == "c"
    assert started_by(run(b)) == "python"
    assert os.path.isdir(b / "c")


def test_an_adopted_python_that_cannot_start_ends_the_job_in_one_line(launch, tmp_path):
    """The job runs from the plan; the Python that was to take a call it needs cannot
    start (here: a broken package first on PYTHONPATH, which no plan depends on): one
    line, status 1, and the job does not run on with nobody to answer it."""
    assert started_by(launch.sh()) == "python"
    broken = tmp_path / "broken" / "parrot_cvmfs"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    p = launch.sh(
        f"echo before; ls {MNT}/deep >/dev/null; echo after", env={"PYTHONPATH": str(broken.parent)}
    )
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout == "before\n"
    assert p.stderr.count("\n") == 1 and "the job was ended" in p.stderr, p.stderr


def test_a_core_others_could_change_is_not_loaded(launch):
    """The launcher loads no core file (nor one in a directory) that another user could
    write: that would run their code as this user. The full start runs instead."""
    from parrot_cvmfs import _core

    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
    core = os.path.realpath(_core.__file__)
    mode = os.stat(core).st_mode
    os.chmod(core, mode | 0o022)
    try:
        assert started_by(launch.sh()) == "python"
    finally:
        os.chmod(core, mode)


def test_served_lists_are_taken_without_following_links(tmp_path):
    """take_served reads `<plan>.served` through the plan directory, never a link there,
    and takes no name the launcher does not make."""
    d = tmp_path / "start"
    d.mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"/some/file\0")
    plan = d / "0123456789abcdef"
    os.symlink(target, str(plan) + ".served")
    assert startplan.take_served(str(plan)) == []
    assert target.read_bytes() == b"/some/file\0" and os.listdir(d) == []  # the link gone
    (d / "0123456789abcdef.served").write_bytes(b"/a\0/b\0")
    assert startplan.take_served(str(plan)) == ["/a", "/b"]
    assert os.listdir(d) == []
    assert startplan.take_served(str(d / "../x")) == []


def test_a_file_changed_within_its_clock_tick_writes_no_plan(published, server, tmp_path):
    """On NFSv3 or ext3 a file's time is whole seconds: a same-size change in that
    second keeps its identity, so a plan made from it could start from a stale
    configuration. No plan is written until its time is older than the granularity."""
    launch, etc = _with_config_dir(published, server, tmp_path)
    conf = etc / "default.local"

    def write(text: str, seconds: int) -> None:
        conf.write_text(text)
        os.utime(conf, ns=(seconds * 10**9, seconds * 10**9))  # as a coarse clock stamps

    now = int(time.time())
    write("CVMFS_FOO_BAR=1\n", now)
    assert started_by(launch.sh()) == "python"
    write("CVMFS_FOO_BAR=2\n", now)  # the same size, the same second
    assert started_by(launch.sh()) == "python"
    assert launch.plans() == []
    write("CVMFS_FOO_BAR=2\n", now - 10)  # settled: its time tells
    assert started_by(launch.sh()) == "python"
    assert started_by(launch.sh()) == "c"
