"""`parrot_run`: run a command with a read-only /cvmfs, without FUSE or root.

The options are parsed by hand: argparse and what it pulls in (shutil, gettext,
locale) cost ~10 ms of a start-up that every job pays."""

from __future__ import annotations

import os
import sys

from .._version import __version__

USAGE = "usage: parrot_run [options] [--] CMD [ARGS...]"
HELP = f"""{USAGE}

Run CMD with /cvmfs served from CernVM-FS repositories: any configured repository
appears under /cvmfs/NAME on first access.

options:
  -h, --help            show this help message and exit
  --cvmfs NAME[,NAME...]
                        mount these repositories at start (and fail if they cannot
                        be verified); repeatable
  --cache-dir DIR       cache directory (default: per-user cache)
  --alien-cache DIR     read-only preloaded cache consulted first
  --offline             no network: stored manifests and cached objects only
  --verify-at DATE      check whitelist expiry as of this UTC date
  -o, --option KEY=VALUE
                        set a CVMFS_* parameter (repeatable); not Parrot's -o FILE,
                        which is --debug-file here
  --config-dir DIR      cvmfs configuration directory (default /etc/cvmfs)
  --stats               print interception and transfer counts at exit
  --debug               print every call handled in Python (on stderr)
  --debug-file FILE     append the debug log to FILE instead of stderr (implies
                        --debug; the job never sees FILE)

container options (a whole userland as the job's root, no container runtime):
  --root DIR            DIR (in /cvmfs or on the host) is / for the job, read-only;
                        apptainer's default binds and /cvmfs show inside
  -B, --bind SRC[:DST[:ro|rw]]
                        show SRC at DST (apptainer's syntax; several with commas;
                        a colon starts DST only before a "/", so image names with
                        ":" stay whole); repeatable
  -M DST=SRC            show SRC at DST (Parrot's syntax); repeatable
  -m FILE               a mount file: lines "DST SRC", # comments; repeatable
                        (the deepest DST wins; for one DST, the last one given)
  --overlay DIR         writes into the --root land in DIR (upper/ and work/, OCI
                        whiteouts; kept for later runs; one job at a time); without
                        --root, writes below each bind from /cvmfs (DIR/binds/DST/)
  --run                 with --root: run the image's /.singularity.d/runscript
                        (apptainer run), the command's words as its arguments
  --no-default-binds    only /proc, /dev and /cvmfs from the host with --root
  --env NAME=VALUE      set NAME in the job's environment (PATH is the guest's
                        default under --root unless given); repeatable
  --version             show program's version number and exit

Parrot's options:
  -r, --cvmfs-repos REPOS
                        repositories in PARROT_CVMFS_REPO's syntax (replaces it)
  --cvmfs-repo-switching
                        accepted: every repository is always available at once
  --cvmfs-alien-cache DIR
                        the same as --alien-cache
  -d, --debug=SUBSYSTEM
                        the same as --debug, whichever of Parrot's subsystems is
                        named (all, cvmfs, syscall, process, ...; repeatable)

environment:
{{environment}}  PARROT_CVMFS_MODE     notify or ptrace: force the interception mode

examples:
  parrot_run ls /cvmfs/alice.cern.ch
  parrot_run --cvmfs atlas.cern.ch -o CVMFS_HTTP_PROXY=http://squid:3128 ./job.sh
  PARROT_CVMFS_ALIEN_CACHE=/scratch/preload parrot_run --offline ./job.sh
"""


def help_text() -> str:
    """--help: HELP with the client's environment variables (the source of the man page)."""
    from ..client.config import ENVIRONMENT_HELP

    return HELP.replace("{environment}", ENVIRONMENT_HELP)


# Parrot's debugging subsystems (the flag table of cctools' dttools/src/debug.c, old and
# new names): -d NAME turns on our one debug log for any of them; another is a typo.
PARROT_DEBUG_FLAGS = frozenset(
    "all clear fatal error notice debug syscall channel process resolve libcall tcp dns"
    " auth local http ftp nest chirp cvmfs multi landlord dcap rfio glite lfc gfal grow"
    " pstree alloc cache poll hdfs bxgrid login irods wq mpi user xrootd remote batch"
    " rmonitor makeflow makeflow_run makeflow_alloc makeflow_lexer makeflow_parser"
    " makeflow_hook ext confuga vine tlq jx ssl bucketing time pid".split()
)

# option -> (attribute, takes a value, repeatable); a value that is a string: the
# option's value may be given inline only (--debug=cvmfs), that string otherwise
_OPTIONS = {
    "--cvmfs": ("cvmfs", True, True),
    "--cache-dir": ("cache_dir", True, False),
    "--alien-cache": ("alien_cache", True, False),
    "--offline": ("offline", False, False),
    "--verify-at": ("verify_at", True, False),
    "-o": ("option", True, True),
    "--option": ("option", True, True),
    "--config-dir": ("config_dir", True, False),
    "--stats": ("stats", False, False),
    "--debug": ("debug_flags", "all", True),
    "--debug-file": ("debug_file", True, False),
    # Parrot's
    "-r": ("cvmfs_repos", True, False),
    "--cvmfs-repos": ("cvmfs_repos", True, False),
    "--cvmfs-repo-switching": ("repo_switching", False, False),
    "--cvmfs-alien-cache": ("alien_cache", True, False),
    "-d": ("debug_flags", True, True),
    # the container view (container/mounts.py); -B, -M and -m keep their common order
    "--root": ("root", True, False),
    "-B": ("mounts", True, True),
    "--bind": ("mounts", True, True),
    "-M": ("mounts", True, True),
    "-m": ("mounts", True, True),
    "--no-default-binds": ("no_default_binds", False, False),
    "--overlay": ("overlay", True, False),
    "--run": ("run", False, False),
    "--env": ("env", True, True),
}


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> dict:
    """Options up to the first operand (or `--`); the rest is the command, untouched."""
    args: dict = {
        "cvmfs": [],
        "option": [],
        "debug_flags": [],
        "command": [],
        "mounts": [],
        "env": [],
    }
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a in ("-h", "--help"):
            args["help"] = True
            return args
        if a == "--version":
            args["version"] = True
            return args
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if len(name) > 2 and not name.startswith("--"):
            short = _OPTIONS.get(name[:2])
            if short is not None and short[1] is True:
                name, eq, inline = name[:2], "=", name[2:]  # -oKEY=VALUE, -dall
        spec = _OPTIONS.get(name)
        if spec is None:
            raise UsageError(f"unknown option {name}")
        attr, takes_value, repeatable = spec
        if takes_value:
            if eq:
                value = inline
            elif takes_value is not True:
                value = takes_value
            else:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"option {name} expects a value")
                value = argv[i]
            if attr == "mounts":
                args[attr].append((name, value))
            elif repeatable:
                args[attr].append(value)
            else:
                args[attr] = value
        elif eq:
            raise UsageError(f"option {name} takes no value")
        else:
            args[attr] = True
        i += 1
    args["command"] = argv[i:]
    for flag in args["debug_flags"]:
        if flag not in PARROT_DEBUG_FLAGS:
            raise UsageError(f"unknown debugging subsystem {flag!r} for -d/--debug (try all)")
    return args


def main(argv: list[str] | None = None) -> int:
    """parrot_run: the job's exit status, or 1 with one line on stderr for anything
    that stops us first (with the traceback too under --debug), 2 for bad usage."""
    argv = sys.argv[1:] if argv is None else argv
    from .startplan import take_path

    plan = take_path()  # the launcher's: before anything reads the environment
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"parrot_run: {e} (see parrot_run --help)", file=sys.stderr)
        return 2
    if args.get("help"):
        sys.stdout.write(help_text())
        return 0
    if args.get("version"):
        print(f"parrot_run {__version__}")
        return 0
    if not args["command"] and not args.get("run"):
        print(f"parrot_run: no command given ({USAGE[7:]})", file=sys.stderr)
        return 2
    debug = None
    if plan is not None:
        from ..client.config_files import record_reads

        record_reads()  # what a plan depends on
        args["plan"] = plan
        args["words"] = argv[: len(argv) - len(args["command"])]
    try:
        debug = _debug_stream(args.get("debug_file"), bool(args["debug_flags"]))
        config = _configuration(args)
        if args.get("debug_file") is None and config.parrot_globals.debug_file:
            debug = _debug_stream(
                config.parrot_globals.debug_file, True, "PARROT_CVMFS_CONFIG log_file"
            )
        return _run(args, config, debug)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from ..errors import one_line

        print(f"parrot_run: {one_line(e)}", file=sys.stderr)
        if debug is not None:
            import traceback

            traceback.print_exc(file=debug)
        return 1
    finally:
        if debug is not None and debug is not sys.stderr:
            debug.close()


def _debug_stream(path: str | None, wanted: bool, source: str = "--debug-file"):
    """Where the debug log goes: None (not `wanted`), stderr, or the --debug-file (else
    PARROT_CVMFS_CONFIG's log_file), which is the user's own path, opened as asked
    (appended to, created, links followed) but close-on-exec, so that the job can
    neither write to it nor find it open."""
    if path is None:
        return sys.stderr if wanted else None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        from ..errors import CvmfsError

        raise CvmfsError(f"{source} {path}: {e.strerror}") from None
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")


def _configuration(args: dict):
    """The client configuration: -o overrides, --config-dir, -r (else PARROT_CVMFS_REPO)."""
    from ..client.config import Configuration, check_directory_option
    from ..errors import CvmfsError

    overrides = {}
    for item in args["option"]:
        if "=" not in item:
            raise CvmfsError(f"-o expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v
    if args.get("config_dir") is not None:
        check_directory_option("--config-dir", args["config_dir"])
    return Configuration(
        config_dir=args.get("config_dir"),
        overrides=overrides,
        parrot_repos=args.get("cvmfs_repos"),
    )


def _run(args: dict, config, debug) -> int:
    from ..errors import CvmfsError
    from .supervisor import Options, Supervisor

    verify_at = None
    if args.get("verify_at"):
        from ..format.history import parse_repository_date

        try:
            verify_at = float(parse_repository_date(args["verify_at"]))
        except CvmfsError as e:
            raise CvmfsError(f"--verify-at: {e}") from None
    if debug is not None:  # the network path's findings (PAC files, Geo-API) too
        from ..client.network import set_debug_log

        set_debug_log(lambda line: print(f"parrot_run: {line}", file=debug, flush=True))
    names = [n for item in args["cvmfs"] for n in item.split(",") if n]
    inputs: dict = {}  # the files the options name (-m), for a start plan
    binds = _binds(args["mounts"], inputs)
    env = {}
    for item in args["env"]:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise CvmfsError(f"--env expects NAME=VALUE, got {item!r}")
        env[k] = v
    opts = Options(
        command=args["command"],
        cvmfs=names,
        cache_dir=config.run_cache_dir(args.get("cache_dir")),
        alien_cache=config.run_alien_cache(args.get("alien_cache")),
        verify_at=verify_at,
        offline=bool(args.get("offline")),
        stats=bool(args.get("stats")),
        debug=debug,
        config=config,
        root=args.get("root"),
        binds=binds,
        default_binds=not args.get("no_default_binds"),
        env=env,
        overlay=args.get("overlay"),
        run=bool(args.get("run")),
        plan=args.get("plan"),
        words=args.get("words"),
        inputs=inputs,
    )
    if opts.run and opts.root is None:
        raise CvmfsError("--run needs --root (it acts on the job's root)")
    if opts.overlay is not None and opts.root is None and not binds:
        raise CvmfsError("--overlay needs --root or a bind from /cvmfs (their writable layer)")
    sup = Supervisor(opts)
    try:
        return sup.run()
    finally:
        try:
            sup.close()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _binds(given: list[tuple[str, str]], inputs: dict) -> list[tuple[str, str, bool]]:
    """-B, -M and -m in the order given, as (src, dst, readonly); each mount file's
    identity into `inputs` (before it is read: a change after shows next time)."""
    if not given:
        return []
    from ..container.mounts import MountError, parse_bind, parse_map, parse_mountfile
    from ..errors import CvmfsError

    out: list[tuple[str, str, bool]] = []
    try:
        for name, value in given:
            if name == "-M":
                out.append((*parse_map(value), False))
            elif name == "-m":
                from ..client.config_files import identity

                inputs[os.path.abspath(value)] = identity(value)
                try:
                    with open(value, encoding="utf-8", errors="surrogateescape") as f:
                        text = f.read(1 << 20)
                except OSError as e:
                    raise CvmfsError(f"-m {value}: {e.strerror}") from None
                out += [(src, dst, False) for src, dst in parse_mountfile(text, value)]
            else:
                out += parse_bind(value)
    except MountError as e:
        raise CvmfsError(str(e)) from None
    return out


def entry() -> None:
    """The console script: main(), then exit without the interpreter's teardown.

    main() has saved what it keeps and closed its caches by then; freeing every module
    and object one by one would add ~10 ms to every job."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 120  # as Python does when flushing at exit fails
    os._exit(code)


if __name__ == "__main__":
    entry()
