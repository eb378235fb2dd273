"""The job's namespace when parrot_run is given a root or binds (--root, -B, -M, -m):
the container mount table (container/mounts.py) walked over the host's files and the
virtual /cvmfs tree, giving the tracer the same `Target`s as paths.resolve does.

Locations in /cvmfs are answered from the catalogs (a Target with its node, handled as
any /cvmfs path); others are host paths handed to the kernel in place of the program's
(`via_cvmfs`: the argument is replaced). /proc magic links (/proc/self, fd/N, exe, cwd)
lead where they lead for the calling process, spelled in the guest."""

from __future__ import annotations

import errno
import os
import stat

from ..container.mounts import (
    DIR,
    LINK,
    MISSING,
    OTHER,
    HostFiles,
    MountTable,
    host_realpath,
    in_cvmfs,
)
from ..container.mounts import resolve as guest_resolve
from .paths import Target, vpath_of_logical
from .vfs import CvmfsView

# Calls whose answer on a plain path below a host bind at its own place is the kernel's
# (passthrough.c): reads (C counts an open's write flags and access's W_OK as writes)...
PLAIN_READS = (
    *("open", "openat", "stat", "lstat", "newfstatat", "statx", "statfs"),
    *("access", "faccessat", "faccessat2", "readlink", "readlinkat"),
    *("getxattr", "lgetxattr", "listxattr", "llistxattr", "getcwd", "getdents64"),
)
# ...and changes, on a writable bind only (made with the job's own umask and credentials)
PLAIN_WRITES = ("creat", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat")


class Guest:
    """The mount table and what the tracer needs of it, for one job."""

    def __init__(self, table: MountTable, view: CvmfsView, procs, overlay: str | None = None):
        self.table, self.view, self.procs = table, view, procs
        # --overlay: the writable layers (container/overlay.py Layered) of the root, or
        # without a root of each bind from /cvmfs; locked for this job
        self.overlay = None
        if overlay is not None:
            self.overlay = _open_overlay(view, table, overlay)
        self._host = HostFiles()
        self._tid = 0
        # (location, guest path) of the start directory where the guest shows it at more
        # than one place: the cwd of every process that has not chdir'd (host_cwd)
        self.start_cwd: tuple[str, str] | None = None
        self.exec_plans: dict[tuple, tuple] = {}  # handlers/execve.py: (program, name) -> plan
        # empty directories of ours standing for glue directories (their host location
        # holds nothing), and back
        self._glue: dict[str, str] = {}
        self._glue_guest: dict[str, str] = {}
        # what the walk in progress looked at: an answer that only read one repository
        # may be kept across runs with the same mounts (under `self.key`)
        self._host_seen = False
        self._variant_seen = False  # a `$(VAR)` link: the answer is the environment's
        self._repos: set[str] = set()
        import hashlib

        spec = "\0".join(f"{m.dst}={m.src}:{int(m.readonly)}" for m in table.mounts)
        if self.overlay is not None:
            spec += f"\0overlay={self.overlay.directory}"
        self.key = hashlib.sha1(os.fsencode(spec)).hexdigest()[:16]

    def teach_mounts(self, core) -> None:
        """Give C the mount table, so that calls on plain paths below a host bind shown
        at its own place pass to the kernel (csrc/tracer/passthrough.c): there the
        kernel's answer is the guest's. The root's mount under --overlay is never one
        (the overlay answers first), nor are sources in /cvmfs."""
        for m in self.table.mounts:
            same = m.src == m.dst and not in_cvmfs(m.src)
            if m.root and self.overlay is not None:
                same = False
            file = not same and self._file_bind(m)
            core.add_mount(m.dst, m.src, passes=same, readonly=m.readonly, file=file)
        if self.overlay is not None:
            core.add_mount("/", self.overlay.directory, private=True)
        for name in PLAIN_READS:
            core.set_plain(name, write=False)
        for name in PLAIN_WRITES:
            core.set_plain(name, write=True)

    def _file_bind(self, m) -> bool:
        """Whether C may open `m`'s source for a read-only open of exactly its
        destination: a host regular file bound elsewhere whose destination's parents
        all lie in a root in /cvmfs (its pinned revision cannot turn one into a link; a
        host bind above could, and so could an overlay)."""
        root = self.table.root
        if m.root or self.overlay is not None or root is None:
            return False
        if not in_cvmfs(root) or in_cvmfs(m.src):
            return False
        above = m.dst
        while (above := above.rsplit("/", 1)[0]) != "":
            if not self.table.mount_of(above).root:
                return False
        try:
            if not stat.S_ISREG(os.lstat(m.src).st_mode):
                return False
        except OSError:
            return False
        r = guest_resolve(self.table, self, m.dst, "/", follow=False)
        return not r.err and r.guest == m.dst and r.symlinks == 0 and r.mount is m

    def kept(self, rev: str) -> str:
        """The memo name of a revision's answers in this namespace (they are kept per
        revision and mount table)."""
        return f"{rev}~{self.key}"

    def memo_loader(self, memo):
        """What to load when a repository is mounted: the answers earlier runs with the
        same mount table kept for it."""
        return lambda rev: memo.load(self.kept(rev))

    def close(self) -> None:
        """Release the overlay's lock (its files stay for the next run)."""
        if self.overlay is not None:
            self.overlay.close()

    # -- the Files interface of mounts.resolve ----------------------------------------------

    def kind_in(self, location: str, guest: str, mount) -> tuple[int, str]:
        """`kind`, where the overlay answers first for the root's paths: its upper
        entries, and whiteouts hiding the root's (a lower entry: the root's kind)."""
        if self.overlay is None or not self.overlay.covers_mount(mount.dst):
            return self.kind(location)
        self._host_seen = True  # the upper layer changes as the job writes: never taught
        try:
            found = self.overlay.lookup(guest)
        except OSError:
            return MISSING, ""
        if found is None:
            return MISSING, ""
        if found.layer == "lower":
            return self.kind(location)
        mode = found.st.st_mode
        if stat.S_ISDIR(mode):
            return DIR, ""
        if stat.S_ISLNK(mode):
            try:
                return LINK, os.readlink(found.host)
            except OSError:
                return MISSING, ""
        return OTHER, ""

    def kind(self, location: str) -> tuple[int, str]:
        if in_cvmfs(location):
            vpath = vpath_of_logical(location)
            self._repos.add(vpath.repo)
            node = self.view.lookup(vpath)
            if node is None:
                return MISSING, ""
            if node.is_dir:
                return DIR, ""
            if node.is_symlink:
                self._variant_seen = self._variant_seen or node.variant
                return LINK, node.target
            return OTHER, ""
        self._host_seen = True
        if location.startswith("/proc/"):
            magic = self._proc_kind(location)
            if magic is not None:
                return magic
        return self._host.kind(location)

    def searchable(self, location: str) -> bool:
        """Whether the walk may look up names in a directory (the user's x on it, as
        in paths.py's walk). A host directory is asked of the kernel here: the call
        runs on the resolved location, so one the walk left (for a bind's source or
        a symlink's target) is never judged when it runs."""
        if not in_cvmfs(location):
            return os.access(location, os.X_OK)
        node = self.view.lookup(vpath_of_logical(location))
        return node is None or self.view.may_search(node)

    def _proc_kind(self, location: str) -> tuple[int, str] | None:
        """/proc/self and the magic links of a process, for the calling thread."""
        parts = location.split("/")[2:]
        tgid = self.procs.tgid(self._tid)
        if parts == ["self"]:
            return LINK, str(tgid)
        if parts == ["thread-self"]:
            return LINK, f"{tgid}/task/{self._tid}"
        if len(parts) >= 2 and parts[1] == "task":
            parts = [parts[0], *parts[3:]] if len(parts) >= 3 else parts
        if len(parts) < 2 or not parts[0].isdigit():
            return None
        pid = int(parts[0])
        what = "/".join(parts[1:])
        if what == "exe":
            exe = self.procs.exe.get(self.procs.tgid(pid))
            if exe is not None:
                return LINK, exe
        elif what == "root":
            return LINK, "/"
        elif not (what == "cwd" or (what.startswith("fd/") and what[3:].isdigit())):
            return None
        try:
            link = os.readlink(location)
        except OSError:
            return None
        if not link.startswith("/") or link.endswith(" (deleted)"):
            # pipe:[N], socket:[N], a file without a name (removed, O_TMPFILE): the
            # kernel follows it itself, to the inode
            return OTHER, ""
        guest = self.cwd_guest(pid, link) if what == "cwd" else self.guest_of(link)
        return (LINK, guest) if guest is not None else (OTHER, "")

    # -- for the handlers --------------------------------------------------------------------

    def link_text(self, location: str) -> str | None:
        """readlink of a host location as the guest sees it: a link's text, a /proc magic
        link's target in guest terms; None if it is no link."""
        kind, target = self.kind(location)
        return target if kind == LINK else None

    def logical(self, host: str) -> str:
        """A host path as the namespace knows it: an anchor or a served cache file
        stands for its /cvmfs path."""
        v = self.view.vpath_of_host(host)
        return v.logical if v is not None else host

    def guest_of(self, host: str) -> str | None:
        """The guest's spelling of a path the kernel reports (cwd, a descriptor's
        target), None if the guest cannot see it."""
        host = host.removesuffix(" (deleted)")
        if self.overlay is not None:  # an upper copy: its guest path
            g = self.overlay.guest_of_upper(host)
            if g is not None:
                return g
        g = self._glue_guest.get(host)
        if g is not None:
            return g
        return self.table.guest_of(self.logical(host))

    def cwd_guest(self, tid: int, host: str) -> str | None:
        """The guest's spelling of a process's working directory, `host` as the kernel
        reports it: where the guest shows that place at more than one path, the one the
        process entered it by (its last chdir there, inherited at fork; else the start
        directory's), as a bind mount's path would be; else guest_of."""
        entered = self.procs.cwd.get(self.procs.tgid(tid)) or self.start_cwd
        if entered is not None and entered[0] == self.logical(host.removesuffix(" (deleted)")):
            return entered[1]
        return self.guest_of(host)

    def entered(self, tid: int, t: Target, place: str, core) -> None:
        """A chdir to `t` (resolved, a directory; `place`: the kernel's name for it, an
        anchor or a host path): which of its guest paths the process is now in, kept
        where there is more than one. Kept before the kernel changes directory: a chdir
        it then refuses could only have led to the same place by another path, whose
        permissions the walk checked. A place entered by another path than the first is
        odd for C too (core.add_odd_place): what C keeps and the kernel says there
        speak of the first."""
        tgid = self.procs.tgid(tid)
        if t.err or t.guest is None:
            self.procs.cwd.pop(tgid, None)
            return
        location = self.table.locate(t.guest)[0]
        places = self.table.guests_of(location)
        if len(places) < 2:
            self.procs.cwd.pop(tgid, None)
            return
        self.procs.cwd[tgid] = (location, t.guest)
        if t.guest != places[0]:
            core.add_odd_place(place)

    def spelled_oddly(self, base: str | None) -> bool:
        """Whether the calling process names its base (cwd or dirfd) by another guest
        path than the first: where a relative path leads is then its own, not kept."""
        if not base or (not self.procs.cwd and self.start_cwd is None):
            return False
        return self.cwd_guest(self._tid, base) != self.guest_of(base)

    def glue_dir(self, guest: str) -> str:
        """The empty directory of ours that stands for a glue directory (a place on the
        way to a bind point that the root lacks): stat, chdir and listings work there."""
        d = self._glue.get(guest)
        if d is None:
            import hashlib

            key = hashlib.sha1(os.fsencode(guest)).hexdigest()
            d = self.view.own_cache().ensure_dir(f"glue/{key[:2]}/{key}")
            self._glue[guest], self._glue_guest[d] = d, guest
        return d

    def readonly_host(self, host: str) -> bool:
        """Whether a host file the kernel names (a descriptor's target) lies in a
        read-only mount of the guest (the root). An upper copy of the overlay is the
        job's own file: the kernel changes it."""
        if self.in_upper(host):
            return False
        g = self.guest_of(host)
        return g is not None and self.table.mount_of(g).readonly

    def fd_guest(self, host: str, cvmfs: Target | None) -> str | None:
        """The guest path of a descriptor's file: `host`, the kernel's name for it, or
        `cvmfs`, the /cvmfs entry the tracer served there (a cache file serves every
        entry of its content, so the open's own record says which)."""
        if cvmfs is not None and cvmfs.vpath is not None:
            return self.table.guest_of(cvmfs.vpath.logical)
        return self.guest_of(host)

    def in_upper(self, host: str | None) -> bool:
        """Whether a host path is in the overlay's upper layer (the job's own files,
        which change as it writes)."""
        return self.overlay is not None and self.overlay.in_upper(host)

    def overlaid(self, t: Target | None) -> str | None:
        """The guest path of a target the overlay takes writes for (in an overlaid
        mount, --overlay given), None otherwise."""
        if self.overlay is None or t is None or t.guest is None:
            return None
        return t.guest if self.overlay.covers(t.guest) else None

    def overlay_entries(self, guest: str | None) -> list[tuple[str, int]] | None:
        """The overlay's merged listing of a directory of the root, None where the
        overlay has no say (no --overlay, another mount) or cannot list it."""
        if self.overlay is None or guest is None or not self.overlay.covers(guest):
            return None
        try:
            return self.overlay.entries(guest)
        except OSError:
            return None

    def cwd_of(self, base: str | None) -> str:
        """The guest directory a relative path starts from (the calling process's
        spelling where its base is shown at two places: a dirfd there is taken as
        entered the same way as its cwd)."""
        if not base:
            return "/"
        g = self.cwd_guest(self._tid, base)
        return g if g is not None else "/"

    def resolve(self, tid: int, path: str, base: str | None, follow: bool) -> Target:
        """paths.resolve's Target for a path as the guest names it."""
        self._tid = tid
        self._host_seen = self._variant_seen = False
        self._repos.clear()
        r = guest_resolve(self.table, self, path, self.cwd_of(base), follow)
        readonly = r.mount is not None and r.mount.readonly
        loc = r.location
        if r.glue and not r.err:  # nothing lies there: an empty directory of ours
            loc = self.glue_dir(r.guest)
        cvmfs_loc = in_cvmfs(loc)
        if (
            not r.err
            and self.overlay is not None
            and r.mount is not None
            and self.overlay.covers_mount(r.mount.dst)
        ):
            upper = self._upper_target(r, path)
            if upper is not None:
                return upper
        if r.err == errno.ENOENT and r.missing_last and not readonly and not cvmfs_loc:
            # a name to create in a writable place: the kernel's to make (or to report)
            t = Target(host=loc, via_cvmfs=True, mixed=True)
        elif r.err:
            t = Target(err=r.err, missing_last=r.missing_last, symlinks=r.symlinks, mixed=True)
            if r.missing_last and cvmfs_loc:
                t.parent = vpath_of_logical(loc[: loc.rfind("/")] or "/")
            t.readonly = readonly and r.missing_last
        elif cvmfs_loc:
            vpath = vpath_of_logical(loc)
            node = self.view.lookup(vpath)
            if node is None:
                return Target(err=errno.ENOENT, mixed=True)
            t = Target(vpath=vpath, node=node, via_cvmfs=True, symlinks=r.symlinks, mixed=True)
        else:
            t = Target(
                host=loc + ("/" if path.endswith("/") and loc != "/" else ""), via_cvmfs=True
            )
            t.symlinks, t.mixed = r.symlinks, True
            t.readonly = readonly
        t.guest = r.guest
        t.final_link = r.final_link
        if self._host_seen:  # a host link or directory on the way may change: not taught
            t.proc = True
        if not path.startswith("/") and self.spelled_oddly(base):
            t.proc = True  # where it leads is this process's, not the place's
        if (
            not self._host_seen
            and not self._variant_seen
            and len(self._repos) == 1
            and cvmfs_loc
            and not t.proc
        ):
            rev = self.view.revision_id(next(iter(self._repos)))
            if rev is not None:
                t.kept_as = self.kept(rev)
        return t

    def _upper_target(self, r, path: str) -> Target | None:
        """A root's entry the overlay's upper layer holds: its upper copy, a host file,
        still of the read-only mount (writes go through the overlay); None for the
        lower's entries."""
        try:
            found = self.overlay.lookup(r.guest)
        except OSError as e:
            return Target(err=e.errno or errno.EIO, mixed=True)
        if found is None or found.layer != "upper":
            return None
        u = Target(host=found.host + ("/" if path.endswith("/") else ""), via_cvmfs=True)
        u.symlinks, u.mixed, u.readonly, u.proc = r.symlinks, True, True, True
        u.guest, u.final_link = r.guest, r.final_link
        return u


def _open_overlay(view: CvmfsView, table: MountTable, directory: str):
    """The overlays in `directory`: over the guest root (DIR/upper, DIR/work), or with
    no root over each bind from /cvmfs (DIR/binds/<its destination>/); CvmfsError
    (OverlayError: one line) when there is nothing read-only to lay one over."""
    from ..container.overlay import HostLower, Layered, Overlay, bind_directory
    from ..errors import CvmfsError
    from .guestroot import CvmfsLower

    def lower_of(src: str):
        if in_cvmfs(src):
            return CvmfsLower(view, src)
        return HostLower(src)

    if table.root is not None:
        wanted = [(m.dst, directory, m.src) for m in table.mounts if m.root]
    else:
        wanted = [
            (m.dst, bind_directory(directory, m.dst), m.src)
            for m in table.mounts
            if not m.root and in_cvmfs(m.src)
        ]
        if not wanted:
            raise CvmfsError(
                "--overlay needs --root or a bind from /cvmfs (it is their writable layer)"
            )
    layers: dict[str, Overlay] = {}
    try:
        for dst, where, src in wanted:
            layers[dst] = Overlay(where, lower_of(src))
    except BaseException:
        for ov in layers.values():
            ov.close()
        raise
    return Layered(directory, layers, lambda guest: table.mount_of(guest).dst)


# -- setting the namespace up (parrot_run --root, -B, -M, -m) ---------------------------------


def canonical_source(view: CvmfsView, path: str, what: str) -> str:
    """A root or bind source as a canonical location: host symlinks resolved, a /cvmfs
    path resolved in the catalogs (image tags are symlinks into .flat/). Raises
    CvmfsError naming `what` if it does not exist."""
    from ..errors import CvmfsError
    from .paths import resolve

    if not path.startswith("/"):
        path = os.path.abspath(path)
    t = resolve(view, path, None, True)
    if t.err:
        raise CvmfsError(f"{what} {path}: {os.strerror(t.err)}")
    if t.virtual:
        return t.vpath.logical
    host = os.path.realpath(t.host)
    if not os.path.lexists(host):
        raise CvmfsError(f"{what} {path}: {os.strerror(errno.ENOENT)}")
    return host


def build_table(
    view: CvmfsView,
    root: str | None,
    binds: list[tuple[str, str, bool]],
    default_binds: bool,
    exists=os.path.lexists,
    real=host_realpath,
) -> MountTable:
    """The job's mount table: the root (or the host's tree), the defaults (with a root),
    then the user's binds in the order given (the last one for a place wins).
    `exists`, `real`: whether a default bind's host source exists, and where its host
    links lead (a start plan records both)."""
    if root is not None:
        root = canonical_source(view, root, "--root")
        if GuestKind(view).kind(root)[0] != DIR:
            from ..errors import CvmfsError

            raise CvmfsError(f"--root {root}: {os.strerror(errno.ENOTDIR)}")
    table = MountTable(root)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    table.add_defaults(
        os.environ.get("HOME"), cwd, minimal=not default_binds, exists=exists, real=real
    )
    for src, dst, readonly in binds:
        table.bind(canonical_source(view, src, "bind source"), dst, readonly)
    return table


class GuestKind:
    """Files.kind over the catalogs and the host, for set-up (no calling process)."""

    def __init__(self, view: CvmfsView):
        self.view = view

    def kind(self, location: str) -> tuple[int, str]:
        if in_cvmfs(location):
            node = self.view.lookup(vpath_of_logical(location))
            if node is None:
                return MISSING, ""
            return (DIR if node.is_dir else LINK if node.is_symlink else OTHER), node.target
        return HostFiles().kind(location)


def find_program(guest: Guest, name: str, path_var: str, cwd: str | None) -> str | None:
    """`name` looked up in the guest's PATH as execvp would: the first regular file
    there (None: leave it to execvp, which reports it). Relative entries (and an empty
    one, ".") start from `cwd`, the job's host start directory."""
    if "/" in name:
        return None
    for d in path_var.split(":"):
        candidate = f"{d or '.'}/{name}"
        t = guest.resolve(0, candidate, cwd, True)
        if t.err:
            continue
        if t.virtual:
            if t.node.is_regular:
                return candidate
        elif os.path.isfile(t.host) and os.access(t.host, os.X_OK):
            return candidate
    return None


def job_environment(guest: Guest, host_env: dict[str, str], given: dict[str, str], warn):
    """The job's environment, the one place it is made: binds alone keep the host's
    with the `--env` values; in a guest root, as `apptainer exec` makes it
    (container/image.py: the image's /.singularity.d/env/*.sh scripts read in the
    guest's namespace, PATH the guest's default unless given, then `--env`)."""
    if guest.table.root is None:
        env = dict(host_env)
        env.update(given)
        return env
    from ..container.image import job_environment as image_environment
    from .guestroot import GuestReader

    return image_environment(GuestReader(guest), host_env, given.items(), warn)


def run_command(guest: Guest, args: list[str]) -> list[str]:
    """--run: the image's runscript (else /bin/sh) with `args` (apptainer run's argv);
    CvmfsError when the root has nothing to run."""
    from ..container.image import ImageError
    from ..container.image import run_command as image_run
    from ..errors import CvmfsError
    from .guestroot import GuestReader

    try:
        return image_run(GuestReader(guest), args)
    except ImageError as e:
        raise CvmfsError(f"--run: {e}") from None


def host_cwd(guest: Guest) -> str:
    """Where the job starts: the cwd if the guest sees it (a default bind), else the
    guest's root, as a host location (an anchor for a /cvmfs directory)."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    where = "/"
    if cwd is not None:
        places = guest.table.guests_of(cwd)
        if cwd in places:
            where = cwd
            if len(places) > 1:  # and shown elsewhere too: the job is at its own path
                guest.start_cwd = (cwd, cwd)
    t = guest.resolve(0, where, None, True)
    if t.err:
        t = guest.resolve(0, "/", None, True)
    if t.virtual:
        return guest.view.anchor(t.node)
    return t.host or "/"


# -- what a start plan of a guest run depends on (tracer/startplan.py) ------------------------


class StartInputs:
    """The host files the start of a guest job was computed from (mount table, the
    image's environment, the program found in PATH, --run's runscript, the start cwd),
    as startplan FILE records: path -> identity. `exact` turns False where the inputs
    cannot be stated as such records (a host symlink on a guest walk, an overlay, a
    bind source reached through a link into /cvmfs): then no plan is written."""

    def __init__(self) -> None:
        from .startplan import host_identity

        self._identity = host_identity
        self.files: dict[str, tuple[int, int, int, int, int]] = {}
        self.real: list[tuple[str, str]] = []  # (given, its realpath) of host sources
        self.exact = True

    def exists(self, path: str) -> bool:
        """os.path.lexists, recorded (build_table's `exists`)."""
        from .startplan import lexists_identity

        self.files[path] = lexists_identity(path)
        return self.files[path][4] == 4

    def realpath(self, path: str) -> str | None:
        """mounts.host_realpath, recorded (build_table's `real`): a default source must
        resolve to the same place next time (a host link made or moved since changes
        the table)."""
        from .startplan import lexists_identity

        real = host_realpath(path)
        if real is None:
            if os.path.lexists(path):
                self.exact = False  # a link leading nowhere: no record says where it may
            else:
                self.files[path] = lexists_identity(path)  # absent: made later, it counts
        elif in_cvmfs(real):
            self.exact = False  # a host link into /cvmfs: the launcher cannot follow
        else:
            self.real.append((path, real))
        return real

    def sources(self, root: str | None, binds: list[tuple[str, str, bool]], table) -> None:
        """The root and bind sources as given: each host one resolves (realpath) to the
        same place, which is the same object (not replaced)."""
        from .startplan import object_identity

        given = ([root] if root is not None else []) + [src for src, _, _ in binds]
        for path in given:
            path = os.path.abspath(path)
            if in_cvmfs(path):
                continue  # the catalogs': the plan's pinned revisions
            real = os.path.realpath(path)
            if not any(m.src == real for m in table.mounts):
                self.exact = False  # a host link into /cvmfs: the launcher cannot follow
                continue
            self.real.append((path, real))
            self.files[real] = object_identity(real)

    def watch(self, guest: Guest) -> None:
        """Record every walk of `guest` from now until `unwatch` (the start's)."""
        inner = guest.resolve

        def resolve(tid: int, path: str, base: str | None, follow: bool) -> Target:
            t = inner(tid, path, base, follow)
            self._note(guest, path, base, t)
            return t

        def listed(host: str) -> None:  # its names, not only where it is
            self.files[host] = self._identity(host)

        guest.resolve = resolve  # this instance only, while the start is computed
        guest.note_listing = listed

    @staticmethod
    def unwatch(guest: Guest) -> None:
        guest.__dict__.pop("resolve", None)
        guest.__dict__.pop("note_listing", None)

    def _note(self, guest: Guest, path: str, base: str | None, t: Target) -> None:
        if not guest._host_seen:
            return  # the catalogs' alone: the pinned revisions
        if t.symlinks or guest.overlay is not None:
            self.exact = False
            return
        if t.err or t.host is None:
            if t.virtual:
                return
            from ..container.mounts import normalize

            where = normalize(path if path.startswith("/") else f"{guest.cwd_of(base)}/{path}")
            loc, _ = guest.table.locate(where)
            self.files[loc] = self._identity(loc)
            return
        host = t.host.rstrip("/") or "/"
        if os.path.isdir(host):  # a place (the start cwd): the same directory, whatever
            from .startplan import object_identity  # it holds (its listing: `listed`)

            self.files.setdefault(host, object_identity(host))
        else:
            self.files[host] = self._identity(host)
