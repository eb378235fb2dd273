"""`parrot_cvmfs`: inspect repositories, publish and serve them.

Every failure ends with one line on stderr naming what was wrong and a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import stat as st
import sys
import time

from ._version import __version__
from .errors import CvmfsError, one_line, one_line_text

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parse_when(text: str) -> float:
    from .format.history import parse_repository_date

    try:
        return float(parse_repository_date(text))
    except CvmfsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v


def _add_trust_options(sp) -> None:
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


def add_client_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repository access")
    g.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: per-user cache)")
    _add_trust_options(g)
    g.add_argument("--alien-cache", metavar="DIR", help="read-only preloaded cache consulted first")
    g.add_argument(
        "--offline", action="store_true", help="use only the cache; never touch the network"
    )
    pin = g.add_mutually_exclusive_group()
    pin.add_argument("--tag", help="mount the revision with this tag")
    pin.add_argument("--date", help="mount the newest revision published before this UTC date")
    pin.add_argument("--root-hash", metavar="HASH", help="mount this root catalog")


def open_repository(args, name: str, attach: bool = True):
    from .client.config import Configuration, check_directory_option
    from .client.repository import Repository

    if args.config_dir is not None:
        check_directory_option("--config-dir", args.config_dir)
    if args.alien_cache is not None:
        check_directory_option("--alien-cache", args.alien_cache)
    config = Configuration(config_dir=args.config_dir, overrides=dict(args.option))
    return Repository.mount(
        name,
        cache_dir=args.cache_dir,
        config=config,
        tag=args.tag,
        date=args.date,
        root_hash=args.root_hash,
        verify_at=args.verify_at,
        offline=args.offline or None,
        alien_cache=args.alien_cache,
        attach=attach,
    )


# -- output -------------------------------------------------------------------------------------


class OutputError(CvmfsError):
    """Standard output cannot be written (a full disk, a closed descriptor)."""


def _write(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def _line(text: str) -> None:
    """One line to stdout; names are bytes on Linux and leave as the bytes they are."""
    _write(text.encode("utf-8", "surrogateescape") + b"\n")


def _flush() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def _warn(text: str) -> None:
    print(f"parrot_cvmfs: {text}", file=sys.stderr, flush=True)


def _utc(t: int, fmt: str) -> str:
    """A timestamp from a catalog as UTC text (the number itself if no calendar has it)."""
    try:
        return time.strftime(fmt, time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return str(t)


# Terminal display of names as GNU ls shows them (--quoting-style=shell-escape, its
# default on a terminal): a name a shell would read differently is quoted, control
# characters become $'\n' escapes, so no name can move the cursor or recolour the
# terminal; piped, names stay raw.
_SHELL_SPECIAL = frozenset(" !\"$&'()*;<=>?[\\^`|")
_DOUBLE_QUOTE_SAFE = frozenset(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz %+,-./:@]_'"
)
_LETTER_ESCAPES = {7: "a", 8: "b", 9: "t", 10: "n", 11: "v", 12: "f", 13: "r"}
_UNPRINTABLE = frozenset(("Cc", "Cn", "Cs", "Zl", "Zp"))


def _locale_is_utf8(env=os.environ) -> bool:
    value = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    return "utf-8" in value.lower() or "utf8" in value.lower()


def quote_name(name: str, utf8: bool = True) -> str:
    """`name` (surrogate escapes for non-UTF-8 bytes) as GNU ls prints it on a
    terminal; `utf8`: the locale's characters beyond ASCII are printable."""
    import unicodedata

    units: list[tuple[str, bool]] = []  # (text, is an escape)
    for c in name:
        o = ord(c)
        if 0x20 <= o < 0x7F or (
            utf8 and o >= 0xA0 and not 0xDC80 <= o <= 0xDCFF
            and unicodedata.category(c) not in _UNPRINTABLE
        ):  # fmt: skip
            units.append((c, False))
        else:
            escapes = [
                "\\" + _LETTER_ESCAPES[b] if b in _LETTER_ESCAPES else f"\\{b:03o}"
                for b in c.encode("utf-8", "surrogateescape")
            ]
            units.append(("".join(escapes), True))
    escaped = any(esc for _, esc in units)
    if not (
        escaped
        or name in ("{", "}")
        or name[:1] in ("#", "~")
        or any(c in _SHELL_SPECIAL for c in name)
    ):
        return name
    quote = "'" in name
    if quote and not escaped:
        rest = name[1:] if name[:1] in ("#", "~") else name
        if all(c in _DOUBLE_QUOTE_SAFE or ord(c) > 0x7F for c in rest):
            return f'"{name}"'
    # single quotes, $'...' around escapes, '\'' for a quote; as in GNU's quotearg, a
    # name with a quote that ends in an escape starts as if in an escape (it measures
    # the name first and keeps that pass's state)
    pending = quote and units[-1][1]
    out = ["'"]
    for text, esc in units:
        if esc:
            if not pending:
                out.append("'$'")
                pending = True
            out.append(text)
        elif text == "'":
            out.append("'\\''")
            pending = False
        else:
            if pending:
                out.append("''")
                pending = False
            out.append(text)
    out.append("'")
    return "".join(out)


def _display(name: str) -> str:
    """A name for stdout: quoted on a terminal, raw otherwise."""
    if _STDOUT_IS_TTY:
        return quote_name(name, _locale_is_utf8())
    return name


_STDOUT_IS_TTY = False


# -- inspection ---------------------------------------------------------------------------------


def cmd_info(args) -> int:
    with open_repository(args, args.name, attach=False) as repo:
        for k, v in repo.info().items():
            _line(f"{k}: {one_line_text(v)}")  # a tag's name is the publisher's text
    return 0


def _mode_string(mode: int) -> str:
    return st.filemode(mode)


def cmd_ls(args) -> int:
    with open_repository(args, args.name) as repo:
        entry = repo.resolve(args.path)
        entries = repo.scandir(args.path) if entry.is_dir and not args.directory else [entry]
        for e in entries:
            name = e.name if entry.is_dir and not args.directory else (args.path or "/")
            name = _display(name)
            if args.long:
                s = repo.stat_entry(e)
                when = _utc(s.st_mtime, "%Y-%m-%d %H:%M")
                link = f" -> {_display(repo.expand_symlink(e))}" if e.is_symlink else ""
                _line(
                    f"{_mode_string(s.st_mode)} {s.st_nlink:>3} {s.st_size:>12} {when} {name}{link}"
                )
            else:
                _line(name)
    return 0


def cmd_cat(args) -> int:
    with open_repository(args, args.name) as repo:
        path = repo.local_path(args.path)  # fully fetched and verified before a byte is written
        with open(path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                _write(block)
        _flush()
    return 0


def _entry_record(repo, e, with_sha256: bool = False) -> dict:
    """The JSON record of an entry. A part that cannot be read (a malformed xattr
    list, a chunk list, contents) is left out and named in `error`."""
    rec = {
        "path": e.path or "/",
        "type": e.kind,
        "mode": e.mode,
        "size": len(e.symlink.encode("utf-8", "surrogateescape"))
        if e.is_symlink
        else (0 if e.is_special else e.size),
        "mtime": e.mtime,
        "nlink": e.linkcount,
    }
    if e.is_symlink:
        rec["symlink"] = e.symlink
    rec["hash"] = e.hash.hex if e.hash else None
    try:
        chunks = repo.chunks(e)
        rec["chunks"] = len(chunks) if chunks else (1 if e.is_regular else 0)
        rec["xattrs"] = {k: v.hex() for k, v in sorted(repo.stored_xattrs(e).items())}
        if with_sha256 and e.is_regular:
            import hashlib

            h = hashlib.sha256()
            with open(repo.local_path(e), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            rec["sha256"] = h.hexdigest()
    except CvmfsError as err:
        rec["error"] = str(err)
    return rec


def cmd_stat(args) -> int:
    with open_repository(args, args.name) as repo:
        e = repo.resolve(args.path, follow=args.dereference)
        s = repo.stat_entry(e)
        rec = _entry_record(repo, e)
        if "error" in rec:
            raise CvmfsError(rec["error"])
        rec.update(
            inode=s.st_ino,
            uid=s.st_uid,
            gid=s.st_gid,
            blocks=s.st_blocks,
            mtime_nsec=s.st_mtime_nsec,
            catalog=(e.catalog.mountpoint or "/"),
        )
        if e.is_symlink:
            rec["target"] = repo.expand_symlink(e)
        rec["size"] = s.st_size
        if args.json:
            _line(json.dumps(rec, ensure_ascii=False))
        else:
            for k, v in rec.items():
                if k == "mode":
                    v = f"{v:o} ({_mode_string(v)})"
                elif k in ("path", "symlink", "target", "catalog"):
                    v = _display(v)
                _line(f"{k}: {v}")
    return 0


def cmd_find(args) -> int:
    """Every entry below PATH; an entry or directory that cannot be read is reported
    (one line on stderr, `error` in its JSON record) and the walk goes on; exit 1."""
    failures = 0

    def report(e: CvmfsError) -> None:
        nonlocal failures
        failures += 1
        _warn(str(e))

    with open_repository(args, args.name) as repo:
        for e in repo.walk(args.path, onerror=report):
            if args.json:
                rec = _entry_record(repo, e, args.sha256)
                if "error" in rec:
                    report(CvmfsError(rec["error"]))
                _line(json.dumps(rec, ensure_ascii=False))
            else:
                _line(_display(e.path or "/"))
    return EXIT_ERROR if failures else 0


def cmd_tags(args) -> int:
    with open_repository(args, args.name, attach=False) as repo:
        tags = repo.tags()
        if args.json:
            for t in tags:
                _line(
                    json.dumps(
                        {
                            "name": t.name,
                            "revision": t.revision,
                            "timestamp": t.timestamp,
                            "root_hash": t.root_hash.hex,
                            "description": t.description,
                        },
                        ensure_ascii=False,
                    )
                )
            return 0
        for t in tags:
            when = _utc(t.timestamp, "%Y-%m-%dT%H:%M:%SZ")
            _line(
                f"{_display(t.name)}\t{t.revision}\t{when}\t{t.root_hash.hex}\t{one_line_text(t.description)}"
            )
    return 0


# -- publishing and serving --------------------------------------------------------------------


def cmd_publish(args) -> int:
    from .format.hashes import ALGORITHM_BY_NAME
    from .server.chunking import ChunkSizes
    from .server.publisher import PublishOptions, publish

    mib = 1 << 20
    opts = PublishOptions(
        source=args.source,
        name=args.name,
        stratum=args.stratum,
        keys_dir=args.keys,
        tag=args.tag,
        tag_description=args.description or "",
        dirtab=args.dirtab,
        hash_algorithm=ALGORITHM_BY_NAME[args.hash],
        compress=not args.no_compression,
        chunking=not args.no_chunking,
        chunk_sizes=ChunkSizes(
            int(args.min_chunk * mib), int(args.avg_chunk * mib), int(args.max_chunk * mib)
        ),
        ttl=args.ttl,
        whitelist_days=args.whitelist_days,
        include_xattrs=not args.no_xattrs,
        jobs=args.jobs,
    )
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else None
    r = publish(opts, log)
    for k in r.keys_created:
        print(f"created {k}", file=sys.stderr)
    print(
        f"published {args.name} revision {r.revision} ({r.root_hash.hex}): {r.files} files,"
        f" {r.catalogs} catalogs, {r.objects_written} objects written"
        f" ({r.bytes_written / 1e6:.1f} MB), {r.objects_reused} reused, {r.seconds:.2f} s"
    )
    return 0


def cmd_serve(args) -> int:
    from .server.serve import StratumServer

    if not os.path.isdir(args.directory):
        raise CvmfsError(f"stratum directory {args.directory} does not exist")
    try:
        srv = StratumServer(args.directory, args.host, args.port, verbose=args.verbose)
    except OSError as e:
        raise CvmfsError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    print(f"serving {os.path.abspath(args.directory)} at {srv.url}/<name>", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def cmd_preload(args) -> int:
    from .client.config import Configuration, check_directory_option
    from .client.preload import preload, tqdm_progress

    options = dict(args.option)
    if args.timeout is not None:  # cvmfs_preload's -t applies to direct and proxied transfers
        options["CVMFS_TIMEOUT"] = options["CVMFS_TIMEOUT_DIRECT"] = str(args.timeout)
    if args.retries is not None:
        options["CVMFS_MAX_RETRIES"] = str(args.retries)
    if args.config_dir is not None:
        check_directory_option("--config-dir", args.config_dir)
    config = Configuration(config_dir=args.config_dir, overrides=options)
    progress, done = tqdm_progress()
    try:
        r = preload(
            args.url,
            args.directory,
            name=args.name,
            dirtab=args.dirtab,
            pubkeys=args.pubkey,
            jobs=args.jobs,
            config=config,
            verify_at=args.verify_at,
            progress=progress,
            bundle=args.bundle,
        )
    finally:
        done()
    print(r.summary(args.directory), flush=True)
    if r.bundle is not None:
        print(
            f"bundled revision {r.revision} of {r.fqrn} into {args.bundle}: "
            f"{r.bundle.members} members ({r.bundle.bytes / 1e6:.1f} MB)"
        )
    return 0


def cmd_unbundle(args) -> int:
    from .client.bundle import unbundle
    from .client.config import Configuration

    config = Configuration(config_dir=args.config_dir, overrides=dict(args.option))
    r = unbundle(
        args.bundle,
        args.directory,
        pubkeys=args.pubkey,
        config=config,
        verify_at=args.verify_at,
    )
    print(
        f"unbundled revision {r.revision} of {r.fqrn} from {args.bundle} into "
        f"{args.directory}: {r.objects} objects written, {r.present} already present"
    )
    if not r.taken:
        print(
            f"parrot_cvmfs: kept the newer revision of {r.fqrn} already in {args.directory}",
            file=sys.stderr,
        )
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep)


# -- entry point ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line_text(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="parrot_cvmfs",
        description="CernVM-FS client tools: inspect, publish and serve repositories.",
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

    client_cmd("info", cmd_info, "print the verified manifest (key: value lines)")
    sp = client_cmd("ls", cmd_ls, "list a directory", optional_path=True)
    sp.add_argument("-l", "--long", action="store_true", help="long format")
    sp.add_argument(
        "-d", "--directory", action="store_true", help="list the entry, not its contents"
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

    sp = sub.add_parser(
        "publish",
        help="publish a directory as a signed repository",
        description="Publish SRC as repository NAME into stratum directory DIR "
        "(a new revision if it exists). Keys are created in KEYDIR when missing.",
    )
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
    sp.set_defaults(func=cmd_publish)

    sp = sub.add_parser(
        "serve",
        help="serve stratum directories over HTTP",
        description="Serve DIR so that http://HOST:PORT/cvmfs/NAME/ is repository NAME.",
    )
    sp.add_argument("directory", metavar="DIR")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.set_defaults(func=cmd_serve)

    from .client.preload import DEFAULT_JOBS

    sp = sub.add_parser(
        "preload",
        help="fill a directory to use as a read-only alien cache (cvmfs_preload)",
        description="Verify the repository at URL and download its catalogs and objects "
        "(the part a dirtab selects) into DIR, for clients using DIR as an alien cache with "
        "no network (parrot_run --alien-cache DIR --offline). A rerun fetches only what DIR "
        "does not have.",
    )
    sp.add_argument("-u", "--url", required=True, help="http://HOST/cvmfs/NAME (a stratum 0 or 1)")
    sp.add_argument("-r", "--directory", required=True, metavar="DIR")
    sp.add_argument("-d", "--dirtab", metavar="DIRTAB", help="preload only these subtrees")
    sp.add_argument(
        "-k",
        "--pubkey",
        metavar="PUBKEY[:PUBKEY...]",
        help="master public keys (default: the configured ones for NAME)",
    )
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
    _add_trust_options(sp)
    sp.set_defaults(func=cmd_preload)

    sp = sub.add_parser(
        "unbundle",
        help="verify a preload bundle and install it into a directory",
        description="Verify FILE (from preload --bundle) against the repository's signed "
        "chain, every object against its name, and install it into DIR (made if missing). "
        "A bundle that does not verify to its end is refused and DIR left as it was.",
    )
    sp.add_argument("bundle", metavar="FILE")
    sp.add_argument("-r", "--directory", required=True, metavar="DIR")
    sp.add_argument(
        "-k",
        "--pubkey",
        metavar="PUBKEY[:PUBKEY...]",
        help="master public keys (default: the configured ones for the bundle's repository)",
    )
    _add_trust_options(sp)
    sp.set_defaults(func=cmd_unbundle)

    sp = sub.add_parser("demo", help="publish, serve and read the example repository (offline)")
    sp.add_argument("--keep", action="store_true", help="keep the temporary stratum and cache")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command: its exit status, or 1 with one line on stderr naming what was
    wrong (the traceback too with --debug)."""
    global _STDOUT_IS_TTY
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _STDOUT_IS_TTY = sys.stdout.isatty()
    except (AttributeError, ValueError):
        _STDOUT_IS_TTY = False
    try:
        code = args.func(args)
        _flush()
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
