"""The seccomp-bpf program, generated from the system-call table.

Traced calls return SECCOMP_RET_TRACE with the row index as data, or
SECCOMP_RET_USER_NOTIF in notification mode for the rows marked so; calls that
could escape the tracer are refused without a stop (io_uring_setup, clone3,
clone with CLONE_UNTRACED, the x32 ABI); everything else runs untouched."""

from __future__ import annotations

import errno
import struct

from .syscalls import AUDIT_ARCH, CLONE, CLONE3, CLONE_UNTRACED, FAST_UNHOLD, IO_URING_SETUP, Call

LD_W_ABS = 0x20
JEQ = 0x15
JGE = 0x35
JSET = 0x45
RET = 0x06
RET_ALLOW = 0x7FFF0000
RET_TRACE = 0x7FF00000
RET_USER_NOTIF = 0x7FC00000
RET_ERRNO = 0x00050000
OFF_NR, OFF_ARCH, OFF_ARGS = 0, 4, 16
X32_BIT = 0x40000000
O_PATH = 0o10000000

_INSN = struct.Struct("<HBBI")


def build_filter(calls: list[Call], arch: str, notify: bool = False) -> bytes:
    """cBPF for `arch`; row i of `calls` traps with data i (or, with `notify`, rows
    marked so notify the listener). Rows marked guest_only are in build_late_filter's."""
    prog: list[tuple[int, int, int, int]] = [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ, 1, 0, AUDIT_ARCH[arch]),
        (RET, 0, 0, RET_ALLOW),  # another ABI (i386 on x86_64): not ours
        (LD_W_ABS, 0, 0, OFF_NR),
    ]
    if arch == "x86_64":
        prog += [(JGE, 0, 1, X32_BIT), (RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    for nr in (IO_URING_SETUP[arch], CLONE3[arch]):
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    prog += [
        (JEQ, 0, 4, CLONE[arch]),
        (LD_W_ABS, 0, 0, OFF_ARGS),  # low half of args[0], the clone flags
        (JSET, 0, 1, CLONE_UNTRACED),
        (RET, 0, 0, RET_ERRNO | errno.EPERM),
        (LD_W_ABS, 0, 0, OFF_NR),
    ]
    for i, call in enumerate(calls):
        if call.guest_only or (call.fast == FAST_UNHOLD and not notify):
            continue  # (without notifications C holds nothing to let go: held.c)
        nr = call.number(arch)
        if notify and call.notify and call.name in ("open", "openat"):
            # O_PATH descriptors cannot be installed by SECCOMP_IOCTL_NOTIF_ADDFD: those
            # opens stay with ptrace (the flags are in a register, so BPF can tell)
            prog += [
                (JEQ, 0, 4, nr),
                (LD_W_ABS, 0, 0, OFF_ARGS + 8 * call.flags),
                (JSET, 0, 1, O_PATH),
                (RET, 0, 0, RET_TRACE | i),
                (RET, 0, 0, RET_USER_NOTIF),
            ]
            continue
        action = RET_USER_NOTIF if notify and call.notify else RET_TRACE | i
        if call.arg1_in:
            # only some requests (ioctl): the rest of this call runs untouched
            block = [(LD_W_ABS, 0, 0, OFF_ARGS + 8)]
            for v in call.arg1_in:
                block += [(JEQ, 0, 1, v), (RET, 0, 0, action)]
            block.append((RET, 0, 0, RET_ALLOW))
            prog += [(JEQ, 0, len(block), nr), *block]
            continue
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, action)]
    return _program(prog)


def build_late_filter(calls: list[Call], arch: str) -> bytes:
    """cBPF for the guest_only rows (a guest namespace's socket addresses), which the
    job installs after handing the listener over (spawn.c: a sendmsg, which these rows
    stop); a ptrace stop with data i for row i, only with the row's pointer given. The
    kernel runs both programs, and the stricter action wins (notify over trace)."""
    prog = [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ, 1, 0, AUDIT_ARCH[arch]),
        (RET, 0, 0, RET_ALLOW),
        (LD_W_ABS, 0, 0, OFF_NR),
    ]
    for i, call in enumerate(calls):
        if not call.guest_only:
            continue
        nr, action = call.number(arch), RET_TRACE | i
        if call.pointer < 0:
            prog += [(JEQ, 0, 1, nr), (RET, 0, 0, action)]
            continue
        at = OFF_ARGS + 8 * call.pointer  # both halves of the pointer zero: it runs
        prog += [
            (JEQ, 0, 6, nr),
            (LD_W_ABS, 0, 0, at),
            (JEQ, 0, 2, 0),
            (LD_W_ABS, 0, 0, at + 4),
            (JEQ, 1, 0, 0),
            (RET, 0, 0, action),
            (RET, 0, 0, RET_ALLOW),
        ]
    return _program(prog)


def _program(prog: list[tuple[int, int, int, int]]) -> bytes:
    prog.append((RET, 0, 0, RET_ALLOW))
    if len(prog) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(_INSN.pack(*insn) for insn in prog)
