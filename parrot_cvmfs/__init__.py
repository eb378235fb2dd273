"""parrot-cvmfs: a read-only /cvmfs for unmodified programs, without FUSE or root.

The client library (`parrot_cvmfs.client`, over the repository format in
`parrot_cvmfs.format`) reads CernVM-FS repositories: signed manifests, SQLite
catalogs, content-addressed objects in a shared local cache. See `Repository`
for the Python API.
"""

from ._version import __version__
from .errors import CvmfsError

__all__ = ["CvmfsError", "Repository", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import parrot_cvmfs` stays cheap for the tracer.
    if name == "Repository":
        from .client.repository import Repository

        return Repository
    raise AttributeError(name)
