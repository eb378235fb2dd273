"""The constants Python keeps of the C core equal the C ones (csrc/tracer/tracer.h,
read by build_core.py): a change on one side alone fails here."""

from __future__ import annotations

import pytest
from parrot_cvmfs._core import ffi, lib

from parrot_cvmfs.tracer import core, syscalls
from parrot_cvmfs.tracer.handlers import execve


@pytest.mark.parametrize(
    "py, c",
    [
        ("PATH", "PC_KIND_PATH"),
        ("PATH2", "PC_KIND_PATH2"),
        ("FD", "PC_KIND_FD"),
        ("CWD", "PC_KIND_CWD"),
        ("SOCKADDR", "PC_KIND_SOCKADDR"),
        ("SOCKNAME", "PC_KIND_SOCKNAME"),
        ("BARE_EMPTY", "PC_BARE_EMPTY"),
        ("BARE_NULL", "PC_BARE_NULL"),
        ("FAST_NONE", "PC_FAST_NONE"),
        ("FAST_STAT", "PC_FAST_STAT"),
        ("FAST_STATX", "PC_FAST_STATX"),
        ("FAST_ACCESS", "PC_FAST_ACCESS"),
        ("FAST_READLINK", "PC_FAST_READLINK"),
        ("FAST_OPEN", "PC_FAST_OPEN"),
        ("FAST_GETDENTS", "PC_FAST_GETDENTS"),
        ("FAST_GETXATTR", "PC_FAST_GETXATTR"),
        ("FAST_LISTXATTR", "PC_FAST_LISTXATTR"),
        ("FAST_STATFS", "PC_FAST_STATFS"),
        ("FAST_EXEC", "PC_FAST_EXEC"),
        ("FAST_GETCWD", "PC_FAST_GETCWD"),
        ("FAST_UNHOLD", "PC_FAST_UNHOLD"),
    ],
)
def test_syscall_table_constants(py: str, c: str) -> None:
    assert getattr(syscalls, py) == getattr(lib, c)


def test_every_c_kind_and_fast_has_its_python_name() -> None:
    """A kind or fast answer added in C only is caught too."""
    for prefix, names in (
        ("PC_KIND_", ("PATH", "PATH2", "FD", "CWD", "SOCKADDR", "SOCKNAME", "SOCKMSG", "SOCKFROM")),
        ("PC_FAST_", None),
    ):
        c_names = {n[len(prefix) :] for n in dir(lib) if n.startswith(prefix)}
        if names is None:
            assert {"FAST_" + n for n in c_names} <= set(dir(syscalls))
        else:
            assert c_names == set(names)


def test_path_sizes() -> None:
    """Python reads paths of the event up to the kernel's PATH_MAX, as C does."""
    assert execve.PATH_MAX == lib.PC_PATH_MAX
    ev = ffi.new("pc_event *")
    for field in ("path", "path2", "base", "base2", "key"):
        assert ffi.sizeof(getattr(ev, field)) == lib.PC_PATH_MAX + 1


def test_rules_fit() -> None:
    """The rules the syscall table generates fit the C table of rules."""
    assert len(syscalls.CALLS) <= lib.PC_MAX_RULES


def test_xattr_record_tags() -> None:
    """The value lengths that mark an attribute record as Python's (pc_table_put_xattrs):
    the prefix records Python writes carry C's tag."""
    assert lib.PC_XATTR_PYTHON == 0xFFFFFFFF
    assert lib.PC_XATTR_PREFIX == 0xFFFFFFFE
    assert core.XATTR_PREFIX_TAG == lib.PC_XATTR_PREFIX.to_bytes(4, "little")
