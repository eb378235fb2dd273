"""Where the client answers as the real cvmfs client does (issue 12, items 4-8), checked
with real programs (readlink, getfattr) under parrot_run in both modes, with the
parrot_cvmfs CLI, and through the library on repositories our publisher made."""

from __future__ import annotations

import ast
import errno
import hashlib
import os
import sys
import zlib

import pytest

from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository
from parrot_cvmfs.errors import DownloadError
from parrot_cvmfs.format.catalog import COUNTERS
from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import Published, make_cli, published_env
from .servers import FaultyServer, serving
from .test_parrot_run import Parrot

pytestmark = pytest.mark.tracer

CONTENT = b"interop\n" * 1000
# the magic names issue 12 item 8 adds, listed on the root as the real client lists them
ADDED = [
    "user.external_host",
    "user.external_timeout",
    "user.inode_max",
    "user.logbuffer",
    "user.maxfd",
    "user.ncleanup24",
    "user.ndiropen",
    "user.nopen",
    "user.proxy_list_external",
    "user.speed",
    "user.timestamp_last_ioerr",
    "user.uptime",
    "user.useddirp",
    "user.usedfd",
]


def _tree(root: str) -> str:
    os.makedirs(f"{root}/sub")
    with open(f"{root}/f.txt", "wb") as f:
        f.write(CONTENT)
    with open(f"{root}/sub/g.txt", "wb") as f:
        f.write(b"nested\n")
    open(f"{root}/sub/.cvmfscatalog", "wb").close()
    os.symlink("$(CVMFS_ARCH)/lib", f"{root}/v")
    os.symlink("f.txt", f"{root}/ln")
    return root


def _publish(base, name: str, compress: bool) -> Published:
    src = _tree(str(base / "src"))
    stratum, keys = str(base / "stratum"), str(base / "keys")
    opts = PublishOptions(source=src, name=name, stratum=stratum, keys_dir=keys, compress=compress)
    return Published(src, stratum, keys, name, publish(opts))


@pytest.fixture(scope="module")
def zrepo(tmp_path_factory):
    return _publish(tmp_path_factory.mktemp("zlib"), "interop.test.org", True)


@pytest.fixture(scope="module")
def plainrepo(tmp_path_factory):
    return _publish(tmp_path_factory.mktemp("plain"), "plain.test.org", False)


@pytest.fixture(scope="module")
def zserver(zrepo):
    with serving(StratumServer(zrepo.stratum)) as srv:
        yield srv


@pytest.fixture(scope="module", params=["notify", "ptrace"])
def parrot(request, zrepo, zserver, tmp_path_factory):
    env = {**published_env(zrepo, zserver.url), "PARROT_CVMFS_MODE": request.param}
    return Parrot(env, str(tmp_path_factory.mktemp("cache")))


def _mount(published, url, tmp_path, **overrides):
    env = published_env(published, url)
    config = Configuration(env=env, overrides=overrides)
    return Repository.mount(published.name, cache_dir=str(tmp_path / "c"), config=config)


def _value(repo, path: str, name: str) -> str:
    return repo.getxattr(repo.lookup(path), name).decode()


# -- item 4: $(CVMFS_ARCH) -----------------------------------------------------------------------


def test_arch_variable_is_uname_machine(parrot, zrepo, zserver, tmp_path):
    mnt = f"/cvmfs/{zrepo.name}"
    machine = os.uname().machine
    p = parrot("readlink", f"{mnt}/v")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == f"{machine}/lib"
    p = parrot("readlink", f"{mnt}/v", env={"CVMFS_ARCH": "riscv64"})  # a set value wins
    assert p.stdout.decode().strip() == "riscv64/lib"
    cli = make_cli(published_env(zrepo, zserver.url))
    p = cli("ls", "-l", "--cache-dir", tmp_path / "c", zrepo.name, "/")
    assert p.returncode == 0, p.stderr
    assert f"v -> {machine}/lib" in p.stdout.decode()


# -- item 5: user.lhash --------------------------------------------------------------------------


def test_lhash_is_the_recompressed_cached_object(zrepo, zserver, plainrepo, tmp_path):
    with _mount(zrepo, zserver.url, tmp_path / "z") as repo:
        assert _value(repo, "/f.txt", "user.lhash") == "Not in cache"
        assert repo.read("/f.txt") == CONTENT
        # the cache holds the plain bytes; deflated again they hash to the object's name
        assert _value(repo, "/f.txt", "user.lhash") == _value(repo, "/f.txt", "user.hash")
    with serving(StratumServer(plainrepo.stratum)) as srv:
        with _mount(plainrepo, srv.url, tmp_path / "p") as repo:
            repo.read("/f.txt")
            assert _value(repo, "/f.txt", "user.hash") == hashlib.sha1(CONTENT).hexdigest()
            # an uncompressed object is deflated by the real ChecksumFd all the same
            want = hashlib.sha1(zlib.compress(CONTENT)).hexdigest()
            assert _value(repo, "/f.txt", "user.lhash") == want


def test_lhash_under_parrot_run(parrot, zrepo):
    f = f"/cvmfs/{zrepo.name}/f.txt"
    p = parrot.sh(f"cat {f} >/dev/null; getfattr --only-values -n user.lhash {f}; echo")
    assert p.returncode == 0, p.stderr
    h = parrot("getfattr", "--only-values", "-n", "user.hash", f).stdout.decode()
    assert p.stdout.decode().strip() == h


# -- item 6: magic attributes on symlinks --------------------------------------------------------


def test_symlink_has_no_user_attributes_without_follow(parrot, zrepo):
    link = f"/cvmfs/{zrepo.name}/ln"
    # three times in one run: the first is Python's, the next ones come from C's table
    script = "; ".join(
        [f"getfattr -h -n user.fqrn {link}; echo rc=$?"] * 3
        + [f"getfattr -h -n user.rawlink {link}; echo rc=$?"]
        + [f"getfattr --only-values -h -n xfsroot.rawlink {link}; echo; echo rc=$?"]
        + [f"getfattr --only-values -n user.fqrn {link}; echo; echo rc=$?"]
        + [f"getfattr -h -m - {link}; echo rc=$?"]
    )
    for _ in range(2):  # and once more from the answers the first run kept
        p = parrot.sh(script, env={"PARROT_CVMFS_REPO": _always(parrot)})
        out, err = p.stdout.decode(), p.stderr.decode()
        assert out.count("rc=1") == 4, (out, err)
        assert err.count("No such attribute") == 4, err
        assert "f.txt\nrc=0" in out  # xfsroot.* reaches the file system
        assert f"{zrepo.name}\nrc=0" in out  # followed: the target's answer
        assert "user." not in out.split("rc=0")[-2]  # llistxattr lists no user.* name
        assert "xfsroot.rawlink" in out


def _always(parrot) -> str:
    """The repository with every magic name listed everywhere (visibility `always`)."""
    return parrot.env["PARROT_CVMFS_REPO"] + ",CVMFS_MAGIC_XATTRS_VISIBILITY=always"


def test_symlink_rule_in_the_library(zrepo, zserver, tmp_path):
    with _mount(zrepo, zserver.url, tmp_path, CVMFS_MAGIC_XATTRS_VISIBILITY="always") as repo:
        link = repo.lookup("/ln")
        for name in ("user.fqrn", "user.rawlink"):
            with pytest.raises(OSError) as e:
                repo.getxattr(link, name)
            assert e.value.errno == errno.ENODATA
        assert repo.getxattr(link, "xfsroot.rawlink") == b"f.txt"
        assert repo.listxattr(link) == ["xfsroot.rawlink"]


# -- item 7: counters ----------------------------------------------------------------------------


def test_counters_as_get_csv_map(parrot, zrepo):
    mnt = f"/cvmfs/{zrepo.name}"
    p = parrot.sh(
        f"getfattr --only-values -n user.catalog_counters {mnt}/; echo ==; "
        f"getfattr --only-values -n user.catalog_counters {mnt}/sub/g.txt; echo ==; "
        f"getfattr --only-values -n user.repo_counters {mnt}/sub"
    )
    assert p.returncode == 0, p.stderr
    root, nested, repo = p.stdout.decode().split("\n==")
    head, _, csv = root.partition("catalog_mountpoint: ")
    assert head.startswith("catalog_hash: ")
    assert csv.startswith("\n")  # empty for the root catalog
    assert [line.split(",")[0] for line in csv.split()] == sorted(COUNTERS)
    assert "\ncatalog_mountpoint: /sub\n" in nested
    assert [line.split(",")[0] for line in repo.split()] == sorted(COUNTERS)
    assert "regular,3\n" in repo  # f.txt, sub/g.txt and the catalog marker


# -- item 8: the attributes that were missing ----------------------------------------------------


def test_added_attributes_listed_on_the_root_only(parrot, zrepo):
    mnt = f"/cvmfs/{zrepo.name}"
    # listxattr's own order (getfattr sorts what it prints)
    code = f"import os; print(os.listxattr('{mnt}/')); print(os.listxattr('{mnt}/sub'))"
    p = parrot(sys.executable, "-c", code)
    assert p.returncode == 0, p.stderr
    root, sub = (ast.literal_eval(line) for line in p.stdout.decode().splitlines())
    assert root == sorted(root)  # the real client's std::map order
    assert set(ADDED) <= set(root)
    assert sub == []  # CVMFS_MAGIC_XATTRS_VISIBILITY=rootonly, the default


def test_added_attribute_values(parrot, zrepo):
    mnt = f"/cvmfs/{zrepo.name}"
    script = f"cat {mnt}/f.txt >/dev/null; ls {mnt}/sub >/dev/null; " + "; ".join(
        f"printf '%s=' {n}; getfattr --only-values -n {n} {mnt}/sub; echo" for n in ADDED
    )
    p = parrot.sh(script)
    assert p.returncode == 0, p.stderr
    v = dict(line.split("=", 1) for line in p.stdout.decode().splitlines() if "=" in line)
    assert v["user.external_host"] == "internal error: no hosts defined"
    assert v["user.external_timeout"] == "10"  # CVMFS_TIMEOUT_DIRECT's default
    assert v["user.proxy_list_external"] == "DIRECT"
    assert v["user.uptime"] == "0"  # minutes since the mount
    assert int(v["user.nopen"]) >= 1 and int(v["user.ndiropen"]) >= 1
    assert v["user.usedfd"] == v["user.useddirp"] == "0"  # the client holds no descriptor
    assert int(v["user.maxfd"]) >= 0
    assert v["user.inode_max"] == str((1 << 63) - 1)
    assert v["user.timestamp_last_ioerr"] == "0" and v["user.logbuffer"] == ""
    assert v["user.speed"] == "n/a" or v["user.speed"].isdigit()  # n/a: a warm run fetched nothing
    assert v["user.ncleanup24"] in ("-1", "0")


def test_io_error_attributes_and_cleanups(zrepo, tmp_path):
    with serving(FaultyServer(zrepo.stratum)) as srv:
        with _mount(zrepo, srv.url, tmp_path, CVMFS_QUOTA_LIMIT="1") as repo:
            assert _value(repo, "/", "user.timestamp_last_ioerr") == "0"
            assert _value(repo, "/", "user.ncleanup24") == "0"
            repo.read("/sub/g.txt")
            assert _value(repo, "/", "user.speed").isdigit()
            repo.cache.quota.cleanup(target=0)
            assert _value(repo, "/", "user.ncleanup24") == "1"
            srv.statuses["/data/"] = 404
            with pytest.raises(DownloadError):
                repo.read("/f.txt")
            assert int(_value(repo, "/", "user.timestamp_last_ioerr")) > 0
            assert _value(repo, "/", "user.nioerr") == "1"
            log = _value(repo, "/", "user.logbuffer")
            assert log.startswith("[") and "cannot download" in log
        srv.statuses.clear()
        with _mount(zrepo, srv.url, tmp_path / "u", CVMFS_QUOTA_LIMIT="-1") as repo:
            assert _value(repo, "/", "user.ncleanup24") == "-1"  # an unmanaged cache
