"""The C core (csrc/tracer/) as the supervisor uses it: rules generated from the
system-call table, the event loop, and the ways to finish a stopped call."""

from __future__ import annotations

import errno
import os

from .._core import ffi, lib
from .seccomp import build_filter, build_late_filter
from .syscalls import Call

# What next() reports (tracer.h PC_EV_*)
EV_SYSCALL, EV_SYSCALL_EXIT = lib.PC_EV_SYSCALL, lib.PC_EV_SYSCALL_EXIT
EV_NEWTASK, EV_EXEC, EV_EXIT, EV_NOCHILD = (
    lib.PC_EV_NEWTASK,
    lib.PC_EV_EXEC,
    lib.PC_EV_EXIT,
    lib.PC_EV_NOCHILD,
)
# The record C answers getxattr for a name prefix with "ask Python" (answers.c)
XATTR_PREFIX_TAG = int(lib.PC_XATTR_PREFIX).to_bytes(4, "little")


class Event:
    """An intercepted call as the handlers see it, filled by Core.decode once per call
    (only this module reads the C event)."""

    __slots__ = (
        "rule",  # index of the call's row
        "tid",
        "notify",  # it came as a seccomp notification (else: a ptrace stop)
        "notif_id",
        "args",  # the six argument registers
        "sp",  # rewritten arguments go below it
        "path",  # the path argument, "" if none
        "base",  # the cwd or dirfd target a relative path starts from, or the fd's target
        "path_err",  # 0, or -errno reading the path
        "empty_path",  # AT_EMPTY_PATH: the call is on the dirfd itself
    )


def _s(buf, n: int) -> str:
    return os.fsdecode(ffi.buffer(buf, n)[:]) if n else ""


def _rule(call: Call, arch: str):
    return {
        "nr": call.number(arch),
        "kind": call.kind,
        "dirfd_arg": call.dirfd,
        "path_arg": call.path,
        "dirfd2_arg": call.dirfd2,
        "path2_arg": call.path2,
        "flags_arg": call.flags,
        "empty_flag": call.empty,
        "nofollow_flag": call.nofollow,
        "follow_flag": call.follow_flag,
        "follow_default": int(call.follow),
        "proc_sensitive": int(call.proc),
        "fast": call.fast,
        "out_arg": call.out,
        "mode_arg": call.mode,
        "size_arg": call.size,
        "attr_arg": call.attr,
        "bare_fd": call.bare,
    }


class Core:
    def __init__(
        self,
        calls: list[Call],
        arch: str,
        anchors: str,
        cache_dirs: list[str],
        notify: bool = False,
        translate: bool = False,
        adopted=None,
    ):
        """`adopted`: the tracer the launcher started the job with (adoption()), which
        was made from a start plan of these same arguments."""
        self.calls = calls
        self.arch = arch
        self.notify = notify
        self.rules = ffi.new("pc_rule[]", [_rule(c, arch) for c in calls])
        self.prefixes = [anchors]
        self.cache_dirs = [d.rstrip("/") for d in cache_dirs]
        if adopted is not None:
            self.t = adopted.tracer  # never freed: its threads run until the process ends
        else:
            self.t = ffi.gc(lib.pc_new(self.rules, len(calls)), lib.pc_free)
            if self.t == ffi.NULL:
                raise MemoryError("cannot allocate the tracer")
            for p in self.prefixes:
                lib.pc_add_prefix(self.t, 0, os.fsencode(p))
            for d in self.cache_dirs:
                lib.pc_add_prefix(self.t, 1, os.fsencode(d))
            lib.pc_set_translate(self.t, int(translate))
        self.filter = build_filter(calls, arch, notify)
        # a guest namespace's set-up, as a start plan repeats it (plan_parts)
        self.late: bytes | None = None
        self.mounts: list[tuple[int, str, str]] = []
        self.plain: list[tuple[int, int]] = []
        if translate:  # the socket-address rows, a guest namespace's only
            self.late = bytes(build_late_filter(calls, arch))
            if adopted is None:  # the launcher set the plan's
                lib.pc_set_late_filter(self.t, self.late, len(self.late) // 8)
        self.ev = ffi.new("pc_event *")
        self._served: list[str] = []  # see served()

    def plan_parts(self) -> dict:
        """What a start plan holds of the core's set-up (startplan.encode's arguments)."""
        from .. import _core

        return {
            "build": ffi.string(lib.pc_build_id()).decode(),
            "rules": bytes(ffi.buffer(self.rules)),
            "prefixes": self.prefixes,
            "cache_dirs": self.cache_dirs,
            "notify": self.notify,
            "filt": bytes(self.filter),
            "core": os.path.realpath(_core.__file__),
            "late": self.late,
            "mounts": self.mounts,
            "plain": self.plain,
        }

    def end_quiet(self) -> tuple[bool, dict[int, str]]:
        """Task events reach Python from now on (an adopted run): whether the job's root
        exec'd while they were dropped, and the logical programs of the processes that
        run one C exec'd meanwhile (pid -> program)."""
        root_exec = bool(lib.pc_set_quiet(self.t, 0))
        exes: dict[int, str] = {}
        buf = ffi.new("char[]", 1 << 16)
        for _ in range(64):  # bounded: the list is (PC_EXECS_MAX)
            n = lib.pc_take_quiet_exes(self.t, buf, 1 << 16)
            if n == 0:
                break
            for rec in ffi.buffer(buf, n)[:].split(b"\0")[:-1]:
                pid, _, program = rec.partition(b":")
                exes.setdefault(int(pid), os.fsdecode(program))  # the newest first
        return root_exec, exes

    def add_mount(
        self,
        dst: str,
        src: str,
        passes: bool = False,
        readonly: bool = False,
        private: bool = False,
        file: bool = False,
    ) -> None:
        """A mount of the guest's table, for C's passthrough (tracer/guest.py); `file`:
        a host regular file C may open for a read-only open of exactly `dst`."""
        flags = (lib.PC_MOUNT_PASS if passes else 0) | (lib.PC_MOUNT_RO if readonly else 0)
        flags |= lib.PC_MOUNT_FILE if file else 0
        if private:
            flags = lib.PC_MOUNT_PRIVATE
        self.mounts.append((flags, dst, src))
        lib.pc_add_mount(self.t, os.fsencode(dst), os.fsencode(src), flags)

    def add_odd_place(self, host: str) -> None:
        """A place (anchor or host directory) some process entered by another of its
        guest paths than the first: C leaves getcwd there and what is relative to it
        to Python (passthrough.c)."""
        lib.pc_add_odd_place(self.t, os.fsencode(host))

    def take_exec(self, tid: int) -> str | None:
        """The logical program of the exec C just made for `tid` from a kept recipe
        (None: it made none)."""
        buf = ffi.new("char[]", 4097)
        n = lib.pc_take_exec(self.t, tid, buf, 4097)
        return os.fsdecode(ffi.string(buf, n)) if n > 0 else None

    def set_plain(self, name: str, write: bool) -> None:
        """Let the call `name` pass through on such mounts (write: writable ones only)."""
        how = lib.PC_PLAIN_WRITE if write else lib.PC_PLAIN_READ
        for i, call in enumerate(self.calls):
            if call.name == name:
                self.plain.append((i, how))
                lib.pc_set_plain(self.t, i, how)

    def spawn(
        self, argv: list[str], env: dict[str, str], file: str | None = None
    ) -> tuple[int, int]:
        """Start the job (`file`, default argv[0], looked up in PATH if it has no "/");
        returns (pid, report fd). Raises OSError naming the cause."""
        c_file = ffi.new("char[]", os.fsencode(file if file is not None else argv[0]))
        c_argv = [ffi.new("char[]", os.fsencode(a)) for a in argv] + [ffi.NULL]
        c_env = [ffi.new("char[]", os.fsencode(f"{k}={v}")) for k, v in env.items()] + [ffi.NULL]
        err = ffi.new("char[256]")
        report = ffi.new("int *")
        filt = ffi.from_buffer(self.filter)
        pid = lib.pc_spawn(
            self.t,
            c_file,
            ffi.new("char *[]", c_argv),
            ffi.new("char *[]", c_env),
            filt,
            len(self.filter) // 8,
            int(self.notify),
            report,
            err,
            256,
        )
        if pid < 0:
            raise _spawn_error(ffi.string(err).decode())
        return pid, report[0]

    @staticmethod
    def spawn_failure(report_fd: int) -> OSError | None:
        err = ffi.new("char[256]")
        if lib.pc_spawn_failure(report_fd, err, 256):
            return _spawn_error(ffi.string(err).decode())
        return None

    def next(self) -> int:
        """Wait for the next event (into self.ev); the one before is done with."""
        return lib.pc_next(self.t, self.ev)

    # HOT PATH: runs once for every call Python answers
    def decode(self, e: Event) -> None:
        """Fill `e` from the current PC_EV_SYSCALL event."""
        ev = self.ev
        e.rule = ev.rule
        e.tid = ev.tid
        e.notify = ev.notify
        e.notif_id = ev.notif_id
        e.args = tuple(ev.args)
        e.sp = ev.sp
        e.path = _s(ev.path, ev.path_len)
        e.base = _s(ev.base, ev.base_len) if ev.base_len else None
        e.path_err = ev.path_err
        e.empty_path = ev.empty_path

    def event_key(self) -> str | None:
        """The answer table's key C composed for the current event's path (None: none)."""
        ev = self.ev
        return _s(ev.key, ev.key_len) if ev.key_len >= 0 else None

    def second_path(self) -> tuple[str | None, str | None]:
        """The current two-path call's second path and its base (None, None: unreadable)."""
        ev = self.ev
        if ev.path2_err:
            return None, None
        return _s(ev.path2, ev.path2_len), _s(ev.base2, ev.base2_len) if ev.base2_len else None

    def task(self) -> tuple[int, int]:
        """(tid, other) of the current task event: parent and child (EV_NEWTASK), new and
        former tid (EV_EXEC); other is meaningless for EV_EXIT."""
        return self.ev.tid, self.ev.other

    def exec_made(self) -> bool:
        """Whether C made the current EV_EXEC from a kept recipe (its program's name is
        waiting for take_exec, or was taken by end_quiet)."""
        return bool(self.ev.aux)

    def exit_result(self) -> tuple[int, int]:
        """(tid, the call's result) of the current EV_SYSCALL_EXIT."""
        return self.ev.tid, self.ev.ret

    def exit_code(self) -> int:
        """The job's exit status as parrot_run's: the root's, 128+N if signal N killed it."""
        return lib.pc_exit_code(self.t)

    def given_up(self) -> bool:
        """C answered the current event itself (a termination signal came while it waited
        too long) and said so: Python's answer, and its own message, are not wanted."""
        return bool(lib.pc_given_up(self.t))

    # -- answering the current event: a ptrace stop (carried out by the tracer thread) -------

    def resume(self, tid: int) -> None:
        lib.pc_resume(self.t, tid, self.ev.notif_id)

    def skip(self, tid: int, result: int) -> None:
        lib.pc_skip(self.t, tid, self.ev.notif_id, result)

    def set_args(
        self, tid: int, values: dict[int, int], report_exit: bool = False, is_exec: bool = False
    ) -> int:
        idx = ffi.new("int[]", list(values))
        vals = ffi.new("uint64_t[]", [v & 0xFFFFFFFFFFFFFFFF for v in values.values()])
        return lib.pc_set_args(
            self.t, tid, self.ev.notif_id, len(values), idx, vals, int(report_exit), int(is_exec)
        )

    def finish_exit(self, tid: int, result: int | None = None) -> None:
        lib.pc_finish_exit(self.t, tid, self.ev.notif_id, 0 if result is None else 1, result or 0)

    def restart_exit(self, tid: int) -> None:
        """At the exit stop of a rewritten call: the program makes the call again."""
        lib.pc_restart_exit(self.t, tid, self.ev.notif_id)

    # -- answering the current event: a notification (ev.notify) -------------------------------

    def notif_reply(self, notif_id: int, result: int) -> None:
        if lib.pc_claim(self.t, notif_id):
            lib.pc_notif_reply(self.t, notif_id, result)

    def notif_continue(self, notif_id: int) -> None:
        if lib.pc_claim(self.t, notif_id):
            lib.pc_notif_continue(self.t, notif_id)

    def notif_addfd(self, notif_id: int, fd: int, cloexec: bool, tid: int) -> int:
        """Install our descriptor `fd` as the call's result and close it (before the
        program runs on, where the hand-off holds it to our CPU: a lock it takes on the
        file then ends with its own close); returns
        the program's fd or -errno. (`tid`, the caller, is held to our CPU for the
        hand-off: see respond.c.)"""
        if not lib.pc_claim(self.t, notif_id):
            os.close(fd)
            return -errno.ENOENT  # as for a program interrupted meanwhile
        return lib.pc_notif_addfd(self.t, notif_id, fd, int(cloexec), tid, 1)

    def notif_valid(self, notif_id: int) -> bool:
        return bool(lib.pc_notif_valid(self.t, notif_id))

    def read(self, tid: int, addr: int, size: int) -> bytes:
        buf = ffi.new("char[]", size)
        n = lib.pc_read(tid, addr, buf, size)
        if n < 0:
            raise OSError(ffi.errno, "cannot read the program's memory")
        return ffi.buffer(buf, n)[:]

    def read_cstr(self, tid: int, addr: int, limit: int = 4096) -> str:
        """A NUL-terminated string of the program's, read in pieces that end at 256-byte
        boundaries (so one ending just before an unmapped page is read)."""
        out = b""
        while len(out) < limit:
            piece = self.read(tid, addr + len(out), 256 - ((addr + len(out)) & 255))
            if not piece:
                break
            if b"\0" in piece:
                out += piece.split(b"\0", 1)[0]
                break
            out += piece
        return os.fsdecode(out)

    def write(self, tid: int, addr: int, data: bytes) -> bool:
        return lib.pc_write(tid, addr, data, len(data)) == len(data)

    def open_backing(self, path: str, flags: int) -> int:
        """Open a file of the cache following no link below its cache directory (the rule
        C applies to the opens it answers, respond.c); raises OSError."""
        n = lib.pc_open_backing(self.t, os.fsencode(path), flags)
        if n < 0:
            raise OSError(-n, os.strerror(-n), path)
        return n

    def getfd(self, tid: int, fd: int) -> int:
        n = lib.pc_getfd(tid, fd)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return n

    def table_load(self, records: bytes) -> int:
        """Teach the table records in the memo format (memo.py); how many were taken."""
        return lib.pc_table_load(self.t, records, len(records))

    def table_put_xnames(self, key: bytes, follow: bool, names: bytes) -> None:
        lib.pc_table_put_xnames(self.t, key, int(follow), names, len(names))

    def table_load_fd(self, fd: int, offset: int) -> int:
        """Load the records of an open memo file from `offset` on (-1: unreadable)."""
        return lib.pc_table_load_fd(self.t, fd, offset)

    def stats(self) -> dict[str, int]:
        s = lib.pc_get_stats(self.t)
        out = {k: getattr(s, k) for k in ("stops", "exit_stops", "signals", "tasks")}
        by_call = self.stats_by_call().values()
        for col, k in enumerate(("passed_in_c", "answered_in_c", "to_python")):
            out[k] = sum(n[col] for n in by_call)
        return out

    def take_served(self) -> list[str]:
        """Backing files of the opens C answered since the last call."""
        buf = ffi.new("char[]", 1 << 16)
        out: list[str] = []
        while True:
            n = lib.pc_table_take_served(self.t, buf, len(buf))
            if n == 0:
                return out
            out += [os.fsdecode(p) for p in ffi.buffer(buf, n)[:].split(b"\0")[:-1]]

    def served(self) -> list[str]:
        """Backing files of the opens C answered in this run so far (each once per
        take), kept here: the cache's LRU and user.nopen both count them."""
        self._served += self.take_served()
        return self._served

    def stats_by_call(self) -> dict[str, tuple[int, int, int]]:
        """Stops per system call that had any: (passed in C, answered in C, to Python);
        calls the table has no row for (another architecture's) count as "other"."""
        n = len(self.calls)
        out = ffi.new("uint64_t[]", 3 * (n + 1))
        lib.pc_get_rule_stats(self.t, out)
        names = [c.name for c in self.calls] + ["other"]
        return {
            names[i]: (out[3 * i], out[3 * i + 1], out[3 * i + 2])
            for i in range(n + 1)
            if out[3 * i] or out[3 * i + 1] or out[3 * i + 2]
        }


def adoption():
    """The launcher's running tracer (pc_adoption), for Python to adopt; None if the job
    was not started by it."""
    a = ffi.new("pc_adoption *")
    return a if lib.pc_adopt_take(a) else None


def _spawn_error(text: str) -> OSError:
    stage, _, num = text.partition(":")
    code = int(num) if num.isdigit() else 0
    if stage == "ptrace":
        return OSError(code, "cannot trace the job: " + _ptrace_cause(code))
    if stage == "seccomp":
        return OSError(
            code,
            "cannot install the seccomp filter: "
            + (os.strerror(code) if code else "")
            + " (the kernel or a container's seccomp policy forbids seccomp filters)",
        )
    if stage == "no_new_privs":
        return OSError(code, f"cannot set no_new_privs: {os.strerror(code)}")
    return OSError(code, text)


def _status_field(name: str) -> str:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _ptrace_cause(code: int) -> str:
    """Why the job cannot be traced, as precisely as this process can tell."""
    why = os.strerror(code) if code else "unknown error"
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        scope = ""
    if scope == "3":
        return f"{why} (Yama ptrace_scope is 3: ptrace is disabled on this host)"
    if code != 1:  # EPERM is the refusal; anything else is reported as it is
        return why
    tracer = _status_field("TracerPid")
    if tracer not in ("", "0"):
        try:
            with open(f"/proc/{tracer}/comm") as f:
                comm = f.read().strip()
        except OSError:
            comm = "?"
        return f"{why} (parrot_run is itself traced by process {tracer} ({comm}), which also takes its children)"
    import ctypes

    try:
        dumpable = ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    except (OSError, AttributeError):
        dumpable = 1
    if dumpable == 0:
        return f"{why} (parrot_run is not dumpable: it was started by a setuid or otherwise privileged launcher)"
    if scope == "2":
        return f"{why} (Yama ptrace_scope is 2: only processes with CAP_SYS_PTRACE may trace)"
    if _status_field("Seccomp") == "2":
        return (
            f"{why} (a seccomp filter on parrot_run, such as a container's profile, forbids ptrace)"
        )
    return f"{why} (ptrace is forbidden here: a security module or a container's policy)"
