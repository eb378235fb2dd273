"""Publishing and serving a repository, preloading and bundling it, the demo."""

from __future__ import annotations

import os
import sys

from ..errors import CvmfsError


def cmd_publish(args) -> int:
    """Publish SRC as repository NAME into stratum directory DIR (a new revision if it
    exists). Keys are created in KEYDIR when missing."""
    from ..format.hashes import ALGORITHM_BY_NAME
    from ..server.chunking import ChunkSizes
    from ..server.publisher import PublishOptions, publish

    mib = 1 << 20
    opts = PublishOptions(
        source=args.source,
        name=args.name,
        stratum=args.stratum,
        keys_dir=args.keys,
        tag=args.tag,
        tag_description=args.description or "",
        dirtab=args.dirtab,
        hash_algorithm=ALGORITHM_BY_NAME[args.hash],
        compress=not args.no_compression,
        chunking=not args.no_chunking,
        chunk_sizes=ChunkSizes(
            int(args.min_chunk * mib), int(args.avg_chunk * mib), int(args.max_chunk * mib)
        ),
        ttl=args.ttl,
        whitelist_days=args.whitelist_days,
        include_xattrs=not args.no_xattrs,
        jobs=args.jobs,
    )
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else None
    r = publish(opts, log)
    for k in r.keys_created:
        print(f"created {k}", file=sys.stderr)
    print(
        f"published {args.name} revision {r.revision} ({r.root_hash.hex}): {r.files} files,"
        f" {r.catalogs} catalogs, {r.objects_written} objects written"
        f" ({r.bytes_written / 1e6:.1f} MB), {r.objects_reused} reused, {r.seconds:.2f} s"
    )
    return 0


def cmd_serve(args) -> int:
    """Serve DIR so that http://HOST:PORT/cvmfs/NAME/ is repository NAME."""
    from ..server.geo import geo_config
    from ..server.serve import StratumServer

    if not os.path.isdir(args.directory):
        raise CvmfsError(f"stratum directory {args.directory} does not exist")
    geo = geo_config(args.geo_order, args.geo_places)
    try:
        srv = StratumServer(args.directory, args.host, args.port, verbose=args.verbose, geo=geo)
    except OSError as e:
        raise CvmfsError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    print(f"serving {os.path.abspath(args.directory)} at {srv.url}/<name>", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def cmd_preload(args) -> int:
    """Verify the repository at URL and download its catalogs and objects (the part a
    dirtab selects) into DIR, for clients using DIR as an alien cache with no
    network (parrot_run --alien-cache DIR --offline). A rerun fetches only what DIR
    does not have."""
    from ..client.config import Configuration, check_directory_option
    from ..client.preload import preload, tqdm_progress

    options = dict(args.option)
    if args.timeout is not None:  # cvmfs_preload's -t applies to direct and proxied transfers
        options["CVMFS_TIMEOUT"] = options["CVMFS_TIMEOUT_DIRECT"] = str(args.timeout)
    if args.retries is not None:
        options["CVMFS_MAX_RETRIES"] = str(args.retries)
    if args.config_dir is not None:
        check_directory_option("--config-dir", args.config_dir)
    config = Configuration(config_dir=args.config_dir, overrides=options)
    progress, done = tqdm_progress()
    try:
        r = preload(
            args.url,
            args.directory,
            name=args.name,
            dirtab=args.dirtab,
            pubkeys=args.pubkey,
            jobs=args.jobs,
            config=config,
            verify_at=args.verify_at,
            progress=progress,
            bundle=args.bundle,
        )
    finally:
        done()
    print(r.summary(args.directory), flush=True)
    if r.bundle is not None:
        print(
            f"bundled revision {r.revision} of {r.fqrn} into {args.bundle}: "
            f"{r.bundle.members} members ({r.bundle.bytes / 1e6:.1f} MB)"
        )
    return 0


def cmd_unbundle(args) -> int:
    """Verify FILE (from preload --bundle) against the repository's signed chain, every
    object against its name, and install it into DIR (made if missing). A bundle
    that does not verify to its end is refused and DIR left as it was."""
    from ..client.bundle import unbundle
    from ..client.config import Configuration

    config = Configuration(config_dir=args.config_dir, overrides=dict(args.option))
    r = unbundle(
        args.bundle,
        args.directory,
        pubkeys=args.pubkey,
        config=config,
        verify_at=args.verify_at,
    )
    print(
        f"unbundled revision {r.revision} of {r.fqrn} from {args.bundle} into "
        f"{args.directory}: {r.objects} objects written, {r.present} already present"
    )
    if not r.taken:
        print(
            f"parrot_cvmfs: kept the newer revision of {r.fqrn} already in {args.directory}",
            file=sys.stderr,
        )
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(keep=args.keep)
