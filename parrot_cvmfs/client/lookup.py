"""Path resolution inside one mounted repository: component by component, symlinks
followed (variant symlinks expanded first), `..` taken lexically, and any way out of
the repository refused with EXDEV."""

from __future__ import annotations

import errno
from collections.abc import Callable

from ..errors import CatalogError
from ..format.entry import DirEntry

TYPE_CHECKING = False  # not typing's: importing typing costs parrot_run's start-up ~3 ms
if TYPE_CHECKING:
    from .namespace import Namespace

MAX_SYMLINKS = 40


def split_path(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def lexical_parts(path: str) -> list[str]:
    """The components of `path` with '.' and empty ones dropped and each '..' taking
    away the one before it (none past the root)."""
    out: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
            continue
        out.append(p)
    return out


def canonical_abs(path: str) -> str:
    """Lexically normalize an absolute symlink target ('..' against its prefix)."""
    return "/" + "/".join(lexical_parts(path))


def resolve(
    ns: Namespace,
    path: str,
    follow: bool,
    *,
    fqrn: str,
    expand: Callable[[DirEntry], str],
    inside: Callable[[str], str | None],
) -> DirEntry:
    """The entry at `path` in `ns`, following symlinks in every component (and the last
    one if `follow`); `expand` gives a symlink's target, `inside` an absolute target as
    a path of this repository (None: it leaves it, an OSError(EXDEV))."""
    todo = split_path(path)
    todo.reverse()
    cur = ""
    entry = ns.lookup("")
    if entry is None:
        raise CatalogError(f"root catalog of {fqrn} has no root entry")
    links = 0
    while todo:
        name = todo.pop()
        if name == "..":
            if not cur:
                raise OSError(errno.EXDEV, f"{path}: '..' leaves repository {fqrn}")
            cur = cur[: cur.rfind("/")]
            entry = ns.lookup(cur)
            continue
        if not entry.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        child = f"{cur}/{name}"
        found = ns.lookup(child)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if found.is_symlink and (todo or follow):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
            target = expand(found)
            if target.startswith("/"):
                within = inside(canonical_abs(target))
                if within is None:
                    raise OSError(
                        errno.EXDEV,
                        f"{path}: symlink {child} -> {target} leaves repository {fqrn}",
                    )
                cur, entry = "", ns.lookup("")
                parts = split_path(within)
            else:
                parts = split_path(target)
            todo.extend(reversed(parts))
            continue
        cur, entry = child, found
    return entry
