"""Repositories written by the real cvmfs server tools, read completely and compared
entry by entry with what the real FUSE client showed (tree-v*.jsonl)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository

from .conftest import REAL_REPOS, Cli

pytestmark = pytest.mark.usefixtures("shared_data")


def load_tree(name: str, version: str) -> dict[str, dict]:
    with open(os.path.join(REAL_REPOS, name, f"tree-{version}.jsonl")) as f:
        return {r["path"]: r for r in map(json.loads, f)}


def our_tree(repo: Repository) -> dict[str, dict]:
    out = {}
    for e in repo.walk("/"):
        rec = {
            "path": e.path or "/",
            "type": e.kind,
            "mode": e.mode,
            "size": len(e.symlink.encode()) if e.is_symlink else e.size,
            "mtime": e.mtime,
            "nlink": e.linkcount,
            "xattrs": {k: v.hex() for k, v in repo.stored_xattrs(e).items()},
        }
        if e.is_special:
            rec["size"] = 0
        if e.is_symlink:
            rec["symlink"] = e.symlink
        if e.is_regular:
            with repo.open(e.path) as f:
                rec["sha256"] = hashlib.sha256(f.read()).hexdigest()
        out[rec["path"]] = rec
    return out


def compare(ours: dict, expected: dict, ignore: dict[str, set[str]] | None = None) -> None:
    ignore = ignore or {}
    assert sorted(ours) == sorted(expected)
    for path, exp in expected.items():
        got = ours[path]
        for key, value in exp.items():
            if key in ignore.get(path, set()):
                continue
            assert got.get(key) == value, f"{path}: {key} is {got.get(key)!r}, expected {value!r}"


@pytest.fixture
def mount(real_env, tmp_path):
    config = Configuration(env=real_env)
    opened = []

    def _mount(name, **kw):
        r = Repository.mount(name, cache_dir=str(tmp_path / "cache"), config=config, **kw)
        opened.append(r)
        return r

    yield _mount
    for r in opened:
        r.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ref_repository_matches_real_client(mount, version):
    repo = mount("ref.test.org", tag=version)
    assert repo.tag.name == version
    compare(our_tree(repo), load_tree("ref.test.org", version))


def test_ref_latest_is_v2_and_pins_by_date_and_hash(mount):
    latest = mount("ref.test.org")
    assert latest.revision == 2 and latest.manifest.revision == 2
    tags = {t.name: t for t in latest.tags()}
    assert set(tags) >= {"v1", "v2", "trunk", "trunk-previous"}
    v1 = tags["v1"]
    by_date = mount("ref.test.org", date=_iso(v1.timestamp))
    assert by_date.root_hash == v1.root_hash
    by_hash = mount("ref.test.org", root_hash=v1.root_hash.hex)
    assert by_hash.revision == 1
    assert by_hash.listdir("/") == by_date.listdir("/")
    assert "added-in-v2 ✓.txt" in latest.listdir("/v2")
    assert "delete-me.txt" in by_hash.listdir("/v2") and "delete-me.txt" not in latest.listdir(
        "/v2"
    )


def _iso(ts: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_ref_shake_repository(mount):
    """SHAKE-128 hashes throughout; same content as ref.test.org except the README,
    the target of links/abs-inside and the root's mtime."""
    v2 = mount("ref-shake.test.org", tag="v2")
    assert v2.manifest.root_hash.hex.endswith("-shake128")
    compare(our_tree(v2), load_tree("ref-shake.test.org", "v2"))
    v1 = mount("ref-shake.test.org", tag="v1")
    differ = {
        "/README": {"sha256", "size"},
        "/links/abs-inside": {"symlink", "size"},
        "/": {"mtime"},
    }
    compare(our_tree(v1), load_tree("ref.test.org", "v1"), differ)
    assert v1.read("/README").startswith(b"Reference tree")


def test_ref_details(mount, monkeypatch):
    repo = mount("ref.test.org")
    big = repo.lookup("/large/random-40MiB.bin")
    assert [s for _, s, _ in repo.chunks(big)] == [4246839, 7890675, 12798711, 16777216, 229599]
    assert big.hash is None  # no bulk hash in modern repositories
    assert not repo.lookup("/large/random-5MiB.bin").is_chunked
    # nested catalogs: one inside another
    assert repo.lookup("/nested1/sub/inner").is_nested_mountpoint
    assert repo.resolve("/nested1/link-out-of-nested").path == "/README"
    # the variant symlink, with and without the variable
    assert repo.readlink("/links/variant", raw=True) == "$(CVMFS_ARCH:-x86_64)/lib"
    assert repo.readlink("/links/variant") == "x86_64/lib"
    assert repo.stat("/links/variant", follow=False).st_size == len("x86_64/lib")
    repo.variant_env["CVMFS_ARCH"] = "aarch64"
    assert repo.readlink("/links/variant") == "aarch64/lib"
    # fifo, magic xattrs, catalog xattrs
    assert repo.lookup("/special/fifo").is_special
    root = repo.lookup("/")
    assert repo.getxattr(root, "user.fqrn") == b"ref.test.org"
    assert repo.getxattr(root, "user.revision") == b"2"
    assert "user.fqrn" in repo.listxattr(root)
    one = repo.lookup("/xattr/one.txt")
    assert repo.getxattr(one, "user.foo") == b"bar"
    assert "user.fqrn" not in repo.listxattr(one)  # magic names listed on the root only
    assert repo.getxattr(one, "user.hash") == one.hash.hex.encode()
    assert repo.getxattr(big, "user.chunks") == b"5"
    with pytest.raises(OSError):
        repo.getxattr(one, "user.nonexistent")
    # absolute symlink into the same repository resolves inside it
    assert repo.resolve("/links/abs-inside").path == "/README"
    with pytest.raises(OSError):
        repo.resolve("/links/abs-outside")


def test_2015_stratum_read_completely(mount):
    """The June 2015 stratum (schema 2.5 rev 1, bulk hashes, dirtab catalogs); its whitelist
    expired in July 2015, so verification is pinned to a date inside its lifetime."""
    import calendar

    when = calendar.timegm((2015, 6, 20, 0, 0, 0))
    repo = mount("test.cern.ch", verify_at=when)
    entries = list(repo.walk("/"))
    paths = {e.path for e in entries}
    assert {"/bar/1", "/bar/4", "/foo", "/bar/big", "/.cvmfsdirtab"} <= paths
    big = repo.lookup("/bar/big")
    assert big.is_chunked and big.hash is not None and big.size == 20 * 1024 * 1024
    assert [s for _, s, _ in repo.chunks(big)] == [16 * 1024 * 1024, 4 * 1024 * 1024]
    data = repo.read("/bar/big")
    assert len(data) == big.size
    # the chunks were verified one by one; the bulk object gives the same bytes
    import zlib

    bulk = os.path.join(REAL_REPOS, "test.cern.ch", "stratum", big.hash.object_path().lstrip("/"))
    with open(bulk, "rb") as f:
        assert hashlib.sha256(zlib.decompress(f.read())).digest() == hashlib.sha256(data).digest()
    for e in entries:
        if e.is_regular:
            assert len(repo.read(e.path)) == e.size
    assert repo.ns.root.schema_revision == 1
    assert len(repo.ns.mounted) == 6  # root + /foo + /bar/1..4


def test_2015_whitelist_expired_without_verify_at(real_env, tmp_path):
    p = Cli(real_env)("info", "test.cern.ch", "--cache-dir", tmp_path)
    assert p.returncode == 1
    assert p.stderr.decode().strip() == (
        "parrot_cvmfs: whitelist of test.cern.ch from "
        f"{_url(real_env, 'test.cern.ch')} expired on 2015-07-11 13:00 UTC"
        " (use --verify-at for archived repositories)"
    )


def _url(env, name):
    for entry in env["PARROT_CVMFS_REPO"].split():
        if entry.startswith(name + ":"):
            return entry.split("url=")[1].split(",")[0]
    raise KeyError(name)


def test_cli_on_real_repository(real_env, tmp_path):
    cli = Cli(real_env)
    cache = ["--cache-dir", tmp_path]
    info = dict(
        line.split(": ", 1)
        for line in cli("info", "ref.test.org", *cache, check=True).stdout.decode().splitlines()
    )
    assert info["revision"] == "2"
    assert info["root_hash"] == "2d6e946024a8b7eae180141711b7940bac2b415a"
    assert info["ttl"] == "240"
    assert info["timestamp"] == "1795304361"
    assert (
        info["certificate_fingerprint"]
        == "6B:AE:73:B4:E2:7B:4D:BA:83:B9:01:2E:C6:D2:52:8B:DC:76:52:F1"
    )
    expected = load_tree("ref.test.org", "v1")
    rows = cli.find_json("ref.test.org", "/", "--sha256", "--tag", "v1", *cache)
    got = {r["path"]: r for r in rows}
    assert sorted(got) == sorted(expected)
    for path, exp in expected.items():
        for key in ("type", "mode", "size", "mtime", "nlink", "symlink", "sha256", "xattrs"):
            if key in exp:
                assert got[path][key] == exp[key], (path, key)
    assert got["/large/random-40MiB.bin"]["chunks"] == 5
    out = cli("cat", "ref.test.org", "/large/random-40MiB.bin", *cache, check=True).stdout
    assert hashlib.sha256(out).hexdigest() == expected["/large/random-40MiB.bin"]["sha256"]
    ls = cli("ls", "ref.test.org", "/links", *cache, check=True).stdout.decode().split("\n")
    assert "variant" in ls and "abs-inside" in ls
    tags = cli("tags", "ref.test.org", *cache, check=True).stdout.decode()
    assert tags.splitlines()[0].startswith("trunk\t2\t")
    st = cli("stat", "ref.test.org", "/links/variant", "--json", *cache, check=True).stdout
    rec = json.loads(st)
    assert rec["symlink"] == "$(CVMFS_ARCH:-x86_64)/lib" and rec["target"] == "x86_64/lib"
