"""Publish a generated tree, serve it (built-in server and nginx), read it back
through the API and the CLI, and compare every attribute and byte with the source."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import Cli, base_env, repo_spec
from .treegen import BIG_SIZE, kind_of, source_entries


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expected_nlink(path: str, s: os.stat_result, src: str) -> int:
    if stat.S_ISDIR(s.st_mode) or s.st_nlink == 1:
        return s.st_nlink
    # a hardlink group is the links of the inode in one directory (as the real server):
    # hardlinks/a and b are a pair, hardlinks/other/c and nested/cross-catalog-link alone
    d = os.path.dirname(src + path)
    links = [os.lstat(os.path.join(d, n)) for n in os.listdir(d)]
    return sum(1 for t in links if (t.st_dev, t.st_ino) == (s.st_dev, s.st_ino))


def env_for(published, url: str) -> dict[str, str]:
    return base_env(
        PARROT_CVMFS_REPO=repo_spec(published.name, f"{url}/{published.name}", published.pubkey)
    )


@pytest.fixture(params=["builtin", pytest.param("nginx", marks=pytest.mark.nginx)])
def served(request, published, published_server):
    if request.param == "builtin":
        return published_server.url
    return request.getfixturevalue("nginx_published").url


def test_api_matches_source(published, served, tmp_path):
    config = Configuration(env=env_for(published, served))
    src = published.src
    with Repository.mount(published.name, cache_dir=str(tmp_path / "c"), config=config) as repo:
        seen = {e.path or "/": e for e in repo.walk("/")}
        expected = source_entries(src)
        assert sorted(seen) == sorted(p for p, _ in expected)
        for path, s in expected:
            e = seen[path]
            real = src + ("" if path == "/" else path)
            assert e.kind == kind_of(s.st_mode), path
            assert e.mode == s.st_mode, path
            assert e.mtime == int(s.st_mtime), path
            assert (e.mtime_ns or 0) == s.st_mtime_ns % 10**9, path
            assert e.linkcount == expected_nlink(path, s, src), path
            assert e.uid == s.st_uid and e.gid == s.st_gid, path
            st_ = repo.stat(path, follow=False)
            assert st_.st_mode == s.st_mode and st_.st_nlink == e.linkcount
            if e.is_symlink:
                assert e.symlink == os.readlink(real), path
                assert e.size == s.st_size, path
            elif e.is_regular:
                assert e.size == s.st_size, path
                assert sha256_file(repo.local_path(path)) == sha256_file(real), path
            elif e.is_dir:
                assert e.size == s.st_size, path
            names = os.listxattr(real, follow_symlinks=False)
            assert {k: v for k, v in repo.stored_xattrs(e).items()} == {
                n: os.getxattr(real, n, follow_symlinks=False) for n in names
            }, path
            if e.is_dir and path != "/":
                assert repo.listdir(path) == sorted(os.listdir(real)), path
        # identity: hardlink group members share an inode, other files do not
        ino = lambda p: repo.stat(p, follow=False).st_ino  # noqa: E731
        assert ino("/hardlinks/a") == ino("/hardlinks/b") != ino("/hardlinks/other/c")
        assert ino("/hardlinks/pair1") == ino("/hardlinks/pair2") != ino("/hardlinks/a")
        assert ino("/nested/cross-catalog-link") != ino("/hardlinks/pair1")
        assert (
            len({ino(p) for p in ("/README", "/empty-file", "/data/f000.bin", "/links/rel")}) == 4
        )
        big = repo.lookup("/large/big.bin")
        assert big.is_chunked and len(repo.chunks(big)) >= 2 and big.size == BIG_SIZE
        assert repo.lookup("/nested").is_nested_mountpoint
        assert repo.lookup("/nested/inner").is_nested_mountpoint
        assert repo.resolve("/nested/link-out").path == "/README"
        assert repo.resolve("/links/chain").path == "/links/target.txt"
        assert repo.resolve("/links/dirlink").is_dir
        with pytest.raises(OSError) as loop:
            repo.resolve("/links/loop-a")
        assert loop.value.errno == errno.ELOOP
        with pytest.raises(FileNotFoundError):
            repo.resolve("/links/dangling")
        assert repo.readlink("/links/variant") == "default/x"
        assert repo.tags()[0].name in ("first", "trunk")


@pytest.mark.slow
def test_cli_matches_source(published, served, tmp_path):
    cli = Cli(env_for(published, served))
    cache = ["--cache-dir", tmp_path / "c"]
    rows = {r["path"]: r for r in cli.find_json(published.name, "/", "--sha256", *cache)}
    src = published.src
    for path, s in source_entries(src):
        r = rows[path]
        real = src + ("" if path == "/" else path)
        assert r["type"] == kind_of(s.st_mode) and r["mode"] == s.st_mode, path
        assert r["mtime"] == int(s.st_mtime) and r["nlink"] == expected_nlink(path, s, src), path
        if r["type"] in ("file", "symlink", "dir"):
            assert r["size"] == s.st_size, path
        if r["type"] == "symlink":
            assert r["symlink"] == os.readlink(real)
        if r["type"] == "file":
            assert r["sha256"] == sha256_file(real), path
            assert r["hash"] is not None or r["chunks"] > 1
    assert rows["/large/big.bin"]["chunks"] >= 2
    for path in (
        "/README",
        "/odd/日本語のファイル",
        "/large/big.bin",
        "/empty-file",
        "/modes/private",
    ):
        out = cli("cat", published.name, path, *cache, check=True).stdout
        with open(src + path, "rb") as f:
            assert out == f.read(), path
    names = cli("ls", published.name, "/odd", *cache, check=True).stdout.decode().split("\n")[:-1]
    assert names == sorted(os.listdir(src + "/odd"))
    p = cli("cat", published.name, "/no/such/file", *cache)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode().strip() == "parrot_cvmfs: /no/such/file: No such file or directory"
    p = cli("cat", published.name, "/data", *cache)
    assert p.returncode == 1 and "Is a directory" in p.stderr.decode()


def test_republish_makes_new_revision_and_reuses_objects(published, tmp_path):
    """A second publication of a changed tree: revision 2, unchanged objects reused,
    old revision still readable by tag."""
    import subprocess

    src = str(tmp_path / "src")
    stratum = str(tmp_path / "stratum")
    subprocess.run(["cp", "-a", published.src, src], check=True)  # keeps fifos, links, times
    subprocess.run(["cp", "-a", published.stratum, stratum], check=True)
    with open(os.path.join(src, "README"), "wb") as f:
        f.write(b"changed in revision 2\n")
    os.unlink(os.path.join(src, "data", "f001.bin"))
    with open(os.path.join(src, "added.txt"), "wb") as f:
        f.write(b"new file\n")
    r2 = publish(
        PublishOptions(
            source=src, name=published.name, stratum=stratum, keys_dir=published.keys, tag="second"
        )
    )
    assert r2.revision == 2
    assert r2.objects_written <= 6  # 2 new files + catalogs + history, nothing else
    from parrot_cvmfs.server.serve import StratumServer

    srv = StratumServer(stratum)
    srv.start_background()
    try:
        config = Configuration(env=env_for(published, srv.url))
        with Repository.mount(published.name, cache_dir=str(tmp_path / "c"), config=config) as repo:
            assert repo.revision == 2
            assert repo.read("/README") == b"changed in revision 2\n"
            assert repo.read("/added.txt") == b"new file\n"
            assert "f001.bin" not in repo.listdir("/data")
            tags = {t.name: t for t in repo.tags()}
            assert {"first", "second", "trunk", "trunk-previous"} <= set(tags)
            assert tags["trunk-previous"].revision == 1
        with Repository.mount(
            published.name, cache_dir=str(tmp_path / "c"), config=config, tag="first"
        ) as old:
            assert old.revision == 1 and "f001.bin" in old.listdir("/data")
            assert old.read("/README") == b"parrot-cvmfs test tree\n"
        # the same tag twice is refused, before anything is written
        with pytest.raises(Exception, match="tag 'second' already exists"):
            publish(
                PublishOptions(
                    source=src,
                    name=published.name,
                    stratum=stratum,
                    keys_dir=published.keys,
                    tag="second",
                )
            )
    finally:
        srv.shutdown()


@pytest.mark.parametrize("algorithm", ["shake128", "rmd160"])
def test_other_hash_algorithms_and_uncompressed(tmp_path, algorithm):
    from parrot_cvmfs.format.hashes import ALGORITHM_BY_NAME
    from parrot_cvmfs.server.serve import StratumServer

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 5000)
    (src / "g").write_bytes(os.urandom(5 * 1024 * 1024))
    (src / "d" / ".cvmfscatalog").write_bytes(b"")
    r = publish(
        PublishOptions(
            source=str(src),
            name="algo.test.org",
            stratum=str(tmp_path / "s"),
            keys_dir=str(tmp_path / "k"),
            hash_algorithm=ALGORITHM_BY_NAME[algorithm],
            compress=False,
        )
    )
    suffix = "-" + algorithm
    assert r.root_hash.hex.endswith(suffix)
    srv = StratumServer(str(tmp_path / "s"))
    srv.start_background()
    try:
        env = base_env(
            PARROT_CVMFS_REPO=repo_spec(
                "algo.test.org",
                f"{srv.url}/algo.test.org",
                str(tmp_path / "k" / "algo.test.org.pub"),
            )
        )
        with Repository.mount(
            "algo.test.org", cache_dir=str(tmp_path / "c"), config=Configuration(env=env)
        ) as repo:
            assert repo.read("/d/f") == b"x" * 5000
            assert repo.read("/g") == (src / "g").read_bytes()
            e = repo.lookup("/d/f")
            assert e.hash.hex.endswith(suffix) and not e.is_compressed
            assert repo.getxattr(e, "user.compression") == b"none"
            assert repo.whitelist.fingerprints[0].hex.endswith(suffix)
    finally:
        srv.shutdown()
