"""Child processes that cannot outlive the process that started them.

``meshware demo`` and the embedded Redis start real servers as child processes. A clean exit
stops them explicitly; for the unclean ones (the parent is killed with SIGKILL, or crashes)
Linux's ``PR_SET_PDEATHSIG`` has the kernel send the child a signal when its parent dies.
Elsewhere the hook is a no-op and the explicit stop is all there is.

``preexec_fn`` runs between fork and exec, where a multi-threaded parent's locks may be held
by threads that no longer exist. The hook therefore does nothing that takes a lock: libc and
the ``prctl`` symbol are resolved before the fork, and the child only makes that one call and
reads its parent's pid (glibc's malloc is itself reset in a forked child).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that ties the child's life to ours.

    Returns ``None`` where the kernel offers no such hook (anything but Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec
