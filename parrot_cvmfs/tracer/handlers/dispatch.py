"""The entry point for every call the C core hands over: the call's context is filled,
the handler its row names (HANDLERS) decides, delivery carries the decision out."""

from __future__ import annotations

import errno

from ...errors import CvmfsError
from ..core import Core
from ..memo import Memo
from ..vfs import CvmfsView
from .answers import Siblings
from .attributes import h_access, h_readlink, h_stat, h_statfs
from .context import RESUME, Context, skip
from .delivery import Delivery, io_error
from .directories import h_chdir, h_getcwd, h_getdents, h_inotify
from .execve import h_execve
from .open import h_open
from .processes import Processes
from .sockets import h_connect, h_sendmsg, h_sockfrom, h_sockname
from .writes import (
    h_bind,
    h_chroot,
    h_ioctl_setattr,
    h_mount,
    h_unsupported,
    h_write_create,
    h_write_existing,
    h_write_fd,
    h_write_link,
    h_write_remove,
    h_write_rename,
)
from .xattrs import h_getxattr, h_listxattr

TYPE_CHECKING = False  # not typing's: the start path stays small
if TYPE_CHECKING:
    from ..guest import Guest  # only with --root or binds (supervisor.py)


def h_unhold(c: Context) -> tuple:
    """flock and open-file fcntl locks: C's alone (examine.c lets go of a held file and
    passes the call to the kernel); never handed over, the kernel's if ever."""
    return RESUME


# The handler each row of the syscall table names (Call.handler), checked against the
# table by tests/test_syscalls.py.
HANDLERS = {
    "open": h_open,
    "stat": h_stat,
    "access": h_access,
    "readlink": h_readlink,
    "statfs": h_statfs,
    "getxattr": h_getxattr,
    "listxattr": h_listxattr,
    "execve": h_execve,
    "chdir": h_chdir,
    "getcwd": h_getcwd,
    "getdents": h_getdents,
    "inotify": h_inotify,
    "unsupported": h_unsupported,
    "write_existing": h_write_existing,
    "write_create": h_write_create,
    "write_remove": h_write_remove,
    "write_rename": h_write_rename,
    "write_link": h_write_link,
    "write_fd": h_write_fd,
    "ioctl_setattr": h_ioctl_setattr,
    "bind": h_bind,
    "connect": h_connect,
    "sockname": h_sockname,
    "sendmsg": h_sendmsg,
    "sockfrom": h_sockfrom,
    "mount": h_mount,
    "chroot": h_chroot,
    "unhold": h_unhold,
}


class Handlers:
    def __init__(
        self,
        core: Core,
        view: CvmfsView,
        procs: Processes,
        debug=None,
        guest: Guest | None = None,
    ):
        self.core = core
        self.memo = Memo(core, view.cache_dir)
        # answers kept by earlier runs for a guest namespace are its own (guest.py)
        view.on_mount = self.memo.load if guest is None else guest.memo_loader(self.memo)
        for name in list(view.repos):  # mounted already (a root or bind source in /cvmfs)
            rev = view.revision_id(name)
            if rev is not None:
                view.on_mount(rev)
        view.kept_path = self.memo.logical_path
        self.view = view
        self.procs = procs
        self.calls = core.calls
        self.debug = debug  # the debug log's stream (stderr, --debug-file), or None
        self.context = Context(core, view, procs, self.memo, Siblings(), guest)
        self.delivery = Delivery(core, view, procs)
        self._handler_of = [HANDLERS[c.handler] for c in self.calls]  # by rule index

    # HOT PATH: runs once for every call C hands to Python: one decode of the event into
    # the context, one handler, one delivery
    def dispatch(self) -> None:
        core, c = self.core, self.context
        core.decode(c)
        if c.notify and not core.notif_valid(c.notif_id):
            return  # the program went away (killed) while the call waited
        call = self.calls[c.rule]
        c.load(call)
        try:
            action = self._handler_of[c.rule](c)
        except CvmfsError as e:
            if core.given_up():  # C answered it meanwhile (a termination signal)
                return
            action = skip(io_error(self.view, e))
        except OSError as e:
            action = skip(-(e.errno or errno.EIO))
        except Exception as e:  # never let a program's call take the supervisor down
            self.view.warn(f"internal error in {call.name}: {type(e).__name__}: {e}")
            if self.debug:
                import traceback

                traceback.print_exc(file=self.debug)
            action = skip(-errno.EIO)
        if self.debug:
            via = "notify" if c.notify else "ptrace"
            print(f"[{c.tid}] {call.name}({c.path!r}) via {via} -> {action}", file=self.debug)
        self.delivery.apply(c, action)

    def on_exit(self) -> None:
        """Exit of a rewritten call whose exit was asked for (an open)."""
        self.delivery.on_exit()
