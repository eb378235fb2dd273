"""Inspecting a repository: info, ls, cat, stat, find, tags."""

from __future__ import annotations

import stat as st

from ..errors import CvmfsError, one_line_text
from . import EXIT_ERROR
from .options import open_repository
from .output import display, flush, json_line, line, utc, warn, write


def cmd_info(args) -> int:
    with open_repository(args, args.name, attach=False) as repo:
        info = repo.info()
        if args.json:
            json_line(info)
            return 0
        for k, v in info.items():
            line(f"{k}: {one_line_text(v)}")  # a tag's name is the publisher's text
    return 0


def mode_string(mode: int) -> str:
    return st.filemode(mode)


def cmd_ls(args) -> int:
    """The entries of a directory (or the entry itself); with --json one record a line
    as find's, with `name`: an entry that cannot be read is named in its `error` and on
    stderr, and the exit status is 1."""
    failures = 0
    with open_repository(args, args.name) as repo:
        entry = repo.resolve(args.path)
        entries = repo.scandir(args.path) if entry.is_dir and not args.directory else [entry]
        for e in entries:
            name = e.name if entry.is_dir and not args.directory else (args.path or "/")
            if args.json:
                rec = {"name": name, **_entry_record(repo, e)}
                if "error" in rec:
                    failures += 1
                    warn(rec["error"])
                json_line(rec)
                continue
            name = display(name)
            if args.long:
                s = repo.stat_entry(e)
                when = utc(s.st_mtime, "%Y-%m-%d %H:%M")
                link = f" -> {display(repo.expand_symlink(e))}" if e.is_symlink else ""
                line(
                    f"{mode_string(s.st_mode)} {s.st_nlink:>3} {s.st_size:>12} {when} {name}{link}"
                )
            else:
                line(name)
    return EXIT_ERROR if failures else 0


def cmd_cat(args) -> int:
    with open_repository(args, args.name) as repo:
        path = repo.local_path(args.path)  # fully fetched and verified before a byte is written
        with open(path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                write(block)
        flush()
    return 0


def _entry_record(repo, e, with_sha256: bool = False) -> dict:
    """The JSON record of an entry. A part that cannot be read (a malformed xattr
    list, a chunk list, contents) is left out and named in `error`."""
    rec = {
        "path": e.path or "/",
        "type": e.kind,
        "mode": e.mode,
        "size": len(e.symlink.encode("utf-8", "surrogateescape"))
        if e.is_symlink
        else (0 if e.is_special else e.size),
        "mtime": e.mtime,
        "nlink": e.linkcount,
    }
    if e.is_symlink:
        rec["symlink"] = e.symlink
    rec["hash"] = e.hash.hex if e.hash else None
    try:
        chunks = repo.chunks(e)
        rec["chunks"] = len(chunks) if chunks else (1 if e.is_regular else 0)
        rec["xattrs"] = {k: v.hex() for k, v in sorted(repo.stored_xattrs(e).items())}
        if with_sha256 and e.is_regular:
            import hashlib

            h = hashlib.sha256()
            with open(repo.local_path(e), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            rec["sha256"] = h.hexdigest()
    except CvmfsError as err:
        rec["error"] = str(err)
    return rec


def cmd_stat(args) -> int:
    with open_repository(args, args.name) as repo:
        e = repo.resolve(args.path, follow=args.dereference)
        s = repo.stat_entry(e)
        rec = _entry_record(repo, e)
        if "error" in rec:
            raise CvmfsError(rec["error"])
        rec.update(
            inode=s.st_ino,
            uid=s.st_uid,
            gid=s.st_gid,
            blocks=s.st_blocks,
            mtime_nsec=s.st_mtime_nsec,
            catalog=(e.catalog.mountpoint or "/"),
        )
        if e.is_symlink:
            rec["target"] = repo.expand_symlink(e)
        rec["size"] = s.st_size
        if args.json:
            json_line(rec)
        else:
            for k, v in rec.items():
                if k == "mode":
                    v = f"{v:o} ({mode_string(v)})"
                elif k in ("path", "symlink", "target", "catalog"):
                    v = display(v)
                line(f"{k}: {v}")
    return 0


def cmd_find(args) -> int:
    """Every entry below PATH; an entry or directory that cannot be read is reported
    (one line on stderr, `error` in its JSON record) and the walk goes on; exit 1."""
    failures = 0

    def report(e: CvmfsError) -> None:
        nonlocal failures
        failures += 1
        warn(str(e))

    with open_repository(args, args.name) as repo:
        for e in repo.walk(args.path, onerror=report):
            if args.json:
                rec = _entry_record(repo, e, args.sha256)
                if "error" in rec:
                    report(CvmfsError(rec["error"]))
                json_line(rec)
            else:
                line(display(e.path or "/"))
    return EXIT_ERROR if failures else 0


def cmd_tags(args) -> int:
    with open_repository(args, args.name, attach=False) as repo:
        tags = repo.tags()
        if args.json:
            for t in tags:
                json_line(
                    {
                        "name": t.name,
                        "revision": t.revision,
                        "timestamp": t.timestamp,
                        "root_hash": t.root_hash.hex,
                        "description": t.description,
                    }
                )
            return 0
        for t in tags:
            when = utc(t.timestamp, "%Y-%m-%dT%H:%M:%SZ")
            line(
                f"{display(t.name)}\t{t.revision}\t{when}\t{t.root_hash.hex}\t{one_line_text(t.description)}"
            )
    return 0
