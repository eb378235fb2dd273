"""The supervisor's death and signals, in both modes: a parrot_run killed with
SIGKILL takes its job with it before any call of the job returns a wrong error, and
SIGTERM, SIGINT, SIGHUP and SIGQUIT reach the job (and end parrot_run) whatever the
supervisor is doing, a download from a hostile server that never finishes included."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec

PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]
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


@pytest.fixture(scope="module")
def server(repo):
    _, stratum, _ = repo
    srv = StratumServer(stratum)
    srv.start_background()
    yield srv
    srv.shutdown()


def _env(repo, server, mode) -> dict[str, str]:
    _, _, pubkey = repo
    return base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{server.url}/{NAME}", pubkey), PARROT_CVMFS_MODE=mode
    )


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


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
        try:
            _wait_for(lambda d=logs: len(glob.glob(f"{d}/ready.*")) == 3, 60, "the first round")
            time.sleep(0.02 * (k % 4))  # at different points of the loop
        finally:
            proc.kill()
            proc.wait()
        pids = [int(p.rpartition(".")[2]) for p in glob.glob(f"{logs}/ready.*")]
        _wait_for(lambda p=pids: not any(map(_alive, p)), 10, "the job to die with parrot_run")
        for log in glob.glob(f"{logs}/err.*"):
            with open(log) as f:
                wrong += [x for x in f.read().splitlines() if x != f"open {paths[-1]}: ENOENT"]
        wrong = [x for x in wrong if x != f"stat {paths[-1]}: ENOENT"]
    assert not wrong, f"{len(wrong)} calls failed while parrot_run was being killed: {wrong[:5]}"
