"""Downloads on demand: objects fetched one by one share kept-alive connections (to a
server, to nginx, through Squid), a server that drops kept-alive connections mid-way
costs nothing but a fresh connection, and a chunked file's chunks come in parallel,
each verified, under a server that delays every answer."""

from __future__ import annotations

import os

import pytest
from parrot_cvmfs._core import ffi, lib

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.server.chunking import ChunkSizes
from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import base_env, repo_spec
from .servers import FaultyServer, Nginx, Squid, serving

NAME = "downloads.test.org"
FILES = {f"f{i:02d}.txt": f"file {i}\n".encode() * (50 + i) for i in range(12)}
CHUNKED = os.urandom(96 * 1024)


class Repo:
    def __init__(self, stratum: str, pubkey: str):
        self.stratum, self.pubkey = stratum, pubkey


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    base = tmp_path_factory.mktemp("downloads")
    src = base / "src"
    src.mkdir()
    for name, data in FILES.items():
        (src / name).write_bytes(data)
    (src / "chunked.bin").write_bytes(CHUNKED)
    stratum, keys = str(base / "stratum"), str(base / "keys")
    publish(
        PublishOptions(
            source=str(src),
            name=NAME,
            stratum=stratum,
            keys_dir=keys,
            chunk_sizes=ChunkSizes(4096, 8192, 16384),
        )
    )
    return Repo(stratum, os.path.join(keys, f"{NAME}.pub"))


def mounted(repo: Repo, url: str, cache: str, **opts) -> Repository:
    env = base_env(PARROT_CVMFS_REPO=repo_spec(NAME, url, repo.pubkey, **opts))
    return Repository.mount(NAME, cache_dir=cache, config=Configuration(env=env))


def read_all(r: Repository) -> None:
    """Every small file, one by one as a job opens them, checked against the source."""
    for name, data in FILES.items():
        with open(r.local_path(f"/{name}"), "rb") as f:
            assert f.read() == data, name


def counters() -> tuple[int, int]:
    """(connections opened, requests over a kept-alive one) by the C fetcher so far."""
    c = ffi.new("pc_fetch_counters *")
    lib.pc_fetch_counters_get(c)
    return c.connects, c.reuses


@pytest.fixture(autouse=True)
def no_idle_connections():
    lib.pc_fetch_pool_clear()  # each test starts without kept-alive connections
    yield
    lib.pc_fetch_pool_clear()


def test_objects_fetched_one_by_one_share_one_connection(repo, tmp_path):
    with serving(FaultyServer(repo.stratum)) as srv:
        with mounted(repo, f"{srv.url}/{NAME}", str(tmp_path / "c")) as r:
            connects, reuses = counters()
            read_all(r)
            assert counters() == (connects, reuses + len(FILES))
        assert all(n == 1 for n in srv.data_requests().values())
        # the manifest's and the catalog's connections, then one for all the objects
        assert srv.accepts <= 3


def test_server_dropping_kept_alive_connections(repo, tmp_path):
    """Every third request on a connection is read and dropped unanswered: the C
    fetcher asks again at once on a fresh connection, nothing goes to the Python
    downloader's retries, and every object is still right."""
    with serving(FaultyServer(repo.stratum)) as srv:
        with mounted(repo, f"{srv.url}/{NAME}", str(tmp_path / "c")) as r:
            srv.per_connection = 2
            accepts = srv.accepts
            read_all(r)
            assert srv.accepts - accepts >= len(FILES) // 2
            assert srv.accepts - accepts < len(FILES)
            assert r.downloader.n_failures == 0
        assert all(n == 1 for n in srv.data_requests().values())


def test_nginx_keeps_connections(repo, tmp_path):
    ng = Nginx(repo.stratum, str(tmp_path / "nginx"))
    try:
        with mounted(repo, f"{ng.url}/{NAME}", str(tmp_path / "c")) as r:
            connects, reuses = counters()
            read_all(r)
            assert counters() == (connects, reuses + len(FILES))
    finally:
        ng.stop()


def test_through_squid_one_connection(repo, tmp_path):
    squid = Squid()
    try:
        with serving(FaultyServer(repo.stratum)) as srv:
            with mounted(repo, f"{srv.url}/{NAME}", str(tmp_path / "c"), proxies=squid.url) as r:
                connects, reuses = counters()
                read_all(r)
                assert counters() == (connects, reuses + len(FILES))
        logged = [f for f in squid.access_log() if len(f) > 6 and "/data/" in f[6]]
        assert len(logged) >= len(FILES)  # the objects went through the proxy
    finally:
        squid.remove()


def test_chunks_fetched_in_parallel_under_a_slow_server(repo, tmp_path):
    with serving(FaultyServer(repo.stratum)) as srv:
        with mounted(repo, f"{srv.url}/{NAME}", str(tmp_path / "c")) as r:
            chunks = r.chunks(r.lookup("/chunked.bin"))
            assert len(chunks) >= 4
            srv.delays = {"P": 0.3}  # every chunk answered late
            connects, reuses = counters()
            with open(r.local_path("/chunked.bin"), "rb") as f:
                assert f.read() == CHUNKED
            # all by the C fetcher, several at once
            c, u = counters()
            assert c - connects + u - reuses == len(chunks)
            assert srv.max_in_flight >= 2
        chunk_requests = {p: n for p, n in srv.data_requests().items() if p.endswith("P")}
        assert len(chunk_requests) == len(chunks)
        assert all(n == 1 for n in chunk_requests.values())


def test_corrupt_chunk_refetched_and_verified(repo, tmp_path):
    """A chunk that does not verify in C is fetched again (fresh, by Python) and the
    assembled file is right."""
    with serving(FaultyServer(repo.stratum)) as srv:
        with mounted(repo, f"{srv.url}/{NAME}", str(tmp_path / "c")) as r:
            chunks = r.chunks(r.lookup("/chunked.bin"))
            bad = chunks[1][2].object_path("P")
            seen = []

            def once_broken(body: bytes) -> bytes:
                seen.append(1)
                return body[:-1] + bytes([body[-1] ^ 1]) if len(seen) == 1 else body

            srv.rewrites = {bad: once_broken}
            with open(r.local_path("/chunked.bin"), "rb") as f:
                assert f.read() == CHUNKED
        assert len(seen) == 2


def test_python_downloader_survives_dropped_kept_alive_connections(repo, tmp_path):
    """The Python downloader (external files, preload fall-backs) keeps connections
    too; one dropped under a request is asked again at once on a fresh one, not
    counted as the transfer error that would cost a retry (none allowed here)."""
    from parrot_cvmfs.client.download import Downloader
    from parrot_cvmfs.client.network import DownloadSettings

    with serving(FaultyServer(repo.stratum)) as srv:
        with mounted(repo, f"{srv.url}/{NAME}", str(tmp_path / "c")) as r:
            hashes = [(r.lookup(f"/{n}").hash, d) for n, d in FILES.items()]
        srv.per_connection = 3
        accepts = srv.accepts
        d = Downloader(DownloadSettings([f"{srv.url}/{NAME}"], max_retries=0))
        try:
            for h, data in hashes:
                got = d.fetch(h.object_path(), what=h.hex, expected=h, decompress=True)
                assert got == data
        finally:
            d.close()
        assert srv.accepts - accepts == len(FILES) // 3
        assert d.n_failures == 0
