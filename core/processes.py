"""A process that must not outlive its parent: a pipeline stage its `syllabus run`, a training rank its torchrun.

torchrun starts each rank in a session of its own (torch.distributed.elastic: `start_new_session=True`), so a
`kill -9` of the launcher's process group leaves the ranks running, and without their launcher they would finish the
run (writing snapshots and checkpoints) with nobody watching. Linux's PR_SET_PDEATHSIG has the kernel signal the
child the moment its parent dies, however it dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def parent_death_signal() -> Callable[[int], None] | None:
    """A function that asks the kernel for `sig` when this process's parent dies; None off Linux.

    It is loaded here, in the caller, so that a child after fork (a `preexec_fn`) only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def ask(sig: int) -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))

    return ask


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have this process get `sig` when its parent dies (and at once, if it has died already).

    Returns:
        False off Linux, where nothing is done.
    """
    ask = parent_death_signal()
    if ask is None:
        return False
    parent = os.getppid()
    ask(sig)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), sig)
    return True
