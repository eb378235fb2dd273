"""The shared cache: concurrent processes, quota clean-up, alien tier, offline use."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from parrot_cvmfs.client.cache import ObjectCache, open_files_under
from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.format.hashes import Algorithm, hash_bytes

from .conftest import base_env, published_env, repo_spec
from .servers import FaultyServer, serving

READER = r"""
import hashlib, json, sys
from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
name, cache = sys.argv[1], sys.argv[2]
out = {}
with Repository.mount(name, cache_dir=cache, config=Configuration()) as repo:
    for e in repo.walk("/"):
        if e.is_regular:
            with repo.open(e.path) as f:
                out[e.path] = hashlib.sha256(f.read()).hexdigest()
print(json.dumps(out))
"""


@pytest.fixture
def server(published):
    with serving(FaultyServer(published.stratum)) as srv:
        yield srv


def env_for(published, srv) -> dict[str, str]:
    return published_env(published, srv.url, CVMFS_QUOTA_LIMIT="-1")


@pytest.mark.slow
def test_concurrent_processes_share_one_cache(published, server, tmp_path):
    cache = str(tmp_path / "cache")
    env = env_for(published, server)
    # slow every object down a little so that the readers really overlap
    server.delays["/data/"] = 0.01
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", READER, published.name, cache],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    results = []
    for p in procs:
        out, errout = p.communicate(timeout=600)
        assert p.returncode == 0, errout.decode()
        results.append(json.loads(out))
    assert all(r == results[0] for r in results)
    for path, digest in results[0].items():
        with open(published.src + path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, path
    counts = server.data_requests()
    assert counts and max(counts.values()) == 1, {p: n for p, n in counts.items() if n > 1}
    assert os.listdir(os.path.join(cache, "txn")) == []
    # every cached whole object still matches its name (content is stored decompressed,
    # so check it against the catalog through the repository)
    with Repository.mount(published.name, cache_dir=cache, config=Configuration(env=env)) as repo:
        for e in repo.walk("/"):
            if e.is_regular and e.hash is not None and e.size:
                p = repo.cache.find(e.hash)
                assert p is not None and os.path.getsize(p) == e.size


def test_quota_cleanup_spares_open_files(tmp_path):
    cache = ObjectCache(str(tmp_path / "c"), quota_bytes=3 * 1024 * 1024)
    paths = []
    for i in range(12):
        data = os.urandom(512 * 1024)
        h = hash_bytes(Algorithm.SHA1, data + bytes([i]))
        fd, tmp = cache.new_temp()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        paths.append((h, cache.commit(tmp, h)))
        if i == 1:
            # another process keeps the second object open, under an alias, while clean-up runs
            paths[1] = (h, cache.alias(paths[1][1], "a1"))
            assert paths[1][1].endswith("~a1") and os.path.samefile(paths[1][1], cache.path(h))
            aliases_of_first = [cache.alias(paths[0][1], t) for t in ("b1", "b2")]
            holder = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys,time; f=open(sys.argv[1],'rb'); "
                    "print('open', flush=True); time.sleep(60)",
                    paths[1][1],
                ],
                stdout=subprocess.PIPE,
            )
            assert holder.stdout.readline() == b"open\n"
        time.sleep(0.01)
    try:
        import parrot_cvmfs.client.cache.quota as cache_mod

        cache_mod_grace = cache_mod._RECENT_GRACE
        cache_mod._RECENT_GRACE = 0.0
        try:
            cache.quota.cleanup()
        finally:
            cache_mod._RECENT_GRACE = cache_mod_grace
        assert cache.quota.usage() <= 3 * 1024 * 1024
        assert os.path.exists(paths[1][1]), "an open object was evicted"
        assert os.path.exists(cache.path(paths[1][0])), "an object open under an alias was evicted"
        assert not os.path.exists(paths[0][1]), "the least recently used object should go first"
        assert not any(os.path.exists(a) for a in aliases_of_first), "aliases outlived their object"
        assert os.path.exists(paths[-1][1])
        assert paths[1][1] in open_files_under(cache.dir)
    finally:
        holder.kill()
        holder.wait()
        cache.close()


def test_offline_and_alien_tier(published, server, tmp_path):
    """With everything in the cache no network is needed; an alien directory is read first."""
    env = env_for(published, server)
    warm = str(tmp_path / "warm")
    with Repository.mount(published.name, cache_dir=warm, config=Configuration(env=env)) as repo:
        want = {e.path: repo.read(e.path) for e in repo.walk("/data") if e.is_regular}
    server.shutdown()
    server.server_close()
    dead = base_env(
        PARROT_CVMFS_REPO=repo_spec(published.name, "http://127.0.0.1:9/cvmfs/x", published.pubkey)
    )
    with Repository.mount(
        published.name, cache_dir=warm, config=Configuration(env=dead), offline=True
    ) as repo:
        assert {p: repo.read(p) for p in want} == want
    # the warm cache as a read-only alien tier beneath an empty local cache
    for d in [warm] + glob.glob(os.path.join(warm, "*")):
        if os.path.isdir(d):
            os.chmod(d, 0o555)
    try:
        with Repository.mount(
            published.name,
            cache_dir=str(tmp_path / "empty"),
            alien_cache=warm,
            config=Configuration(env=dead),
            offline=True,
        ) as repo:
            assert {p: repo.read(p) for p in want} == want
            assert repo.local_path("/data/f000.bin").startswith(warm)
            with pytest.raises(OSError, match="not in the cache and the client is offline"):
                repo.read("/large/big.bin")
    finally:
        for d in [warm] + glob.glob(os.path.join(warm, "*")):
            if os.path.isdir(d):
                os.chmod(d, 0o755)
