"""Exceptions of parrot-cvmfs.

Every error is an OSError carrying the errno a program would see through the
file system (EIO for integrity and network failures, ENOENT for missing
repositories), and its text is one line naming what was wrong.
"""

from __future__ import annotations

import errno as _errno

# Text that comes from hostile input (names, SQLite's messages quoting a schema) must
# not break the one-line rule nor drive a terminal: whitespace runs become one space,
# other control characters are shown escaped.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
for _c in "\t\n\v\f\r":
    _CONTROLS[ord(_c)] = " "
del _c


def one_line_text(text: str) -> str:
    """`text` as one printable line: whitespace runs collapsed, control characters escaped."""
    return " ".join(p for p in text.translate(_CONTROLS).split(" ") if p)


class CvmfsError(OSError):
    """A failure of the CernVM-FS client; str() is a single self-contained line."""

    default_errno = _errno.EIO

    def __init__(self, message: str, err: int | None = None):
        message = one_line_text(message)
        super().__init__(err if err is not None else self.default_errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(CvmfsError):
    """Bad or missing configuration (unknown repository, no server URL, no keys)."""

    default_errno = _errno.ENOENT


class SignatureError(CvmfsError):
    """A manifest, whitelist or certificate failed verification."""


class WhitelistError(SignatureError):
    """The whitelist is malformed, expired, for another repository or unsigned."""


class ManifestError(SignatureError):
    """The manifest is malformed or does not belong to the repository."""


class RollbackError(SignatureError):
    """The server offers an older revision than this cache already accepted."""


class IntegrityError(CvmfsError):
    """Downloaded or cached bytes do not match their content hash or size."""


class DownloadError(CvmfsError):
    """No server/proxy combination delivered the object."""


class CatalogError(CvmfsError):
    """A catalog or history database is unreadable or inconsistent."""


class CacheError(CvmfsError):
    """The local cache cannot be used (permissions, disk full, missing object offline)."""


def one_line(e: BaseException) -> str:
    """What a command prints for an error that ends it: our errors as they are, an
    OSError with the file it was about (never an `[Errno N]` repr), a ValueError's
    text (a refused argument); anything else is a defect of ours, and says so."""
    if isinstance(e, CvmfsError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        where = e.filename
        if where is not None and e.filename2 is not None:
            where = f"{where} -> {e.filename2}"
        text = f"{where}: {e.strerror}" if where is not None else e.strerror
    elif isinstance(e, (OSError, ValueError)) and str(e):
        text = str(e)
    else:
        text = f"internal error: {type(e).__name__}" + (f": {e}" if str(e) else "")
    return one_line_text(text)


# what messages call a file of each type (stat.S_IFMT of its mode)
_FILE_KINDS = {0o120000: "a symbolic link", 0o040000: "a directory", 0o010000: "a fifo"}
_FILE_KINDS[0o100000] = "a regular file"


def file_kind(mode: int) -> str:
    """What a file of `mode` (st_mode) is, for a message: "a symbolic link", "a fifo"..."""
    return _FILE_KINDS.get(mode & 0o170000, "a special file")
