"""The progress line of a cold job (issue 12, item 14): with stderr a terminal (a pty)
and downloads that take more than a second (a loopback server that answers every
object late), parrot_run draws one line on stderr and erases it (`\\r` and erase to
the end of the line) before the job's exit; with stderr a pipe, or under --debug,
there is no such line."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import base_env, read_pty, repo_spec
from .servers import FaultyServer, serving

pytestmark = pytest.mark.tracer

NAME = "progress.test.org"
PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]
FILES = {f"f{i:02d}.txt": f"object {i}\n".encode() * (20 + i) for i in range(10)}
ERASE = b"\r\x1b[K"
LINE = b"parrot_cvmfs: downloaded"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("progress")
    src = base / "src"
    src.mkdir()
    for name, data in FILES.items():
        (src / name).write_bytes(data)
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(PublishOptions(source=str(src), name=NAME, stratum=stratum, keys_dir=keys))
    return stratum, os.path.join(keys, f"{NAME}.pub")


@pytest.fixture
def slow_env(repo, tmp_path):
    stratum, pubkey = repo
    with serving(FaultyServer(stratum)) as srv:
        srv.delays = {"/data/": 0.15}  # ten objects: about 1.5 s of downloads
        yield (
            # each read its own download, none fetched ahead (the line shows the job's)
            base_env(
                PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", pubkey),
                PARROT_CVMFS_PREFETCH="0",
            ),
            str(tmp_path / "cache"),
        )


def job(cache: str, *extra: str) -> list[str]:
    """A job that reads every file (each one download), then writes to stderr."""
    files = " ".join(f"/cvmfs/{NAME}/{n}" for n in FILES)
    script = f"cat {files} >/dev/null; echo done >&2"
    return [*PARROT, "--cache-dir", cache, *extra, "--", "sh", "-c", script]


def run_on_pty(cmd: list[str], env: dict) -> tuple[int, bytes]:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    p = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary
    )
    os.close(secondary)
    try:
        out = read_pty(primary)
    finally:
        os.close(primary)
    return p.wait(30), out


def test_line_shown_and_erased_on_a_terminal(slow_env):
    env, cache = slow_env
    rc, out = run_on_pty(job(cache), env)
    assert rc == 0, out
    assert LINE in out
    line = out[out.index(LINE) :]
    assert b"objects" in line and b"MB/s" in line and f"{NAME}:/f".encode() in line
    # redrawn in place, one line; erased before the job writes again, and at the end
    assert b"\n" not in line.partition(b"done")[0]
    assert line.partition(b"done")[0].endswith(ERASE)
    assert out.endswith(b"done\r\n")


def test_no_line_when_stderr_is_a_pipe(slow_env):
    env, cache = slow_env
    p = subprocess.run(job(cache), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.returncode == 0
    assert LINE not in p.stderr and b"\x1b[K" not in p.stderr
    assert p.stderr == b"done\n"


def test_no_line_under_debug(slow_env):
    env, cache = slow_env
    rc, out = run_on_pty(job(cache, "--debug"), env)
    assert rc == 0
    assert LINE not in out and b"\x1b[K" not in out
