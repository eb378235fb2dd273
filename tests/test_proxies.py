"""parrot_run behind real site infrastructure: Squid forward proxies in front of nginx
strata, as on a batch farm. Traffic goes through the proxy, a second job is served
from the proxy's cache, and a proxy or a stratum stopped in the middle of a job is
failed over without the job noticing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .conftest import base_env, parse_sha256sum, sha256_tree
from .servers import Nginx, Squid

pytestmark = pytest.mark.tracer

PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]


@pytest.fixture
def nginx_pair(published, tmp_path):
    a = Nginx(published.stratum, str(tmp_path / "nginx-a"))
    b = Nginx(published.stratum, str(tmp_path / "nginx-b"))
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def squids(tmp_path):
    made = []

    def make():
        s = Squid()
        made.append(s)
        return s

    yield make
    for s in made:
        s.remove()


def env_for(published, servers: str, proxies: str) -> dict[str, str]:
    entry = f"{published.name}:url={servers},pubkey={published.pubkey},proxies={proxies}"
    return base_env(PARROT_CVMFS_REPO=entry)


def object_urls(lines: list[list[str]], result: str) -> set[str]:
    return {f[6] for f in lines if len(f) > 6 and f[3].startswith(result) and "/data/" in f[6]}


def paused_job(env, cache, files: list[str], mnt: str, tmp_path):
    """A job that reads the first half of `files`, says so, waits, then reads the rest."""
    half = len(files) // 2
    marker, go = tmp_path / "half", tmp_path / "go"
    first = " ".join(f"'{mnt}/{f}'" for f in files[:half])
    rest = " ".join(f"'{mnt}/{f}'" for f in files[half:])
    script = (
        f"sha256sum {first}; touch {marker}; while [ ! -e {go} ]; do sleep 0.05; done; "
        f"sha256sum {rest}"
    )
    p = subprocess.Popen(
        [*PARROT, "--cache-dir", str(cache), "--", "/bin/sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not marker.exists():
        if time.time() > deadline or p.poll() is not None:
            p.kill()
            raise AssertionError(f"the job did not reach its pause: {p.communicate()[1]!r}")
        time.sleep(0.05)
    return p, go


def readable_files(published) -> dict[str, str]:
    # plain names (the shell script quotes with '), every catalog
    return {
        k: v
        for k, v in sha256_tree(published.src).items()
        if "'" not in k and "\\" not in k and "\n" not in k
    }


def test_through_squid_and_second_job_from_its_cache(published, nginx_pair, squids, tmp_path):
    ng, _ = nginx_pair
    sq = squids()
    env = env_for(published, f"{ng.url}/{published.name}", sq.url)
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    script = " ".join(f"'{mnt}/{f}'" for f in files)
    for k in (1, 2):  # two jobs, each with its own empty cache
        p = subprocess.run(
            [
                *PARROT,
                "--cache-dir",
                str(tmp_path / f"cache{k}"),
                "--",
                "/bin/sh",
                "-c",
                f"sha256sum {script}",
            ],
            env=env,
            capture_output=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        assert parse_sha256sum(p.stdout, mnt) == files
        if k == 1:
            time.sleep(0.3)
            log1 = sq.access_log()
            nginx_before = len([x for x in ng.access_log() if "/data/" in x])
    time.sleep(0.3)
    log = sq.access_log()
    second = log[len(log1) :]
    misses = object_urls(log1, "TCP_MISS")
    assert len(misses) > 40, "the first job's objects did not go through the proxy"
    assert object_urls(second, "TCP_") == misses  # the same objects, asked again...
    assert all("HIT" in f[3] for f in second if len(f) > 6 and "/data/" in f[6])  # ...and cached
    assert len([x for x in ng.access_log() if "/data/" in x]) == nginx_before


def test_proxy_failover_mid_job(published, nginx_pair, squids, tmp_path):
    ng, _ = nginx_pair
    first, second = squids(), squids()
    env = env_for(published, f"{ng.url}/{published.name}", f"{first.url};{second.url}")
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    names = sorted(files)
    p, go = paused_job(env, tmp_path / "cache", names, mnt, tmp_path)
    first.stop()  # the first proxy dies while the job runs
    go.touch()
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert parse_sha256sum(out, mnt) == files
    assert object_urls(first.access_log(), "TCP_MISS")
    assert object_urls(second.access_log(), "TCP_MISS"), "nothing went through the second proxy"


def test_stratum_failover_mid_job(published, nginx_pair, tmp_path):
    a, b = nginx_pair
    env = env_for(published, f"{a.url}/{published.name};{b.url}/{published.name}", "DIRECT")
    mnt = f"/cvmfs/{published.name}"
    files = readable_files(published)
    p, go = paused_job(env, tmp_path / "cache", sorted(files), mnt, tmp_path)
    before = [x for x in b.access_log() if "/data/" in x]
    a.stop()  # the first stratum 1 goes away
    go.touch()
    out, err = p.communicate(timeout=600)
    assert not before, "the second stratum was used before the first went away"
    assert p.returncode == 0, err
    assert parse_sha256sum(out, mnt) == files
    assert [x for x in b.access_log() if "/data/" in x], "nothing came from the second stratum"


def test_preload_through_squid(published, nginx_pair, squids, tmp_path):
    """The bulk fetcher speaks to a proxy as the client does (absolute URLs)."""
    ng, _ = nginx_pair
    sq = squids()
    env = base_env(CVMFS_HTTP_PROXY=sq.url)
    d = tmp_path / "preload"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "parrot_cvmfs",
            "preload",
            "-u",
            f"{ng.url}/{published.name}",
            "-r",
            str(d),
            "-k",
            published.pubkey,
        ],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    time.sleep(0.3)
    fetched = int(p.stdout.split(b"fetched ")[1].split()[0])
    assert len(object_urls(sq.access_log(), "TCP_MISS")) >= fetched > 40
