"""`parrot_cvmfs demo`: publish the example repository into a temporary stratum,
serve it on loopback and read it back, with no network beyond loopback."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile

from .client.config import Configuration
from .client.repository import Repository
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
        subprocess.run([cc, "-O2", "-o", os.path.join(dest, "bin", "hello-c"),
                        os.path.join(dest, "src", "hello.c")], check=True)
    rnd = random.Random(2026)
    with open(os.path.join(dest, "data", "large.bin"), "wb") as f:
        f.write(rnd.randbytes(24 * 1024 * 1024))  # above the chunking threshold
    return dest


def run_demo(keep: bool = False) -> int:
    work = tempfile.mkdtemp(prefix="parrot-cvmfs-demo.")
    try:
        tree = stage_tree(os.path.join(work, "tree"))
        stratum, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
        r = publish(PublishOptions(source=tree, name=DEMO_NAME, stratum=stratum, keys_dir=keys,
                                   tag="demo"))
        print(f"published {DEMO_NAME} revision {r.revision}: {r.files} files, {r.catalogs} catalogs")
        srv = StratumServer(stratum)
        srv.start_background()
        print(f"serving it at {srv.url}/{DEMO_NAME}")
        spec = f"{DEMO_NAME}:url={srv.url}/{DEMO_NAME},pubkey={keys}/{DEMO_NAME}.pub"
        env = dict(os.environ, PARROT_CVMFS_REPO=spec)
        config = Configuration(env=env)
        with Repository.mount(DEMO_NAME, cache_dir=os.path.join(work, "cache"), config=config) as repo:
            info = repo.info()
            print(f"verified manifest: revision {info['revision']}, root catalog {info['root_hash']},"
                  f" certificate {info['certificate_fingerprint']}")
            for e in repo.walk("/"):
                s = repo.stat_entry(e)
                extra = f" -> {repo.readlink(e.path)}" if e.is_symlink else ""
                print(f"  {oct(s.st_mode)[-6:]:>6} {s.st_size:>10} /cvmfs/{DEMO_NAME}{e.path}{extra}")
            print(repo.read("/README.txt").decode(), end="")
        srv.shutdown()
        return 0
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

