"""Start plans of guest runs (--root, binds, --env, --run, --stats; tracer/startplan.py
guest_records): a second start is made from C with no Python running, gives the job what
the full start gives, and every input the start was computed from takes the full start
again when it changes.

Whether Python ran is read from the launcher's memory map while the job runs, as in
tests/test_launcher.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from .conftest import PARROT_RUN, base_env, repo_spec
from .test_launcher import PROBE

pytestmark = [
    pytest.mark.tracer,
    pytest.mark.skipif(len(PARROT_RUN) != 1, reason="the launcher is not built here"),
]

# what the job shows of itself, then who started it ("c" or "python", the last line)
# (probed first: the /proc reads after it are Python's, which then adopts the run)
SHOW = f"P=$({PROBE}); id; pwd; readlink /proc/self/exe; env | sort; echo $P"


@pytest.fixture(scope="module")
def debian11(userlands):
    return userlands("bullseye")


class Guest:
    """parrot_run with its own HOME (plans) and cache; `root` and `options` as given."""

    def __init__(self, env: dict[str, str], home: str, root: str, options=(), user=None):
        self.env = {**env, "HOME": home}
        self.env.pop("XDG_CACHE_HOME", None)
        self.root, self.options, self.user = root, list(options), user
        self.cache = os.path.join(home, "cache")

    def __call__(self, script: str, env=None, cwd=None, options=()):
        argv = [*PARROT_RUN, "--cache-dir", self.cache, "--root", self.root]
        argv += [*self.options, *options, "--", "/bin/sh", "-c", script]
        if self.user:
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
        before = self.plans()
        p = subprocess.run(
            argv,
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # a full start writes its plan anew; a planned one (adopted or not) keeps it
        p.start = "planned" if self.plans() == before and before else "full"
        return p

    def plans(self) -> dict[str, int]:
        d = os.path.join(self.env["HOME"], ".cache", "parrot-cvmfs", "start")
        try:
            names = os.listdir(d)
        except OSError:
            return {}
        return {n: os.lstat(os.path.join(d, n)).st_ino for n in names if len(n) == 16}


def by(p: subprocess.CompletedProcess) -> str:
    lines = p.stdout.splitlines()
    assert lines and lines[-1] in ("c", "python"), (p.returncode, p.stdout, p.stderr)
    return lines[-1]


def shown(p: subprocess.CompletedProcess) -> tuple:
    """What the job saw (its output without the probe line), its status, stderr."""
    return p.stdout.rsplit("\n", 2)[0], p.returncode, p.stderr


@pytest.fixture(params=["notify", "ptrace"])
def mode(request):
    return request.param


@pytest.fixture(params=["host", "cvmfs"])
def where(request):
    return request.param


def _guest(debian11, tmp_path, mode, where, user=None, options=()) -> Guest:
    home = tmp_path / "home"
    if user:  # pytest's own directories are root's alone
        home = tempfile.mkdtemp(prefix="rootplan-nobody-", dir="/tmp")
        os.chmod(home, 0o755)
        os.chown(home, 65534, 65534)
    else:
        home.mkdir()
    env = base_env(PARROT_CVMFS_MODE=mode)
    root = debian11.tree
    if where == "cvmfs":
        u = debian11
        env["PARROT_CVMFS_REPO"] = repo_spec(u.name, f"{u.url}/{u.name}", u.published.pubkey)
        root = u.cvmfs
    if user and where == "cvmfs":  # the published key is root's
        key = shutil.copy(debian11.published.pubkey, home)
        os.chmod(key, 0o644)
        env["PARROT_CVMFS_REPO"] = repo_spec(debian11.name, f"{debian11.url}/{debian11.name}", key)
    return Guest(env, str(home), root, options, user)


@pytest.mark.parametrize("user", [None, "nobody"])
def test_a_root_run_starts_from_c_the_second_time(debian11, tmp_path, mode, where, user):
    g = _guest(debian11, tmp_path, mode, where, user, options=["--env", "GIVEN=1"])
    first = g(SHOW + "; exit 3")
    assert by(first) == "python" and first.returncode == 3, first.stderr
    second = g(SHOW + "; exit 3")
    assert second.start == "planned"
    if where == "cvmfs":  # a host root's calls are Python's yet (never kept): it adopts
        assert by(second) == "c"
    assert shown(second) == shown(first)  # env, id, pwd, /proc/self/exe, status
    assert "GIVEN=1" in first.stdout and "/bin/readlink" in first.stdout
    # a signal's status
    full = g("kill -TERM $$", options=["--no-default-binds"])
    planned = g("kill -TERM $$", options=["--no-default-binds"])
    assert full.returncode == planned.returncode == 128 + 15
    # --stats: the counts are printed by Python adopting the ended run
    g(PROBE, options=["--stats"])
    p = g(PROBE, options=["--stats"])
    assert p.start == "planned" and "intercepted calls" in p.stderr, p.stderr


def test_what_a_root_plan_depends_on(debian11, tmp_path, mode):
    """A host root DIR made of binds of the userland; each input of the start changed
    takes the full start (whose plan serves the next)."""
    tree = debian11.tree
    root, data, envd = tmp_path / "root", tmp_path / "data", tmp_path / "envd"
    for d in (root, data, envd):
        d.mkdir()
    (envd / "90-environment.sh").write_text("export FROM_IMAGE=one\n")
    binds = [f"{tree}/{d}:/{d}" for d in ("bin", "lib", "lib64", "usr", "etc")]
    binds += [f"{data}:/data", f"{envd}:/.singularity.d/env"]
    options = [w for b in binds for w in ("-B", b)]
    g = _guest(debian11, tmp_path, mode, "host", options=options)
    g.root = str(root)
    job = "echo $FROM_IMAGE"

    def by(p) -> str:
        assert p.returncode == 0, p.stderr
        return p.start

    def out(p) -> tuple[str, str]:
        return p.stdout.strip(), by(p)

    assert out(g(job)) == ("one", "full")
    assert out(g(job)) == ("one", "planned")
    # an env script edited, one added
    (envd / "90-environment.sh").write_text("export FROM_IMAGE=two\n")
    assert out(g(job)) == ("two", "full")
    assert out(g(job)) == ("two", "planned")
    (envd / "95-more.sh").write_text("export FROM_IMAGE=three\n")
    assert out(g(job)) == ("three", "full")
    assert out(g(job)) == ("three", "planned")
    # the job's output files in its directory (a new name each run) change nothing
    for k in range(3):
        p = g("echo x > out-$$; " + job, cwd=str(data))
        assert by(p) == ("full" if k == 0 else "planned"), k
    assert len([n for n in os.listdir(data) if n.startswith("out-")]) == 3
    # a bind source replaced
    data.rename(tmp_path / "data.old")
    data.mkdir()
    assert by(g(job)) == "full"
    assert by(g(job)) == "planned"
    # DIR replaced
    root.rename(tmp_path / "root.old")
    root.mkdir()
    assert by(g(job)) == "full"
    assert by(g(job)) == "planned"
    # the host cwd changed
    assert by(g(job, cwd=str(data))) == "full"
    assert by(g(job, cwd=str(data))) == "planned"
    assert by(g(job)) == "full"
    # any host variable (the job's environment is made from all of them)
    assert by(g(job, env={"SOME_HOST_VARIABLE": "a"})) == "full"
    assert by(g(job, env={"SOME_HOST_VARIABLE": "a"})) == "planned"
    assert by(g(job, env={"SOME_HOST_VARIABLE": "b"})) == "full"
    # another command: its own plan (--run and the guest's PATH are of the command)
    assert by(g("true; " + job)) == "full"
    assert by(g("true; " + job)) == "planned"
    assert by(g(job, env={"SOME_HOST_VARIABLE": "b"})) == "planned"


def test_overlay_takes_the_full_start(debian11, tmp_path, mode):
    g = _guest(debian11, tmp_path, mode, "host", options=["--overlay", str(tmp_path / "ov")])
    assert g("true").start == "full"
    assert g("true").start == "full"


def test_a_plan_failing_after_its_start_directory_starts_python_here(debian11, tmp_path, mode):
    """A plan (hostile input) whose records fail only after the launcher read the job's
    start directory takes the full start in parrot_run's own cwd, so relative bind
    sources still mean what they meant."""
    from .test_launcher import _records, _rewrite

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "f").write_text("here\n")
    opts = ["--no-default-binds", "-B", "data:/data"]  # the cwd unbound: the job starts at /
    g = _guest(debian11, tmp_path, mode, "host", options=opts)
    first = g("cat /data/f", cwd=work)
    assert (first.returncode, first.stdout, first.start) == (0, "here\n", "full"), first.stderr
    (name,) = g.plans()
    plan = os.path.join(g.env["HOME"], ".cache", "parrot-cvmfs", "start", name)
    assert b"JCWD" in [t for t, _, _ in _records(open(plan, "rb").read())]
    _rewrite(plan, b"NTFY", b"")
    p = g("cat /data/f", cwd=work)
    assert (p.returncode, p.stdout, p.start) == (0, "here\n", "full"), p.stderr


def test_a_host_link_as_a_default_bind_shows_what_it_leads_to(debian11, tmp_path, mode):
    """The host's /etc/localtime is a link into its zoneinfo: the guest sees that file at
    /etc/localtime (as a bind mount shows it), not the link, whose text the guest would
    read as its own zoneinfo; under a root in /cvmfs C opens it, so a planned start
    stays Python-free. A $HOME that is a link shows its directory."""
    if not os.path.islink("/etc/localtime") or not os.path.isfile("/etc/localtime"):
        pytest.skip("this host's /etc/localtime is not a link to a file")
    import hashlib

    with open("/etc/localtime", "rb") as f:
        want = hashlib.md5(f.read()).hexdigest()
    g = _guest(debian11, tmp_path, mode, "cvmfs")
    job = (
        "test -L /etc/localtime || echo file; md5sum </etc/localtime; cat /etc/localtime >/dev/null"
    )
    first, second = g(job, options=["--stats"]), g(job, options=["--stats"])
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    assert first.stdout.split()[:2] == ["file", want], first.stdout
    assert second.start == "planned" and second.stdout == first.stdout
    # --stats: "openat N (passed/answered in C/in Python)"; the planned run's opens are C's
    opens = re.search(r"\bopenat \d+ \((\d+)/(\d+)/(\d+)\)", second.stderr)
    assert opens and opens.group(3) == "0" and int(opens.group(2)) >= 2, second.stderr
    home = os.path.join(str(tmp_path), "home-link")
    os.symlink(g.env["HOME"], home)
    with open(os.path.join(home, "marker"), "w") as f:
        f.write("at home\n")
    for _ in range(2):  # the full start, then the planned one
        p = g('cat "$HOME/marker"', env={"HOME": home})
        assert (p.returncode, p.stdout) == (0, "at home\n"), p.stderr


def test_default_sources_that_lead_nowhere_and_binds_above_a_file_bind(debian11, tmp_path, mode):
    """A $HOME that is a dangling link is not bound and writes no plan that would outlive
    its link being pointed somewhere; a looping one is not bound as a link. A file bound
    below a host bind is the Python walk's, which sees the job turn a directory above it
    into a link (C would open the bound file by its destination's spelling)."""
    g = _guest(debian11, tmp_path, mode, "cvmfs")
    cache = {"XDG_CACHE_HOME": g.env["HOME"] + "/.cache"}  # the plans stay where they were
    away = tempfile.mkdtemp(prefix="rootplan-", dir="/run")  # in no default bind
    try:
        real, link = os.path.join(away, "real"), os.path.join(away, "link")
        os.mkdir(real)
        with open(os.path.join(real, "marker"), "w") as f:
            f.write("at home\n")
        os.symlink(os.path.join(away, "missing"), link)
        env = {"HOME": link, **cache}
        job = 'cat "$HOME/marker" 2>/dev/null || echo none'
        assert g(job, env=env).stdout == "none\n"
        assert g(job, env=env).stdout == "none\n"
        os.unlink(link)
        os.symlink(real, link)
        assert g(job, env=env).stdout == "at home\n"
        a, b = os.path.join(away, "loop-a"), os.path.join(away, "loop-b")
        os.symlink(b, a)
        os.symlink(a, b)
        p = g('test -L "$HOME" && echo link || echo absent', env={"HOME": a, **cache})
        assert (p.returncode, p.stdout) == (0, "absent\n"), p.stderr
    finally:
        shutil.rmtree(away)
    data, other = tmp_path / "data", tmp_path / "other"
    (data / "sub").mkdir(parents=True)
    other.mkdir()
    (other / "f").write_text("other\n")
    (tmp_path / "source").write_text("source\n")
    binds = ["-B", f"{data}:/data", "-B", f"{tmp_path / 'source'}:/data/sub/f"]
    # through the default /tmp bind, as the kernel would see it after a bind mount
    swap = f"rmdir {data}/sub && ln -s {other} {data}/sub; cat /data/sub/f /data/sub/./f"
    for _ in range(2):
        p = g(swap, options=binds)
        assert (p.returncode, p.stdout) == (0, "other\nother\n"), p.stderr
        os.unlink(data / "sub")
        (data / "sub").mkdir()


def test_guest_scripts_are_execd_by_c(debian11, tmp_path, mode):
    """Scripts of a root in /cvmfs (ldd is bash's, which is sh's) are exec'd from kept
    recipes: a planned start runs them with no exec handed to Python, with the output
    of the full start."""
    g = _guest(debian11, tmp_path, mode, "cvmfs")
    job = "ldd --version | head -1; which ls; /usr/bin/which which"
    first, second = g(job, options=["--stats"]), g(job, options=["--stats"])
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    assert first.stdout == second.stdout
    assert "GLIBC 2.31" in first.stdout and "/usr/bin/ls\n/usr/bin/which\n" in first.stdout
    execs = re.search(r"\bexecve \d+ \((\d+)/(\d+)/(\d+)\)", second.stderr)
    assert second.start == "planned" and execs and execs.group(3) == "0", second.stderr
