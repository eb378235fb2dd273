"""execve and execveat, and what exec needs beyond the kernel: `#!` interpreters and ELF
interpreters that live in /cvmfs, which the kernel would look for itself and not find."""

from __future__ import annotations

import errno
import os
import stat as st
import struct

from ...atomic import write_atomic
from ...client.cache import OBJECT_MODE, ObjectCache
from ..paths import MOUNT, Target
from ..syscalls import AT_FDCWD
from .answers import revision_of, teach_exec, teach_exec_failure
from .context import RESUME, X_OK, Context, skip

BINPRM_BUF_SIZE = 256
PT_INTERP = 3
MAX_INTERPRETER_DEPTH = 5  # `#!` rewrites the kernel makes before ELOOP (exec_binprm)


def read_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(BINPRM_BUF_SIZE)


def parse_shebang(head: bytes) -> tuple[str, str | None] | None:
    """Kernel rules: `#!`, spaces, interpreter, then the rest of the line as one argument."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0]
    line = line.replace(b"\t", b" ").strip(b" ")
    if not line:
        return None
    interp, _, arg = line.partition(b" ")
    arg = arg.strip(b" ")
    return os.fsdecode(interp), (os.fsdecode(arg) if arg else None)


ELF64_PHENTSIZE = 56
PATH_MAX = 4096


def elf_interpreter(path: str) -> tuple[str, int] | None:
    """PT_INTERP of a 64-bit little-endian ELF: (interpreter, index of its program header).
    The file is a repository's: sizes and offsets are checked, not trusted (a header
    table or an interpreter name of gigabytes is not read: None)."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
            return None
        phoff = struct.unpack_from("<Q", ehdr, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
        if phentsize != ELF64_PHENTSIZE or phnum == 0xFFFF:  # PN_XNUM: not for programs
            return None
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(len(table) // phentsize):
            p_type = struct.unpack_from("<I", table, i * phentsize)[0]
            if p_type == PT_INTERP:
                off, _vaddr, _paddr, filesz = struct.unpack_from("<QQQQ", table, i * phentsize + 8)
                if filesz == 0 or filesz > PATH_MAX:  # the kernel's limit too (ENOEXEC)
                    return None
                f.seek(off)
                name = f.read(filesz).split(b"\0", 1)[0]
                return (os.fsdecode(name), i) if name else None
    return None


def cached_file(cache: ObjectCache, area: str, key: str, make, name: str | None = None) -> str:
    """`<cache>/<area>/<key[:2]>/<key>`, a file derived from cache objects (its name is
    a digest of what it is made from), made by `make()` -> bytes if it is not there as a
    regular file of ours; nothing on the way is followed as a link. With `name`, the
    file is `<key>/<name>` (a program to exec: the kernel names the process after it)."""
    d = cache.ensure_dir(f"{area}/{key[:2]}" + (f"/{key}" if name else ""))
    dest = os.path.join(d, name or key)
    try:
        s = os.lstat(dest)
        if st.S_ISREG(s.st_mode) and s.st_uid == os.getuid():
            return dest
    except FileNotFoundError:
        pass
    write_atomic(dest, make(), OBJECT_MODE)  # a rename: replaces a link, never writes through it
    return dest


def patched_binary(cache: ObjectCache, binary: str, interp_local: str, name: str) -> str:
    """A copy of `binary` whose PT_INTERP points at `interp_local`, made once per cache,
    named `name` (the program's own: /proc/PID/comm, ps and pgrep show it).

    The new name is appended to the file and only the PT_INTERP header's offset and
    size change, so the original name stays in memory at p_vaddr, where ld.so reads
    its own name (it stays the /cvmfs path)."""
    import hashlib

    # the file's identity too: a host file may change under the same name
    s = os.stat(binary)
    ident = f"{binary}\0{interp_local}\0{s.st_dev}:{s.st_ino}:{s.st_size}:{s.st_mtime_ns}\0{name}"
    key = hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()

    def make() -> bytes:
        with open(binary, "rb") as f:
            data = bytearray(f.read())
        phoff = struct.unpack_from("<Q", data, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        new = os.fsencode(interp_local) + b"\0"
        offset = (len(data) + 7) & ~7
        data += bytes(offset - len(data)) + new
        for i in range(phnum):
            base = phoff + i * phentsize
            if base + ELF64_PHENTSIZE > len(data):  # a short table (elf_interpreter read it)
                break
            if struct.unpack_from("<I", data, base)[0] == PT_INTERP:
                struct.pack_into("<Q", data, base + 8, offset)
                struct.pack_into("<Q", data, base + 32, len(new))
        return bytes(data)

    return cached_file(cache, "patched", key, make, name)


def executable_copy(cache: ObjectCache, path: str, name: str) -> str:
    """A copy of `path` we may execute (objects of a read-only alien cache may lack the x
    bit), made once, named `name` as patched_binary's."""
    import hashlib

    def make() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    key = hashlib.sha1(os.fsencode(f"{path}\0{name}")).hexdigest() + ".exec"
    return cached_file(cache, "patched", key, make, name)


MAX_ARG_STRLEN = 32 * 4096  # the kernel's limit on one argument


def read_string_array(read, addr: int, limit: int = 1 << 16) -> list[bytes]:
    """argv/envp from the program's memory via read(addr, size) -> bytes (at most `limit`
    strings of at most MAX_ARG_STRLEN bytes each: what exec itself would accept)."""
    out: list[bytes] = []
    while addr and len(out) < limit:
        raw = read(addr, 8)
        if len(raw) < 8:
            break
        ptr = struct.unpack("<Q", raw)[0]
        if ptr == 0:
            break
        chunk = b""
        p = ptr
        while b"\0" not in chunk and len(chunk) < MAX_ARG_STRLEN:
            piece = read(p, 4096 - (p & 4095))
            if not piece:
                break
            chunk += piece
            p += len(piece)
        out.append(chunk.split(b"\0", 1)[0][:MAX_ARG_STRLEN])
        addr += 8
    return out


def h_execve(c: Context) -> tuple:
    is_at = c.call.name == "execveat"
    argv_arg = 2 if is_at else 1
    if c.empty_path:  # fexecve: the program is the descriptor
        t = c.fd_target(c.base, int(c.args[0]))
    else:
        t = c.resolve()
    if t is None:
        return RESUME
    err = _cannot_exec(c, t)
    if err:
        if not is_at:  # C fails the next exec of this path itself (examine.c fast_exec)
            teach_exec_failure(c, t, err)
        return skip(-err)
    given = c.path if not c.empty_path else t.vpath.logical
    guest = c.guest is not None
    if t.virtual:
        node = t.node
        program = c.view.materialize(node)
        logical = t.guest if guest else node.vpath.logical
    else:
        program, logical = t.host, t.guest
        if not guest and not _may_need_us(program):
            return c.host(t)
    # a guest's read-only program (the root, /cvmfs) is planned once: the loader, the
    # patched copy and what /proc/self/exe shows do not change during the run (an
    # overlay's upper copy does: the job writes it)
    stable = guest and (t.virtual or t.readonly) and not c.guest.in_upper(t.host)
    # (the name it is given too: the process is named after it)
    planned = (program, os.path.basename(given))
    plan = c.guest.exec_plans.get(planned) if stable else None
    if plan is None:
        plan = _plan_exec(c, program, logical, given, argv_arg)
        if stable and type(plan) is tuple and plan[1] is None:  # argv: the call's own
            c.guest.exec_plans[planned] = plan
    if plan is None:  # a host program that needs nothing from /cvmfs
        return c.host(t)
    if isinstance(plan, int):
        return skip(-plan)
    exe_path, new_argv, exe_logical, loader_rev, words, interpreters = plan
    if words is not None and not is_at and not c.empty_path and t.virtual:
        # the program, its `#!` interpreters and its loader from one revision: C execs
        # it from now on (a script's argv made from the words before its path)
        if loader_rev is None or loader_rev == revision_of(c.view, c.key() or "", t):
            teach_exec(c, t, exe_path, exe_logical, words, interpreters)
    values: dict = {c.call.path: exe_path}
    if is_at:
        values[0] = AT_FDCWD & 0xFFFFFFFFFFFFFFFF
        values[4] = 0
    if new_argv is not None:
        values[argv_arg] = new_argv
    c.procs.pending_exec[c.tid] = exe_logical
    return ("args", values, False, True)


def _cannot_exec(c: Context, t: Target) -> int:
    """The errno an exec of this file fails with before it is read (0: none): its
    lookup's (as stat's), EACCES for what is not a regular file, access(X_OK)'s."""
    if t.err:
        return t.err
    if not t.virtual:
        return 0  # the kernel's to judge
    if not t.node.is_regular:
        return errno.EACCES
    return c.can(t.node, X_OK)


def _plan_exec(c: Context, program: str, logical: str | None, given: str, argv_arg: int):
    """(path to exec, new argv or None, logical exe, the revision of the ELF loader
    looked up: None if none was, "" if it is in none, the words a `#!` chain puts
    before the program's path in argv, the interpreters as (path, Target)) / an errno
    / None (nothing to do). `logical`: the program's /cvmfs path, or in a guest
    namespace its guest path (interpreters are then looked up in the guest too)."""
    argv: list[bytes] | None = None
    given_argc = 0
    interpreters: list[tuple[str, Target]] = []
    exe_logical = logical or program  # what /proc/self/exe is to show
    path = program
    view = c.view
    guest = c.guest is not None
    for _depth in range(MAX_INTERPRETER_DEPTH + 1):
        try:
            head = read_head(path)
        except OSError as e:
            return None if logical is None else e.errno
        sb = parse_shebang(head)
        if sb is None:
            break
        interp, arg = sb
        if argv is None:
            argv = read_string_array(lambda a, n: c.core.read(c.tid, a, n), c.args[argv_arg])
            given_argc = len(argv)
        # the kernel's rule: interpreter, its argument, the file as exec was given it
        argv = (
            [os.fsencode(interp)]
            + ([os.fsencode(arg)] if arg else [])
            + [os.fsencode(given)]
            + argv[1:]
        )
        given = interp
        # a relative interpreter is the kernel's open_exec of it: from the process's cwd
        t = c.resolve_path(interp, None if interp.startswith("/") else _cwd(c.tid), True)
        if t.err:
            return t.err
        interpreters.append((interp, t))
        if t.virtual:
            if not t.node.is_regular:
                return errno.EACCES
            denied = c.can(t.node, X_OK)  # the interpreter must be executable too
            if denied:
                return denied
            path = view.materialize(t.node)
            exe_logical = t.guest if guest else t.node.vpath.logical
        else:
            if os.path.exists(t.host) and not (  # missing: ENOENT, when its head is read
                os.path.isfile(t.host) and os.access(t.host, os.X_OK)
            ):
                return errno.EACCES
            path, exe_logical = t.host, t.guest or t.host
    else:
        return errno.ELOOP
    interp = elf_interpreter(path) if head[:4] == b"\x7fELF" else None
    loader_rev = None
    if interp is not None and (guest or interp[0] == MOUNT or interp[0].startswith(MOUNT + "/")):
        # the ELF interpreter as the program's namespace names it: the kernel would look
        # for it on the host
        t = c.resolve_path(interp[0], None, True)
        if t.err:
            return errno.ENOENT
        if t.virtual:
            loader = view.materialize(t.node)
            loader_rev = "" if t.node.variant else revision_of(view, interp[0], t) or ""
        else:
            loader, loader_rev = t.host, ""
        if loader != interp[0]:
            path = patched_binary(view.own_cache(), path, loader, _program_name(given))
    elif path == program and argv is None and logical is None:
        return None
    if not os.access(path, os.X_OK):
        path = executable_copy(view.own_cache(), path, _program_name(given))
    # a script's argv is the words, the path as given, argv[1:] (None: it cannot be
    # told so, an empty argv has the kernel's own rules; no script: no words)
    words: list[bytes] | None = []
    if argv is not None:
        words = argv[: len(argv) - given_argc] if given_argc else None
    return path, argv, exe_logical, loader_rev, words, interpreters


def _cwd(tid: int) -> str | None:
    """The host directory a task's relative names start from (None: it is gone)."""
    try:
        return os.readlink(f"/proc/{tid}/cwd")
    except OSError:
        return None


def _program_name(given: str) -> str:
    """The file name of a copy made to exec the program named `given` (as exec or a
    `#!` line names it): the kernel names the process after it, as it would the
    program."""
    name = given.rstrip("/").rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") else "program"


def _may_need_us(path: str) -> bool:
    """Whether exec of a host file involves /cvmfs (a #! or ELF interpreter there)."""
    try:
        head = read_head(path)
    except OSError:
        return False
    if head.startswith(b"#!"):
        return MOUNT.encode() in head.split(b"\n", 1)[0]
    if head[:4] == b"\x7fELF":
        try:
            interp = elf_interpreter(path)
        except OSError:
            return False
        return interp is not None and interp[0].startswith(MOUNT + "/")
    return False
