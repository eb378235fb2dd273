"""The container view of a job: which tree is its root, what is bound where (mounts),
the image's environment (image) and a writable overlay (overlay). Pure path and file
logic: nothing here knows of ptrace; the tracer asks it."""
