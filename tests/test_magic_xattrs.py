"""The magic extended attributes come from one table (client/magic.py): the names each
kind of entry lists, in the order the cvmfs client lists them, and their values."""

from __future__ import annotations

import errno
import hashlib
import os
import zlib

import pytest

from parrot_cvmfs._version import __version__
from parrot_cvmfs.client.config import Configuration
from parrot_cvmfs.client.repository import Repository

from .conftest import base_env, repo_spec

EVERY = [
    "user.catalog_counters",
    "user.expires",
    "user.external_host",
    "user.external_timeout",
    "user.fqrn",
    "user.hitrate",
    "user.host",
    "user.host_list",
    "user.inode_max",
    "user.logbuffer",
    "user.maxfd",
    "user.ncleanup24",
    "user.nclg",
    "user.ndiropen",
    "user.ndownload",
    "user.nioerr",
    "user.nopen",
    "user.pid",
    "user.proxy",
    "user.proxy_list",
    "user.proxy_list_external",
    "user.pubkeys",
    "user.repo_counters",
    "user.repo_metainfo",
    "user.revision",
    "user.root_hash",
    "user.rx",
    "user.speed",
    "user.tag",
    "user.timeout",
    "user.timeout_direct",
    "user.timestamp_last_ioerr",
    "user.uptime",
    "user.useddirp",
    "user.usedfd",
    "user.version",
]
FILE = ["user.chunk_list", "user.chunks", "user.compression", "user.direct_io"]
FILE += ["user.external_file", "user.hash", "user.lhash"]


@pytest.fixture
def repo(published, published_server, tmp_path):
    url = f"{published_server.url}/{published.name}"
    env = base_env(PARROT_CVMFS_REPO=repo_spec(published.name, url, published.pubkey))
    config = Configuration(env=env, overrides={"CVMFS_MAGIC_XATTRS_VISIBILITY": "always"})
    with Repository.mount(published.name, cache_dir=str(tmp_path / "c"), config=config) as r:
        yield r


def value(repo, entry, name: str) -> str:
    return repo.getxattr(entry, name).decode()


def test_names_by_kind(repo):
    root = repo.lookup("/")
    assert repo.magic_xattr_names(root) == EVERY
    f = repo.lookup("/README")
    assert repo.magic_xattr_names(f) == sorted(EVERY + FILE)
    link = repo.lookup("/links/rel")
    assert repo.magic_xattr_names(link) == sorted(EVERY + ["user.rawlink"]) + ["xfsroot.rawlink"]
    names = repo.magic_xattr_names(f)
    assert repo.listxattr(f)[-len(names) :] == names  # after the stored ones


def test_values(repo, published):
    root, f = repo.lookup("/"), repo.lookup("/README")
    assert value(repo, root, "user.fqrn") == published.name
    assert value(repo, root, "user.revision") == str(repo.revision)
    assert value(repo, root, "user.root_hash") == repo.root_hash.hex
    assert value(repo, root, "user.version") == __version__
    assert value(repo, root, "user.tag") == ""
    assert value(repo, root, "user.pid") == str(os.getpid())
    assert value(repo, root, "user.proxy") == "DIRECT"
    assert value(repo, root, "user.repo_counters").startswith("chunked,")
    assert value(repo, root, "user.catalog_counters").startswith("catalog_hash: ")
    assert value(repo, f, "user.hash") == f.hash.hex
    assert value(repo, f, "user.lhash") == "Not in cache"
    data = repo.read("/README")  # kept decompressed, deflated again while hashing
    assert value(repo, f, "user.lhash") == hashlib.sha1(zlib.compress(data)).hexdigest()
    assert value(repo, f, "user.lhash") == f.hash.hex
    assert value(repo, f, "user.chunks") == "1"
    assert value(repo, f, "user.chunk_list") == f"hash,offset,size\n{f.hash.hex},0,{f.size}\n"
    assert value(repo, f, "user.compression") == "zlib"
    assert value(repo, f, "user.external_file") == "0"
    link = repo.lookup("/links/rel")
    assert value(repo, link, "xfsroot.rawlink") == "target.txt"
    with pytest.raises(OSError) as e:
        repo.getxattr(link, "user.hash")  # not one of a symlink's: no value
    assert e.value.errno == errno.ENODATA
