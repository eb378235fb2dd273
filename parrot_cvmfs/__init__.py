"""parrot-cvmfs: a read-only /cvmfs for unmodified programs, without FUSE or root.

The client library (`parrot_cvmfs.client`) reads CernVM-FS repositories:
signed manifests, SQLite catalogs, content-addressed objects in a shared
local cache. See `Repository` for the Python API.
"""

__version__ = "0.1.0"

from .errors import CvmfsError  # noqa: E402

__all__ = ["CvmfsError", "Repository", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import parrot_cvmfs` stays cheap for the tracer.
    if name == "Repository":
        from .client.repository import Repository

        return Repository
    raise AttributeError(name)
