"""Start plans: what the C launcher (csrc/launcher/) needs to start a job exactly as the
supervisor would, with no Python running, and what that is valid for.

A full run (or one Python adopted from the launcher) writes the plan at its end, to the
path the launcher chose (it owns where plans live and passes the path in
PLAN_VARIABLE, which Python takes out of its environment first thing). The launcher
checks every condition below before it uses a plan; any mismatch, or a plan that is not
exactly what this module writes, means the full start in Python, which writes a new one.

The file: MAGIC, then records `tag:4 len:u32 payload`, each tag once unless noted:

    BILD  the core's build id (pc_build_id): another build's plan is not used
    UID_  u32: the user it is for (the file must be theirs, and not writable by others),
          u32: their gid, then u32 each: the groups access checks count (the gid and
          the supplementary ones, sorted, each once: CvmfsView.groups); the launcher's
          must be the same (the kept answers show the gid and match the groups)
    OPTS  the option words before the command, each NUL-terminated
    CWD_  the working directory, where an option's value is a relative path (else absent)
    KERN  the kernel release (the interception mode depends on it)
    ENVV  the environment entries the configuration depends on (env_entries), sorted,
          each NUL-terminated; the launcher compares its own
    ENVX  the other variables the configuration files name: NAME=VALUE, or NAME where
          it was not set, each NUL-terminated
    FILE  (repeated) dev:u64 ino:u64 size:i64 mtime_ns:i64 kind:u32 path: a
          configuration file read or probed (kind 0: absent; 2: a directory listed),
          or a guest run's input (kinds below: FILE_KINDS)
    VALD  f64: valid until (UNIX time): the pinned revisions' manifest TTLs, whitelists
    RULE  the pc_rule array given to pc_new
    PFX0  (repeated) a path prefix (pc_add_prefix 0: the anchors); PFX1: cache dirs
    NTFY  u32: notify (1) or ptrace (0) mode
    FILT  the seccomp filter (struct sock_filter array)
    CORE  the path of the C core the launcher loads (the one Python imports)
    MEMO  (repeated, at most PC_MAX_MEMO) path NUL magic NUL revision: a memo file C
          loads (memo.py)
    REPO  (repeated) name NUL root-hash: the revisions the table answers for; Python
          pins them when it adopts the run

A run that computes its job's start (a guest namespace: --root, binds, --run; or --env)
holds that computation's result and inputs too:

    CWD_  (always) the cwd: the default binds, relative sources and the start cwd
    HENV  the whole host environment, in order, each NUL-terminated: the job's is made
          from all of it (apptainer passes the host's through), compared byte for byte
    CMD_  the command words after the options (--run, PATH lookup are of them)
    REAL  (repeated) given NUL realpath: a host root or bind source resolves the same
    GEST  the late seccomp filter (pc_set_late_filter); present: pc_set_translate on
    MNT_  (repeated) flags:u32 dst NUL src: the guest's mount table (pc_add_mount)
    PLNR  (rule:u32 how:u32)*: the calls that pass through on such mounts (pc_set_plain)
    ARGV  the job's argv, each NUL-terminated; EXEF: the file spawned (else argv[0])
    JENV  the job's environment, each entry NUL-terminated
    JCWD  the host directory the job starts in
"""

from __future__ import annotations

import os
import struct

MAGIC = b"parrot-cvmfs start plan 1\n"
PLAN_VARIABLE = "_PARROT_RUN_START_PLAN"
MAX_SIZE = 1 << 20  # the launcher reads no more (launcher.c PLAN_MAX)
MAX_MEMO = 32  # memo files C loads at most (tracer.h PC_MAX_MEMO)
MAX_AGE = 86400.0  # a plan is renewed at least daily, whatever it depends on
MAX_NAMED = 4096  # words of the configuration files a plan follows; more: no plan
MAX_PLANS = 64  # plans kept per user (one per option words): the oldest go first

# The options a planned start supports (the launcher finds the command after them; any
# other option (--overlay, --debug) takes the full start). The launcher's table is
# generated from main._OPTIONS and this set at build time (setup.py).
FAST_OPTIONS = frozenset(
    {
        "--cvmfs",
        "--cache-dir",
        "--alien-cache",
        "--offline",
        "--verify-at",
        "-o",
        "--option",
        "--config-dir",
        "-r",
        "--cvmfs-repos",
        "--cvmfs-repo-switching",
        "--cvmfs-alien-cache",
        "--stats",  # Python adopts the ended run to print the counts
        # the guest's (their plans hold the computed start: guest_records)
        "--root",
        "-B",
        "--bind",
        "-M",
        "-m",
        "--run",
        "--no-default-binds",
        "--env",
    }
)

# Options whose plan depends on the command after them (its start is computed from it:
# --run, the guest's PATH): the launcher keys their plans with the command too.
COMMAND_OPTIONS = frozenset({"--root", "-B", "--bind", "-M", "-m", "--run"})

# FILE kinds (launcher.c same_files): absent (stat), a file or a directory by size and
# mtime (configuration files), the same object (dev, ino, type: a root or bind source),
# present or absent as lstat sees it (a default bind's source), a file or a directory
# by size and ctime (a guest run's inputs: a chmod changes what PATH finds)
ABSENT, FILE_MTIME, DIR_MTIME, OBJECT, LPRESENT, LABSENT, FILE_CTIME, DIR_CTIME = range(8)

# A file's time is only as fine as its file system's clock. Where it is whole seconds
# (NFSv3, ext3, some Lustre setups), a same-size change in the second the recorded time
# falls in, after we looked, keeps the identity: so, as git does for its index, such an
# identity proves nothing, and no plan is written from it (the next run writes one).
# Fine times are stamped by a tick of the kernel's clock, and since 6.13 (multigrain
# timestamps) a change after a stat always gets a later time: only a time from after we
# began looking is refused there (older kernels leave a change within one tick, <= 4 ms
# at HZ 250, of our read unseen).
TIMED = frozenset({FILE_MTIME, DIR_MTIME, FILE_CTIME, DIR_CTIME})
COARSE_NS = 2_000_000_000  # times in whole seconds: the granularity may be 1 or 2 s


def racy(files: dict[str, tuple[int, int, int, int, int]], looked_ns: int) -> str | None:
    """The first recorded file whose time is too close to `looked_ns` (when its
    identity was first taken, or earlier) to tell a later change apart; None if none."""
    for path, (_dev, _ino, _size, t, kind) in files.items():
        if kind in TIMED and t >= looked_ns - (COARSE_NS if t % 1_000_000_000 == 0 else 0):
            return path
    return None


# The environment the configuration, the cache's place and the mode depend on: these
# names, and every name with one of these prefixes (launcher.c env_matters is the same
# rule, generated from these).
ENV_NAMES = ("HOME", "XDG_CACHE_HOME", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")
ENV_PREFIXES = ("CVMFS_", "PARROT_")


def env_matters(name: bytes) -> bool:
    """Whether a plan depends on the environment variable `name`."""
    return name.decode("latin-1") in ENV_NAMES or name.startswith(
        tuple(p.encode() for p in ENV_PREFIXES)
    )


def env_entries(environ: dict[bytes, bytes]) -> bytes:
    """The entries a plan depends on, as the launcher composes them."""
    out = sorted(k + b"=" + v for k, v in environ.items() if env_matters(k))
    return b"".join(e + b"\0" for e in out)


def named_entries(words: set[str], environ: dict[bytes, bytes]) -> bytes:
    """The ENVX record: the words that could name a variable env_entries leaves out,
    with their values now (none: not set)."""
    out = []
    for w in sorted(words):
        name = os.fsencode(w)
        if not w.isidentifier() or env_matters(name):
            continue
        value = environ.get(name)
        out.append(name if value is None else name + b"=" + value)
    return b"".join(e + b"\0" for e in out)


def host_identity(path: str) -> tuple[int, int, int, int, int]:
    """A guest run's input file or directory: by size and ctime, or absent."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0, 0, ABSENT)
    kind = DIR_CTIME if stat.S_ISDIR(st.st_mode) else FILE_CTIME
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, kind)


def object_identity(path: str) -> tuple[int, int, int, int, int]:
    """A root or bind source: the same object (dev, ino, the type in `size`)."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0, 0, ABSENT)
    return (st.st_dev, st.st_ino, st.st_mode & 0o170000, 0, OBJECT)


def lexists_identity(path: str) -> tuple[int, int, int, int, int]:
    """Whether `path` exists as lstat sees it (os.path.lexists)."""
    return (0, 0, 0, 0, LPRESENT if os.path.lexists(path) else LABSENT)


def guest_records(
    *,
    host_env: dict[bytes, bytes],
    command: list[str] | None,
    real: list[tuple[str, str]],
    late: bytes | None,
    mounts: list[tuple[int, str, str]],
    plain: list[tuple[int, int]],
    argv: list[str] | None,
    file: str | None,
    env: dict[str, str],
    cwd: str | None,
) -> bytes:
    """The records of a run whose start was computed (the module's docstring; None:
    the launcher's own, the command given and its cwd); the caller checks the plan's
    size (MAX_SIZE)."""
    enc = os.fsencode

    def words(items) -> bytes:
        return b"".join(enc(w) + b"\0" for w in items)

    out = [_rec(b"HENV", b"".join(k + b"=" + v + b"\0" for k, v in host_env.items()))]
    if command is not None:
        out.append(_rec(b"CMD_", words(command)))
    out += [_rec(b"REAL", enc(g) + b"\0" + enc(r)) for g, r in real]
    if late is not None:
        out.append(_rec(b"GEST", late))
    out += [_rec(b"MNT_", struct.pack("<I", f) + enc(d) + b"\0" + enc(s)) for f, d, s in mounts]
    out.append(_rec(b"PLNR", b"".join(struct.pack("<II", r, h) for r, h in plain)))
    if argv is not None:
        out.append(_rec(b"ARGV", words(argv)))
    if file is not None:
        out.append(_rec(b"EXEF", enc(file)))
    out.append(_rec(b"JENV", words(f"{k}={v}" for k, v in env.items())))
    if cwd is not None:
        out.append(_rec(b"JCWD", enc(cwd)))
    return b"".join(out)


def generators() -> list[str]:
    """The modules whose output a plan holds (rules, filter, the memo and plan formats):
    a plan follows their files too."""
    here = os.path.dirname(os.path.abspath(__file__))
    names = ("syscalls.py", "seccomp.py", "core.py", "memo.py", "startplan.py", "structs.py")
    return [os.path.join(here, n) for n in names]


def take_path() -> str | None:
    """The plan the launcher wants written (it passes it in the environment, which the
    job must not see: taken out of ours); None if it is not a path the launcher makes
    (absolute, a plan's name)."""
    path = os.environ.pop(PLAN_VARIABLE, None)
    if path is None or not path.startswith("/") or not plan_name_ok(os.path.basename(path)):
        return None
    return path


def _rec(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload


def encode(
    *,
    build: str,
    options: list[str],
    cwd: str | None,
    files: dict[str, tuple[int, int, int, int, int]],
    named: set[str],
    valid_until: float,
    rules: bytes,
    prefixes: list[str],
    cache_dirs: list[str],
    notify: bool,
    filt: bytes,
    core: str,
    memos: list[tuple[str, bytes, str]],
    repos: list[tuple[str, str]],
    groups: list[int],
    started: bytes = b"",
) -> bytes:
    """The plan's bytes (see the module's docstring); `started`: guest_records'."""
    enc = os.fsencode
    groups = sorted(set(groups))
    user = struct.pack(f"<II{len(groups)}I", os.getuid(), os.getgid(), *groups)
    out = [MAGIC, _rec(b"BILD", build.encode()), _rec(b"UID_", user)]
    out.append(_rec(b"OPTS", b"".join(enc(w) + b"\0" for w in options)))
    if cwd is not None:
        out.append(_rec(b"CWD_", enc(cwd)))
    out.append(_rec(b"KERN", os.uname().release.encode()))
    environ = dict(os.environb)
    out.append(_rec(b"ENVV", env_entries(environ)))
    out.append(_rec(b"ENVX", named_entries(named, environ)))
    for path, (dev, ino, size, mtime, kind) in sorted(files.items()):
        out.append(_rec(b"FILE", struct.pack("<QQqqI", dev, ino, size, mtime, kind) + enc(path)))
    out.append(_rec(b"VALD", struct.pack("<d", valid_until)))
    out.append(_rec(b"RULE", rules))
    out += [_rec(b"PFX0", enc(p)) for p in prefixes]
    out += [_rec(b"PFX1", enc(p)) for p in cache_dirs]
    out.append(_rec(b"NTFY", struct.pack("<I", int(notify))))
    out.append(_rec(b"FILT", filt))
    out.append(_rec(b"CORE", enc(core)))
    out += [_rec(b"MEMO", enc(p) + b"\0" + magic + b"\0" + enc(r)) for p, magic, r in memos]
    out += [_rec(b"REPO", enc(name) + b"\0" + root.encode()) for name, root in repos]
    out.append(started)
    return b"".join(out)


def decode(data: bytes) -> dict[bytes, list[bytes]] | None:
    """The records of a plan by tag (None: not a plan)."""
    if not data.startswith(MAGIC) or len(data) > MAX_SIZE:
        return None
    out: dict[bytes, list[bytes]] = {}
    i = len(MAGIC)
    while i < len(data):
        if i + 8 > len(data):
            return None
        tag = data[i : i + 4]
        (n,) = struct.unpack_from("<I", data, i + 4)
        if i + 8 + n > len(data):
            return None
        out.setdefault(tag, []).append(data[i + 8 : i + 8 + n])
        i += 8 + n
    return out


def read_pins(fd: int) -> tuple[dict[str, str], float, list[str]]:
    """What an adopted run must keep: the revisions the plan's table answers for (name
    -> root hash), the plan's validity (a pinned revision's own is unbounded), and the
    revisions of its memo files, in order (pc_adoption.memo_size's). Read from `fd`, the
    launcher's copy of the plan it checked (pc_adoption.plan_fd; closed here): the file
    itself may be another run's by now."""
    if fd < 0:
        return {}, 0.0, []
    try:
        data = os.pread(fd, MAX_SIZE + 1, 0)
    except OSError:
        return {}, 0.0, []
    finally:
        os.close(fd)
    recs = decode(data) or {}
    pins = {}
    for r in recs.get(b"REPO", []):
        name, _, root = r.partition(b"\0")
        pins[os.fsdecode(name)] = root.decode("ascii", "replace")
    memos = [os.fsdecode(r.split(b"\0")[-1]) for r in recs.get(b"MEMO", [])]
    vald = recs.get(b"VALD", [b""])[0]
    return pins, struct.unpack("<d", vald)[0] if len(vald) == 8 else 0.0, memos


def plan_name_ok(name: str) -> bool:
    """Whether `name` is one the launcher makes for a plan (16 hex digits: no "/", no
    "..", nothing else a hostile _PARROT_RUN_START_PLAN could name)."""
    return len(name) == 16 and all(c in "0123456789abcdef" for c in name)


def take_served(path: str) -> list[str]:
    """The cache files C served in planned runs of this plan (`<plan>.served`, appended
    by the launcher), taken: renamed away in the plan's directory first (a launcher
    appending meanwhile makes a new one), then read through a descriptor opened relative
    to the directory's, links not followed, and removed by that directory."""
    parent, name = os.path.split(path)
    if not plan_name_ok(name):
        return []
    try:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    taken = f".{name}.served.taking"
    try:
        if os.fstat(dfd).st_uid != os.getuid():
            return []
        try:
            os.rename(name + ".served", taken, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            return []
        try:
            fd = os.open(
                taken, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError:
            return []
        finally:
            try:
                os.unlink(taken, dir_fd=dfd)
            except OSError:
                pass
        try:
            import stat

            st = os.fstat(fd)
            if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
                return []
            data = os.read(fd, MAX_SIZE)
        except OSError:
            return []
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    return [os.fsdecode(p) for p in data.split(b"\0")[:-1]]


def write(path: str, data: bytes) -> None:
    """Write the plan atomically, 0600, in its directory (made 0700 if missing), no
    link followed; a plan that cannot be written is no error (the next start is slow)."""
    from ..atomic import write_atomic_at

    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.fstat(dfd).st_uid != os.getuid():
            return
        write_atomic_at(dfd, os.path.basename(path), data, 0o600)
        _bound(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _bound(dfd: int) -> None:
    """At most MAX_PLANS plans in the directory: the least recently written go (with
    their records of files served)."""
    names = [n for n in os.listdir(dfd) if not n.endswith(".served") and not n.startswith(".")]
    if len(names) <= MAX_PLANS:
        return
    aged = []
    for n in names[: 4 * MAX_PLANS + 1024]:  # bounded, whatever is there
        try:
            aged.append((os.stat(n, dir_fd=dfd, follow_symlinks=False).st_mtime_ns, n))
        except OSError:
            pass
    for _, n in sorted(aged)[: len(aged) - MAX_PLANS]:
        for victim in (n, n + ".served"):
            try:
                os.unlink(victim, dir_fd=dfd)
            except OSError:
                pass
