"""Engine processes die with the process that started them.

vLLM runs its engine core and workers in child processes. When the parent is killed with SIGKILL (`kill -9`, the
OOM killer, a preempted job), nothing in it runs, and those children live on holding the model and its KV cache
(about 12 GB on this machine's CPU engine); the next run then fails for lack of memory. `guard_children` starts,
once per process, a watchdog in its own session: it polls the parent every `POLL_SECONDS`, remembers the parent's
descendants, and kills the ones still alive once the parent is gone (psutil checks each process's start time, so a
reused pid is never hit).

Run as `python -m syllabus.core.engines.watchdog PID`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_SECONDS = 1.0
_started_for: int | None = None  # the pid a watchdog guards (a forked child must start its own)


def guard_children() -> None:
    """Make sure a watchdog guards this process's children (starts one the first time it is called)."""
    global _started_for
    if _started_for == os.getpid():
        return
    subprocess.Popen([sys.executable, "-m", "syllabus.core.engines.watchdog", str(os.getpid())],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    _started_for = os.getpid()


def watch(pid: int) -> None:
    """Poll `pid` until it is gone, then kill the descendants it had that are still running."""
    import psutil

    me = os.getpid()
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    known: dict[int, psutil.Process] = {}
    while True:
        try:
            if parent.status() == psutil.STATUS_ZOMBIE:
                break
            for child in parent.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    for process in known.values():
        try:
            if process.is_running():  # same pid *and* same start time
                process.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
