"""The README's first command: the demo publishes, serves and runs examples/job.sh."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import base_env

pytestmark = pytest.mark.tracer


def test_demo_runs_the_job(tmp_path):
    env = base_env(PARROT_CVMFS_CACHE=str(tmp_path / "cache"))
    p = subprocess.run(
        [sys.executable, "-m", "parrot_cvmfs", "demo"], env=env, capture_output=True, timeout=600
    )
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode())
    for expected in (
        "job done",
        "demo finished",
        "hello.sh: running as /cvmfs/demo.parrot-cvmfs.org/bin/hello.sh",
        "/proc/self/exe = /cvmfs/demo.parrot-cvmfs.org/bin/hello-c",
        "demo_pkg imported from the repository",
        "Read-only file system",
    ):
        assert expected in out, expected
    assert "intercepted calls" in p.stderr.decode()
