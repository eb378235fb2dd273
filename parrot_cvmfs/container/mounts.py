"""The job's mount table: its root, the binds (-B SRC[:DST], -M DST=SRC, -m FILE) and
the default binds, and path resolution in the guest's namespace.

A guest path is resolved one component at a time, in guest terms: each canonical
guest prefix is located in a mount (deepest destination wins; ties: the one given
last), symlinks are read where they lie and re-resolved in the guest (an absolute
target restarts at the guest root, `..` never climbs above it). Locations are host
paths, or /cvmfs paths that the caller's file interface answers from the catalogs.
Pure code over a `Files` interface, tested without ptrace."""

from __future__ import annotations

import errno
import os

MAX_SYMLINKS = 40
CVMFS = "/cvmfs"

# Apptainer's default binds (its engine and default configuration), in its order;
# /cvmfs is always bound. --no-default-binds keeps only these:
ALWAYS = ("/proc", "/dev", CVMFS)
DEFAULT_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
)
# directories apptainer never binds the cwd over
_NO_CWD_BIND = {"/", "/etc", "/bin", "/mnt", "/usr", "/var", "/opt", "/sbin", "/lib", "/lib64"}

# what Files.kind reports
MISSING, DIR, LINK, OTHER = 0, 1, 2, 3


class MountError(ValueError):
    """A bind specification that cannot be used (one line naming it)."""


class Mount:
    """`dst` (a guest path) shows `src` (a host path or a /cvmfs path); `root`: the
    mount of the guest root; `readonly`: writes below it are refused (EROFS)."""

    __slots__ = ("dst", "src", "readonly", "root", "order")

    def __init__(self, dst: str, src: str, readonly: bool = False, root: bool = False, order=0):
        self.dst, self.src, self.readonly, self.root, self.order = dst, src, readonly, root, order

    def __repr__(self) -> str:
        return f"Mount({self.dst!r} <- {self.src!r}{', ro' if self.readonly else ''})"


def normalize(path: str) -> str:
    """An absolute path without ".", "..", "//" or a trailing "/" (lexical, in the guest:
    "/.." is "/")."""
    out: list[str] = []
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if out:
                out.pop()
        else:
            out.append(c)
    return "/" + "/".join(out)


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def in_cvmfs(location: str) -> bool:
    """Whether a location is /cvmfs or below it (the catalogs', not the host's)."""
    return _under(location, CVMFS)


def host_realpath(path: str) -> str | None:
    """Where a host path leads, every symlink resolved; None if it leads nowhere (a
    dangling link, a loop, nothing there)."""
    try:
        return os.path.realpath(path, strict=True)
    except (OSError, ValueError):
        return None


def _rebase(path: str, old: str, new: str) -> str:
    rest = path[len(old) :] if old != "/" else path
    if not rest or rest == "/":
        return new
    return new.rstrip("/") + rest if new != "/" else rest


# -- parsing the options -----------------------------------------------------------------


def _split_unescaped(s: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s) and s[i + 1] in (sep, "\\"):
            cur += "\\" + s[i + 1]  # kept escaped until the fields are decided
            i += 2
            continue
        if ch == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return parts


def _unescape(s: str) -> str:
    return s.replace("\\:", ":").replace("\\,", ",").replace("\\\\", "\\")


def parse_bind(spec: str) -> list[tuple[str, str, bool]]:
    """`-B` as apptainer takes it: `SRC[:DST[:OPTS]]`, several separated by commas,
    OPTS `ro` or `rw`. A colon starts a new field only before a `/` (or before the
    options at the end), so image names such as `centos:centos7` stay one path; `\\:`
    is a literal colon too. Returns [(src, dst, readonly)]."""
    out = []
    for item in _split_unescaped(spec, ","):
        if not item:
            continue
        fields: list[str] = []
        pieces = _split_unescaped(item, ":")
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            if fields and not piece.startswith("/") and not (last and piece in ("ro", "rw")):
                fields[-1] += ":" + piece
            else:
                fields.append(piece)
        opts = ""
        if len(fields) >= 2 and fields[-1] in ("ro", "rw"):
            opts = fields.pop()
        if len(fields) > 2 or not fields[0]:
            raise MountError(f"-B {spec}: expected SRC[:DST[:ro|rw]], got {item!r}")
        src = _unescape(fields[0])
        dst = _unescape(fields[1]) if len(fields) > 1 else src
        out.append((src, dst, opts == "ro"))
    return out


def parse_map(spec: str) -> tuple[str, str]:
    """`-M DST=SRC` as Parrot takes it: split at the first `=`."""
    dst, eq, src = spec.partition("=")
    if not eq or not dst or not src:
        raise MountError(f"-M {spec}: expected DST=SRC")
    return src, dst


def parse_mountfile(text: str, name: str) -> list[tuple[str, str]]:
    """A Parrot mount file: lines `DST SRC`, `#` comments, blank lines skipped.
    Returns [(src, dst)]."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise MountError(f"{name} line {n}: expected 'DST SRC', got {raw.strip()!r}")
        out.append((fields[1], fields[0]))
    return out


# -- the table -------------------------------------------------------------------------------


class MountTable:
    """The guest's mounts. `root`: the host or /cvmfs directory that is the guest's
    `/` (None: the host's own tree, with binds on it)."""

    def __init__(self, root: str | None = None):
        self.root = root
        self.mounts: list[Mount] = []
        self._order = 0
        base = Mount("/", root or "/", readonly=root is not None, root=True)
        self._add(base)
        if root is not None:
            self.bind(CVMFS, CVMFS)

    def _add(self, m: Mount) -> None:
        self._order += 1
        m.order = self._order
        self.mounts = [x for x in self.mounts if x.dst != m.dst] + [m]  # the last given wins
        # deepest destination first: the first match is the longest prefix
        self.mounts.sort(key=lambda x: (-len(x.dst) if x.dst != "/" else 0, -x.order))

    def bind(self, src: str, dst: str, readonly: bool = False) -> None:
        """Show `src` at guest path `dst` (both absolute)."""
        if not src.startswith("/") or not dst.startswith("/"):
            raise MountError(f"bind {src} -> {dst}: both paths must be absolute")
        src, dst = normalize(src), normalize(dst)
        if dst == "/":
            raise MountError(f"bind {src} -> /: the root is given by --root")
        self._add(Mount(dst, src, readonly=readonly or in_cvmfs(src)))

    def add_defaults(
        self, home: str | None, cwd: str | None, minimal: bool, exists, real=host_realpath
    ) -> None:
        """Apptainer's default binds (`minimal`: --no-default-binds keeps /proc, /dev
        and /cvmfs); `real(host_path)` resolves a source's host symlinks (a bind shows
        what the link leads to, as the kernel's bind mount does: the host's
        /etc/localtime is a link into its zoneinfo, whose text read in the guest would
        name the guest's; None: it leads nowhere) and `exists(host_path)` tells whether it
        exists (missing ones are skipped, as apptainer skips them)."""
        if self.root is None:
            return
        wanted = ["/proc", "/dev"] if minimal else ["/proc", "/sys", "/dev", "/tmp", "/var/tmp"]
        if not minimal:
            if home and normalize(home) != "/":
                wanted.append(home)
            wanted += DEFAULT_FILES
            if cwd and normalize(cwd) not in _NO_CWD_BIND and not self._bound(normalize(cwd)):
                wanted.append(cwd)
        for p in wanted:
            if any(m.dst == normalize(p) for m in self.mounts if not m.root):
                continue
            src = real(p)
            if src is not None and exists(src):
                self.bind(src, p)

    def _bound(self, guest: str) -> bool:
        """Whether a bind (not the root) already shows something at or above `guest`."""
        m = self.mount_of(guest)
        return not m.root

    def mount_of(self, guest: str) -> Mount:
        """The mount a canonical guest path lies in."""
        for m in self.mounts:
            if _under(guest, m.dst):
                return m
        return self.mounts[-1]

    def locate(self, guest: str) -> tuple[str, Mount]:
        """Where a canonical guest path lies: (its location, the mount)."""
        m = self.mount_of(guest)
        return _rebase(guest, m.dst, m.src), m

    def guest_of(self, location: str) -> str | None:
        """The guest path of a location (a host or /cvmfs path, canonical): the first of
        guests_of; None if the guest cannot see it."""
        places = self.guests_of(location)
        return places[0] if places else None

    def guests_of(self, location: str) -> list[str]:
        """Every guest path that shows a location, through each mount whose source holds
        it and that shows it there (a deeper mount may hide it: a bind over the place),
        the mount whose source holds it most closely first. More than one (a directory
        bound at two places, a bind from /cvmfs that /cvmfs shows too): which one a
        process is in is how it got there, which only its chdir tells (tracer/guest.py)."""
        holding = [m for m in self.mounts if _under(location, m.src)]
        places = []
        for m in sorted(holding, key=lambda m: len(m.src), reverse=True):
            guest = _rebase(location, m.src, m.dst)
            if self.mount_of(guest) is m:
                places.append(guest)
        return places

    def glue(self, guest_dir: str) -> list[str]:
        """Names of mount points directly below `guest_dir` (they show in its listing
        even where the directory below does not hold them)."""
        d = normalize(guest_dir)
        names = []
        for m in self.mounts:
            if m.dst != "/" and _under(m.dst, d) and m.dst != d:
                rest = m.dst[len(d) :].lstrip("/")
                names.append(rest.split("/", 1)[0])
        return sorted(set(names))

    def is_glue(self, guest: str) -> bool:
        """Whether a guest path is a mount point or lies on the way to one."""
        g = normalize(guest)
        return any(m.dst != "/" and _under(m.dst, g) for m in self.mounts)

    @property
    def identity(self) -> bool:
        """No root and no binds: the host's own tree."""
        return self.root is None and len(self.mounts) == 1


# -- resolution --------------------------------------------------------------------------


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Files(Protocol):
        def kind(self, location: str) -> tuple[int, str]:
            """(MISSING/DIR/LINK/OTHER, the link's target) of a location, not followed."""
            ...

        # optional: searchable(location), whether names may be looked up in a directory
        # (the user's x on it, host directories too: the call runs on the resolved
        # location, so the kernel never sees those the walk left); without it every
        # directory may be searched

        # optional: kind_in(location, guest, mount), the same knowing the guest path
        # and its mount (a writable overlay over the root answers by guest path)


class Resolved:
    """A guest path resolved: `err` (0 or an errno; `missing_last`: only the last
    component is missing), `guest` (canonical guest path), `location`, `mount`, `kind`;
    `symlinks` followed; `final_link`: one was followed at the last component."""

    __slots__ = (
        "err",
        "guest",
        "location",
        "mount",
        "kind",
        "missing_last",
        "symlinks",
        "final_link",
        "glue",
    )

    def __init__(self, err=0, guest="/", location="/", mount=None, kind=MISSING):
        self.err, self.guest, self.location, self.mount, self.kind = (
            err,
            guest,
            location,
            mount,
            kind,
        )
        self.missing_last = False
        self.symlinks = 0
        self.final_link = False
        self.glue = False

    def __repr__(self) -> str:
        return f"Resolved(err={self.err}, guest={self.guest!r}, location={self.location!r})"


def _parent(guest: str) -> str:
    return guest[: guest.rfind("/")] or "/"


def resolve(table: MountTable, files: Files, path: str, cwd: str, follow: bool) -> Resolved:
    """Resolve `path` (relative ones against the canonical guest directory `cwd`) in
    the guest. `follow`: expand a final symlink (a trailing "/" always does)."""
    if path == "":
        return Resolved(err=errno.ENOENT)
    if len(path) > 4095:
        return Resolved(err=errno.ENAMETOOLONG)
    if path.endswith("/"):
        follow = True
    guest = "/" if path.startswith("/") else normalize(cwd)
    kind_in = getattr(files, "kind_in", None)
    if kind_in is None:
        kind_in = lambda location, _guest, _mount: files.kind(location)  # noqa: E731
    searchable = getattr(files, "searchable", None)
    todo = list(reversed([c for c in path.split("/") if c]))
    links = 0
    final_link = False
    glue = False
    loc, m = table.locate(guest)
    kind = DIR if guest == "/" else kind_in(loc, guest, m)[0]
    if kind == MISSING and table.is_glue(guest):
        kind, glue = DIR, True
    if kind == MISSING:
        return Resolved(err=errno.ENOENT, guest=guest, location=loc, mount=m)
    while todo:
        c = todo.pop()
        last = not todo
        if kind != DIR:
            return _failed(errno.ENOTDIR, guest, loc, m, links, final_link)
        if searchable is not None and not glue and not searchable(loc):
            # as the kernel: x on every directory walked, "." and ".." too
            return _failed(errno.EACCES, guest, loc, m, links, final_link)
        if c == ".":
            continue
        if c == "..":
            guest = _parent(guest)
            loc, m = table.locate(guest)
            kind, glue = DIR, table.is_glue(guest) and kind_in(loc, guest, m)[0] == MISSING
            continue
        if len(c) > 255:
            return _failed(errno.ENAMETOOLONG, "/", "/", None, links, final_link)
        child = guest + c if guest == "/" else f"{guest}/{c}"
        cloc, cm = table.locate(child)
        ckind, target = kind_in(cloc, child, cm)
        cglue = False
        if ckind == MISSING and table.is_glue(child):
            ckind, cglue = DIR, True  # on the way to a bind: a directory, though none lies there
        if ckind == MISSING:
            r = _failed(errno.ENOENT, child, cloc, cm, links, final_link)
            r.missing_last = last
            return r
        if ckind == LINK and (not last or follow) and not _is_mount_point(table, child):
            links += 1
            if last:
                final_link = True
            if links > MAX_SYMLINKS:
                return _failed(errno.ELOOP, child, cloc, cm, links, final_link)
            if not target:
                return _failed(errno.ENOENT, child, cloc, cm, links, final_link)
            if target.startswith("/"):
                guest = "/"
                loc, m = table.locate(guest)
                kind, glue = DIR, False
            if target.endswith("/") and last:
                follow = True
            todo.extend(reversed([t for t in target.split("/") if t]))
            continue
        guest, loc, m, kind, glue = child, cloc, cm, ckind, cglue
    if path.endswith("/") and kind != DIR and path.strip("/"):
        return _failed(errno.ENOTDIR, guest, loc, m, links, final_link)
    r = Resolved(guest=guest, location=loc, mount=m, kind=kind)
    r.symlinks = links
    r.final_link = final_link
    r.glue = glue
    return r


def _failed(err: int, guest, location, mount, links: int, final_link: bool) -> Resolved:
    """A walk's error, with the links it followed, and whether one was the last
    component's (the error is then the target's, not the link's own: lstat and
    readlink of the link are answered apart)."""
    r = Resolved(err=err, guest=guest, location=location, mount=mount)
    r.symlinks, r.final_link = links, final_link
    return r


def _is_mount_point(table: MountTable, guest: str) -> bool:
    """A bind's destination is what the bind shows, whatever the root holds there."""
    return any(m.dst == guest and not m.root for m in table.mounts)


class HostFiles:
    """`Files` over the host's file system (lstat and readlink)."""

    def kind(self, location: str) -> tuple[int, str]:
        import stat as st

        try:
            s = os.lstat(location)
        except OSError:
            return MISSING, ""
        if st.S_ISDIR(s.st_mode):
            return DIR, ""
        if st.S_ISLNK(s.st_mode):
            try:
                return LINK, os.readlink(location)
            except OSError:
                return MISSING, ""
        return OTHER, ""
