"""Many parrot_run jobs on one writable cache: concurrent cold reads, a job killed in
the middle of a download, and a quota smaller than the working set."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import base_env, parse_sha256sum, published_env, repo_spec, sha256_tree
from .servers import FaultyServer, serving
from .test_preload import stored_objects_match

pytestmark = pytest.mark.tracer

PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]


def job(env, cache, script, **kw):
    return subprocess.Popen(
        [*PARROT, "--cache-dir", str(cache), "--", "/bin/sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


@pytest.fixture
def srv(published):
    """A server of the published tree of the test's own (tests set its faults)."""
    with serving(FaultyServer(published.stratum)) as srv:
        yield srv


def test_eight_jobs_one_cold_cache(published, srv, tmp_path):
    env = published_env(published, srv.url)
    mnt = f"/cvmfs/{published.name}"
    expect = sha256_tree(published.src)
    files = sorted(expect)
    cache = tmp_path / "cache"
    procs = []
    for k in range(8):  # overlapping: every job reads every file, each in its own order
        mine = files[:]
        random.Random(k).shuffle(mine)
        listing = tmp_path / f"list{k}"
        listing.write_bytes(b"\0".join(f"{mnt}/{f}".encode() for f in mine) + b"\0")
        procs.append(job(env, cache, f"xargs -0 sha256sum --zero < {listing}"))
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert parse_sha256sum(out, mnt) == expect
    counts = srv.data_requests()
    assert counts and max(counts.values()) <= 2, sorted(counts.items(), key=lambda x: -x[1])[:5]
    assert stored_objects_match(str(cache), os.path.join(published.stratum, published.name))


def test_job_killed_in_a_download_leaves_no_partial_object(published, srv, tmp_path):
    env = published_env(published, srv.url)
    big = f"/cvmfs/{published.name}/large/big.bin"
    cache = tmp_path / "cache"
    subprocess.run(
        [*PARROT, "--cache-dir", str(cache), "--", "ls", "/cvmfs/" + published.name],
        env=env,
        check=True,
        capture_output=True,
    )  # mounted, catalogs cached
    srv.throttles["P"] = 512 * 1024  # chunks trickle in
    p = job(env, cache, f"cat {big} > /dev/null", start_new_session=True)
    txn = cache / "txn"
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        (txn / n).stat().st_size > 0 for n in os.listdir(txn) if n.startswith("fetch.")
    ):
        time.sleep(0.02)
    assert any(n.startswith("fetch.") for n in os.listdir(txn)), "no download in progress"
    os.kill(p.pid, signal.SIGKILL)  # the supervisor; the job goes with it
    p.wait()
    deadline = time.time() + 10
    while subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the job outlived its killed supervisor"
        time.sleep(0.05)
    srv.throttles.clear()
    stratum = os.path.join(published.stratum, published.name)
    assert stored_objects_match(str(cache), stratum)  # complete objects only
    r = subprocess.run(
        [*PARROT, "--cache-dir", str(cache), "--", "sha256sum", big],
        env=env,
        capture_output=True,
        timeout=300,
    )
    with open(os.path.join(published.src, "large", "big.bin"), "rb") as f:
        assert r.stdout.split()[0].decode() == hashlib.sha256(f.read()).hexdigest()
    assert not [n for n in os.listdir(txn) if f".{p.pid}." in n]  # the dead one's temporaries
    assert stored_objects_match(str(cache), stratum)


@pytest.mark.parametrize("mode", ["notify", "ptrace"])
def test_quota_cleanup_under_load_spares_open_files(tmp_path, mode):
    src = tmp_path / "src"
    rnd = random.Random(5)
    for i in range(60):
        d = src / f"d{i % 6}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:02d}").write_bytes(rnd.randbytes(512 * 1024))
    stratum, keys = tmp_path / "stratum", tmp_path / "keys"
    name = "quota.test.org"
    publish(
        PublishOptions(
            source=str(src), name=name, stratum=str(stratum), keys_dir=str(keys), compress=False
        )
    )
    srv = FaultyServer(str(stratum))
    # reading takes seconds: longer than clean-up's grace for new objects
    srv.delays["/data/"] = 0.1
    srv.start_background()
    started: list[subprocess.Popen] = []  # killed if an assertion fails while they wait
    try:
        # 10 MB for a 30 MB working set read by four jobs at once
        env = base_env(
            PARROT_CVMFS_REPO=repo_spec(
                name, f"{srv.url}/{name}", f"{keys}/{name}.pub", quota_limit=10
            ),
            # files evicted between lookup and open are fetched again in both modes
            PARROT_CVMFS_MODE=mode,
        )
        mnt = f"/cvmfs/{name}"
        expect = sha256_tree(str(src))
        cache = tmp_path / "cache"
        held, ready, done = f"{mnt}/d0/f00", tmp_path / "ready", tmp_path / "done"
        holder = job(
            env,
            cache,
            f"exec 3< {held}; touch {ready}; "
            f"while [ ! -e {done} ]; do sleep 0.05; done; sha256sum <&3",
        )
        started.append(holder)
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), holder.stderr.read() if holder.poll() is not None else ""
        backing = None
        for fd in os.listdir("/proc"):
            if fd.isdigit():
                try:
                    link = os.readlink(f"/proc/{fd}/fd/3")
                except OSError:
                    continue
                if link.startswith(str(cache)):
                    backing = link
        assert backing, "the holder's descriptor is not on a cache file"
        readers = []
        for k in range(4):
            mine = sorted(expect)
            random.Random(k).shuffle(mine)
            listing = tmp_path / f"list{k}"
            listing.write_bytes(b"\0".join(f"{mnt}/{f}".encode() for f in mine) + b"\0")
            readers.append(job(env, cache, f"xargs -0 sha256sum --zero < {listing}"))
        started += readers
        for p in readers:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            assert parse_sha256sum(out, mnt) == expect
        stored = sum(
            os.path.getsize(cache / f"{i:02x}" / n)
            for i in range(256)
            if (cache / f"{i:02x}").is_dir()  # made when the first object goes there
            for n in os.listdir(cache / f"{i:02x}")
        )
        # clean-up ran while the jobs read (objects were evicted and fetched again), kept the
        # cache near its limit (what was stored a moment ago is spared), and never took
        # the file the holder has open
        assert sum(srv.data_requests().values()) > 62, srv.data_requests()
        assert stored <= 16 * 1024 * 1024, f"the quota did not hold: {stored} bytes stored"
        assert os.path.exists(backing), "clean-up removed a file a job had open"
        done.touch()
        out, err = holder.communicate(timeout=60)
        assert out.split()[0].decode() == expect["d0/f00"], err
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
        srv.shutdown()
