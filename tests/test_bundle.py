"""Preload bundles: `preload --bundle` writes one verifiable revision, `unbundle` checks
the signed chain, every object against its name and every size against its catalog,
and refuses anything else with one line naming the first bad member, leaving the
directory exactly as it was. Hostile bundles are made by hand from a real one."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zlib

import pytest
import zstandard

from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import REAL_REPOS, Cli, base_env, parse_sha256sum, repo_spec, sha256_tree
from .forge import Forger
from .servers import FaultyServer, dead_url
from .test_preload import offline_sha256, run_preload, stored_objects_match

CLI = [sys.executable, "-m", "parrot_cvmfs"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


class Bundled:
    def __init__(self, published, directory, bundle, site):
        self.published, self.dir, self.bundle, self.site = published, directory, bundle, site
        self.name, self.pubkey = published.name, published.pubkey


@pytest.fixture(scope="module")
def bundled(published, tmp_path_factory):
    """The published repository preloaded with --bundle, and a site directory that a
    good unbundle filled (copied by the tests that need a populated directory)."""
    base = tmp_path_factory.mktemp("bundled")
    srv = FaultyServer(published.stratum)
    srv.start_background()
    try:
        d, bundle = base / "preload", base / "repo.tar.zst"
        url = f"{srv.url}/{published.name}"
        p = run_preload(url, d, "-k", published.pubkey, "--bundle", bundle)
        assert p.returncode == 0, p.stderr
    finally:
        srv.shutdown()
    assert f"bundled revision 1 of {published.name} into {bundle}".encode() in p.stdout
    site = base / "site"
    p = unbundle(bundle, site, "-k", published.pubkey)
    assert p.returncode == 0, p.stderr
    return Bundled(published, d, bundle, site)


def unbundle(bundle, directory, *args, env=None, prefix=()):
    return subprocess.run(
        [*prefix, *CLI, "unbundle", str(bundle), "-r", str(directory), *map(str, args)],
        env=env or base_env(),
        capture_output=True,
        timeout=300,
    )


def snapshot(directory) -> dict:
    """Every entry below `directory`: type, mode, owner and contents or link target."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for n in dirs + files:
            p = os.path.join(root, n)
            s = os.lstat(p)
            if stat.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    what = f.read()
            else:
                what = os.readlink(p) if stat.S_ISLNK(s.st_mode) else None
            out[os.path.relpath(p, directory)] = (s.st_mode, s.st_uid, what)
    return out


def members(bundle) -> list[tuple[tarfile.TarInfo, bytes]]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(bundle.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]


def write_members(path, items) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in items:
            info = tarfile.TarInfo(info.name) if isinstance(info, str) else info
            info.size = len(data) if info.isreg() else 0
            info.mtime = int(info.mtime)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))


def inflated(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def member_of(items, content: bytes) -> int:
    """The index of the member holding `content` (compressed or not)."""
    return next(i for i, (m, d) in enumerate(items) if m.isreg() and inflated(d) == content)


def assert_refused(p, *words) -> str:
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("parrot_cvmfs: ") and all(w in err for w in words), err
    return err


def assert_refused_everywhere(bundled, bundle, tmp_path, *words) -> str:
    """Refused into a fresh directory (not even made) and into a populated one (left
    exactly as it was), with the same line."""
    fresh = tmp_path / "fresh" / "dir"
    err = assert_refused(unbundle(bundle, fresh, "-k", bundled.pubkey), *words)
    assert not (tmp_path / "fresh").exists()
    site = tmp_path / "site"
    shutil.copytree(bundled.site, site, symlinks=True)
    before = snapshot(site)
    assert_refused(unbundle(bundle, site, "-k", bundled.pubkey), *words)
    assert snapshot(site) == before
    return err


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.tracer
def test_bundle_round_trip_then_offline(bundled, tmp_path):
    published = bundled.published
    stratum = os.path.join(published.stratum, published.name)
    n = stored_objects_match(str(bundled.site), stratum)
    assert n == stored_objects_match(str(bundled.dir), stratum) and n > 40
    # the same files as the preload wrote (its lock and trust stamp aside), the same modes
    ours = snapshot(bundled.site)
    theirs = {
        k: v
        for k, v in snapshot(bundled.dir).items()
        if k not in ("lock_objects", "uuid") and not k.startswith("trust.")
    }
    assert {k: v for k, v in ours.items() if k != "uuid"} == theirs
    # again, over what a killed unbundle left (its pid gone): that is removed
    dead = _dead_pid()
    (bundled.site / "txn" / f"unbundle.{dead}.0badc0de" / "ff").mkdir(parents=True)
    again = unbundle(bundled.bundle, bundled.site, "-k", bundled.pubkey)
    assert again.returncode == 0 and b" 0 objects written, " in again.stdout, again.stdout
    assert snapshot(bundled.site) == ours
    r = offline_sha256(published, bundled.site, tmp_path / "cache")
    assert r.returncode == 0 and parse_sha256sum(r.stdout) == sha256_tree(published.src), r.stderr
    mnt = f"/cvmfs/{published.name}"
    r = offline_sha256(published, bundled.site, tmp_path / "cache", script=f"cat {mnt}/README")
    assert r.stdout == b"parrot-cvmfs test tree\n", r.stderr


def test_keys_come_from_the_configuration_without_k(bundled, tmp_path):
    """Without -k the keys configured for the repository verify the chain; with none
    configured the bundle is refused, never taken unverified."""
    assert_refused(unbundle(bundled.bundle, tmp_path / "a"), "no public master key")
    assert not (tmp_path / "a").exists()
    spec = repo_spec(bundled.name, dead_url(bundled.name), bundled.pubkey)
    p = unbundle(bundled.bundle, tmp_path / "b", env=base_env(PARROT_CVMFS_REPO=spec))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b" / f"manifest.{bundled.name}").exists()


def test_evil_object_is_refused(bundled, tmp_path):
    """README's object holding EVIL!, as it is and as a zlib stream of README's size
    (which only the object's name can tell from the real one)."""
    items = members(bundled.bundle)
    readme = b"parrot-cvmfs test tree\n"
    i = member_of(items, readme)
    for k, evil_bytes in enumerate((b"EVIL!", zlib.compress(b"EVIL!".ljust(len(readme))))):
        evil = tmp_path / f"evil{k}.tar.zst"
        write_members(evil, items[:i] + [(items[i][0], evil_bytes)] + items[i + 1 :])
        case = tmp_path / f"case{k}"
        case.mkdir()
        err = assert_refused_everywhere(bundled, evil, case, items[i][0].name, "does not match")
        assert "EVIL" not in err
    for d, _, fs in os.walk(tmp_path):
        for f in fs:
            if not f.startswith("evil"):
                with open(os.path.join(d, f), "rb") as fh:
                    assert b"EVIL!" not in fh.read(), os.path.join(d, f)


def test_forged_manifest_wrong_key_and_expiry_are_refused(bundled, tmp_path):
    mine = bundled.published.copy(str(tmp_path / "stratum"))
    forger = Forger(mine.stratum, str(tmp_path / "other-keys"), mine.name)
    m = forger.manifest()
    forged = forger.sign(m.root_hash, m.root_size)  # by a certificate the whitelist lacks
    items = members(bundled.bundle)
    i = next(k for k, (info, _) in enumerate(items) if info.name.startswith("manifest."))
    items[i] = (items[i][0], forged.raw)
    bad = tmp_path / "forged.tar.zst"
    write_members(bad, items)
    assert_refused_everywhere(bundled, bad, tmp_path, "refused", "bad signature")
    other = tmp_path / "other-keys" / f"{mine.name}.pub"
    p = unbundle(bundled.bundle, tmp_path / "k", "-k", other)
    assert_refused(p, "whitelist", "signature")
    p = unbundle(bundled.bundle, tmp_path / "e", "-k", bundled.pubkey, "--verify-at", "2100-01-01")
    assert_refused(p, "expired")
    assert not (tmp_path / "k").exists() and not (tmp_path / "e").exists()


def _link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


def first_object(items) -> int:
    """The index of the first file object (the catalogs before it)."""
    return next(
        k
        for k, (m, _) in enumerate(items)
        if m.name.startswith("data/") and m.name[-1] not in "CXM"
    )


@pytest.mark.slow
def test_hostile_member_names_and_types(bundled, tmp_path):
    items = members(bundled.bundle)
    first = first_object(items)
    last_obj, data = items[first]  # an object: its name is one a catalog expects
    cases = [
        (tarfile.TarInfo(last_obj.name + "\n"), data, repr(last_obj.name + "\n")),
        (tarfile.TarInfo("../escaped"), b"bad", "'../escaped'"),
        (tarfile.TarInfo("data/../../escaped"), b"bad", "'data/../../escaped'"),
        (tarfile.TarInfo("/tmp/escaped-abs"), b"bad", "'/tmp/escaped-abs'"),
        (_link(last_obj.name, tarfile.SYMTYPE), b"", "symbolic link"),
        (_link(last_obj.name, tarfile.LNKTYPE), b"", "hard link"),
        (_link(last_obj.name, tarfile.CHRTYPE), b"", "character device"),
        (_link("data", tarfile.DIRTYPE), b"", "directory"),
    ]
    for k, (info, payload, words) in enumerate(cases):
        # in place of the first object: the chain and the catalogs verified and staged
        hostile = tmp_path / f"hostile{k}.tar.zst"
        write_members(hostile, items[:first] + [(info, payload)] + items[first + 1 :])
        case = tmp_path / f"case{k}"
        case.mkdir()
        assert_refused_everywhere(bundled, hostile, case, words)
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/escaped-abs")


@pytest.mark.slow
def test_missing_extra_and_repeated_members_are_refused(bundled, tmp_path):
    items = members(bundled.bundle)
    junk = zlib.compress(b"nobody's object\n")
    from parrot_cvmfs.format.hashes import Algorithm, hash_bytes

    h = hash_bytes(Algorithm.SHA1, junk).hex
    first = first_object(items)
    cases = [
        (items[:-1], ["incomplete", items[-1][0].name]),
        (
            items[:first] + [(tarfile.TarInfo(f"data/{h[:2]}/{h[2:]}"), junk)] + items[first:],
            ["not an object"],
        ),
        (items[: first + 1] + items[first:], [items[first][0].name, "appears twice"]),
        (items[:1] + items[2:], ["comes where the whitelist should"]),
    ]
    for k, (variant, words) in enumerate(cases):
        path = tmp_path / f"v{k}.tar.zst"
        write_members(path, variant)
        case = tmp_path / f"case{k}"
        case.mkdir()
        assert_refused_everywhere(bundled, path, case, *words)


def test_oversized_manifest_member_is_refused_not_cut(bundled, tmp_path):
    items = members(bundled.bundle)
    for kind in ("manifest", "whitelist"):
        i = next(k for k, (info, _) in enumerate(items) if info.name.startswith(kind + "."))
        big = list(items)
        big[i] = (items[i][0], items[i][1] + b"\0" * (2 << 20))
        path = tmp_path / f"{kind}.tar.zst"
        write_members(path, big)
        case = tmp_path / kind
        case.mkdir()
        assert_refused_everywhere(bundled, path, case, items[i][0].name, "above the limit")


def on_small_disk(tmp_path, size: str, bundle, *args) -> tuple[str, str]:
    """Unbundle onto a tmpfs of `size` in a mount namespace: (stdout: rc= and what is
    left in the file system, stderr)."""
    script = (
        'mount -t tmpfs -o size="$0" tmpfs "$1" || exit 77; d=$1; shift; "$@"; echo "rc=$?"; '
        'ls -A "$d"'
    )
    small = tmp_path / "small"
    small.mkdir()
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, size]
        + [str(small), *CLI, "unbundle", str(bundle), "-r", str(small / "site"), *args],
        env=base_env(),
        capture_output=True,
        timeout=300,
    )
    if p.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    return p.stdout.decode(), p.stderr.decode()


def test_a_full_disk_is_one_line(bundled, tmp_path):
    out, err = on_small_disk(tmp_path, "4m", bundled.bundle, "-k", bundled.pubkey)
    assert out == "rc=1\n", (out, err)  # nothing left
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert f"into {tmp_path / 'small' / 'site'} failed" in err, err


def test_zlib_bomb_is_refused_without_filling_the_disk(bundled, tmp_path):
    """An object whose zlib stream inflates to 256 MiB, unbundled onto a 48 MiB file
    system: refused by the size its catalog gives, long before the disk is full."""
    items = members(bundled.bundle)
    i = max(range(len(items)), key=lambda k: len(inflated(items[k][1])))
    z = zlib.compressobj(9)
    bomb = b"".join(z.compress(bytes(1 << 20)) for _ in range(256)) + z.flush()
    items[i] = (items[i][0], bomb)
    path = tmp_path / "bomb.tar.zst"
    write_members(path, items)
    out, err = on_small_disk(tmp_path, "48m", path, "-k", bundled.pubkey)
    assert out == "rc=1\n", (out, err)  # and nothing left
    p = subprocess.CompletedProcess([], 1, b"", err.encode())
    assert_refused(p, items[i][0].name, "inflates beyond its size of")


def test_old_format_is_refused(bundled, tmp_path):
    """Version 1 bundles held the decompressed objects, which nothing can verify."""
    old = tmp_path / "old.tar.zst"
    with open(old, "wb") as raw:
        with zstandard.ZstdCompressor().stream_writer(raw) as z:
            with tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for i in range(256):
                    sub = bundled.dir / f"{i:02x}"
                    for n in sorted(os.listdir(sub)) if sub.is_dir() else []:
                        tar.add(sub / n, arcname=f"{i:02x}/{n}")
                for meta in ("whitelist", "manifest", "cvmfschecksum"):
                    tar.add(
                        bundled.dir / f"{meta}.{bundled.name}", arcname=f"{meta}.{bundled.name}"
                    )
    assert_refused_everywhere(
        bundled, old, tmp_path, "old format", "cannot be verified", "preload --bundle"
    )


def test_damaged_bundle_is_refused(bundled, tmp_path):
    data = bundled.bundle.read_bytes()
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(data[: len(data) // 2])
    assert_refused_everywhere(bundled, cut, tmp_path, str(cut))


def test_links_planted_in_the_directory_are_not_followed(bundled, tmp_path):
    """A link at txn/ or at an object directory of DIR is refused, nothing written
    through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    used = sorted(d.name for d in bundled.site.iterdir() if len(d.name) == 2 and d.is_dir())
    for sub in ("txn", used[len(used) // 2]):  # an object directory the bundle writes to
        site = tmp_path / f"site-{sub}"
        shutil.copytree(bundled.site, site, symlinks=True)
        shutil.rmtree(site / sub)
        os.symlink(elsewhere, site / sub)
        before = snapshot(site)
        p = unbundle(bundled.bundle, site, "-k", bundled.pubkey)
        assert_refused(p, f"{site}/{sub} is not a directory")
        assert snapshot(site) == before and os.listdir(elsewhere) == []


def _nobody_python(scratch: str) -> tuple[str, dict[str, str]]:
    """An interpreter and environment with which nobody imports the package."""
    probe = [sys.executable, "-c", "import parrot_cvmfs.client.bundle, zstandard"]
    if subprocess.run([*NOBODY, *probe], capture_output=True).returncode == 0:
        return sys.executable, base_env()
    from .test_unprivileged import _copy_runtime, _interpreter_for_nobody

    runtime = os.path.join(scratch, "runtime")
    _copy_runtime(runtime)
    shutil.copytree(os.path.dirname(zstandard.__file__), os.path.join(runtime, "zstandard"))
    for root, dirs, files in os.walk(runtime):
        for n in dirs + files:
            os.chmod(os.path.join(root, n), 0o755)
    return _interpreter_for_nobody(), base_env(PYTHONPATH=runtime)


@pytest.mark.unprivileged
def test_unbundle_as_nobody_into_a_directory_nobody_does_not_own(bundled):
    scratch = tempfile.mkdtemp(prefix="bundle-nobody.")
    try:
        os.chmod(scratch, 0o755)
        python, env = _nobody_python(scratch)
        bundle, key = os.path.join(scratch, "b.tar.zst"), os.path.join(scratch, "key.pub")
        shutil.copy(bundled.bundle, bundle)
        shutil.copy(bundled.pubkey, key)
        site = os.path.join(scratch, "site")
        shutil.copytree(bundled.site, site, symlinks=True)
        before = snapshot(site)
        cmd = [*NOBODY, python, "-m", "parrot_cvmfs", "unbundle", bundle, "-k", key, "-r"]
        p = subprocess.run([*cmd, site], env=env, capture_output=True, timeout=300)
        assert_refused(p, f"cannot unbundle into {site}: Permission denied")
        assert snapshot(site) == before
        new = os.path.join(scratch, "new")
        p = subprocess.run([*cmd, new], env=env, capture_output=True, timeout=300)
        assert_refused(p, f"cannot unbundle into {new}: Permission denied")
        assert not os.path.exists(new)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("name", ["ref-shake.test.org", "test.cern.ch"])
def test_bundles_of_real_repositories(real_server, name, tmp_path):
    """Written by the real cvmfs server tools: SHAKE-128 objects; the 2015 stratum with
    nested catalogs, an expired whitelist (--verify-at) and a chunked file whose legacy
    bulk object the bundle leaves out (its chunks are carried)."""
    extra = ["--verify-at", "2015-06-20"] if name == "test.cern.ch" else []
    pub = os.path.join(REAL_REPOS, name, f"{name}.pub")
    pre, site, bundle = tmp_path / "pre", tmp_path / "site", tmp_path / "b.tar.zst"
    p = run_preload(f"{real_server.url}/{name}", pre, "-k", pub, "--bundle", bundle, *extra)
    assert p.returncode == 0, p.stderr
    p = unbundle(bundle, site, "-k", pub, *extra)
    assert p.returncode == 0, p.stderr
    assert stored_objects_match(str(site), os.path.join(REAL_REPOS, name, "stratum")) > 5
    cli = Cli(base_env(PARROT_CVMFS_REPO=repo_spec(name, dead_url(name), pub)))

    def listing(d):
        opts = ["--alien-cache", d, "--offline", "--cache-dir", tmp_path / f"c-{d.name}"]
        return cli.find_json(name, "/", "--sha256", *opts, *extra)

    files = listing(site)
    assert any("sha256" in e for e in files) and files == listing(pre)


@pytest.mark.slow
def test_a_newer_revision_in_the_directory_is_kept(bundled, tmp_path):
    """The objects of an older bundle are added, its revision files are not."""
    mine = bundled.published.copy(str(tmp_path / "stratum"))
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", mine.src, str(src)], check=True)
    (src / "README").write_bytes(b"revision 2\n")
    publish(
        PublishOptions(source=str(src), name=mine.name, stratum=mine.stratum, keys_dir=mine.keys)
    )
    srv = FaultyServer(mine.stratum)
    srv.start_background()
    try:
        newer = tmp_path / "newer.tar.zst"
        url = f"{srv.url}/{mine.name}"
        p = run_preload(url, tmp_path / "pre", "-k", mine.pubkey, "--bundle", newer)
        assert p.returncode == 0, p.stderr
    finally:
        srv.shutdown()
    site = tmp_path / "site"
    assert unbundle(newer, site, "-k", mine.pubkey).returncode == 0
    manifest = (site / f"manifest.{mine.name}").read_bytes()
    p = unbundle(bundled.bundle, site, "-k", mine.pubkey)
    err = p.stderr.decode()
    assert p.returncode == 0 and f"kept the newer revision of {mine.name}" in err, err
    assert b" 2 objects written" in p.stdout, p.stdout  # the first README, its root catalog
    assert (site / f"manifest.{mine.name}").read_bytes() == manifest
    mnt = f"/cvmfs/{mine.name}"
    r = offline_sha256(mine, site, tmp_path / "cache", script=f"cat {mnt}/README")
    assert r.stdout == b"revision 2\n", r.stderr
