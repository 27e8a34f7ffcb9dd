"""What a training run is made of once set up: the `Run` record that `loop.setup` builds and everything else reads
(the loop, the run-directory state, DA-KD re-scoring), and `Progress`, where the run stands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus.core.logits import LogitHead
from syllabus.core.schedule import Schedule
from syllabus.core.table import Table
from syllabus.core.topk_cache import TopKCache

from .config import TrainConfig
from .data import SampleStore
from .losses import Objective
from .student import DistillStudent


@dataclass
class Progress:
    """Where the run is: the data position is (epoch, step_in_epoch); epoch_ids pins a re-scored epoch's samples."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    optimizer_epoch: int = 0  # epoch at which the current optimizer/LR schedule started
    epoch_ids: list[str] | None = None
    num_processes: int = 1  # the ranks the position counts steps over (recorded at each snapshot)
    fsdp: bool = False  # the student and optimizer are in shards (state/sharded/: torch.distributed.checkpoint)

    def advance(self) -> None:
        self.step_in_epoch += 1
        self.global_step += 1

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_ids = None


@dataclass
class Run:
    """Everything `setup` builds before the loop starts.

    `objectives[i]` is epoch i's loss (the manifest's, or the config's override for a loss ablation), checked once
    at setup. `on_stage_end` is the stage-end evaluation (None when no eval sets were asked for).
    """

    config: TrainConfig
    out: Path
    schedule: Schedule
    table: Table
    accelerator: Any  # accelerate.Accelerator
    student: DistillStudent
    teacher: Any  # a transformers causal LM, frozen; None when the teacher is a top-K cache
    teacher_head: LogitHead | None  # how the teacher's logits come from its hidden states (checked at setup)
    cache: TopKCache | None  # the teacher's top K per response token (`--teacher cached`), in place of a model
    tokenizer: Any
    store: SampleStore
    pack_tokens: int | None  # padding-free rows of at most this many tokens; None: padded batches
    manifest_fingerprint: str
    objectives: tuple[Objective, ...]
    on_stage_end: Callable[[Run, Path, int], None] | None = None
    sharded: bool = False  # the student is sharded over the processes (FSDP)
    progress: Progress = field(default_factory=Progress)
