"""Run a Syllabus command and SIGKILL it at a chosen point, as an OOM killer or a preemption would.

    python tests/preempt.py train-step 5 syllabus.train run --manifest ...   # killed as step 5 is logged
    python tests/preempt.py score-part 1 syllabus.curate score ...           # killed once 1 part is on disk
    PREEMPT_RANK=1 torchrun --nproc_per_node 2 tests/preempt.py train-step 5 syllabus.train run ...  # rank 1 only

The kill point is set by wrapping one function of the command (the metrics log, the part writer) in this process
only: the commands themselves carry no test hooks.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def _kill() -> None:
    """SIGKILL this process: under torchrun, only the rank PREEMPT_RANK names, when set."""
    if os.environ.get("PREEMPT_RANK", os.environ.get("RANK")) == os.environ.get("RANK"):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_at_train_step(step: int) -> None:
    from syllabus.train import state

    write = state.MetricsLog.write

    def write_or_die(self, record, main_process):  # step `step` is done; its snapshot (if any) is not yet taken
        if record["step"] >= step:
            _kill()
        write(self, record, main_process)

    state.MetricsLog.write = write_or_die


def kill_after_score_parts(parts: int) -> None:
    from syllabus.curate import score

    write = score.atomic_write_parquet
    written = []

    def write_then_maybe_die(frame, path, *args, **kwargs):
        write(frame, path, *args, **kwargs)
        written.append(path)
        if len(written) >= parts:
            _kill()

    score.atomic_write_parquet = write_then_maybe_die


POINTS = {"train-step": kill_at_train_step, "score-part": kill_after_score_parts}

if __name__ == "__main__":
    point, count, module, *args = sys.argv[1:]
    POINTS[point](int(count))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
