"""The container behaviour issue 13 left for later: changes through descriptors of root
files not yet copied up, O_TMPFILE and RENAME_EXCHANGE in an overlaid root, Unix socket
addresses of accept/recvfrom/recvmsg/sendto/sendmsg in guest terms, and an offline
--root run from a preloaded alien cache."""

from __future__ import annotations

import os

from . import test_container_root as croot

# the Debian 11 userland as root, from the host and from /cvmfs (test_container_root.py)
debian11, bullseye, mode, run, run_modes = (
    croot.debian11,
    croot.bullseye,
    croot.mode,
    croot.run,
    croot.run_modes,
)
ok = croot.ok

# -- changes through a descriptor of a root file not yet copied up --------------------------

_FD_CHANGES = r"""
import errno, os
fd = os.open('/etc/hostname', os.O_RDONLY)
dv = os.open('/etc/debian_version', os.O_RDONLY)
def t(name, f, *a, **kw):
    try:
        f(*a, **kw)
        print(name, 'ok')
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t('fchmod', os.fchmod, fd, 0o604)
t('fchown', os.fchown, fd, 12, 34)
t('fsetxattr', os.setxattr, fd, 'user.mark', b'v1')
t('fsetxattr2', os.setxattr, dv, 'user.gone', b'x')
t('fremovexattr', os.removexattr, dv, 'user.gone')
t('futimens', os.utime, fd, None, ns=(10**9, 2 * 10**9))
t('ftruncate', os.ftruncate, fd, 0)
"""
_FD_LOOK = (
    "stat -c '%a %u %g %Y %s' /etc/hostname; python3 -c \"import os;"
    " print(os.getxattr('/etc/hostname', 'user.mark'),"
    " os.listxattr('/etc/debian_version'))\""
)


def test_descriptor_changes_copy_up(run_modes, bullseye, tmp_path):
    """fchmod, fchown, fsetxattr, fremovexattr and futimens on a read-only descriptor
    of a root file copy it up and change the copy (as overlayfs does); ftruncate of a
    read-only descriptor is EINVAL as the kernel's; without an overlay all are EROFS."""
    before = os.lstat(os.path.join(bullseye, "etc/hostname"))
    ov = ["--overlay", str(tmp_path / "ov")]
    out = ok(run_modes("python3", "-c", _FD_CHANGES, options=ov))
    assert out.split("\n")[:-1] == [
        "fchmod ok",
        "fchown ok",
        "fsetxattr ok",
        "fsetxattr2 ok",
        "fremovexattr ok",
        "futimens ok",
        "ftruncate EINVAL",
    ], out
    size = before.st_size
    assert ok(run_modes.sh(_FD_LOOK, options=ov)).splitlines() == [
        f"604 12 34 2 {size}",
        "b'v1' []",
    ]
    now = os.lstat(os.path.join(bullseye, "etc/hostname"))
    assert (now.st_mode, now.st_uid, now.st_mtime_ns) == (
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
    )
    out = ok(run_modes("python3", "-c", _FD_CHANGES))
    assert out.split() == [
        *("fchmod EROFS fchown EROFS fsetxattr EROFS fsetxattr2 EROFS".split()),
        *("fremovexattr EROFS futimens EROFS ftruncate EINVAL".split()),
    ], out


# -- renameat2 in the root -------------------------------------------------------------------

_RENAMES = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def r(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) == 0:
        return 'ok'
    return errno.errorcode[ctypes.get_errno()]
print(r('/etc/hostname', '/etc/debian_version', 2),  # RENAME_EXCHANGE
      r('/etc/hostname', '/etc/none', 2),
      r('/usr', '/etc/hostname', 2),  # a root directory: EXDEV as overlayfs
      r('/etc/hostname', '/etc/debian_version', 3),  # EXCHANGE|NOREPLACE: EINVAL
      r('/etc/hostname', '/etc/debian_version', 1),  # NOREPLACE: EEXIST
      r('/etc/hostname', '/etc/new', 4))  # WHITEOUT: EINVAL on overlayfs
"""


def test_rename_exchange_in_the_root(run_modes, bullseye, tmp_path):
    """RENAME_EXCHANGE of two root files copies both up and swaps them; the other
    renameat2 flags as the kernel's overlayfs answers them; EROFS without an overlay
    (after the kernel's flag checks)."""
    ov = ["--overlay", str(tmp_path / "ov")]
    out = ok(run_modes("python3", "-c", _RENAMES, options=ov))
    assert out.split() == ["ok", "ENOENT", "EXDEV", "EINVAL", "EEXIST", "EINVAL"], out
    hostname = open(os.path.join(bullseye, "etc/hostname")).read()
    release = open(os.path.join(bullseye, "etc/debian_version")).read()
    both = ok(run_modes("cat", "/etc/hostname", "/etc/debian_version", options=ov))
    assert both == release + hostname
    assert open(os.path.join(bullseye, "etc/hostname")).read() == hostname
    out = ok(run_modes("python3", "-c", _RENAMES))
    assert out.split() == ["EROFS", "EROFS", "EROFS", "EINVAL", "EROFS", "EROFS"], out
