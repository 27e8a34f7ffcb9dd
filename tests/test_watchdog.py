"""A run killed with SIGKILL must not leave its engine processes behind (vLLM's engine core and workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

psutil = pytest.importorskip("psutil")

PARENT = """
import subprocess, sys, time
from syllabus.core.engines.watchdog import guard_children
guard_children()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_children_die_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.5)  # the watchdog has seen the child
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    try:
        child.wait(timeout=10)
    except psutil.TimeoutExpired:
        child.kill()
        pytest.fail("the child outlived its killed parent")
    assert not child.is_running()
