"""Prefetch for cold runs (client/prefetch.py): a read of a missing file fetches the
files of its kind beside it in the background, verified, within bounds, never twice,
and never holding the job up; a real published repository, a real server on loopback,
parrot_run on real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import zlib

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import PARROT_RUN, base_env, repo_spec
from .servers import FaultyServer, serving

pytestmark = pytest.mark.tracer

NAME = "prefetch.test.org"
PYC = [f"m{i}.pyc" for i in range(10)]
BIG = 5 << 20  # over prefetch.FILE_MAX: fetched when read only


def content(name: str, size: int = 3000) -> bytes:
    seed = zlib.crc32(name.encode())
    return (f"{name} {seed}\n".encode() * (size // 16 + 1))[:size]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("prefetch")
    src = base / "src"
    for d in ("pkg/__pycache__", "duo", "other"):
        (src / d).mkdir(parents=True)
    for n in PYC:
        (src / "pkg/__pycache__" / n).write_bytes(content(n))
    for n in ("notes.txt", "readme.txt"):
        (src / "pkg/__pycache__" / n).write_bytes(content(n))
    (src / "pkg/__pycache__/huge.pyc").write_bytes(content("huge.pyc", BIG))
    (src / "other/far.pyc").write_bytes(content("far.pyc"))
    for n in ("a.pyc", "b.pyc"):
        (src / "duo" / n).write_bytes(content("duo" + n))
    stratum, keys = str(base / "stratum"), str(base / "keys")
    # no chunks: what keeps huge.pyc back must be its size alone
    publish(
        PublishOptions(source=str(src), name=NAME, stratum=stratum, keys_dir=keys, chunking=False)
    )
    pubkey = os.path.join(keys, f"{NAME}.pub")
    hashes = {}
    with serving(FaultyServer(stratum)) as srv:
        env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", pubkey))
        p = subprocess.run(
            [sys.executable, "-m", "parrot_cvmfs", "find", NAME, "/", "--json"],
            env={**env, "PARROT_CVMFS_CACHE": str(base / "find-cache")},
            capture_output=True,
            check=True,
        )
        root = urllib.parse.urlsplit(srv.url).path
        for line in p.stdout.decode().splitlines():
            rec = json.loads(line)
            if rec.get("hash"):
                h = rec["hash"]
                hashes[rec["path"].lstrip("/")] = f"{root}/{NAME}/data/{h[:2]}/{h[2:]}"
        yield srv, env, hashes


def run(env: dict, cache, script: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PARROT_RUN, "--cache-dir", str(cache), "--stats", "--", "/bin/sh", "-c", script],
        env={**env, **extra},
        capture_output=True,
        timeout=120,
    )


def asked(srv: FaultyServer, hashes: dict, names) -> dict[str, int]:
    reqs = srv.data_requests()
    return {n: reqs.get(hashes[n], 0) for n in names}


def open_object(srv: FaultyServer, path: str) -> bytes:
    """The bytes of an object the server serves at `path`."""
    root = urllib.parse.urlsplit(srv.url).path
    with open(os.path.join(srv.root, path[len(root) :].lstrip("/")), "rb") as f:
        return f.read()


def reset(srv: FaultyServer) -> None:
    with srv.lock:
        srv.requests.clear()
    # new dictionaries: a handler may still be going through the old ones
    srv.delays, srv.rewrites = {}, {}


def test_reading_a_missing_file_fetches_its_kind_beside_it_and_only_that(repo, tmp_path):
    srv, env, hashes = repo
    reset(srv)
    pkg = f"/cvmfs/{NAME}/pkg/__pycache__"
    # the sleep: the job is still there while the background fetches end (a run that
    # ends first drops what is queued, by design)
    p = run(env, tmp_path / "c", f"cat {pkg}/m0.pyc; sleep 3")
    assert p.returncode == 0, p.stderr
    assert p.stdout == content("m0.pyc")
    mine = [f"pkg/__pycache__/{n}" for n in PYC]
    assert asked(srv, hashes, mine) == dict.fromkeys(mine, 1)
    others = ["pkg/__pycache__/notes.txt", "pkg/__pycache__/readme.txt", "other/far.pyc"]
    assert asked(srv, hashes, others) == dict.fromkeys(others, 0)
    assert b"(9 ahead of the job" in p.stderr, p.stderr
    # what came ahead is in the cache, verified: read later with no server at all
    reset(srv)
    q = run(
        env,
        tmp_path / "c",
        f"cat {pkg}/m5.pyc {pkg}/m9.pyc",
        PARROT_CVMFS_OFFLINE="yes",
    )
    assert q.returncode == 0, q.stderr
    assert q.stdout == content("m5.pyc") + content("m9.pyc")
    assert srv.data_requests() == {}


def test_a_file_too_big_to_guess_is_fetched_when_read_only(repo, tmp_path):
    srv, env, hashes = repo
    reset(srv)
    p = run(env, tmp_path / "c", f"cat /cvmfs/{NAME}/pkg/__pycache__/m1.pyc >/dev/null; sleep 3")
    assert p.returncode == 0, p.stderr
    big = [h for n, h in hashes.items() if n.endswith("huge.pyc")]
    reqs = srv.data_requests()
    assert not any(r in big for r in reqs), reqs
    assert asked(srv, hashes, ["pkg/__pycache__/m5.pyc"]) == {"pkg/__pycache__/m5.pyc": 1}
    # nor its chunks: every object asked for is a file's (catalogs and certificates
    # aside, named with a suffix)
    stray = [r for r in reqs if r[-1] in "0123456789abcdef" and r not in hashes.values()]
    assert stray == [], stray


def test_a_sibling_the_server_corrupts_is_not_stored(repo, tmp_path):
    srv, env, hashes = repo
    reset(srv)
    bad = hashes["pkg/__pycache__/m3.pyc"]
    # another object of the same size, well formed: only its hash tells it is not m3's
    other = open_object(srv, hashes["pkg/__pycache__/m4.pyc"])
    srv.rewrites[bad] = lambda body: other
    pkg = f"/cvmfs/{NAME}/pkg/__pycache__"
    p = run(env, tmp_path / "c", f"cat {pkg}/m2.pyc >/dev/null; sleep 3")
    assert p.returncode == 0, p.stderr
    assert srv.data_requests().get(bad, 0) >= 1  # it was tried, and refused
    reset(srv)
    q = run(env, tmp_path / "c", f"cat {pkg}/m3.pyc")
    assert q.returncode == 0, q.stderr
    assert q.stdout == content("m3.pyc")
    assert srv.data_requests().get(bad) == 1  # not in the cache: fetched again, good now


def test_an_object_in_flight_is_waited_for_not_fetched_twice(repo, tmp_path):
    srv, env, hashes = repo
    reset(srv)
    # a's own fetch takes a while: the worker has time to take b first
    srv.delays[hashes["duo/a.pyc"]] = 0.5
    srv.delays[hashes["duo/b.pyc"]] = 1.0
    duo = f"/cvmfs/{NAME}/duo"
    p = run(env, tmp_path / "c", f"cat {duo}/a.pyc {duo}/b.pyc")
    assert p.returncode == 0, p.stderr
    assert p.stdout == content("duoa.pyc") + content("duob.pyc")
    assert asked(srv, hashes, ["duo/a.pyc", "duo/b.pyc"]) == {"duo/a.pyc": 1, "duo/b.pyc": 1}
    assert b"(1 ahead of the job" in p.stderr, p.stderr  # b came by the prefetch


def test_a_hanging_prefetch_does_not_hold_the_end_of_a_run(repo, tmp_path):
    srv, env, hashes = repo
    reset(srv)
    for n in PYC[1:]:
        srv.delays[hashes[f"pkg/__pycache__/{n}"]] = 10.0
    t = time.monotonic()
    # a deadline longer than the server's wait: only the end's own bound can cut it
    p = run(env, tmp_path / "c", f"cat /cvmfs/{NAME}/pkg/__pycache__/m0.pyc", CVMFS_TIMEOUT="20")
    took = time.monotonic() - t
    srv.delays = {}
    assert p.returncode == 0, p.stderr
    assert sum(asked(srv, hashes, [f"pkg/__pycache__/{n}" for n in PYC[1:]]).values()) >= 1
    assert p.stdout == content("m0.pyc")
    assert took < 8, took  # no wait for the server's 10 s at the end
    assert not any(
        b"Traceback" in line or b"internal error" in line for line in p.stderr.splitlines()
    )


def test_the_budget_bounds_it_and_zero_turns_it_off(repo, tmp_path):
    srv, env, hashes = repo
    pkg = f"/cvmfs/{NAME}/pkg/__pycache__"
    mine = [f"pkg/__pycache__/{n}" for n in PYC[1:]]
    reset(srv)
    p = run(env, tmp_path / "a", f"cat {pkg}/m0.pyc >/dev/null; sleep 3", PARROT_CVMFS_PREFETCH="0")
    assert p.returncode == 0, p.stderr
    assert sum(asked(srv, hashes, mine).values()) == 0
    assert b"ahead of the job" not in p.stderr
    reset(srv)
    # 10 KiB: three of the 3,000-byte files
    p = run(
        env, tmp_path / "b", f"cat {pkg}/m0.pyc >/dev/null; sleep 3", PARROT_CVMFS_PREFETCH="0.01"
    )
    assert p.returncode == 0, p.stderr
    assert sum(asked(srv, hashes, mine).values()) == 3
    reset(srv)
    p = run(env, tmp_path / "c", f"cat /cvmfs/{NAME}/duo/a.pyc", PARROT_CVMFS_PREFETCH="lots")
    assert p.returncode != 0
    assert b"PARROT_CVMFS_PREFETCH='lots'" in p.stderr, p.stderr
    assert b"Traceback" not in p.stderr


THREADLESS = """
import threading, types
from parrot_cvmfs.client.prefetch import Prefetcher
try:
    threading.Thread(target=print).start()
    raise SystemExit("a thread started: the limit did not hold")
except RuntimeError:
    pass
def entry(name):
    return types.SimpleNamespace(name=name, is_regular=True, is_chunked=False,
        is_external=False, is_hidden=False, hash=name.encode(), size=100,
        is_compressed=True)
p = Prefetcher(fetcher=None, budget=1 << 20)
p.around("/d", lambda limit: [entry(f"{i}.pyc") for i in range(5)], entry("0.pyc"))
assert p._closed and not p._queue, (p._closed, p._queue)
p.around("/e", lambda limit: [entry("x.pyc"), entry("y.pyc")], entry("x.pyc"))
print("ok", p.queued)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_no_thread_to_start_is_no_error_for_the_job():
    """At the user's process limit (threads count), a guess that cannot get a worker
    is dropped: the open that asked for it must not fail. A real limit, as nobody."""
    p = subprocess.run(
        [
            "prlimit",
            "--nproc=1:1",
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            THREADLESS,
        ],
        capture_output=True,
        timeout=60,
        cwd="/",
        env={
            **os.environ,
            "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        },
    )
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode().split() == ["ok", "4"]
