"""The ptrace supervisor that serves /cvmfs to unmodified programs (`parrot_run`)."""
