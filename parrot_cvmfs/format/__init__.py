"""The repository format that reader and publisher share: hashes, manifest,
whitelist, signatures, catalogs, history, extended attributes, dirtab.

Nothing here imports the client, the server, the tracer or the CLI."""
