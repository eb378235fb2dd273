"""`parrot_cvmfs demo`: publish the example repository into a temporary stratum,
serve it on loopback, and run examples/job.sh under parrot_run against it. It
needs no network beyond loopback."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile

from .server.publisher import PublishOptions, publish
from .server.serve import StratumServer

DEMO_NAME = "demo.parrot-cvmfs.org"


def examples_dir() -> str:
    """examples/ of the source tree (the demo needs the checkout, not only the package)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.join(here, "examples")
    if os.path.isdir(os.path.join(candidate, "demo-repo")):
        return candidate
    raise FileNotFoundError("examples/demo-repo not found (run the demo from a source checkout)")


def stage_tree(dest: str) -> str:
    """Copy examples/demo-repo, compile its C program, add a chunked data file."""
    src = os.path.join(examples_dir(), "demo-repo")
    subprocess.run(["cp", "-a", src, dest], check=True)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        subprocess.run(
            [
                cc,
                "-O2",
                "-o",
                os.path.join(dest, "bin", "hello-c"),
                os.path.join(dest, "src", "hello.c"),
            ],
            check=True,
        )
    rnd = random.Random(2026)
    with open(os.path.join(dest, "data", "large.bin"), "wb") as f:
        f.write(rnd.randbytes(24 * 1024 * 1024))  # above the chunking threshold
    return dest


def run_demo(keep: bool = False) -> int:
    """Publish, serve and run examples/job.sh under parrot_run; returns its exit status."""
    work = tempfile.mkdtemp(prefix="parrot-cvmfs-demo.")
    try:
        tree = stage_tree(os.path.join(work, "tree"))
        stratum, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
        r = publish(
            PublishOptions(source=tree, name=DEMO_NAME, stratum=stratum, keys_dir=keys, tag="demo")
        )
        print(
            f"published {DEMO_NAME} revision {r.revision}: {r.files} files, {r.catalogs} catalogs,"
            f" keys in {keys}"
        )
        srv = StratumServer(stratum)
        srv.start_background()
        print(f"serving it at {srv.url}/{DEMO_NAME}")
        spec = f"{DEMO_NAME}:url={srv.url}/{DEMO_NAME},pubkey={keys}/{DEMO_NAME}.pub"
        env = dict(os.environ, PARROT_CVMFS_REPO=spec)
        job = os.path.join(examples_dir(), "job.sh")
        cmd = [
            sys.executable,
            "-m",
            "parrot_cvmfs.tracer.main",
            "--cvmfs",
            DEMO_NAME,
            "--cache-dir",
            os.path.join(work, "cache"),
            "--stats",
            "--",
            "/bin/sh",
            job,
        ]
        print(
            f"running: parrot_run --cvmfs {DEMO_NAME} --stats -- /bin/sh examples/job.sh\n",
            flush=True,
        )
        rc = subprocess.run(cmd, env=env).returncode
        srv.shutdown()
        print(f"\ndemo {'finished' if rc == 0 else f'FAILED (exit status {rc})'}")
        return rc
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
