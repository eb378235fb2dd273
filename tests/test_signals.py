"""The supervisor's death and signals, in both modes: a parrot_run killed with
SIGKILL takes its job with it before any call of the job returns a wrong error, and
SIGTERM, SIGINT, SIGHUP and SIGQUIT reach the job (and end parrot_run) whatever the
supervisor is doing, a download from a hostile server that never finishes included."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import zlib

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumHandler, StratumServer

from .conftest import PARROT_RUN, base_env, repo_spec

pytestmark = pytest.mark.tracer

PARROT = PARROT_RUN
NAME = "signals.test.org"
MNT = f"/cvmfs/{NAME}"

# The job: one program, two scenarios; it logs with write(2) to files of the host.
SIGJOB_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int logfd = -1;
static volatile sig_atomic_t got;

static void say(const char *fmt, ...)
{
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    if (write(logfd, b, (size_t)n) < 0) {
    }
}

static void on_signal(int sig)
{
    char b[32];
    int n = snprintf(b, sizeof b, "signal %d\n", sig);
    got = sig;
    if (write(logfd, b, (size_t)n) < 0) {
    }
}

/* loop DIR NPROC PATH...: NPROC processes open and stat the paths in a tight loop,
 * forever; each failure is a line in DIR/err.PID; DIR/ready.PID after a first round */
static void c_loop(char **argv)
{
    const char *dir = argv[0];
    int nproc = atoi(argv[1]);
    char **paths = argv + 2, name[4096];
    for (int i = 1; i < nproc; i++)
        if (fork() == 0)
            break;
    snprintf(name, sizeof name, "%s/err.%d", dir, getpid());
    logfd = open(name, O_WRONLY | O_CREAT | O_APPEND, 0644);
    for (long round = 0;; round++) {
        for (char **p = paths; *p; p++) {
            struct stat st;
            int fd = open(*p, O_RDONLY);
            if (fd < 0)
                say("open %s: %s\n", *p, strerrorname_np(errno));
            else
                close(fd);
            if (stat(*p, &st) < 0)
                say("stat %s: %s\n", *p, strerrorname_np(errno));
        }
        if (round == 0) {
            snprintf(name, sizeof name, "%s/ready.%d", dir, getpid());
            close(open(name, O_WRONLY | O_CREAT, 0644));
        }
    }
}

/* wait LOG FLAGS HUNG OTHER: catch TERM, INT, HUP and QUIT (SA_RESTART if FLAGS has
 * 'r'), open HUNG and log how that ended; after a signal, read OTHER, log what came,
 * and die of the signal */
static int c_wait(char **argv)
{
    struct sigaction sa;
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    logfd = open(argv[0], O_WRONLY | O_CREAT | O_APPEND, 0644);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = strchr(argv[1], 'r') ? SA_RESTART : 0;
    for (int i = 0; i < 4; i++)
        sigaction(sigs[i], &sa, NULL);
    say("ready\n");
    int fd = open(argv[2], O_RDONLY);
    say("open: %s\n", fd < 0 ? strerrorname_np(errno) : "ok");
    if (!got)
        return 0;
    fd = open(argv[3], O_RDONLY);
    if (fd < 0) {
        say("other: %s\n", strerrorname_np(errno));
    } else {
        char buf[65536];
        long total = 0;
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            total += n;
        if (n < 0)
            say("other: %s\n", strerrorname_np(errno));
        else
            say("other: %ld bytes\n", total);
    }
    signal(got, SIG_DFL);
    raise(got);
    return 99;
}

int main(int argc, char **argv)
{
    if (argc > 4 && !strcmp(argv[1], "loop"))
        c_loop(argv + 2);
    if (argc > 5 && !strcmp(argv[1], "wait"))
        return c_wait(argv + 2);
    return 2;
}
"""


@pytest.fixture(scope="module")
def sigjob(tmp_path_factory):
    d = tmp_path_factory.mktemp("sigjob")
    (d / "sigjob.c").write_text(SIGJOB_C)
    subprocess.run(["cc", "-O1", "-o", str(d / "sigjob"), str(d / "sigjob.c")], check=True)
    return str(d / "sigjob")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A small repository: a few files to loop on, one to hang on, one to read after."""
    base = tmp_path_factory.mktemp("signals")
    src = base / "src"
    (src / "d").mkdir(parents=True)
    for i in range(6):
        (src / "d" / f"f{i}").write_text(f"file {i}\n" * 100)
    (src / "hung.bin").write_bytes(os.urandom(300_000))
    (src / "other.txt").write_bytes(b"read after the signal\n" * 1000)
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(PublishOptions(source=str(src), name=NAME, stratum=stratum, keys_dir=keys))
    return base, stratum, f"{keys}/{NAME}.pub"


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def mode(request):
    return request.param


class _HostileHandler(StratumHandler):
    """Serves the stratum, except the object `server.target`, which gets the server's
    `behaviour`: a download that never finishes."""

    def _send_file(self, head_only: bool) -> None:
        srv = self.server
        if srv.behaviour and urllib.parse.urlsplit(self.path).path.endswith(srv.target):
            srv.hit.set()
            try:
                getattr(self, "_" + srv.behaviour.replace("-", "_"))(srv.stop)
            except OSError:
                pass  # the client went away
            self.close_connection = True
            return
        super()._send_file(head_only)

    def _body(self, stop: threading.Event, length: str | None, data: bytes, pause: float):
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", length)
        self.send_header("Connection", "close")
        self.end_headers()
        while not stop.is_set():
            self.wfile.write(data)
            self.wfile.flush()
            if pause:
                stop.wait(pause)

    # Transfers are bounded (issue 10 item 1): a body longer than its object can be, or
    # slower than CVMFS_LOW_SPEED_LIMIT, ends in an error at once. What keeps the
    # supervisor busy now is a transfer within every bound, but slow: ~2 KB/s of an
    # object of 300 KB takes minutes.

    def _slow_body(self, stop):  # no length: the body ends when the connection does
        self._body(stop, None, os.urandom(200), 0.1)

    def _slow_length(self, stop):  # the object's own bytes and length, slowly
        with open(self._local_path(), "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 200):
            if stop.wait(0.1):
                return
            self.wfile.write(data[i : i + 200])
            self.wfile.flush()

    def _slow_zlib(self, stop):  # a valid zlib stream, inflating slowly
        z = zlib.compressobj()
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        while not stop.wait(0.1):
            self.wfile.write(z.compress(bytes(200)) + z.flush(zlib.Z_SYNC_FLUSH))
            self.wfile.flush()

    def _slow_headers(self, stop):  # one byte of the status line every 2 s
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n":
            if stop.wait(2):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
        stop.wait()


class HostileServer(StratumServer):
    def __init__(self, root: str, target: str):
        super().__init__(root)
        self.RequestHandlerClass = _HostileHandler
        self.target, self.behaviour = target, None
        self.hit, self.stop = threading.Event(), threading.Event()

    def misbehave(self, behaviour: str | None) -> None:
        self.stop.set()  # whatever hangs from before ends
        self.behaviour, self.hit, self.stop = behaviour, threading.Event(), threading.Event()


@pytest.fixture(scope="module")
def server(repo):
    _, stratum, pubkey = repo
    from parrot_cvmfs.client.config import Configuration
    from parrot_cvmfs.client.repository import Repository

    srv = HostileServer(stratum, "")
    srv.start_background()
    env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", pubkey))
    probe = repo[0] / "probe"
    with Repository.mount(NAME, cache_dir=str(probe), config=Configuration(env=env)) as r:
        srv.target_hash = r.lookup("/hung.bin").hash
        srv.target = srv.target_hash.object_path()
    yield srv
    srv.misbehave(None)
    srv.shutdown()


def _env(repo, server, mode) -> dict[str, str]:
    _, _, pubkey = repo
    return base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{server.url}/{NAME}", pubkey),
        PARROT_CVMFS_MODE=mode,
        CVMFS_TIMEOUT="30",  # the trickled headers trip the low-speed rule after 30 s only
    )


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int, comm: str) -> list[int]:
    """Processes named `comm` whose parent is `pid`."""
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                name, rest = f.read().split("(", 1)[1].rsplit(")", 1)
        except (OSError, IndexError, ValueError):
            continue
        if name == comm and int(rest.split()[1]) == pid:
            out.append(int(d))
    return out


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _parrot(repo, server, mode, tmp_path, *cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--", *cmd],
        env=_env(repo, server, mode),
        capture_output=True,
        timeout=120,
        **kw,
    )


def _kill_mid_loop(proc, logs: str, reapers: int, pause: float, what: str) -> None:
    """Kill parrot_run `pause` s after its three jobs report ready in `logs` (with
    `reapers` reapers beside it), then wait for the jobs and reapers to go too."""
    try:
        _wait_for(lambda: len(glob.glob(f"{logs}/ready.*")) == 3, 60, what)
        found = _children(proc.pid, "parrot_reaper")
        assert len(found) == reapers, found
        time.sleep(pause)
    finally:
        proc.kill()
        proc.wait()
    pids = [int(p.rpartition(".")[2]) for p in glob.glob(f"{logs}/ready.*")] + found
    _wait_for(lambda: not any(map(_alive, pids)), 10, "the job (and reaper) to go too")


# -- the job's signal state, and signals sent to parrot_run ---------------------------------------


def test_signal_dispositions_and_mask(repo, server, mode, tmp_path):
    """The job starts with the signal dispositions and mask it would have natively:
    neither the SIGPIPE/SIGXFSZ ignores of the supervisor's Python, nor its handlers, nor
    the signals its threads block reach it."""

    def state(run, **kw):
        out = run("grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status", **kw).stdout.decode()
        return dict(line.split(":\t") for line in out.splitlines())

    def native(*cmd, **kw):
        return subprocess.run(cmd, capture_output=True, **kw)

    def traced(*cmd, **kw):
        return _parrot(repo, server, mode, tmp_path, *cmd, **kw)

    assert state(traced) == state(native)
    # so a writer into a closed pipe dies of SIGPIPE quietly, as natively
    p = traced("sh", "-c", "yes | head -n 1")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"y\n", b"")
    # what the user ignored or blocked stays so (nohup)
    for pre in (
        lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
        lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}),
    ):
        assert state(traced, preexec_fn=pre) == state(native, preexec_fn=pre)
    assert int(state(traced, preexec_fn=pre)["SigBlk"], 16) & 1 << (signal.SIGUSR1 - 1)


TRAPS = (
    "trap 'echo got INT' INT; trap 'echo got TERM; exit 3' TERM; echo ready; "
    "while :; do sleep 0.05; done"
)


def test_signals_sent_to_parrot_run_reach_the_job(repo, server, mode, tmp_path):
    """SIGINT and SIGTERM sent to parrot_run (kill) reach the job once each."""
    job = subprocess.Popen(
        [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--", "sh", "-c", TRAPS],
        env=_env(repo, server, mode),
        stdout=subprocess.PIPE,
    )
    try:
        assert job.stdout.readline() == b"ready\n"
        job.send_signal(signal.SIGINT)
        assert job.stdout.readline() == b"got INT\n"
        assert job.poll() is None
        job.send_signal(signal.SIGTERM)
        out, _ = job.communicate(timeout=30)
    finally:
        job.kill()
    assert (job.returncode, out) == (3, b"got TERM\n")


def test_a_signal_at_the_jobs_first_moment_reaches_it(repo, server, mode, tmp_path):
    """The forwarding is in place before the job runs: a SIGINT that parrot_run gets
    as soon as the job is alive (here, from the job itself) reaches the job, and never
    meets parrot_run's own default action (which would end both)."""
    script = "trap 'echo got INT' INT; kill -INT $PPID; sleep 0.2; echo end"
    for _ in range(3):
        p = subprocess.run(
            [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--", "sh", "-c", script],
            env=_env(repo, server, mode),
            capture_output=True,
            timeout=60,
        )
        assert (p.returncode, p.stdout) == (0, b"got INT\nend\n"), p.stderr


def _on_a_terminal(repo, server, mode, tmp_path, *cmd) -> bytes:
    """Run parrot_run as a terminal's session leader; press Ctrl-C once the job says
    ready, then send parrot_run SIGTERM; all the terminal showed."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def session():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    job = subprocess.Popen(
        [*PARROT, "--cache-dir", str(tmp_path / "cache"), "--", *cmd],
        env=_env(repo, server, mode),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=session,
    )
    os.close(slave)
    out = b""

    def read_until(what: bytes) -> None:
        nonlocal out
        deadline = time.monotonic() + 60
        while what not in out and time.monotonic() < deadline:
            out += os.read(master, 1024)

    try:
        read_until(b"ready")
        os.write(master, b"\x03")  # the terminal's intr character: SIGINT to the group
        time.sleep(0.5)
        job.send_signal(signal.SIGTERM)
        read_until(b"got TERM")
        assert job.wait(30) == 3
    finally:
        job.kill()
        os.close(master)
    return out


def test_ctrl_c_on_a_terminal(repo, server, mode, tmp_path):
    """A terminal's Ctrl-C reaches the processes of the foreground process group, from
    the kernel, as natively: the job once (parrot_run does not send it a second time),
    and not a job that left the group (parrot_run, still in it, does not pass it on)."""
    out = _on_a_terminal(repo, server, mode, tmp_path, "sh", "-c", TRAPS)
    assert out.count(b"got INT") == 1, out
    out = _on_a_terminal(repo, server, mode, tmp_path, "setsid", "sh", "-c", TRAPS)
    assert b"got INT" not in out, out


# -- SIGKILL ---------------------------------------------------------------------------------------


def test_sigkill_leaves_no_wrong_errors(repo, server, mode, sigjob, tmp_path):
    """parrot_run SIGKILLed a dozen times under three processes opening and stat'ing
    /cvmfs files in a tight loop: the job dies, and not one of its calls fails in the
    meantime (the kernel answers ENOSYS once no one holds the notification listener)."""
    env = _env(repo, server, mode)
    paths = [f"{MNT}/d/f{i}" for i in range(6)] + [f"{MNT}/d/missing"]
    wrong = []
    for k in range(12):
        logs = tmp_path / f"run{k}"
        logs.mkdir()
        cmd = [
            *PARROT,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--",
            sigjob,
            "loop",
            str(logs),
            "3",
        ]
        proc = subprocess.Popen([*cmd, *paths], env=env)
        # at different points of the loop
        _kill_mid_loop(proc, logs, mode == "notify", 0.02 * (k % 4), "the first round")
        for log in glob.glob(f"{logs}/err.*"):
            with open(log) as f:
                wrong += [x for x in f.read().splitlines() if x != f"open {paths[-1]}: ENOENT"]
        wrong = [x for x in wrong if x != f"stat {paths[-1]}: ENOENT"]
    assert not wrong, f"{len(wrong)} calls failed while parrot_run was being killed: {wrong[:5]}"


# -- SIGTERM, SIGINT, SIGHUP, SIGQUIT during a download that never finishes -------------------------

# each signal and each kind of hostile server at least once (in each mode)
CASES = [
    ("TERM", "slow-body", ""),
    ("INT", "slow-headers", "r"),
    ("HUP", "slow-length", ""),
    ("QUIT", "slow-body", "r"),
    ("TERM", "slow-zlib", "r"),
]


@pytest.mark.parametrize("sig,behaviour,flags", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_signal_during_hung_download(repo, server, mode, sigjob, tmp_path, sig, behaviour, flags):
    """The job, blocked in an open whose download never ends, gets the signal sent to
    parrot_run within a fraction of a second; its call is answered; a /cvmfs file it
    reads in its handler's wake is answered too (bytes or EIO); it dies of the signal
    and parrot_run exits with 128+N within a few seconds."""
    signum = getattr(signal, "SIG" + sig)
    server.misbehave(behaviour)
    log = tmp_path / "log"
    cache = tmp_path / "cache"
    cmd = [*PARROT, "--cache-dir", str(cache), "--stats", "--", sigjob, "wait", str(log), flags]
    proc = subprocess.Popen(
        [*cmd, f"{MNT}/hung.bin", f"{MNT}/other.txt"],
        env=_env(repo, server, mode),
        stderr=subprocess.PIPE,
    )
    try:
        assert server.hit.wait(60), "the download did not start"
        time.sleep(0.2)  # well into it
        assert proc.poll() is None
        proc.send_signal(signum)
        sent = time.monotonic()
        _wait_for(lambda: f"signal {signum}" in log.read_text(), 3, f"the job to get SIG{sig}")
        got = time.monotonic() - sent
        rc = proc.wait(10)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    lines = log.read_text().splitlines()
    assert rc == 128 + signum, (rc, lines, err)
    assert lines[0] == "ready" and f"signal {signum}" in lines
    opened = [x for x in lines if x.startswith("open: ")]
    assert opened in (["open: EINTR"], ["open: EIO"]), lines
    other = [x for x in lines if x.startswith("other: ")]
    assert other in (["other: 22000 bytes"], ["other: EIO"]), lines
    assert "Traceback" not in err, err
    # the stuck download was abandoned: Python came back and ended cleanly (--stats)
    assert "intercepted calls" in err, err
    if opened == ["open: EIO"]:
        assert f"after SIG{sig}, gave up waiting for the supervisor: {MNT}/hung.bin" in err, err
    print(f"SIG{sig} reached the job after {got:.3f} s; {opened[0]}, {other[0]}")


def test_parrot_run_leaves_when_the_job_is_gone(repo, server, sigjob, tmp_path):
    """The job died of SIGTERM while the supervisor is stuck in something no shut-down
    connection ends (here: waiting for the cache's lock on the object, which another
    process holds): parrot_run does not wait for it, and exits with the job's status a
    few seconds later."""
    from parrot_cvmfs.client.cache import ObjectCache

    server.misbehave(None)
    log = tmp_path / "log"
    cache = tmp_path / "cache"
    cmd = [*PARROT, "--cache-dir", str(cache), "--", sigjob, "wait", str(log), ""]
    with ObjectCache(str(cache)).lock(server.target_hash.hex):
        proc = subprocess.Popen(
            [*cmd, f"{MNT}/hung.bin", f"{MNT}/other.txt"], env=_env(repo, server, "ptrace")
        )
        try:
            _wait_for(lambda: log.exists() and "ready" in log.read_text(), 60, "the job")
            time.sleep(0.5)  # into the open, which waits for the lock
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 128 + signal.SIGTERM
        finally:
            proc.kill()
            proc.wait()
    assert log.read_text().splitlines()[1:] == ["signal 15", "open: EIO", "other: EIO"]


def test_as_an_unprivileged_user(repo, server, sigjob):
    """As nobody (as users run it), in notify mode: the reaper holds the listener through
    SIGKILLs, and SIGTERM during a download that never ends reaches the job."""
    import shutil

    from .test_unprivileged import AS_NOBODY, NOBODY, _copy_runtime, _interpreter_for_nobody

    scratch = tempfile.mkdtemp(prefix="parrot-nobody-signals.")
    try:
        os.chmod(scratch, 0o755)
        runtime = os.path.join(scratch, "runtime")
        os.makedirs(runtime)
        _copy_runtime(runtime)
        for f in (sigjob, repo[2]):
            shutil.copy(f, scratch)
        subprocess.run(["chmod", "-R", "a+rX", scratch], check=True)
        work = os.path.join(scratch, "work")
        os.makedirs(work)
        os.chown(work, NOBODY, NOBODY)
        job = os.path.join(scratch, "sigjob")
        env = base_env(
            PARROT_CVMFS_REPO=repo_spec(
                NAME, f"{server.url}/{NAME}", os.path.join(scratch, os.path.basename(repo[2]))
            ),
            PYTHONPATH=runtime,
            HOME=work,
            PARROT_CVMFS_MODE="notify",
            PYTHONDONTWRITEBYTECODE="1",
        )
        python = _interpreter_for_nobody()

        def start(*args: str) -> subprocess.Popen:
            cmd = [python, "-m", "parrot_cvmfs.tracer.main", "--cache-dir", f"{work}/cache"]
            return subprocess.Popen([*AS_NOBODY, *cmd, "--", job, *args], env=env, cwd="/")

        server.misbehave(None)
        paths = [f"{MNT}/d/f{i}" for i in range(6)]
        for k in range(4):
            logs = os.path.join(work, f"run{k}")
            os.mkdir(logs)
            os.chown(logs, NOBODY, NOBODY)
            proc = start("loop", logs, "3", *paths)
            _kill_mid_loop(proc, logs, 1, 0.02 * k, "the loop")  # setpriv exec'd parrot_run
            for log in glob.glob(f"{logs}/err.*"):
                with open(log) as f:
                    assert f.read() == "", log
        server.misbehave("slow-body")
        log = os.path.join(work, "log")
        proc = start("wait", log, "", f"{MNT}/hung.bin", f"{MNT}/other.txt")
        try:
            assert server.hit.wait(60), "the download did not start"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 128 + signal.SIGTERM
        finally:
            proc.kill()
            proc.wait()
        with open(log) as f:
            assert f.read().splitlines()[:3] == ["ready", "signal 15", "open: EINTR"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
