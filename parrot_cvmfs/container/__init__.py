"""The container view of a job: which tree is its root, what is bound where (mounts),
and later the image's environment and a writable overlay. Pure path and file logic:
nothing here knows of ptrace; the tracer asks it."""
