"""`parrot_cvmfs preload`, bundles, and parrot_run reading a preloaded directory
offline: with the server stopped, without a network (a namespace with no
interfaces), from a read-only directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish

from .conftest import (
    REAL_REPOS,
    Cli,
    base_env,
    parse_sha256sum,
    read_pty,
    repo_spec,
    sha256_tree,
)
from .servers import FaultyServer, dead_url, serving

PARROT = [sys.executable, "-m", "parrot_cvmfs.tracer.main"]
CLI = [sys.executable, "-m", "parrot_cvmfs"]
SUFFIXES = ("", "P", "C", "X", "L", "M", "H")


def stored_objects_match(directory: str, repo_stratum: str) -> int:
    """Every object in `directory` holds exactly the inflated server object; returns
    how many there are."""
    n = 0
    for i in range(256):
        sub = os.path.join(directory, f"{i:02x}")
        for name in os.listdir(sub) if os.path.isdir(sub) else []:
            if "." in name:
                continue  # a chunked file assembled by the client, made of checked chunks
            for s in SUFFIXES:
                src = os.path.join(repo_stratum, "data", f"{i:02x}", name + s)
                if os.path.exists(src):
                    break
            else:
                raise AssertionError(f"{i:02x}/{name} is not an object of the repository")
            with open(src, "rb") as f:
                raw = f.read()
            try:
                want = zlib.decompress(raw)
            except zlib.error:
                want = raw
            with open(os.path.join(sub, name), "rb") as f:
                assert f.read() == want, f"{i:02x}/{name} differs from the server's object"
            n += 1
    return n


@pytest.fixture
def served(published):
    with serving(FaultyServer(published.stratum)) as srv:
        yield srv


def run_preload(url, directory, *args, env=None, timeout=600):
    return subprocess.run(
        [*CLI, "preload", "-u", url, "-r", str(directory), *map(str, args)],
        env=env or base_env(),
        capture_output=True,
        timeout=timeout,
    )


def offline_sha256(published, directory, cache, prefix=(), script=None):
    """sha256sum of every file under parrot_run from `directory`, offline."""
    mnt = f"/cvmfs/{published.name}"
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(published.name, dead_url(published.name), published.pubkey)
    )
    script = script or f"cd {mnt} && find . -type f -print0 | xargs -0 sha256sum --zero"
    cmd = [
        *prefix,
        *PARROT,
        "--cache-dir",
        str(cache),
        "--alien-cache",
        str(directory),
        "--offline",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=600)


@pytest.mark.tracer
def test_preload_then_offline_without_network_from_read_only_dir(published, served, tmp_path):
    d = tmp_path / "preload"
    url = f"{served.url}/{published.name}"
    p = run_preload(url, d, "-k", published.pubkey)
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert out.startswith(f"preloaded {published.name} revision ") and "\r" not in out, out
    assert p.stderr == b""  # no progress bar when stdout is not a terminal
    n = stored_objects_match(str(d), os.path.join(published.stratum, published.name))
    assert n > 40
    for meta in ("manifest", "whitelist", "cvmfschecksum"):
        assert (d / f"{meta}.{published.name}").exists()
    assert (d / "uuid").exists() and not os.listdir(d / "txn")
    served.shutdown()  # from here on there is no server
    expect = sha256_tree(published.src)
    # a network namespace with no interfaces, and the preloaded directory read-only
    script = (
        f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && "
        f'! touch {d}/probe 2>/dev/null && exec "$@"'
    )
    prefix = ["unshare", "--mount", "--net", "--", "/bin/sh", "-c", script, "sh"]
    r = offline_sha256(published, d, tmp_path / "cache", prefix)
    assert r.returncode == 0, r.stderr
    assert parse_sha256sum(r.stdout) == expect
    assert not (d / "probe").exists()


@pytest.mark.tracer
def test_dirtab_subset_and_a_file_outside_it(published, served, tmp_path):
    d = tmp_path / "preload"
    tab = tmp_path / "dirtab"
    tab.write_text("# the nested catalog, without the one inside it\n/nested\n! /nested/inner\n")
    p = run_preload(f"{served.url}/{published.name}", d, "-k", published.pubkey, "-d", tab)
    assert p.returncode == 0, p.stderr
    assert (d / f"dirtab.{published.name}").read_text() == tab.read_text()
    served.shutdown()
    mnt = f"/cvmfs/{published.name}"
    r = offline_sha256(
        published,
        d,
        tmp_path / "cache",
        script=f"cat {mnt}/nested/file {mnt}/README; "
        f"cat {mnt}/nested/inner/deeper/file; echo rc=$?",
    )
    out, err = r.stdout.decode(), r.stderr.decode()
    assert out.startswith("in nested\nparrot-cvmfs test tree\n"), (out, err)
    assert out.endswith("rc=1\n") and "Input/output error" in err, (out, err)
    # one line from parrot_run naming what could not be had: the catalog of /nested/inner
    lines = [x for x in err.splitlines() if x.startswith("parrot_run:")]
    assert len(lines) == 1 and ":/nested/inner " in lines[0] and "offline" in lines[0], err


@pytest.mark.slow
def test_interrupted_preload_resumes(published, served, tmp_path):
    d = tmp_path / "preload"
    url = f"{served.url}/{published.name}"
    served.throttles["/data/"] = 256 * 1024  # each object trickles in
    proc = subprocess.Popen(
        [*CLI, "preload", "-u", url, "-r", str(d), "-k", published.pubkey],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while (
        time.time() < deadline
        and sum(len(os.listdir(d / f"{i:02x}")) for i in range(256) if (d / f"{i:02x}").is_dir())
        < 5
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    served.throttles.clear()
    partial = stored_objects_match(str(d), os.path.join(published.stratum, published.name))
    assert partial >= 5
    assert not (d / f"manifest.{published.name}").exists()  # no revision announced yet
    p = run_preload(url, d, "-k", published.pubkey)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    skipped = int(out.split("skipped ")[1].split()[0])
    assert skipped >= partial - 1, out  # the killed run's objects are not fetched again
    total = stored_objects_match(str(d), os.path.join(published.stratum, published.name))
    assert total > partial and not os.listdir(d / "txn")


@pytest.mark.tracer
def test_incremental_preload_fetches_only_new_objects(published, tmp_path):
    mine = published.copy(str(tmp_path / "stratum"))
    srv = FaultyServer(mine.stratum)
    srv.start_background()
    try:
        d = tmp_path / "preload"
        url = f"{srv.url}/{mine.name}"
        assert run_preload(url, d, "-k", mine.pubkey).returncode == 0
        src = tmp_path / "src"
        subprocess.run(["cp", "-a", published.src, str(src)], check=True)  # fifo, links, xattrs
        (src / "README").write_bytes(b"a new revision\n")
        publish(
            PublishOptions(
                source=str(src), name=mine.name, stratum=mine.stratum, keys_dir=mine.keys
            )
        )
        srv.requests.clear()
        p = run_preload(url, d, "-k", mine.pubkey)
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode()
        assert " fetched 1 objects " in out and "catalogs pulled 1," in out, out
        assert int(out.split("skipped ")[1].split()[0]) > 40, out
        assert len(srv.data_requests()) == 2  # the new root catalog and README's object
        srv.shutdown()
        r = offline_sha256(
            published, d, tmp_path / "cache", script=f"cat /cvmfs/{mine.name}/README"
        )
        assert r.stdout == b"a new revision\n", r.stderr
    finally:
        srv.shutdown()


@pytest.mark.slow
def test_preload_errors_are_one_line(published, served, tmp_path):
    url = f"{served.url}/{published.name}"
    other_key = tmp_path / "keys"
    publish(
        PublishOptions(
            source=str(published.src / "bin")
            if hasattr(published.src, "joinpath")
            else os.path.join(published.src, "bin"),
            name="other.test.org",
            stratum=str(tmp_path / "s"),
            keys_dir=str(other_key),
        )
    )
    cases = [
        (run_preload(url, tmp_path / "a", "-k", other_key / "other.test.org.pub"), "signature"),
        (
            run_preload(dead_url(published.name), tmp_path / "b", "-k", published.pubkey),
            "cannot download manifest",
        ),
        (
            run_preload(url, tmp_path / "c", "-k", published.pubkey, "-d", tmp_path / "nodirtab"),
            "cannot read dirtab",
        ),
    ]
    for p, words in cases:
        err = p.stderr.decode()
        assert p.returncode == 1 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "a" / f"manifest.{published.name}").exists()


@pytest.mark.slow
def test_bad_objects_and_missing_ones_fail_over_or_fail(published, tmp_path):
    """The C fetcher hands whatever it cannot get to the Python downloader: an object
    missing on the first server comes from the second; a corrupt one everywhere is an
    error naming it, and nothing of it is stored."""
    good = FaultyServer(published.stratum)
    bad = FaultyServer(published.stratum)
    good.start_background()
    bad.start_background()
    try:
        stratum = os.path.join(published.stratum, published.name)
        some = sorted(
            os.path.join(d, f)
            for d, _, fs in os.walk(os.path.join(stratum, "data"))
            for f in fs
            if not f.endswith(("C", "X", "H", "M"))  # file contents and chunks only
        )[:3]
        names = ["/" + os.path.relpath(x, stratum).replace(os.sep, "/") for x in some]
        for n in names:
            bad.statuses[n] = 404
        url = f"{bad.url}/{published.name};{good.url}/{published.name}"
        p = run_preload(url, tmp_path / "a", "-k", published.pubkey, "-m", published.name)
        assert p.returncode == 0, p.stderr
        assert stored_objects_match(str(tmp_path / "a"), stratum) > 40
        assert all(good.requests[f"/cvmfs/{published.name}{n}"] == 1 for n in names)
        # corrupt on both: one line naming the object, and it is not stored
        bad.statuses.clear()
        for srv in (good, bad):
            srv.rewrites[names[0]] = lambda data: data[:-1] + bytes([data[-1] ^ 1])
        p = run_preload(url, tmp_path / "b", "-k", published.pubkey, "-m", published.name)
        err = p.stderr.decode()
        assert p.returncode == 1 and err.count("\n") == 1, err
        h = os.path.basename(names[0])
        assert h[:-1] in err or h in err, err
        assert not os.path.exists(tmp_path / "b" / names[0].split("/")[2] / h)
        assert not (tmp_path / "b" / f"manifest.{published.name}").exists()
    finally:
        good.shutdown()
        bad.shutdown()


@pytest.mark.parametrize("name", ["ref-shake.test.org", "test.cern.ch"])
def test_preload_real_repositories(real_server, name, tmp_path):
    """Written by the real cvmfs server tools: SHAKE-128 objects; the 2015 stratum with
    nested catalogs and a chunked file whose bulk object also exists."""
    d = tmp_path / "preload"
    extra = ["--verify-at", "2015-06-20"] if name == "test.cern.ch" else []
    pub = os.path.join(REAL_REPOS, name, f"{name}.pub")
    p = run_preload(f"{real_server.url}/{name}", d, "-k", pub, *extra)
    assert p.returncode == 0, p.stderr
    assert stored_objects_match(str(d), os.path.join(REAL_REPOS, name, "stratum")) > 5
    env = base_env(PARROT_CVMFS_REPO=repo_spec(name, dead_url(name), pub))
    cli = Cli(env)
    opts = ["--alien-cache", d, "--offline", "--cache-dir", tmp_path / "c", *extra]
    listing = cli.find_json(name, "/", "--sha256", *opts)
    files = [e for e in listing if e["type"] == "file"]
    assert files and all("sha256" in e for e in files)
    if name == "test.cern.ch":
        big = next(e for e in files if e["path"] == "/bar/big")
        assert big["size"] == 20 * 1024 * 1024 and big["chunks"] == 2
    else:
        import json

        with open(os.path.join(REAL_REPOS, name, "tree-v2.jsonl")) as f:
            want = {r["path"]: r["sha256"] for r in map(json.loads, f) if "sha256" in r}
        assert {e["path"]: e["sha256"] for e in files} == want


@pytest.mark.slow
def test_progress_bar_on_a_terminal(published, served, tmp_path):
    """On a terminal the preload shows files, bytes and rate as it goes."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real size
    p = subprocess.Popen(
        [
            *CLI,
            "preload",
            "-u",
            f"{served.url}/{published.name}",
            "-r",
            str(tmp_path / "d"),
            "-k",
            published.pubkey,
        ],
        env=base_env(COLUMNS="120"),
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    out = read_pty(master)
    os.close(master)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    text = out.decode("utf-8", "replace")
    assert "preload" in text and "files" in text and "B/s" in text and "\r" in text, text
    assert "preloaded " in text
