"""The options commands share: how a chain is verified, how a repository is opened."""

from __future__ import annotations

import argparse

from ..errors import CvmfsError


def _parse_when(text: str) -> float:
    from ..format.history import parse_repository_date

    try:
        return float(parse_repository_date(text))
    except CvmfsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v


def add_trust_options(sp) -> None:
    """--verify-at, -o and --config-dir: how a chain is verified (a parser or a group)."""
    sp.add_argument(
        "--verify-at",
        metavar="DATE",
        type=_parse_when,
        help="check whitelist expiry as of this UTC date (archived repositories)",
    )
    sp.add_argument(
        "-o",
        "--option",
        metavar="KEY=VALUE",
        type=_kv,
        action="append",
        default=[],
        help="set a CVMFS_* parameter (repeatable)",
    )
    sp.add_argument(
        "--config-dir", metavar="DIR", help="cvmfs configuration directory (default /etc/cvmfs)"
    )


def add_pubkey_option(sp, whose: str) -> None:
    """-k/--pubkey: the master keys a chain is verified with, by default `whose`."""
    sp.add_argument(
        "-k",
        "--pubkey",
        metavar="PUBKEY[:PUBKEY...]",
        help=f"master public keys (default: the configured ones for {whose})",
    )


def add_client_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repository access")
    g.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: per-user cache)")
    add_trust_options(g)
    g.add_argument(
        "--alien-cache",
        "--cvmfs-alien-cache",
        metavar="DIR",
        help="read-only preloaded cache consulted first (default $PARROT_CVMFS_ALIEN_CACHE)",
    )
    g.add_argument(
        "-r",
        "--cvmfs-repos",
        metavar="REPOS",
        help="repositories in PARROT_CVMFS_REPO's syntax (replaces $PARROT_CVMFS_REPO)",
    )
    g.add_argument(
        "--offline", action="store_true", help="use only the cache; never touch the network"
    )
    pin = g.add_mutually_exclusive_group()
    pin.add_argument("--tag", help="mount the revision with this tag")
    pin.add_argument("--date", help="mount the newest revision published before this UTC date")
    pin.add_argument("--root-hash", metavar="HASH", help="mount this root catalog")


def open_repository(args, name: str, attach: bool = True):
    from ..client.config import Configuration, check_directory_option
    from ..client.repository import Repository

    if args.config_dir is not None:
        check_directory_option("--config-dir", args.config_dir)
    config = Configuration(
        config_dir=args.config_dir, overrides=dict(args.option), parrot_repos=args.cvmfs_repos
    )
    return Repository.mount(
        name,
        cache_dir=config.run_cache_dir(args.cache_dir),
        config=config,
        tag=args.tag,
        date=args.date,
        root_hash=args.root_hash,
        verify_at=args.verify_at,
        offline=args.offline or None,
        alien_cache=config.run_alien_cache(args.alien_cache),
        attach=attach,
    )
