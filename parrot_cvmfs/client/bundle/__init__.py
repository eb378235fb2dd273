"""Preload bundles: one verified repository revision as a zstandard-compressed tar file,
for carrying to a site whose nodes cannot download (`preload --bundle`, `unbundle`).

A bundle carries every object as the stratum serves it (compressed: the bytes its name
hashes), so that the site can check each byte against the signed chain; unbundling
verifies and inflates. Format 2, members in this order (a reader refuses any other):

    parrot-cvmfs-bundle          b"parrot-cvmfs bundle 2\\n"
    whitelist.FQRN               as served (signed by a master key)
    manifest.FQRN                as served (signed by the certificate)
    data/xx/...X                 the certificate the manifest names
    data/xx/...M                 the metainfo it names, if it names one
    dirtab.FQRN                  the preload's dirtab, if it had one
    data/xx/...C                 the catalogs, each after the one naming it (root first):
                                 exactly those the dirtab selects (all without one)
    data/xx/...[P]               each object of those catalogs once, in catalog order

The tar subset is plain ustar: regular files, names in the 100-byte field, octal sizes.

Unbundling reads the stream once and checks as it goes: the chain (whitelist, expiry,
certificate, manifest signature) with the keys given or else the ones configured for
the repository, each catalog against the hash its parent or the manifest gives, each
object against its name, and inflated sizes against the catalogs' (a member is refused
as soon as it exceeds what it can be, so a zlib bomb writes no more than its catalog
size). Names must match exactly; members that are not regular files, not referenced by
a verified catalog, repeated or missing refuse the bundle. Everything is staged in
DIR/txn, and only a bundle verified to its end is moved into place: objects, catalogs
(children first), then the revision files, the breadcrumb last. A refused bundle leaves
DIR as it was.

Objects whose inflated size no catalog states (hashed directories) are left out:
nothing in a bundle is without a bound.
"""

from .members import BundleResult, BundleWritten
from .unbundling import unbundle
from .writing import write_bundle

__all__ = ["BundleResult", "BundleWritten", "unbundle", "write_bundle"]
