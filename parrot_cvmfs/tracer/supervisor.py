"""The supervisor: starts the job under the C core, runs the event loop, keeps
per-process state, has signals forwarded, and returns the job's exit status."""

from __future__ import annotations

import errno
import os
import sys

from ..client import progress
from ..client.config import Configuration
from .core import EV_EXEC, EV_EXIT, EV_NEWTASK, EV_NOCHILD, EV_SYSCALL, EV_SYSCALL_EXIT, Core
from .handlers import Handlers, Processes
from .syscalls import calls_for, machine
from .vfs import CvmfsView


class Options:
    """What parrot_run was asked to do (a plain class: typing.NamedTuple alone costs
    several milliseconds of every job's start-up)."""

    __slots__ = (
        "command",
        "cvmfs",
        "cache_dir",
        "alien_cache",
        "verify_at",
        "offline",
        "stats",
        "debug",
        "config",
        "root",
        "binds",
        "default_binds",
        "env",
        "overlay",
        "run",
        "plan",
        "words",
        "inputs",
    )

    def __init__(
        self,
        command: list[str],
        cvmfs: list[str] | None = None,
        cache_dir: str | None = None,
        alien_cache: str | None = None,
        verify_at: float | None = None,
        offline: bool = False,
        stats: bool = False,
        debug=None,
        config: Configuration | None = None,
        root: str | None = None,
        binds: list[tuple[str, str, bool]] | None = None,
        default_binds: bool = True,
        env: dict[str, str] | None = None,
        overlay: str | None = None,
        run: bool = False,
        plan: str | None = None,
        words: list[str] | None = None,
        inputs: dict | None = None,
    ):
        self.command = command
        self.cvmfs = cvmfs or []
        self.cache_dir = cache_dir
        self.alien_cache = alien_cache
        self.verify_at = verify_at
        self.offline = offline
        self.stats = stats
        self.debug = debug
        self.config = config
        self.root = root  # --root: the guest's / (container/mounts.py)
        self.binds = binds or []  # (src, dst, readonly), in the order given
        self.default_binds = default_binds
        self.env = env or {}  # --env NAME=VALUE
        self.overlay = overlay  # --overlay DIR: the root's writable layer
        self.run = run  # --run: the image's runscript, the command as its arguments
        self.plan = plan  # the start plan to write at the end (the launcher's path)
        self.words = words or []  # the option words before the command (the plan's key)
        self.inputs = inputs or {}  # files the options named were read from (-m FILE)


class Supervisor:
    def __init__(self, opts: Options):
        from ..client.cache import CONFIG, resolve_tiers
        from .core import adoption

        self.opts = opts
        # the job runs already, started by the launcher from a plan (startplan.py)
        self.adopted = adoption()
        pins, pinned_until, memos = {}, 0.0, []
        if self.adopted is not None:
            from .startplan import read_pins

            pins, pinned_until, memos = read_pins(self.adopted.plan_fd)
        config = opts.config or Configuration()
        # a read-only populated --cache-dir comes back as the first alien tier
        tiers = resolve_tiers(opts.cache_dir, opts.alien_cache, _note)
        if config.memo_dir is None:
            config.memo_dir = tiers.under(CONFIG)
        self.view = CvmfsView(
            config,
            tiers.own,
            alien=tiers.alien_list(),
            verify_at=opts.verify_at,
            offline=opts.offline,
            eager=opts.cvmfs,
            pins=pins,
            pinned_until=pinned_until,
        )
        self.arch = machine()
        calls = calls_for(self.arch)
        self.mode = choose_mode()
        if self.adopted is not None:
            self.mode = "notify" if self.adopted.notify else "ptrace"
        self.procs = Processes()
        self.guest = None
        # what this start is computed from, for its plan (None: no plan to write)
        self.start_inputs = None
        # (argv, env, file, host cwd, the host environment then) of the job spawned
        self.started: tuple | None = None
        if opts.root is not None or opts.binds:
            from ..container.mounts import host_realpath
            from .guest import Guest, StartInputs, build_table

            inputs = self.start_inputs = StartInputs() if _plannable(opts) else None
            exists = inputs.exists if inputs is not None else os.path.lexists
            real = inputs.realpath if inputs is not None else host_realpath
            table = build_table(self.view, opts.root, opts.binds, opts.default_binds, exists, real)
            if inputs is not None:
                inputs.sources(opts.root, opts.binds, table)
            self.guest = Guest(table, self.view, self.procs, opts.overlay)
        self.core = Core(
            calls,
            self.arch,
            self.view.anchors,
            tiers.dirs(),
            notify=self.mode == "notify",
            translate=self.guest is not None,
            adopted=self.adopted,
        )
        if self.guest is not None and self.adopted is None:  # the launcher's has them
            self.guest.teach_mounts(self.core)
        self.handlers = Handlers(self.core, self.view, self.procs, opts.debug, self.guest)
        for i, rev in enumerate(memos):  # what the launcher's C loaded
            if self.adopted.memo_size[i] >= 0:
                self.handlers.memo.adopt(rev, self.adopted.memo_size[i])
        self.root = 0
        self.exec_seen = False
        self.ran = False

    def run(self) -> int:
        errors = self.view.mount_eager()
        if errors:
            for e in errors:
                print(f"parrot_run: {e}", file=sys.stderr)
            return 1
        if self.adopted is not None:  # spawned, signals forwarded, by the launcher
            pid, report = self.adopted.root, self.adopted.report_fd
            self.exec_seen, exes = self.core.end_quiet()
            for task, program in exes.items():  # what C exec'd before Python ran
                self.procs.tgid_of[task] = task
                self.procs.exe[task] = program
        else:
            try:
                pid, report = self._spawn()
            except OSError as e:
                print(f"parrot_run: {e.strerror}", file=sys.stderr)
                return 1
            # signals are forwarded from C from the spawn on (spawn.c forward_signals)
        self.root = pid
        if not self.opts.debug:  # the debug log's lines are never cut by the progress line
            progress.terminal_line()
        try:
            self._loop()
        finally:
            progress.finish()  # erased before anything else is printed, and before exit
            failure = self.core.spawn_failure(report)
            os.close(report)
        if failure is not None and not self.exec_seen:
            print(f"parrot_run: {_spawn_message(failure, self.opts.command[0])}", file=sys.stderr)
            if (failure.strerror or "").startswith("cannot"):
                return 1  # no tracing here: a set-up failure, not the program's
            return 127 if failure.errno == errno.ENOENT else 126  # as env(1) and sh
        self.ran = True  # mounted, started and traced to the end: a start worth a plan
        if self.opts.stats:
            self.keep()  # first, so that the peak memory printed includes it
            self.print_stats()
        return self.core.exit_code()

    def _spawn(self) -> tuple[int, int]:
        env = dict(os.environ)
        if self.guest is None:
            env.update(self.opts.env)
            self.started = (self.opts.command, env, None, None, dict(os.environb))
            return self.core.spawn(self.opts.command, env)
        inputs = self.start_inputs
        if inputs is not None:
            inputs.watch(self.guest)
        try:
            command, env, file, cwd = self._guest_start(env)
        finally:
            if inputs is not None:
                inputs.unwatch(self.guest)
        self.started = (command, env, file, cwd, dict(os.environb))
        # the job starts in its guest cwd: the supervisor goes there for the fork only
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(cwd)
            return self.core.spawn(command, env, file)
        finally:
            os.fchdir(here)
            os.close(here)

    def _guest_start(self, env: dict[str, str]) -> tuple[list[str], dict, str | None, str]:
        """The job's argv, environment, program file and host start directory in the
        guest namespace (a start plan holds them, and what they were computed from)."""
        from .guest import find_program, host_cwd, job_environment

        warned = []

        def note(message: str) -> None:
            warned.append(message)  # a planned start would not say it: no plan then
            _note(message)

        env = job_environment(self.guest, env, self.opts.env, note)
        if warned and self.start_inputs is not None:
            self.start_inputs.exact = False
        command = self.opts.command
        if self.opts.run:
            from .guest import run_command

            command = run_command(self.guest, command)
        start = host_cwd(self.guest)
        entered = self.guest.start_cwd
        if entered is not None and entered[1] != self.guest.guest_of(start):
            # the start directory by its own path, which is not its first: C must not
            # answer for it, and a planned start (C alone at first) could not know
            self.core.add_odd_place(start)
            if self.start_inputs is not None:
                self.start_inputs.exact = False
        file = find_program(self.guest, command[0], env.get("PATH", ""), start)
        return command, env, file, start

    def _loop(self) -> None:
        core, h, procs = self.core, self.handlers, self.procs
        while True:
            kind = core.next()
            if kind == EV_SYSCALL:
                h.dispatch()
            elif kind == EV_SYSCALL_EXIT:
                h.on_exit()
            elif kind == EV_NEWTASK:
                procs.on_newtask(*core.task())
            elif kind == EV_EXEC:
                tid, former = core.task()
                procs.on_exec(tid, former, core.take_exec if core.exec_made() else None)
                if tid == self.root:
                    self.exec_seen = True
            elif kind == EV_EXIT:
                procs.on_exit(core.task()[0])
            elif kind == EV_NOCHILD:
                return

    def print_stats(self) -> None:
        c = self.core.stats()
        n, b, hits, misses = self.view.transfer_stats()
        err = sys.stderr
        print(
            f"parrot_run: {c['stops']} intercepted calls ({self.mode} mode): {c['passed_in_c']} passed through in C,"
            f" {c['answered_in_c']} answered in C, {c['to_python']} handled in Python"
            f" ({c['exit_stops']} exit stops)",
            file=err,
        )
        per_call = sorted(self.core.stats_by_call().items(), key=lambda x: -sum(x[1]))
        by_call = ", ".join(f"{name} {sum(n)} ({n[0]}/{n[1]}/{n[2]})" for name, n in per_call)
        print(
            "parrot_run: by call, passed through/answered in C/handled in Python: "
            + (by_call or "none"),
            file=err,
        )
        pn, pb, used = self.view.prefetch_stats()
        ahead = f" ({pn} ahead of the job, {pb} bytes stored; {used} read since)" if pn else ""
        print(
            f"parrot_run: {n} objects fetched ({b} bytes){ahead}, cache hits {hits}, misses {misses},"
            f" I/O errors {self.view.io_errors}; {c['tasks'] + 1} tasks, {c['signals']} signals;"
            f" supervisor peak memory {_peak_rss_mb():.0f} MB",
            file=err,
        )

    def keep(self) -> None:
        """Save what this run learned for later runs (once)."""
        self.handlers.memo.save()
        # the files C opened count as used for the cache's LRU clean-up, as Python's do
        cache = self.view.cache
        if cache is not None and cache.quota is not None:
            served = list(self.core.served())
            if self.opts.plan is not None:  # and those of the planned runs before
                from .startplan import take_served

                served += take_served(self.opts.plan)
            cache.touch_paths(served)

    def close(self) -> None:
        self.keep()
        self.write_plan()
        if self.guest is not None:
            self.guest.close()
        self.view.close()

    def write_plan(self) -> None:
        """The start plan the launcher asked for: how to start this job again without
        Python, while what it depends on stays (startplan.py). None where this run's
        start is not one a plan can repeat."""
        if not self.ran or self.opts.plan is None or not _plannable(self.opts):
            return
        computed = self.guest is not None or bool(self.opts.env)
        if computed and (self.adopted is not None or self.started is None):
            return  # the launcher's plan stays: this run did not compute the start
        inputs = self.start_inputs
        if inputs is not None and not inputs.exact:
            return
        from ..client.config_files import identity, named, reads, since_ns

        files, words = reads(), named()
        from . import startplan

        if files is None or len(words) > startplan.MAX_NAMED:
            return
        import time

        # the Python that made the rules, filter and records C uses (an editable install
        # changes them with no new build of the core)
        files = {**files, **{p: identity(p) for p in startplan.generators()}}
        files.update(self.opts.inputs)
        parts = self.core.plan_parts()
        late, mounts, plain = parts.pop("late"), parts.pop("mounts"), parts.pop("plain")
        started = b""
        if computed:
            argv, env, file, start_cwd, host_env = self.started
            if inputs is not None:
                files.update(inputs.files)
            guest = self.guest is not None
            started = startplan.guest_records(
                host_env=host_env,
                command=self.opts.command if guest else None,
                real=inputs.real if inputs is not None else [],
                late=late,
                mounts=mounts,
                plain=plain,
                argv=argv if guest else None,
                file=file,
                env=env,
                cwd=start_cwd,
            )
        if startplan.racy(files, since_ns()) is not None:
            return  # changed too recently for its time to show a further change
        until = min(self.view.valid_until(), time.time() + startplan.MAX_AGE)
        memo = self.handlers.memo
        revs = [(n, self.view.revision_id(n)) for n in sorted(self.view.repos)]
        revs = [(n, r) for n, r in revs if r is not None][: startplan.MAX_MEMO]
        # a guest's answers are kept per revision and mount table (Guest.kept)
        kept = self.guest.kept if self.guest is not None else (lambda r: r)
        relative = computed or any(
            not v.startswith("/") for w in self.opts.words for v in _values(w)
        )
        from .memo import MAGIC

        data = startplan.encode(
            options=self.opts.words,
            cwd=os.getcwd() if relative else None,
            files=files,
            named=words,
            valid_until=until,
            memos=[(memo.path(kept(r)), MAGIC, kept(r)) for _, r in revs],
            repos=[(n, self.view.repos[n].root_hash.hex) for n, _ in revs],
            groups=list(self.view.groups),
            started=started,
            **parts,
        )
        if len(data) <= startplan.MAX_SIZE:
            startplan.write(self.opts.plan, data)


def _plannable(opts: Options) -> bool:
    """Whether a start plan can repeat this run's start: not under --overlay (its upper
    layer changes what C answers, and C keeps no answers under it) nor --debug (every
    call is Python's, to be logged)."""
    return opts.overlay is None and opts.debug is None


def _values(word: str) -> list[str]:
    """The value an option word carries, if any ("c" of "c", "--cache-dir=c",
    "-oCVMFS_CACHE_BASE=c"): a relative one makes a plan depend on the cwd."""
    if word.startswith("--"):
        name, eq, value = word.partition("=")
    elif word.startswith("-"):
        value = word[2:]
    else:
        value = word
    if "=" in value:
        value = value.split("=", 1)[1]
    return [value] if value else []


def _peak_rss_mb() -> float:
    """The supervisor's own peak resident memory (VmHWM), in MB."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def choose_mode() -> str:
    """'notify' where seccomp user notifications wake the supervisor on the caller's CPU
    (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6) and install descriptors (5.14);
    'ptrace' otherwise. PARROT_CVMFS_MODE=ptrace|notify forces one."""
    forced = os.environ.get("PARROT_CVMFS_MODE", "").strip().lower()
    if forced in ("ptrace", "notify"):
        return forced
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return "ptrace"
    return "notify" if (major, minor) >= (6, 6) else "ptrace"


def _spawn_message(e: OSError, program: str) -> str:
    if e.strerror and e.strerror.startswith("cannot"):
        return e.strerror
    return f"cannot run {program}: {os.strerror(e.errno) if e.errno else e}"


def _note(message: str) -> None:
    print(f"parrot_run: {message}", file=sys.stderr, flush=True)
