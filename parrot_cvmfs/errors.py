"""Exceptions of parrot-cvmfs.

Every error is an OSError carrying the errno a program would see through the
file system (EIO for integrity and network failures, ENOENT for missing
repositories), and its text is one line naming what was wrong.
"""

from __future__ import annotations

import errno as _errno


class CvmfsError(OSError):
    """A failure of the CernVM-FS client; str() is a single self-contained line."""

    default_errno = _errno.EIO

    def __init__(self, message: str, err: int | None = None):
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
