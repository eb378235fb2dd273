"""Container roots: the guest's mount table, overlay and image conventions (no ptrace here)."""
