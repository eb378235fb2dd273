"""A directory of 100,000 entries under parrot_run (issue 10, item 6): listed and stat'ed
correctly, with the supervisor's memory bounded. The speed ratio against the CLI lives in
bench/bench_bigdir.py, not here."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from parrot_cvmfs.server.publisher import PublishOptions, publish
from parrot_cvmfs.server.serve import StratumServer

from .conftest import base_env, repo_spec
from .test_parrot_run import Parrot

pytestmark = pytest.mark.tracer

NAME = "huge.test.org"
N = 100_000
PEAK_MB = 300


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    base = tmp_path_factory.mktemp("huge")
    src, stratum, keys = str(base / "src"), str(base / "stratum"), str(base / "keys")
    os.makedirs(f"{src}/big")
    for i in range(N):
        with open(f"{src}/big/f{i:06d}", "w") as f:
            f.write("x" * (i % 7))
    os.symlink("f000001", f"{src}/big/zlink")
    publish(PublishOptions(source=src, name=NAME, stratum=stratum, keys_dir=keys))
    srv = StratumServer(stratum)
    srv.start_background()
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(NAME, f"{srv.url}/{NAME}", os.path.join(keys, f"{NAME}.pub")),
        LC_ALL="C",
    )
    yield src, Parrot(env, str(base / "cache"))
    srv.shutdown()


def _peak(stderr: bytes) -> float:
    m = re.search(rb"supervisor peak memory (\d+) MB", stderr)
    assert m, stderr
    return float(m.group(1))


def test_ls_l_of_a_hundred_thousand_entries(huge):
    src, parrot = huge
    script = f"ls -l --time-style=+%s /cvmfs/{NAME}/big | tail -n +2 | sed 's/  */ /g' | cut -d' ' -f1,2,5-"
    native = subprocess.run(
        ["sh", "-c", script.replace(f"/cvmfs/{NAME}", src)], capture_output=True
    ).stdout
    for run in ("cold", "warm"):
        p = parrot("sh", "-c", script, options=("--stats",))
        assert p.returncode == 0, p.stderr
        assert p.stdout == native, run
        assert len(p.stdout.splitlines()) == N + 1
        assert _peak(p.stderr) < PEAK_MB, (run, p.stderr.decode()[-300:])
        # nearly every stat and getxattr was answered in C
        m = re.search(rb"(\d+) handled in Python", p.stderr)
        assert m and int(m.group(1)) < 100, p.stderr.decode()[-600:]


def test_find_and_stat_through_a_huge_directory(huge):
    src, parrot = huge
    mnt = f"/cvmfs/{NAME}"
    p = parrot(
        "sh",
        "-c",
        f"find {mnt}/big -printf '%s %y %p\\n' | sort | sha256sum; "
        f"stat -c '%s %h' {mnt}/big/f099999 {mnt}/big/zlink; readlink {mnt}/big/zlink",
        options=("--stats",),
    )
    native = subprocess.run(
        [
            "sh",
            "-c",
            f"find {src}/big -printf '%s %y %p\\n' | sed 's#{src}#{mnt}#' | sort | sha256sum; "
            f"stat -c '%s %h' {src}/big/f099999 {src}/big/zlink; readlink {src}/big/zlink",
        ],
        capture_output=True,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == native.stdout
    assert _peak(p.stderr) < PEAK_MB
