"""The declarative system-call table against an independent source (python-ptrace's
per-architecture numbers and prototypes), and the filter and dispatch it generates."""

from __future__ import annotations

import struct

import ptrace.syscall.linux.aarch64 as ptrace_aarch64
import ptrace.syscall.linux.x86_64 as ptrace_x86_64
import pytest
from ptrace.syscall.prototypes import SYSCALL_PROTOTYPES

from parrot_cvmfs.tracer.handlers import HANDLERS
from parrot_cvmfs.tracer.seccomp import build_filter, build_late_filter
from parrot_cvmfs.tracer.syscalls import CALLS, FAST_UNHOLD, calls_for

TABLES = {"x86_64": ptrace_x86_64.SYSCALL_NAMES, "aarch64": ptrace_aarch64.SYSCALL_NAMES}
# newer than python-ptrace's tables (Linux 6.6 and later)
NEWER = {
    "fchmodat2",
    "setxattrat",
    "getxattrat",
    "listxattrat",
    "removexattrat",
    "file_getattr",
    "file_setattr",
}
# calls that take a path but are not ours, and why
NOT_OURS = {
    "swapon": "needs CAP_SYS_ADMIN",
    "swapoff": "needs CAP_SYS_ADMIN",
    "quotactl": "names a block device, not a file",
    "fanotify_mark": "marks need CAP_SYS_ADMIN for paths an unprivileged user could not watch",
    "uselib": "absent from x86_64 kernels built without CONFIG_USELIB (the default)",
    "delete_module": "a module name, not a path",
    "memfd_create": "a name, not a path",
    "mq_open": "a message queue name, not a path",
    "mq_unlink": "a message queue name, not a path",
    "sethostname": "not a path",
    "setdomainname": "not a path",
}
PATH_ARGS = {
    "filename",
    "pathname",
    "path",
    "oldname",
    "newname",
    "oldpath",
    "newpath",
    "name",
    "dev_name",
    "dir_name",
    "specialfile",
    "library",
    "dirname",
    "linkpath",
    "target",
}


@pytest.mark.parametrize("arch", sorted(TABLES))
def test_numbers_match_python_ptrace(arch):
    names = TABLES[arch]
    for call in calls_for(arch):
        nr = call.number(arch)
        if call.name in NEWER:
            assert nr not in names or names[nr] == call.name, call
            continue
        assert names.get(nr) == call.name, (arch, call.name, nr, names.get(nr))


def test_every_call_that_takes_a_path_is_ours_or_explained():
    ours = {c.name for c in CALLS}
    known = set(TABLES["x86_64"].values())
    missing = []
    for name, (_ret, args) in SYSCALL_PROTOTYPES.items():
        if name not in known or name in ours or name in NOT_OURS:
            continue
        if any(t.rstrip().endswith("char *") and a in PATH_ARGS for t, a in args):
            missing.append(name)
    assert not missing, (
        f"calls taking a path that the table neither handles nor explains: {missing}"
    )


def _jeq_constants(prog: bytes) -> set[int]:
    out = set()
    for i in range(0, len(prog), 8):
        code, _jt, _jf, k = struct.unpack_from("<HBBI", prog, i)
        if code == 0x15:  # BPF_JMP | BPF_JEQ | BPF_K
            out.add(k)
    return out


@pytest.mark.parametrize("arch", sorted(TABLES))
@pytest.mark.parametrize("notify", [False, True])
def test_filter_and_dispatch_cover_every_row(arch, notify):
    calls = calls_for(arch)
    consts = _jeq_constants(build_filter(calls, arch, notify))
    late = _jeq_constants(build_late_filter(calls, arch))  # a guest namespace's own rows
    for call in calls:
        if call.fast == FAST_UNHOLD and not notify:  # nothing held to let go: no stop
            assert call.number(arch) not in consts, (arch, call.name)
            continue
        assert call.number(arch) in (late if call.guest_only else consts), (arch, call.name)
        assert callable(HANDLERS.get(call.handler)), call.handler


def test_handler_map_matches_the_table():
    """Every row's handler is in the dispatch map, and the map has no handler no row names."""
    assert {c.handler for c in CALLS} == set(HANDLERS)
