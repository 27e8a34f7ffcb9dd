"""What a training run is made of once set up: the `Run` record that `loop.setup` builds and everything else reads
(the loop, snapshots and checkpoints, DA-KD re-scoring), and `Progress`, where the run stands: the one thing that
changes as it trains, passed beside the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syllabus.core.logits import LogitHead
from syllabus.core.schedule import Schedule
from syllabus.core.table import Table
from syllabus.core.topk_cache import TopKCache

from .config import TrainConfig
from .data import SampleStore
from .losses import Objective
from .on_policy import OnPolicy
from .student import DistillStudent


STATE = "state"  # OUT/state: the latest snapshot (train/snapshot.py)
# Every top-level name a training run writes in its directory (besides _work): all that --overwrite may delete
RUN_NAMES = ("config.json", "metrics.jsonl", "rescore.jsonl", "checkpoints", "eval", "trackers",
             STATE, f"{STATE}.tmp", f"{STATE}.old")


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
    distillm: dict[str, Any] | None = None  # the distillm mode's threshold and replay buffer (`DistillmState`)

    def advance(self) -> None:
        self.step_in_epoch += 1
        self.global_step += 1

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_ids = None


@dataclass(frozen=True, kw_only=True)
class Run:
    """Everything `setup` builds before the loop starts; it does not change while the run trains.

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
    on_stage_end: Callable[[Run, Path, int, int], None] | None = None  # (run, checkpoint, stage, global step)
    sharded: bool = False  # the student is sharded over the processes (FSDP)
    on_policy: tuple[OnPolicy, ...] = ()  # each epoch's on-policy rule (`train.on_policy`); () or off: none
    sampler: Any = None  # what generates on-policy responses (`train.on_policy`: transformers or vLLM); fit closes it


def unwrapped(run: Run, model: Any) -> Any:
    """The Hugging Face student inside the (accelerate-wrapped) `DistillStudent`."""
    return run.accelerator.unwrap_model(model).model
