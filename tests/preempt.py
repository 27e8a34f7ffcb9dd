"""Run a Syllabus command and SIGKILL it at a chosen point, as an OOM killer or a preemption would.

    python tests/preempt.py train-step 5 syllabus.train run --manifest ...   # killed as step 5 is logged
    python tests/preempt.py score-part 1 syllabus.curate score ...           # killed once 1 part is on disk
    PREEMPT_RANK=1 torchrun --nproc_per_node 2 tests/preempt.py train-step 5 syllabus.train run ...  # rank 1 only
    PREEMPT_GATE=/tmp/g python tests/preempt.py train-pause 1 syllabus.train run ...  # waits after step 1 for /tmp/g

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
    from syllabus.train import metrics

    write = metrics.MetricsLog.write

    def write_or_die(self, record, main_process):  # step `step` is done; its snapshot (if any) is not yet taken
        if record["step"] >= step:
            _kill()
        write(self, record, main_process)

    metrics.MetricsLog.write = write_or_die


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


def pause_at_train_step(step: int) -> None:
    """After step `step` is logged, write this rank's pid to GATE.paused-RANK and wait (60 s at most) for GATE."""
    import time
    from pathlib import Path

    from syllabus.train import metrics

    write = metrics.MetricsLog.write
    gate = Path(os.environ["PREEMPT_GATE"])

    def write_then_wait(self, record, main_process):
        write(self, record, main_process)
        if record["step"] == step:
            gate.with_name(f"{gate.name}.paused-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    metrics.MetricsLog.write = write_then_wait


POINTS = {"train-step": kill_at_train_step, "score-part": kill_after_score_parts, "train-pause": pause_at_train_step}

if __name__ == "__main__":
    point, count, module, *args = sys.argv[1:]
    POINTS[point](int(count))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
