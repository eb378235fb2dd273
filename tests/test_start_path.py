"""The README's start-up promise: parrot_run's start path imports no `argparse`,
`typing`, `re`, `enum` or `subprocess` (nor `contextlib`, `datetime`, `urllib.parse`,
which it avoids as well), so one careless import fails here instead of slowing every
job's start silently. Each check runs in a fresh interpreter, as the launcher does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import base_env, repo_spec

LAUNCHER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "parrot_run"
)
AVOIDED = {
    "argparse",
    "typing",
    "re",
    "enum",
    "subprocess",
    "contextlib",
    "datetime",
    "urllib.parse",
}


def imported(argv: list[str], env: dict[str, str] | None = None) -> tuple[set[str], bytes]:
    """The modules `python -X importtime ARGV` imports beyond a bare interpreter's,
    and the run's stderr without the import lines."""

    def run(args: list[str]) -> tuple[set[str], bytes]:
        p = subprocess.run(
            [sys.executable, "-X", "importtime", *args],
            env=env or base_env(),
            capture_output=True,
            timeout=300,
        )
        names, rest = set(), []
        for line in p.stderr.splitlines(keepends=True):
            if line.startswith(b"import time:"):
                names.add(line.rsplit(b"|", 1)[1].strip().decode())
            else:
                rest.append(line)
        assert p.returncode == 0, b"".join(rest).decode()
        return names, b"".join(rest)

    bare, _ = run(["-c", "pass"])
    names, err = run(argv)
    return names - bare - {"import time: self [us]"}, err


def test_importing_the_launcher_pulls_none_of_the_avoided_modules():
    names, _ = imported(["-c", "import parrot_cvmfs.tracer.main"])
    assert "parrot_cvmfs.tracer.main" in names
    assert not names & AVOIDED


@pytest.mark.tracer
def test_a_warm_job_start_pulls_none_of_the_avoided_modules(published, published_server, tmp_path):
    """The whole start path of a job whose cache is warm: launcher, configuration,
    mount from the kept manifest, the supervisor and the job's first /cvmfs reads."""
    env = base_env(
        PARROT_CVMFS_REPO=repo_spec(
            published.name, f"{published_server.url}/{published.name}", published.pubkey
        )
    )
    argv = [LAUNCHER, "--cache-dir", str(tmp_path / "c"), "--", "cat"]
    argv.append(f"/cvmfs/{published.name}/links/target.txt")
    cold, _ = imported(argv, env)
    assert "parrot_cvmfs.tracer.main" in cold
    warm, _ = imported(argv, env)
    assert not warm & AVOIDED, sorted(warm & AVOIDED)
