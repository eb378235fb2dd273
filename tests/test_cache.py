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


# -- the objects' directories, made on first use -------------------------------------------------

HEX = [f"{i:02x}" for i in range(256)]


def _store(cache: ObjectCache, data: bytes) -> tuple[str, str]:
    """(the object's path once stored, its xx/ directory name)."""
    h = hash_bytes(Algorithm.SHA1, data)
    fd, tmp = cache.new_temp()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return cache.commit(tmp, h), h.cache_name()[:2]


def _objects_in(directory: str, n: int, sub: str | None = None) -> list[bytes]:
    """`n` distinct contents (whose objects go into `sub`/, when given)."""
    out, i = [], 0
    while len(out) < n:
        data = f"{directory} object {i}".encode()
        i += 1
        if sub is None or hash_bytes(Algorithm.SHA1, data).cache_name()[:2] == sub:
            out.append(data)
    return out


def test_fresh_cache_makes_an_objects_directory_when_its_first_object_arrives(tmp_path):
    d = str(tmp_path / "c")
    cache = ObjectCache(d, quota_bytes=1 << 20)
    try:
        assert not [s for s in HEX if os.path.lexists(os.path.join(d, s))]
        assert not os.path.lexists(os.path.join(d, "quarantaine"))
        path, sub = _store(cache, b"first object")
        with open(path, "rb") as f:
            assert f.read() == b"first object"
        assert [s for s in HEX if os.path.lexists(os.path.join(d, s))] == [sub]
        assert os.stat(os.path.join(d, sub)).st_mode & 0o7777 == 0o700
        assert cache.quota.usage() == len(b"first object")
    finally:
        cache.close()
    # a preload cache's directories keep its mode (readable by the site's users)
    pre = ObjectCache(str(tmp_path / "p"), dir_mode=0o755)
    try:
        _, sub = _store(pre, b"preloaded")
        assert os.stat(os.path.join(pre.dir, sub)).st_mode & 0o7777 == 0o755
    finally:
        pre.close()


def test_cache_with_objects_directories_missing_stores_into_them(tmp_path):
    """A cache made with all 256 directories (an older version, cvmfs_preload), some of
    which are gone: what goes there is stored, what is there is found."""
    d = str(tmp_path / "c")
    os.makedirs(os.path.join(d, "txn"))
    for s in HEX:
        os.mkdir(os.path.join(d, s))
    contents = _objects_in(d, 6)
    cache = ObjectCache(d)
    try:
        kept = _store(cache, contents[0])
        for s in HEX[::2]:
            if s != kept[1]:
                os.rmdir(os.path.join(d, s))
    finally:
        cache.close()
    cache = ObjectCache(d)
    try:
        assert cache.find(hash_bytes(Algorithm.SHA1, contents[0])) == kept[0]
        for data in contents[1:]:
            path, _ = _store(cache, data)
            with open(path, "rb") as f:
                assert f.read() == data
            assert cache.find(hash_bytes(Algorithm.SHA1, data)) == path
    finally:
        cache.close()


def test_objects_directory_planted_as_link_is_refused_at_first_write(tmp_path):
    """A link where an objects' directory belongs: the cache opens, lookups there find
    nothing, and storing an object there is one line naming it; nothing is written
    where the link points. Other objects are stored as usual."""
    d = str(tmp_path / "c")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = _objects_in(d, 1)[0]
    sub = hash_bytes(Algorithm.SHA1, data).cache_name()[:2]
    os.makedirs(d)
    os.symlink(str(elsewhere), os.path.join(d, sub))
    cache = ObjectCache(d)
    try:
        with pytest.raises(OSError) as e:
            cache.find(hash_bytes(Algorithm.SHA1, data))
        assert "symbolic link" in str(e.value) and sub in str(e.value), e.value
        with pytest.raises(OSError) as e:
            _store(cache, data)
        line = str(e.value)
        assert "symbolic link" in line and sub in line and d in line and "\n" not in line, line
        assert os.listdir(elsewhere) == []
        assert not os.listdir(cache.txn), "the temporary file was left behind"
        other = next(
            x for x in _objects_in(d, 50) if hash_bytes(Algorithm.SHA1, x).cache_name()[:2] != sub
        )
        path, _ = _store(cache, other)
        assert os.path.isfile(path)
    finally:
        cache.close()


WRITER = r"""
import os, sys
from parrot_cvmfs.client.cache import ObjectCache
from parrot_cvmfs.format.hashes import Algorithm, hash_bytes
d, tag, ready, go, todo = sys.argv[1:6]
cache = ObjectCache(d)
open(ready, "w").close()
while not os.path.exists(go):
    pass
for line in open(todo).read().splitlines():
    data = bytes.fromhex(line)
    fd, tmp = cache.new_temp()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    cache.commit(tmp, hash_bytes(Algorithm.SHA1, data))
print(tag)
"""


def test_concurrent_first_writers_make_one_directory_each(tmp_path):
    """Two processes store objects into the same not-yet-made directories at once:
    both succeed, every object is there, and only the directories used were made."""
    d = str(tmp_path / "c")
    ObjectCache(d).close()
    contents = _objects_in(d, 40, sub="3c") + _objects_in(d, 20, sub="c3")
    go, todo = str(tmp_path / "go"), tmp_path / "todo"
    todo.write_text("\n".join(c.hex() for c in contents))
    procs = []
    for tag in ("a", "b"):
        ready = str(tmp_path / f"ready-{tag}")
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, d, tag, ready, go, str(todo)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append((p, ready))
    deadline = time.monotonic() + 60
    while not all(os.path.exists(r) for _, r in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    open(go, "w").close()
    for p, _ in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert sorted(s for s in HEX if os.path.lexists(os.path.join(d, s))) == ["3c", "c3"]
    cache = ObjectCache(d)
    try:
        for data in contents:
            path = cache.find(hash_bytes(Algorithm.SHA1, data), size=len(data))
            assert path is not None
            with open(path, "rb") as f:
                assert f.read() == data
    finally:
        cache.close()


def test_kept_answers_of_old_revisions_are_pruned(tmp_path):
    """A run that keeps answers of a repository leaves its user at most KEEP_PER_REPO
    memo files of it, the most recently used, and any used within PRUNE_AGE: a
    repository published daily does not fill the cache with dead revisions' answers.
    Other repositories' files and other users' are left alone; a run's load marks its
    file used."""
    from parrot_cvmfs.tracer.core import Core
    from parrot_cvmfs.tracer.memo import KEEP_PER_REPO, MAGIC, PRUNE_AGE, Memo, answer_record
    from parrot_cvmfs.tracer.syscalls import calls_for, machine

    cache = tmp_path / "cache"
    (cache / "memo").mkdir(parents=True)
    core = Core(calls_for(machine()), machine(), str(tmp_path / "anchors"), [str(cache)])
    uid = os.getuid()

    gone = answer_record(True, b"/cvmfs/r.example.org/gone", 2, None, None, None)

    def old(name: str, mtime: int) -> str:
        path = cache / "memo" / name
        path.write_bytes(MAGIC + b"\0\0\0\0" + gone)
        os.utime(path, (mtime, mtime))
        return name

    older = [old(f"r.example.org@{i:040x}.{uid}.memo", 1000 + i) for i in range(12)]
    guest = old(f"r.example.org@{99:040x}~0123456789abcdef.{uid}.memo", 2000)
    others = [
        old(f"s.example.org@{0:040x}.{uid}.memo", 1),  # another repository
        old(f"r.example.org@{0:040x}.{uid + 1}.memo", 1),  # another user
    ]
    recent = old(f"r.example.org@{77:040x}.{uid}.memo", int(time.time() - PRUNE_AGE / 2))
    used = old(f"r.example.org@{88:040x}.{uid}.memo", 500)  # the oldest, but loaded now
    memo = Memo(core, str(cache))
    memo.load(f"r.example.org@{88:040x}")
    assert os.stat(cache / "memo" / used).st_mtime > time.time() - 60
    rev = "r.example.org@" + "f" * 40
    memo.teach(rev, gone)
    memo.save()
    kept = {f"{rev}.{uid}.memo", guest, used, recent, *older[-(KEEP_PER_REPO - 4) :]}
    assert set(os.listdir(cache / "memo")) == kept | set(others)
