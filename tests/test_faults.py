"""Bad input and broken networks: every failure is one clear line, a non-zero exit,
and nothing unverified lands in the cache or on stdout."""

from __future__ import annotations

import glob
import os
import subprocess
import time
import zlib

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.errors import CvmfsError
from parrot_cvmfs.format.hashes import hash_bytes
from parrot_cvmfs.format.manifest import Manifest, export_manifest_body, parse_fields
from parrot_cvmfs.format.signature import sign_raw_pkcs1
from parrot_cvmfs.server.keys import ensure_keys
from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.stratum import StratumStore

from .conftest import Cli, base_env, repo_spec
from .conftest import failed_with_one_line as err
from .servers import FaultyServer, ForwardProxy, dead_url, serving

FAST = {"CVMFS_BACKOFF_INIT": "0.01", "CVMFS_BACKOFF_MAX": "0.02"}


class Setup:
    """A private copy of the published repository behind its own fault-injecting server."""

    def __init__(self, published, tmp_path):
        self.name = published.name
        self.keys_dir = published.keys
        self.root = str(tmp_path / "stratum")
        subprocess.run(["cp", "-a", published.stratum, self.root], check=True)
        self.repo_dir = os.path.join(self.root, self.name)
        self.server = FaultyServer(self.root)  # started by the fixture
        self.url = f"{self.server.url}/{self.name}"
        self.cache = str(tmp_path / "cache")
        self.pubkey = published.pubkey

    def env(self, url=None, pubkey=None, **opts) -> dict[str, str]:
        spec = repo_spec(self.name, url or self.url, pubkey or self.pubkey, **{**FAST, **opts})
        return base_env(PARROT_CVMFS_REPO=spec)

    def cli(self, *args, **env_kw):
        return Cli(self.env(**env_kw))(*args, "--cache-dir", self.cache)

    def mount(self, **env_kw) -> Repository:
        return Repository.mount(
            self.name, cache_dir=self.cache, config=Configuration(env=self.env(**env_kw))
        )

    def manifest(self) -> Manifest:
        with open(os.path.join(self.repo_dir, ".cvmfspublished"), "rb") as f:
            return Manifest.parse(f.read())

    def object_file(self, h, suffix="") -> str:
        return os.path.join(self.repo_dir, h.object_path(suffix).lstrip("/"))

    def write_manifest(self, fields: dict, sign_with=None) -> None:
        keys = ensure_keys(self.keys_dir, self.name)
        body = export_manifest_body(fields)
        digest = hash_bytes(self.manifest().root_hash.algorithm, body).hex.encode()
        from parrot_cvmfs.format.signature import sign_manifest

        sig = sign_manifest(sign_with or keys.key, digest)
        with open(os.path.join(self.repo_dir, ".cvmfspublished"), "wb") as f:
            f.write(body + b"--\n" + digest + b"\n" + sig)

    def write_whitelist(self, expires: str) -> None:
        keys = ensure_keys(self.keys_dir, self.name)
        path = os.path.join(self.repo_dir, ".cvmfswhitelist")
        with open(path, "rb") as f:
            lines = f.read().split(b"\n--\n")[0].decode().split("\n")
        lines[1] = "E" + expires
        body = ("\n".join(lines) + "\n").encode()
        digest = hash_bytes(self.manifest().root_hash.algorithm, body).hex.encode()
        with open(path, "wb") as f:
            f.write(body + b"--\n" + digest + b"\n" + sign_raw_pkcs1(keys.master_key, digest))

    def hits(self, server, h, suffix="") -> int:
        return server.requests[f"/cvmfs/{self.name}{h.object_path(suffix)}"]


@pytest.fixture
def setup(published, tmp_path):
    s = Setup(published, tmp_path)
    with serving(s.server):
        yield s


def cache_objects(cache: str) -> list[str]:
    return [p for p in glob.glob(os.path.join(cache, "[0-9a-f][0-9a-f]", "*"))]


def entry_hash(setup, path):
    with setup.mount() as repo:
        return repo.lookup(path).hash


def flip(path: str, offset: int = 20) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_tampered_object(setup):
    h = entry_hash(setup, "/data/compressible.txt")
    import shutil

    shutil.rmtree(setup.cache)
    flip(setup.object_file(h))
    p = setup.cli("cat", setup.name, "/data/compressible.txt")
    assert p.stdout == b""
    obj = f"{setup.url}{h.object_path()}"
    assert err(p) == (
        f"parrot_cvmfs: cannot download {setup.name}:/data/compressible.txt: {obj}: "
        f"hash mismatch (expected {h.hex}) (2 attempts)"
    )
    assert not os.path.exists(os.path.join(setup.cache, h.cache_name()))
    assert os.listdir(os.path.join(setup.cache, "txn")) == []
    assert setup.hits(setup.server, h) == 2  # retried once with no-cache


def test_tampered_catalog(setup):
    with setup.mount() as repo:
        h = repo.lookup("/").catalog.nested_catalogs()["/nested"][0]
    import shutil

    shutil.rmtree(setup.cache)
    flip(setup.object_file(h, "C"), 40)
    p = setup.cli("ls", setup.name, "/nested")
    assert err(p) == (
        f"parrot_cvmfs: cannot download catalog {h.hex} of {setup.name}:/nested: "
        f"{setup.url}{h.object_path('C')}: hash mismatch (expected {h.hex}) (2 attempts)"
    )
    assert not os.path.exists(os.path.join(setup.cache, h.cache_name()))


@pytest.mark.slow
def test_forged_manifest(setup):
    path = os.path.join(setup.repo_dir, ".cvmfspublished")
    with open(path, "rb") as f:
        data = f.read()
    rev = setup.manifest().revision
    with open(path, "wb") as f:
        f.write(data.replace(f"\nS{rev}\n".encode(), b"\nS999\n"))
    p = setup.cli("info", setup.name)
    assert err(p) == (
        f"parrot_cvmfs: manifest of {setup.name} from {setup.url}: body does not match its signed hash (tampered)"
    )
    # correctly hashed, but signed by a key that is not the certificate's
    from cryptography.hazmat.primitives.asymmetric import rsa

    fields = parse_fields(setup.manifest().body)
    fields["S"] = "999"
    setup.write_manifest(
        fields, sign_with=rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    p = setup.cli("info", setup.name)
    assert err(p) == (
        f"parrot_cvmfs: manifest of {setup.name} from {setup.url}: bad signature "
        f"(not signed by certificate {setup.manifest().certificate.hex})"
    )


def test_wrong_key_missing_key_bad_key(setup, tmp_path):
    other = ensure_keys(str(tmp_path / "other"), setup.name)
    p = setup.cli("info", setup.name, pubkey=other.master_pub_path)
    assert err(p) == (
        f"parrot_cvmfs: whitelist of {setup.name} from {setup.url}: bad signature "
        "(not signed by any configured master key)"
    )
    p = setup.cli("info", setup.name, pubkey="/nonexistent/key.pub")
    assert (
        err(p)
        == "parrot_cvmfs: cannot read public key /nonexistent/key.pub: No such file or directory"
    )
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    p = setup.cli("info", setup.name, pubkey=str(bad))
    assert err(p) == f"parrot_cvmfs: public key {bad} is not a PEM public key"


def test_expired_whitelist(setup):
    setup.write_whitelist("20200101120000")
    p = setup.cli("info", setup.name)
    assert err(p) == (
        f"parrot_cvmfs: whitelist of {setup.name} from {setup.url} expired on 2020-01-01 12:00 UTC"
        " (use --verify-at for archived repositories)"
    )
    ok = setup.cli("info", setup.name, "--verify-at", "2019-12-31")
    assert ok.returncode == 0 and b"revision: " in ok.stdout
    # expiry is exact to the hour: the hour of expiry itself is too late
    assert setup.cli("info", setup.name, "--verify-at", "2020-01-01T11:59:59Z").returncode == 0
    assert setup.cli("info", setup.name, "--verify-at", "2020-01-01T12:00:00Z").returncode == 1


@pytest.mark.slow
def test_rollback(setup, tmp_path):
    old = str(tmp_path / "old-rev")
    subprocess.run(["cp", "-a", setup.repo_dir, old], check=True)
    src = str(tmp_path / "src")
    os.makedirs(src)
    with open(os.path.join(src, "new"), "w") as f:
        f.write("revision 2\n")
    publish(
        PublishOptions(
            source=src, name=setup.name, stratum=setup.root, keys_dir=setup.keys_dir, tag="newer"
        )
    )
    assert setup.cli("info", setup.name).returncode == 0  # the cache accepts revision 2
    for name in (".cvmfspublished", ".cvmfswhitelist"):
        os.replace(os.path.join(old, name), os.path.join(setup.repo_dir, name))
    p = setup.cli("info", setup.name)
    assert err(p) == (
        f"parrot_cvmfs: manifest of {setup.name} from {setup.url} offers revision 1, older than"
        " revision 2 already accepted by this cache (rollback refused; pin a revision to read an older one)"
    )
    pinned = setup.cli("ls", setup.name, "/", "--tag", "first")
    assert pinned.returncode == 0 and b"README" in pinned.stdout


def test_expired_manifest_is_revalidated_or_verified_again(setup, tmp_path):
    """parrot_run's mounts (reuse_fresh) keep a manifest that is younger than its TTL;
    an older one is fetched again and, when the server still publishes exactly those
    bytes and the keys are the same, kept without the signature work; anything else
    goes through the whole verification."""
    manifest_file = os.path.join(setup.cache, f"manifest.{setup.name}")
    published = f"/cvmfs/{setup.name}/.cvmfspublished"
    whitelist = f"/cvmfs/{setup.name}/.cvmfswhitelist"

    def mount(**env_kw):
        config = Configuration(env=setup.env(**env_kw))
        return Repository.mount(setup.name, cache_dir=setup.cache, config=config, reuse_fresh=True)

    def expire():
        old = time.time() - 3600
        os.utime(manifest_file, (old, old))

    mount().close()  # verified, and kept with a stamp of the keys it was verified with
    first = setup.manifest().root_hash
    # younger than its TTL: nothing fetched at all
    setup.server.requests.clear()
    mount().close()
    assert setup.server.requests[published] == 0
    # expired, same bytes published: one fetch of the manifest, no whitelist, TTL restarted
    expire()
    setup.server.requests.clear()
    setup.server.statuses[".cvmfswhitelist"] = 404  # would fail a verification
    with mount() as repo:
        assert repo.root_hash == first
    assert (setup.server.requests[published], setup.server.requests[whitelist]) == (1, 0)
    assert time.time() - os.stat(manifest_file).st_mtime < 60
    # expired with another master key configured: verified again (and refused)
    other = ensure_keys(str(tmp_path / "other"), setup.name)
    expire()
    del setup.server.statuses[".cvmfswhitelist"]
    with pytest.raises(CvmfsError, match="not signed by any configured master key"):
        mount(pubkey=other.master_pub_path)
    # expired, a new revision published: verified and mounted
    src = tmp_path / "src"
    src.mkdir()
    (src / "new").write_text("revision 2\n")
    publish(
        PublishOptions(
            source=str(src), name=setup.name, stratum=setup.root, keys_dir=setup.keys_dir
        )
    )
    expire()
    setup.server.requests.clear()
    with mount() as repo:
        assert repo.root_hash == setup.manifest().root_hash != first
        assert repo.listdir("/") == ["new"]
    assert setup.server.requests[whitelist] == 1


def test_one_of_two_servers_dead(setup):
    urls = f"{dead_url(setup.name)};{setup.url}"
    with setup.mount(url=urls) as repo:
        assert repo.read("/README") == b"parrot-cvmfs test tree\n"
        assert repo.downloader.path.current()[1] == setup.url
    p = setup.cli("cat", setup.name, "/README", url=urls)
    assert p.returncode == 0 and p.stderr == b""


def test_dead_proxy_fails_over_to_next(setup):
    proxy = ForwardProxy()
    try:
        chain = f"{dead_url()};{proxy.url}"
        p = setup.cli("cat", setup.name, "/README", proxies=chain)
        assert p.returncode == 0 and p.stdout == b"parrot-cvmfs test tree\n"
        assert any(u.endswith("/.cvmfspublished") for u in proxy.log)
        assert any("/data/" in u for u in proxy.log)
    finally:
        proxy.shutdown()
    p = setup.cli("info", setup.name, proxies=dead_url().rstrip("/cvmfs"))
    assert "cannot connect" in err(p)


@pytest.mark.slow
def test_slow_server_times_out_and_fails_over(setup, tmp_path):
    setup.server.delays[".cvmfspublished"] = 3.0
    t = time.monotonic()
    p = setup.cli("info", setup.name, CVMFS_TIMEOUT_DIRECT="1", CVMFS_MAX_RETRIES="0")
    assert err(p) == (
        f"parrot_cvmfs: cannot download manifest of {setup.name}: {setup.url}/.cvmfspublished: timed out after 1 s"
    )
    assert time.monotonic() - t < 10
    fast = FaultyServer(setup.root)
    fast.start_background()
    try:
        urls = f"{setup.url};{fast.url}/{setup.name}"
        p = setup.cli("info", setup.name, url=urls, CVMFS_TIMEOUT_DIRECT="1", CVMFS_MAX_RETRIES="0")
        assert p.returncode == 0, p.stderr
        assert f"server: {fast.url}/{setup.name}" in p.stdout.decode()
    finally:
        fast.shutdown()


def test_all_servers_down_and_unknown_repository(setup):
    dead = dead_url(setup.name)
    p = setup.cli("info", setup.name, url=dead, CVMFS_MAX_RETRIES="1")
    assert err(p) == (
        f"parrot_cvmfs: cannot download manifest of {setup.name}: {dead}/.cvmfspublished:"
        " cannot connect (connection refused) (2 attempts)"
    )
    p = Cli(base_env())("info", "nosuch.example.org", "--cache-dir", setup.cache)
    assert (
        err(p)
        == "parrot_cvmfs: unknown repository nosuch.example.org: no CVMFS_SERVER_URL configured"
    )
    p = Cli(base_env())("info", "bad/name", "--cache-dir", setup.cache)
    assert err(p) == "parrot_cvmfs: invalid repository name 'bad/name'"


def test_malformed_catalog(setup):
    store = StratumStore(setup.repo_dir)
    garbage = store.put(b"this is not an sqlite database" * 100, "C")
    fields = parse_fields(setup.manifest().body)
    fields["C"] = garbage.hex
    setup.write_manifest(fields)
    p = setup.cli("ls", setup.name, "/")
    assert err(p) == f"parrot_cvmfs: malformed catalog {garbage.hex} at /: file is not a database"


def test_corruption_on_one_server_is_fetched_from_another(setup):
    h = entry_hash(setup, "/data/compressible.txt")
    import shutil

    shutil.rmtree(setup.cache)
    bad = FaultyServer(setup.root)
    bad.rewrites[f"/cvmfs/{setup.name}{h.object_path()}"] = lambda data: (
        data[:-1] + bytes([data[-1] ^ 1])
    )
    bad.start_background()
    try:
        urls = f"{bad.url}/{setup.name};{setup.url}"
        p = setup.cli("cat", setup.name, "/data/compressible.txt", url=urls)
        assert p.returncode == 0 and p.stdout == b"abc" * 200_000
        assert setup.hits(bad, h) == 2  # first try, then once more with no-cache
        assert setup.hits(setup.server, h) == 1
    finally:
        bad.shutdown()
    with open(os.path.join(setup.cache, h.cache_name()), "rb") as f:
        assert f.read() == b"abc" * 200_000


def test_zlib_garbage_with_right_hash_is_refused(setup):
    """An object whose hash matches but which does not inflate to the catalog size."""
    h = entry_hash(setup, "/README")
    path = setup.object_file(h)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(zlib.compress(b"something else entirely"))
    import shutil

    shutil.rmtree(setup.cache)
    p = setup.cli("cat", setup.name, "/README")
    assert p.stdout == b"" and "hash mismatch" in err(p)
