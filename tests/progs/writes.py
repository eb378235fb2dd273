"""Every way of changing a read-only tree that a program has, each spelled several ways
(absolute, relative to the cwd and to a dirfd, through /proc magic links, on descriptors).
Prints one line per attempt: what was tried, and `ok` or the errno's name.

    python3 writes.py ROOT HOSTDIR

ROOT holds `d/` (with the file `d/f`), the symlinks `l -> d` and `loop -> loop`, and the
file `top`; HOSTDIR is
a writable host directory holding the file `hostfile`. The tests run this natively on a
read-only bind mount of a tree and under parrot_run on /cvmfs/<repo> (the same tree), and
compare the lines.
"""

import ctypes
import errno
import os
import sys

ROOT, HOST = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000


def attempt(what, fn):
    try:
        r = fn()
        if isinstance(r, int) and r >= 0 and what.startswith("open"):
            os.close(r)
        out = "ok"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
    print(f"{what}: {out}", flush=True)


def linkat_empty(fd, new):
    if libc.linkat(fd, b"", AT_FDCWD, os.fsencode(new), AT_EMPTY_PATH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def linkat_follow(old, new):
    if libc.linkat(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), 0x400) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def futimesat_null(fd):
    if libc.futimesat(fd, None, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def bind_unix(path):
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)


R = ROOT
d, f, link = f"{R}/d", f"{R}/d/f", f"{R}/l"
W, RW, C, X, T = os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_EXCL, os.O_TRUNC

# -- "." and ".." after files and symlinks (reads: the kernel's walk) ---------------------
for spelled in ("d/f/.", "d/f/..", "l/.", "l/..", "l/", "d/f/", "top/.", "d/.", "d/./f"):
    p = f"{R}/{spelled}"
    attempt(f"stat {spelled}", lambda p=p: os.stat(p))
    attempt(f"lstat-type {spelled}", lambda p=p: print(oct(os.lstat(p).st_mode >> 12)))
    attempt(f"readlink {spelled}", lambda p=p: os.readlink(p))
    attempt(f"open {spelled}", lambda p=p: os.open(p, os.O_RDONLY))
    attempt(f"listdir {spelled}", lambda p=p: print(sorted(os.listdir(p))))
# -- absolute paths ----------------------------------------------------------------------
attempt("open f O_WRONLY", lambda: os.open(f, W))
attempt("open f O_RDWR", lambda: os.open(f, RW))
attempt("open f O_RDONLY|O_TRUNC", lambda: os.open(f, os.O_RDONLY | T))
attempt("open f O_WRONLY|O_APPEND", lambda: os.open(f, W | os.O_APPEND))
attempt("open new O_CREAT", lambda: os.open(f"{d}/new", W | C, 0o644))
attempt("open f O_CREAT|O_EXCL", lambda: os.open(f, W | C | X, 0o644))
attempt("open f O_CREAT rdonly", lambda: os.open(f, C, 0o644))
attempt("open d O_CREAT", lambda: os.open(d, C, 0o644))
attempt("open d/. O_CREAT", lambda: os.open(f"{d}/.", C, 0o644))
attempt("open new/ O_CREAT", lambda: os.open(f"{d}/new/", W | C, 0o644))
attempt("open d O_TMPFILE", lambda: os.open(d, os.O_TMPFILE | W, 0o600))
attempt("open d O_WRONLY", lambda: os.open(d, W))
attempt("open l/f O_RDWR", lambda: os.open(f"{link}/f", RW))
attempt("mkdir new", lambda: os.mkdir(f"{d}/newdir"))
attempt("mkdir existing", lambda: os.mkdir(d))
attempt("mkdir d/.", lambda: os.mkdir(f"{d}/."))
attempt("mkdir d/..", lambda: os.mkdir(f"{d}/.."))
attempt("mkdir new/", lambda: os.mkdir(f"{d}/newdir/"))
attempt("mkfifo new", lambda: os.mkfifo(f"{d}/fifo"))
attempt("mkfifo new/", lambda: os.mkfifo(f"{d}/fifo/"))
attempt("rmdir d", lambda: os.rmdir(d))
attempt("rmdir d/.", lambda: os.rmdir(f"{d}/."))
attempt("rmdir d/..", lambda: os.rmdir(f"{d}/.."))
attempt("rmdir missing", lambda: os.rmdir(f"{d}/missing"))
attempt("rmdir f", lambda: os.rmdir(f))
attempt("rmdir l", lambda: os.rmdir(link))
attempt("unlink f", lambda: os.unlink(f))
attempt("unlink l", lambda: os.unlink(link))
attempt("unlink d/.", lambda: os.unlink(f"{d}/."))
attempt("unlink d/..", lambda: os.unlink(f"{d}/.."))
attempt("unlink missing", lambda: os.unlink(f"{d}/missing"))
attempt("unlink f/.", lambda: os.unlink(f"{f}/."))
attempt("rename f g", lambda: os.rename(f, f"{d}/g"))
attempt("rename f host", lambda: os.rename(f, f"{HOST}/moved"))
attempt("rename host new", lambda: os.rename(f"{HOST}/hostfile", f"{d}/new"))
attempt("rename d/. x", lambda: os.rename(f"{d}/.", f"{R}/x"))
attempt("rename missing x", lambda: os.rename(f"{d}/missing", f"{R}/x"))
attempt("link f h", lambda: os.link(f, f"{d}/h"))
attempt("link f top", lambda: os.link(f, f"{R}/top"))
attempt("link host new", lambda: os.link(f"{HOST}/hostfile", f"{d}/new"))
attempt("link host existing", lambda: os.link(f"{HOST}/hostfile", f))
attempt("link f host-new", lambda: os.link(f, f"{HOST}/linked"))
attempt("link f host-existing", lambda: os.link(f, f"{HOST}/hostfile"))
attempt("link missing host-new", lambda: os.link(f"{d}/missing", f"{HOST}/linked"))
attempt("symlink new", lambda: os.symlink("x", f"{d}/sym"))
attempt("symlink existing", lambda: os.symlink("x", f))
attempt("symlink d/.", lambda: os.symlink("x", f"{d}/."))
attempt("symlink new/", lambda: os.symlink("x", f"{d}/sym/"))
attempt("chmod f", lambda: os.chmod(f, 0o777))
attempt("chmod d", lambda: os.chmod(d, 0o777))
attempt("chown f", lambda: os.chown(f, 0, 0))
attempt("lchown l", lambda: os.lchown(link, 0, 0))
attempt("utime f", lambda: os.utime(f, (1, 1)))
attempt("utime l nofollow", lambda: os.utime(link, (1, 1), follow_symlinks=False))
attempt("truncate f", lambda: os.truncate(f, 0))
attempt("truncate d", lambda: os.truncate(d, 0))
attempt("truncate l", lambda: os.truncate(link, 0))
attempt("setxattr f", lambda: os.setxattr(f, "user.x", b"1"))
attempt("removexattr f", lambda: os.removexattr(f, "user.x"))

# -- a trailing "/" on the last component, after a file or a looping link ----------------
for spelled in ("d/f/", "loop/", "top/", "d/missing/"):
    p = f"{R}/{spelled}"
    attempt(f"mkdir {spelled}", lambda p=p: os.mkdir(p))
    attempt(f"rmdir {spelled}", lambda p=p: os.rmdir(p))
    attempt(f"unlink {spelled}", lambda p=p: os.unlink(p))
    attempt(f"mkfifo {spelled}", lambda p=p: os.mkfifo(p))
    attempt(f"symlink {spelled}", lambda p=p: os.symlink("x", p))
    attempt(f"open O_CREAT {spelled}", lambda p=p: os.open(p, W | C, 0o644))
    attempt(f"rename {spelled} host", lambda p=p: os.rename(p, f"{HOST}/moved"))
    attempt(f"link host {spelled}", lambda p=p: os.link(f"{HOST}/hostfile", p))
# -- descriptors -------------------------------------------------------------------------
ffd = os.open(f, os.O_RDONLY)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
lfd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
attempt("fchmod f", lambda: os.chmod(ffd, 0o777))
attempt("fchmod d", lambda: os.chmod(dfd, 0o777))
attempt("fchown f", lambda: os.chown(ffd, 0, 0))
attempt("futimens f", lambda: os.utime(ffd, (1, 1)))
attempt("futimens d", lambda: os.utime(dfd, (1, 1)))
attempt("ftruncate f", lambda: os.truncate(ffd, 0))
attempt("fsetxattr f", lambda: os.setxattr(ffd, "user.x", b"1"))
attempt("fremovexattr f", lambda: os.removexattr(ffd, "user.x"))
attempt("write f", lambda: os.write(ffd, b"x"))
attempt("linkat empty f", lambda: linkat_empty(ffd, f"{HOST}/flinked"))
attempt("linkat empty l", lambda: linkat_empty(lfd, f"{HOST}/llinked"))
attempt("reopen f O_RDWR", lambda: os.open(f"/proc/self/fd/{ffd}", RW))
attempt("reopen f O_WRONLY|O_TRUNC", lambda: os.open(f"/dev/fd/{ffd}", W | T))
attempt("futimesat f NULL", lambda: futimesat_null(ffd))
# -- /proc magic links however they are spelled ------------------------------------------
for spell in ("//proc", "/./proc", "/proc/../proc"):
    attempt(f"{spell} reopen f O_RDWR", lambda s=spell: os.open(f"{s}/self/fd/{ffd}", RW))
    attempt(f"{spell} chmod f", lambda s=spell: os.chmod(f"{s}/self/fd/{ffd}", 0o777))
    attempt(f"{spell} mkdir in d", lambda s=spell: os.mkdir(f"{s}/self/fd/{dfd}/x"))
attempt("proc fd linkat f host", lambda: linkat_follow(f"/proc/self/fd/{ffd}", f"{HOST}/h1"))
attempt("//proc fd linkat f host", lambda: linkat_follow(f"//proc/self/fd/{ffd}", f"{HOST}/h2"))
# -- Unix sockets bound at a path --------------------------------------------------------
attempt("bind d/sock", lambda: bind_unix(f"{d}/sock"))
attempt("bind f", lambda: bind_unix(f))
attempt("bind proc fd d/sock", lambda: bind_unix(f"/proc/self/fd/{dfd}/sock"))
# -- relative to a dirfd -----------------------------------------------------------------
attempt("dirfd unlink f", lambda: os.unlink("f", dir_fd=dfd))
attempt("dirfd rmdir .", lambda: os.rmdir(".", dir_fd=dfd))
attempt("dirfd mkdir new", lambda: os.mkdir("newdir", dir_fd=dfd))
attempt("dirfd open new O_CREAT", lambda: os.open("new", W | C, 0o644, dir_fd=dfd))
attempt("dirfd chmod f", lambda: os.chmod("f", 0o777, dir_fd=dfd))
attempt("dirfd utime f", lambda: os.utime("f", (1, 1), dir_fd=dfd))
attempt("dirfd rename f host", lambda: os.rename("f", f"{HOST}/moved", src_dir_fd=dfd))
attempt("dirfd symlink", lambda: os.symlink("x", "sym", dir_fd=dfd))
# -- through /proc magic links -----------------------------------------------------------
attempt("proc fd unlink f", lambda: os.unlink(f"/proc/self/fd/{dfd}/f"))
attempt("proc fd open new O_CREAT", lambda: os.open(f"/proc/self/fd/{dfd}/new", W | C, 0o644))
attempt("proc fd mkdir", lambda: os.mkdir(f"/proc/self/fd/{dfd}/newdir"))
attempt("dev fd open new O_CREAT", lambda: os.open(f"/dev/fd/{dfd}/new", W | C, 0o644))
attempt("proc fd chmod", lambda: os.chmod(f"/proc/self/fd/{ffd}", 0o777))
attempt("proc fd utime", lambda: os.utime(f"/proc/self/fd/{ffd}", (1, 1)))
attempt("proc fd truncate", lambda: os.truncate(f"/proc/self/fd/{ffd}", 0))
# -- relative to the working directory ---------------------------------------------------
os.chdir(d)
attempt("cwd unlink f", lambda: os.unlink("f"))
attempt("cwd mkdir new", lambda: os.mkdir("newdir"))
attempt("cwd open new O_CREAT", lambda: os.open("new", W | C, 0o644))
attempt("cwd open . O_TMPFILE", lambda: os.open(".", os.O_TMPFILE | W, 0o600))
attempt("cwd rmdir .", lambda: os.rmdir("."))
attempt("cwd rename f ../g", lambda: os.rename("f", "../g"))
attempt("cwd symlink", lambda: os.symlink("x", "sym"))
attempt("cwd mkfifo", lambda: os.mkfifo("fifo"))
attempt("proc cwd unlink f", lambda: os.unlink("/proc/self/cwd/f"))
attempt("proc cwd open new O_CREAT", lambda: os.open("/proc/self/cwd/new", W | C, 0o644))
attempt("proc cwd mkdir", lambda: os.mkdir("/proc/self/cwd/newdir"))
attempt("cwd bind sock", lambda: bind_unix("sock"))
os.chdir(link)  # through the symlink: the kernel's cwd is the directory
attempt("cwd-via-link unlink f", lambda: os.unlink("f"))
attempt("cwd-via-link touch", lambda: os.open("new", W | C, 0o644))
os.chdir("/")
attempt("relative proc fd reopen f", lambda: os.open(f"proc/self/fd/{ffd}", RW))
attempt("relative proc fd mkdir in d", lambda: os.mkdir(f"proc/self/fd/{dfd}/x"))
