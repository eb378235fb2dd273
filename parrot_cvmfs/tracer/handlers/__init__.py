"""Answers to the system calls the C core hands over to Python.

The row of a call in the syscall table (syscalls.py) names its handler; `dispatch`
maps that name to a function of one family, called with the call's context (built
once per call, `context`), and carries out what it returns (`delivery`). The rooms:

- dispatch:    the handler map and the per-call entry point;
- context:     the per-call context (path, base, follow, answer-table key) and the
               path resolution every family shares; the actions a handler returns;
- delivery:    carrying an action out, as a ptrace stop or as a seccomp notification
               (the only module that knows the two apart), with the one eviction rule;
- answers:     teaching the C answer table (csrc answers.c), the only writer of records;
- procfs:      /proc/PID/{exe,cwd,root,fd/N} and /dev/fd/N, as the kernel follows them;
- processes:   per-process state (the /cvmfs program and descriptors of each process);
- open, attributes, xattrs, directories, execve, writes, sockets: the handler
  families (in a guest namespace, tracer/guest.py, the same handlers see targets
  resolved in the guest).
"""

from .dispatch import HANDLERS, Handlers
from .processes import Processes

__all__ = ["HANDLERS", "Handlers", "Processes"]
