"""The Debian userlands the container tests run in (tests/userlands.py): the mirror
read from apt's sources, the build cache's rules (adopt, never trust a half-built
tree), and the published tree read back through parrot_run, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from . import userlands as ul
from .conftest import base_env

PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_mirror_from_deb822_skips_comments_security_and_disabled(tmp_path):
    apt = str(tmp_path)
    write(f"{apt}/sources.list", "# deb http://commented.invalid/debian bookworm main\n")
    write(
        f"{apt}/sources.list.d/a.sources",
        "Types: deb\nURIs: http://disabled.invalid/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n\n"
        "Types: deb\n# http://snapshot.invalid/archive\nURIs: http://security.invalid/ds\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://main.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n",
    )
    write(f"{apt}/sources.list.d/b.list.disabled", "deb http://x.invalid/debian bookworm main\n")
    assert ul.debian_mirror(apt) == "http://main.invalid/debian"


def test_mirror_from_one_line_list_with_options(tmp_path):
    apt = str(tmp_path)
    write(
        f"{apt}/sources.list",
        "deb https://other.invalid/apt cloud-sdk main\n"
        "deb-src http://src.invalid/debian bullseye main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian trixie main\n",
    )
    assert ul.debian_mirror(apt) == "http://one.invalid/debian"
    assert ul.debian_mirror(str(tmp_path / "none")) is None


def fake_tree(path, release="11.11"):
    write(f"{path}/etc/debian_version", release + "\n")
    write(f"{path}/usr/bin/python3", "")


def test_partial_build_whose_log_says_ok_is_adopted(tmp_path, monkeypatch):
    monkeypatch.setenv("PARROT_CVMFS_TEST_CACHE", str(tmp_path))
    root = ul.cache_dir()
    fake_tree(f"{root}/bullseye.partial")
    write(f"{root}/bullseye.log", "I: Base system installed successfully.\nOK\n")
    monkeypatch.setattr(ul, "_debootstrap", lambda *a: pytest.fail("rebuilt"))
    assert ul.ensure_userland("bullseye") == f"{root}/bullseye"
    assert not os.path.exists(f"{root}/bullseye.partial")
    assert open(f"{root}/bullseye/etc/debian_version").read() == "11.11\n"


def test_failed_build_leaves_no_complete_looking_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("PARROT_CVMFS_TEST_CACHE", str(tmp_path))
    root = ul.cache_dir()
    # a build that died: its log is old and does not end in OK; a tree under the final
    # name that is not complete (no python3) is not trusted either
    fake_tree(f"{root}/trixie.partial", "13.1")
    write(f"{root}/trixie.log", "I: Retrieving Packages\n")
    old = time.time() - 2 * ul.LOG_QUIET
    os.utime(f"{root}/trixie.log", (old, old))
    write(f"{root}/trixie/etc/debian_version", "13.1\n")

    def failing(suite, partial, log):
        os.makedirs(f"{partial}/usr/bin", exist_ok=True)
        raise ul.UserlandBuildFailed(f"debootstrap {suite} failed: see {log}")

    real = ul._debootstrap
    monkeypatch.setattr(ul, "_debootstrap", failing)
    with pytest.raises(ul.UserlandBuildFailed):
        ul.ensure_userland("trixie")
    assert not os.path.exists(f"{root}/trixie")
    # the real builder clears what the dead build left before it starts
    monkeypatch.setattr(ul, "_debootstrap", real)
    monkeypatch.setattr(ul, "debian_mirror", lambda: None)
    if os.geteuid() == 0 and os.path.exists("/usr/sbin/debootstrap"):
        with pytest.raises(ul.UserlandUnavailable, match="no Debian archive"):
            ul.ensure_userland("trixie")
        assert not os.path.exists(f"{root}/trixie")


@pytest.mark.tracer
def test_published_userland_reads_as_the_tree(userland, tmp_path):
    """The guest's files through parrot_run are the tree's, and its python3 runs under
    chroot of the tree (the release and glibc the suite promises)."""
    files = ["etc/debian_version", "usr/bin/python3", "var/lib/dpkg/status"]
    host = subprocess.run(
        ["sha256sum", *files], cwd=userland.tree, capture_output=True, check=True
    ).stdout
    # sha256sum names the files as given: run it from the repository's root
    traced = subprocess.run(
        [
            *PARROT,
            "--cache-dir",
            str(tmp_path / "c"),
            "--",
            "sh",
            "-c",
            f"cd {userland.cvmfs} && sha256sum {' '.join(files)}",
        ],
        env=userland.env,
        capture_output=True,
        timeout=120,
    )
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == host
    if os.geteuid() != 0:
        return
    out = subprocess.run(
        ["chroot", userland.tree, "/usr/bin/ldd", "--version"],
        env=base_env(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert out.splitlines()[0].endswith(userland.glibc), out
    assert open(f"{userland.tree}/etc/debian_version").read().startswith(userland.release)


def test_publication_cached_until_tree_or_publisher_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("PARROT_CVMFS_TEST_CACHE", str(tmp_path))
    tree = str(tmp_path / "tree")
    fake_tree(tree)
    calls = []

    def publish(stratum, keys):
        calls.append(stratum)
        os.makedirs(stratum)
        os.makedirs(keys)

    def failing(stratum, keys):
        os.makedirs(stratum)
        raise RuntimeError("publisher died")

    stratum, keys, made = ul.published_userland("bullseye", tree, publish)
    assert made and os.path.isdir(stratum) and os.path.isdir(keys)
    assert ul.published_userland("bullseye", tree, publish)[2] is False
    write(f"{tree}/etc/debian_version", "11.12\n")  # another tree: published again
    with pytest.raises(RuntimeError):
        ul.published_userland("bullseye", tree, failing)
    assert not os.path.exists(f"{ul.cache_dir()}/bullseye.published.partial")
    assert ul.published_userland("bullseye", tree, publish)[2] is True
    assert len(calls) == 2
