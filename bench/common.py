"""What the parrot_run benchmarks share: a tree published and served on loopback, and
the environment that names it."""

from __future__ import annotations

import os

from parrot_cvmfs.server.publisher import PublishOptions, PublishResult, publish
from parrot_cvmfs.server.serve import StratumServer


def publish_and_serve(
    src: str, work: str, name: str, mode: str | None = None
) -> tuple[StratumServer, dict[str, str], PublishResult]:
    """`src` published as `name` below `work`, served in the background: (the server,
    the environment naming the repository for parrot_run, the publish result). The
    caller shuts the server down."""
    stratum, keys = os.path.join(work, "stratum"), os.path.join(work, "keys")
    result = publish(PublishOptions(source=src, name=name, stratum=stratum, keys_dir=keys))
    srv = StratumServer(stratum)
    srv.start_background()
    env = dict(os.environ)
    env["PARROT_CVMFS_REPO"] = f"{name}:url={srv.url}/{name},pubkey={keys}/{name}.pub"
    env["PARROT_CVMFS_CONFIG_DIR"] = "/nonexistent"
    if mode:
        env["PARROT_CVMFS_MODE"] = mode
    return srv, env, result
