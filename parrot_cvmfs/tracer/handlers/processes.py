"""Per-process state the handlers keep: which /cvmfs program each process runs, which
/cvmfs file each of its descriptors came from (for /proc/self/exe and /proc/PID/fd/N),
and in a guest namespace the spelling of a working directory shown at two places."""

from __future__ import annotations

from ..paths import VPath


class Processes:
    """Per-process state: the /cvmfs program each process runs (for /proc/self/exe) and
    which /cvmfs file each descriptor it opened came from."""

    def __init__(self):
        self.tgid_of: dict[int, int] = {}
        self.exe: dict[int, str] = {}
        self.pending_exec: dict[int, str | None] = {}
        self.fds: dict[int, dict[int, tuple[str, VPath]]] = {}
        # tgid -> (location, guest path): the cwd as the process entered it, where the
        # guest shows that location at more than one place (tracer/guest.py)
        self.cwd: dict[int, tuple[str, str]] = {}

    def tgid(self, tid: int) -> int:
        t = self.tgid_of.get(tid)
        if t is None:
            t = _read_tgid(tid)
            self.tgid_of[tid] = t
        return t

    def on_newtask(self, parent: int, child: int) -> None:
        ptgid = self.tgid(parent)
        ctgid = _read_tgid(child)
        self.tgid_of[child] = ctgid
        if ctgid != ptgid:  # a new process: it runs the same program, has the same fds
            if ptgid in self.exe:
                self.exe[ctgid] = self.exe[ptgid]
            if ptgid in self.fds:
                self.fds[ctgid] = dict(self.fds[ptgid])
            if ptgid in self.cwd:
                self.cwd[ctgid] = self.cwd[ptgid]

    def on_exec(self, tid: int, former: int, made=None) -> None:
        """A successful exec: what /proc/self/exe shows now. `made(tid)`: given only for
        an exec C made from a kept recipe, the logical program it kept (None: the
        adopting Python took it already, end_quiet, and set it)."""
        logical = self.pending_exec.pop(former, None)
        if logical is None and made is not None:
            logical = made(tid) or self.exe.get(tid)
        self.pending_exec.pop(tid, None)
        for t in [t for t, g in self.tgid_of.items() if g == tid and t != tid]:
            del self.tgid_of[t]
        self.tgid_of[tid] = tid
        if logical:
            self.exe[tid] = logical
        else:
            self.exe.pop(tid, None)

    def on_exit(self, tid: int) -> None:
        tgid = self.tgid_of.pop(tid, tid)
        self.pending_exec.pop(tid, None)
        if tgid == tid:
            self.exe.pop(tid, None)
            self.fds.pop(tid, None)
            self.cwd.pop(tid, None)


def _read_tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid
