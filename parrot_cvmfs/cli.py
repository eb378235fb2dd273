"""`parrot_cvmfs`: inspect repositories, publish and serve them.

Every failure ends with one line on stderr naming what was wrong and a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._version import __version__
from .commands import EXIT_ERROR, EXIT_USAGE
from .commands.inspect import cmd_cat, cmd_find, cmd_info, cmd_ls, cmd_stat, cmd_tags
from .commands.options import add_client_options, add_pubkey_option, add_trust_options
from .commands.output import detect_terminal, flush
from .commands.publishing import (
    cmd_demo,
    cmd_preload,
    cmd_publish,
    cmd_serve,
    cmd_unbundle,
)
from .errors import CvmfsError, one_line, one_line_text


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line_text(message)} (see {self.prog} --help)\n")


EXAMPLES = """\
  parrot_cvmfs ls -l alice.cern.ch /
  parrot_cvmfs find --json atlas.cern.ch /repo/sw/tools
  parrot_cvmfs preload -u http://s1.example.org/cvmfs/NAME -r /scratch/preload -k NAME.pub
"""


def build_parser() -> argparse.ArgumentParser:
    from .client.config import ENVIRONMENT_HELP

    p = _Parser(
        prog="parrot_cvmfs",
        description="CernVM-FS client tools: inspect, publish and serve repositories.",
        epilog=f"environment:\n{ENVIRONMENT_HELP}\nexamples:\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"parrot_cvmfs {__version__}")
    p.add_argument("--debug", action="store_true", help="with an error, show its traceback")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_cmd(name, func, help_, path=False, optional_path=False):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("name", metavar="NAME", help="repository name, e.g. alice.cern.ch")
        if path:
            sp.add_argument("path", metavar="PATH", help="path inside the repository")
        if optional_path:
            sp.add_argument("path", metavar="PATH", nargs="?", default="/", help="default: /")
        add_client_options(sp)
        sp.set_defaults(func=func)
        return sp

    def command(name, func, help_):
        """A command whose --help describes it with its function's docstring."""
        sp = sub.add_parser(name, help=help_, description=func.__doc__)
        sp.set_defaults(func=func)
        return sp

    sp = client_cmd("info", cmd_info, "print the verified manifest (key: value lines)")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp = client_cmd("ls", cmd_ls, "list a directory", optional_path=True)
    sp.add_argument("-l", "--long", action="store_true", help="long format")
    sp.add_argument(
        "-d", "--directory", action="store_true", help="list the entry, not its contents"
    )
    sp.add_argument(
        "--json", action="store_true", help="one JSON object an entry, as find's, with name"
    )
    client_cmd("cat", cmd_cat, "write a file's verified contents to stdout", path=True)
    sp = client_cmd("stat", cmd_stat, "show an entry's attributes", path=True)
    sp.add_argument("-L", "--dereference", action="store_true", help="follow a final symlink")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp = client_cmd("find", cmd_find, "walk a tree recursively", optional_path=True)
    sp.add_argument(
        "--json",
        action="store_true",
        help="one JSON object a line: path type mode size mtime nlink symlink hash chunks xattrs",
    )
    sp.add_argument(
        "--sha256", action="store_true", help="with --json: add the sha256 of file contents"
    )
    sp = client_cmd("tags", cmd_tags, "list the repository's tags")
    sp.add_argument("--json", action="store_true")

    sp = command("publish", cmd_publish, "publish a directory as a signed repository")
    sp.add_argument("source", metavar="SRC")
    sp.add_argument("--name", required=True)
    sp.add_argument("--stratum", required=True, metavar="DIR")
    sp.add_argument("--keys", required=True, metavar="KEYDIR")
    sp.add_argument("--tag", help="tag the new revision")
    sp.add_argument("--description", help="tag description")
    sp.add_argument(
        "--dirtab", metavar="FILE", help="nested catalog rules (default: SRC/.cvmfsdirtab)"
    )
    sp.add_argument("--hash", choices=["sha1", "rmd160", "shake128"], default="sha1")
    sp.add_argument("--no-compression", action="store_true", help="store file objects uncompressed")
    sp.add_argument("--no-chunking", action="store_true")
    sp.add_argument("--min-chunk", type=float, default=4, metavar="MiB")
    sp.add_argument("--avg-chunk", type=float, default=8, metavar="MiB")
    sp.add_argument("--max-chunk", type=float, default=16, metavar="MiB")
    sp.add_argument("--ttl", type=int, default=240, help="catalog TTL in seconds")
    sp.add_argument("--whitelist-days", type=int, default=30)
    sp.add_argument("--no-xattrs", action="store_true")
    sp.add_argument("-j", "--jobs", type=int, default=0)
    sp.add_argument("-v", "--verbose", action="store_true")

    sp = command("serve", cmd_serve, "serve stratum directories over HTTP")
    sp.add_argument("directory", metavar="DIR")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.add_argument(
        "--geo-order", metavar="HOST,HOST", help="Geo-API: these host names first, in this order"
    )
    sp.add_argument(
        "--geo-places",
        metavar="FILE",
        help="Geo-API: order by distance, from lines NAME LATITUDE LONGITUDE (`client`: default)",
    )

    from .client.preload import DEFAULT_JOBS

    sp = command(
        "preload", cmd_preload, "fill a directory to use as a read-only alien cache (cvmfs_preload)"
    )
    sp.add_argument("-u", "--url", required=True, help="http://HOST/cvmfs/NAME (a stratum 0 or 1)")
    sp.add_argument("-r", "--directory", required=True, metavar="DIR")
    sp.add_argument("-d", "--dirtab", metavar="DIRTAB", help="preload only these subtrees")
    add_pubkey_option(sp, "NAME")
    sp.add_argument("-m", "--name", help="repository name (default: the last part of URL)")
    sp.add_argument(
        "-j",
        "-n",
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"parallel downloads (default {DEFAULT_JOBS})",
    )
    sp.add_argument("-t", "--timeout", type=int, metavar="SECONDS", help="network timeout")
    sp.add_argument("-a", "--retries", type=int, metavar="N", help="retries of a download")
    sp.add_argument(
        "--bundle",
        metavar="FILE.tar.zst",
        help="also write the preloaded revision as one verifiable archive (for unbundle)",
    )
    add_trust_options(sp)

    sp = command(
        "unbundle", cmd_unbundle, "verify a preload bundle and install it into a directory"
    )
    sp.add_argument("bundle", metavar="FILE")
    sp.add_argument("-r", "--directory", required=True, metavar="DIR")
    add_pubkey_option(sp, "the bundle's repository")
    add_trust_options(sp)

    sp = sub.add_parser("demo", help="publish, serve and read the example repository (offline)")
    sp.add_argument("--keep", action="store_true", help="keep the temporary stratum and cache")
    sp.set_defaults(func=cmd_demo)
    return p


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion (`eval "$(register-python-argcomplete parrot_cvmfs)"`), asked by
    the shell through _ARGCOMPLETE: argcomplete, the optional extra `completion`, is
    imported only then; without it there is nothing to complete."""
    try:
        import argcomplete
    except ImportError:
        sys.exit(1)
    argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    """Run one command: its exit status, or 1 with one line on stderr naming what was
    wrong (the traceback too with --debug)."""
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:
        _complete(parser)
    args = parser.parse_args(argv)
    detect_terminal()
    if args.debug:  # the network path's findings (PAC files, Geo-API) too
        from .client.network import set_debug_log

        set_debug_log(lambda line: print(f"parrot_cvmfs: {line}", file=sys.stderr, flush=True))
    try:
        code = args.func(args)
        flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            return EXIT_ERROR  # noqa: B012
    except Exception as e:
        text = one_line(e)
        if isinstance(e, OSError) and not isinstance(e, CvmfsError) and e.filename is None:
            text = f"{args.command}: {text}"  # what it was about, at least
        print(f"parrot_cvmfs: {text}", file=sys.stderr)
        if args.debug:
            import traceback

            traceback.print_exc()
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
