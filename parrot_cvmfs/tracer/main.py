"""`parrot_run`: run a command with a read-only /cvmfs, without FUSE or root."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parrot_run",
        usage="parrot_run [options] [--] CMD [ARGS...]",
        description="Run CMD with /cvmfs served from CernVM-FS repositories: any configured "
        "repository appears under /cvmfs/NAME on first access.",
    )
    p.add_argument(
        "--cvmfs",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="mount these repositories at start (and fail if they cannot be verified)",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: per-user cache)")
    p.add_argument("--alien-cache", metavar="DIR", help="read-only preloaded cache consulted first")
    p.add_argument(
        "--offline",
        action="store_true",
        help="no network: stored manifests and cached objects only",
    )
    p.add_argument("--verify-at", metavar="DATE", help="check whitelist expiry as of this UTC date")
    p.add_argument(
        "-o",
        "--option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set a CVMFS_* parameter (repeatable)",
    )
    p.add_argument(
        "--config-dir", metavar="DIR", help="cvmfs configuration directory (default /etc/cvmfs)"
    )
    p.add_argument(
        "--stats", action="store_true", help="print interception and transfer counts at exit"
    )
    p.add_argument("--debug", action="store_true", help="print every call handled in Python")
    p.add_argument("--version", action="version", version=f"parrot_run {__version__}")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd = args.command
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "parrot_run: no command given (usage: parrot_run [options] [--] CMD [ARGS...])",
            file=sys.stderr,
        )
        return 2
    from ..client.config import Configuration
    from ..errors import CvmfsError
    from .supervisor import Options, Supervisor

    try:
        overrides = {}
        for item in args.option:
            if "=" not in item:
                raise CvmfsError(f"-o expects KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            overrides[k.strip()] = v
        verify_at = None
        if args.verify_at:
            from ..client.history import parse_repository_date

            try:
                verify_at = float(parse_repository_date(args.verify_at))
            except ValueError as e:
                raise CvmfsError(str(e)) from None
        names = [n for item in args.cvmfs for n in item.split(",") if n]
        opts = Options(
            command=cmd,
            cvmfs=names,
            cache_dir=args.cache_dir,
            alien_cache=args.alien_cache,
            verify_at=verify_at,
            offline=args.offline,
            stats=args.stats,
            debug=args.debug,
            config=Configuration(config_dir=args.config_dir, overrides=overrides),
        )
        sup = Supervisor(opts)
    except (CvmfsError, OSError) as e:
        print(
            f"parrot_run: {e.strerror if isinstance(e, OSError) and not isinstance(e, CvmfsError) else e}",
            file=sys.stderr,
        )
        return 1
    try:
        return sup.run()
    finally:
        sup.close()
        sys.stdout.flush()
        os.sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
