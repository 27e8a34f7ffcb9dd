"""A Syllabus curriculum for other trainers: a schedule's epochs as `datasets.Dataset` objects, in the order
`train run` takes them, and a sampler that keeps that order, so that TRL's trainers (SFT, GKD) or a plain PyTorch
loop train on the curriculum (docs/other-trainers.md).

    from torch.utils.data import SequentialSampler
    from syllabus.core.curriculum import curriculum_dataset

    train = curriculum_dataset("runs/sched/spectrum")       # every epoch, in order: prompt, completion, epoch, ...
    class CurriculumSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, dataset=None):
            return SequentialSampler(dataset if dataset is not None else self.train_dataset)

A Hugging Face `Trainer` shuffles its training set; a curriculum is an order, so a sequential sampler takes the
rows as they are (already shuffled within each epoch with `train run`'s seeded permutation), and the trainer runs
one pass (`num_train_epochs=1`) over the concatenated epochs. What another trainer cannot take from the schedule is said, not
dropped silently: per-epoch temperature, kd_weight and loss are columns for a trainer that reads them, optimizer
restarts (SRD, L2M-KD) are the trainer's to do, and DA-KD's dynamic epochs (re-selected with the student being
trained) come as their static selection, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import polars as pl

from .schedule import Schedule, epoch_order, read_schedule
from .table import read_table

DIFFICULTY_COLUMNS = ("student_ce", "teacher_ce", "dds", "rouge_l")


def _epoch_frame(schedule: Schedule, table: pl.DataFrame, index: int, seed: int) -> pl.DataFrame:
    epoch = schedule.epochs[index]
    ids = epoch_order(pl.read_parquet(epoch.shard, columns=["sample_id"])["sample_id"].to_list(), seed, index)
    order = pl.DataFrame({"sample_id": ids, "_position": range(len(ids))})
    plan = epoch.plan
    rows = order.join(table, on="sample_id", how="left").sort("_position").drop("_position")
    missing = rows.filter(pl.col("prompt").is_null())["sample_id"]
    if missing.len():
        raise ValueError(f"{epoch.shard}: {missing.len()} sample(s) are not in the table (first: {missing[0]}); "
                         "give the table the schedule was built from")
    return rows.select(
        "sample_id", "prompt", pl.col("response").alias("completion"),
        *[c for c in DIFFICULTY_COLUMNS if c in table.columns],
        epoch=pl.lit(index, pl.Int32), stage=pl.lit(plan.stage, pl.Int32),
        temperature=pl.lit(plan.temperature), kd_weight=pl.lit(plan.kd_weight), loss=pl.lit(plan.loss),
    )


def _read(schedule_dir: str | Path, table: str | Path | None) -> tuple[Schedule, pl.DataFrame]:
    schedule = read_schedule(schedule_dir)
    frame = read_table(table or schedule.table_path).frame
    dynamic = [e.index + 1 for e in schedule.epochs if e.plan.rescore]
    if dynamic:
        warnings.warn(f"{schedule_dir}: epochs {dynamic} re-select their samples with the student being trained "
                      "(DA-KD dynamic mode), which only `train run` does; another trainer gets their static selection",
                      stacklevel=3)
    return schedule, frame.select("sample_id", "prompt", "response",
                                  *[c for c in DIFFICULTY_COLUMNS if c in frame.columns])


def epoch_datasets(schedule_dir: str | Path, table: str | Path | None = None, seed: int = 0) -> list[Any]:
    """Each epoch of a schedule as a `datasets.Dataset`, its rows in the order `train run --seed SEED` takes them.

    Columns: sample_id, prompt, completion (the response: TRL's prompt-completion format), the table's difficulty
    columns, and the epoch's plan (epoch, stage, temperature, kd_weight, loss).

    Args:
        schedule_dir: a directory written by `curate schedule`.
        table: the difficulty table (default: the one the schedule names).
        seed: the within-epoch shuffle's seed (`train run --seed`).

    Raises:
        ScheduleError, TableError: the schedule or table does not read; ValueError: a scheduled sample is not in
            the table.
    """
    from datasets import Dataset

    schedule, frame = _read(schedule_dir, table)
    return [Dataset.from_polars(_epoch_frame(schedule, frame, e.index, seed)) for e in schedule.epochs]


def curriculum_dataset(schedule_dir: str | Path, table: str | Path | None = None, seed: int = 0) -> Any:
    """Every epoch of a schedule, one after the other, as one `datasets.Dataset` (columns as `epoch_datasets`):
    train on it in order, once (a `SequentialSampler`)."""
    from datasets import Dataset

    schedule, frame = _read(schedule_dir, table)
    return Dataset.from_polars(pl.concat([_epoch_frame(schedule, frame, e.index, seed) for e in schedule.epochs]))

