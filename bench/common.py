"""What the parrot_run benchmarks share: a scratch directory, and a tree published
and served on loopback with the environment that names it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from parrot_cvmfs.server.publisher import PublishOptions, PublishResult, publish
from parrot_cvmfs.server.serve import StratumServer


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[str]:
    """A scratch directory for one benchmark run, removed after it (also on failure)."""
    work = tempfile.mkdtemp(prefix=prefix)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def published_and_served(
    src: str, work: str, name: str, mode: str | None = None
) -> Iterator[tuple[dict[str, str], PublishResult]]:
    """`src` published as `name` below `work` and served in the background for the
    block: (the environment naming the repository for parrot_run, the publish result)."""
    stratum, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
    result = publish(PublishOptions(source=src, name=name, stratum=stratum, keys_dir=keys))
    srv = StratumServer(stratum)
    srv.start_background()
    env = dict(os.environ)
    env["PARROT_CVMFS_REPO"] = f"{name}:url={srv.url}/{name},pubkey={keys}/{name}.pub"
    env["PARROT_CVMFS_CONFIG_DIR"] = "/nonexistent"
    if mode:
        env["PARROT_CVMFS_MODE"] = mode
    try:
        yield env, result
    finally:
        srv.shutdown()


def stratum_server_class(serve_py: str | None = None) -> type:
    """`StratumServer`, from the package or from another checkout's serve.py (a
    baseline's, for before/after figures with the same client)."""
    if not serve_py:
        return StratumServer
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_serve", serve_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.StratumServer
