"""`train`: distil a student on a schedule written by `curate schedule`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from syllabus.core.cli import Commands, choices, fail, with_version
from syllabus.core.cli import value as choice_value
from syllabus.core.config import field_defaults
from syllabus.core.loss_params import LOSSES
from syllabus.core.precision import PRECISIONS

from .config import SCHEDULERS, TRACKERS, TrainConfig

TRAIN = field_defaults(TrainConfig)  # options default to None (= the YAML or these); help shows these

LossName = choices("LossName", LOSSES)
SchedulerName = choices("SchedulerName", SCHEDULERS)
PrecisionName = choices("PrecisionName", PRECISIONS)
TrackerName = choices("TrackerName", TRACKERS)

app = with_version(typer.Typer(cls=Commands, help="Syllabus trainer: white-box KD over curriculum schedules.",
                               no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False), "train")


@app.command()
def run(
    manifest: Optional[Path] = typer.Option(None, help="schedule directory (manifest.json + epoch shards)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory"),
    student: Optional[str] = typer.Option(None, help=f"student: directory, hub id or `default` (pruned SmolLM2) [default: {TRAIN['student']}]"),
    teacher: Optional[str] = typer.Option(None, help=f"teacher: directory, hub id, `default`, or `cached`: no model, the table's top-K cache (`curate score --teacher-topk K`) [default: {TRAIN['teacher']}]"),
    table: Optional[Path] = typer.Option(None, help="difficulty table (default: the one the schedule names)"),
    config: Optional[Path] = typer.Option(None, help="YAML with any of these settings (flags win)"),
    loss: Optional[LossName] = typer.Option(None, help="override every epoch's loss (loss ablations)"),
    loss_param: list[str] = typer.Option([], help="loss parameter key=value (skew, beta, lambda), repeatable"),
    kd_weight: Optional[float] = typer.Option(None, help="override every epoch's kd_weight"),
    lr: Optional[float] = typer.Option(None, help=f"peak learning rate [default: {TRAIN['lr']}]"),
    warmup_ratio: Optional[float] = typer.Option(None, help=f"share of each LR horizon spent warming up [default: {TRAIN['warmup_ratio']}]"),
    weight_decay: Optional[float] = typer.Option(None, help=f"AdamW weight decay (L2M-KD uses 0.01) [default: {TRAIN['weight_decay']}]"),
    scheduler: Optional[SchedulerName] = typer.Option(None, help=f"LR schedule [default: {TRAIN['scheduler']}]"),
    micro_batch_size: Optional[int] = typer.Option(None, help=f"[default: {TRAIN['micro_batch_size']}]"),
    grad_accum: Optional[int] = typer.Option(None, help=f"[default: {TRAIN['grad_accum']}]"),
    padding_free: Optional[bool] = typer.Option(
        None, "--padding-free/--padded", help="pack each micro-batch's samples end to end (no compute on padding; "
        "same samples and loss) or pad them [default: padding-free where the models' attention allows it]"),
    pack_tokens: Optional[int] = typer.Option(None, help=f"longest packed row in tokens, sdpa and eager attention (flash-attention packs one row) [default: {TRAIN['pack_tokens']}]"),
    max_seq_len: Optional[int] = typer.Option(
        None, help="longest prompt + response in tokens; a limit below a scheduled row's length is refused "
        "[default: the limit the table was scored with]"),
    precision: Optional[PrecisionName] = typer.Option(None, help=f"bf16 autocast or fp32; auto: bf16 where the machine has native bf16 (GPUs, AVX512-BF16/AMX CPUs) [default: {TRAIN['precision']}]"),
    seed: Optional[int] = typer.Option(None),
    disable_dropout: bool = typer.Option(False, help="train with dropout off (TRL's GKD default); the papers keep the "
                                         "model's dropout"),
    save_every_steps: Optional[int] = typer.Option(None, help=f"resumable snapshot interval [default: {TRAIN['save_every_steps']}]"),
    max_steps: Optional[int] = typer.Option(None, help="stop after N optimizer steps"),
    lora: Optional[str] = typer.Option(None, help="train LoRA adapters, not every weight (pip install 'syllabus[lora]'): r=16,alpha=32,dropout=0.05,target=all-linear (or q_proj+v_proj); checkpoints hold the merged model and the adapter in adapter/"),
    fsdp: bool = typer.Option(False, help="shard the student's weights, gradients and optimizer state over the processes (FSDP2, one unit per decoder layer); an accelerate FSDP config does the same"),
    report_to: Optional[TrackerName] = typer.Option(None, help=f"also log every step to this tracker (OUT/trackers for the local ones; metrics.jsonl is written either way) [default: {TRAIN['report_to']}]"),
    eval_sets: Optional[str] = typer.Option(None, help="comma-separated sets to evaluate at stage ends"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last snapshot (a fresh --out simply starts)"),
    overwrite: bool = typer.Option(False, help="start over in --out; with --resume, replace --out only if it holds another run"),
) -> None:
    """Train the student on the schedule's epochs, with the manifest's loss, temperature and kd_weight per epoch."""
    from syllabus.core.config import ConfigError, parse_pairs
    from syllabus.core.io import WriteError
    from syllabus.core.models import ModelError
    from syllabus.core.schedule import ScheduleError
    from syllabus.core.table import TableError

    from .config import TrainConfig
    from .data import DataError
    from .distributed import MainProcessError

    overrides = {
        "manifest": str(manifest) if manifest else None, "out": str(out) if out else None, "student": student,
        "teacher": teacher, "table": str(table) if table else None, "loss": choice_value(loss),
        "loss_params": None, "kd_weight": kd_weight, "lr": lr, "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay,
        "scheduler": choice_value(scheduler), "micro_batch_size": micro_batch_size, "grad_accum": grad_accum,
        "padding_free": padding_free, "pack_tokens": pack_tokens,
        "max_seq_len": max_seq_len, "precision": choice_value(precision), "seed": seed, "disable_dropout": disable_dropout or None,
        "save_every_steps": save_every_steps,
        "max_steps": max_steps, "report_to": choice_value(report_to), "lora": lora, "fsdp": fsdp or None,
        "eval_sets": tuple(eval_sets.split(",")) if eval_sets else None,
        "resume": resume or None, "overwrite": overwrite or None,
    }
    try:
        overrides["loss_params"] = parse_pairs(loss_param, "--loss-param") or None
        cfg = TrainConfig.from_sources(config, overrides)
        from .loop import train

        final = train(cfg)
    except (ConfigError, ScheduleError, TableError, ModelError, DataError, ValueError, MainProcessError) as exc:
        # under torchrun every rank checks the same inputs and refuses alike, and a MainProcessError repeats the
        # main process's failure: rank 0 says it once, the others only exit
        if int(os.environ.get("RANK", "0")) != 0:
            raise typer.Exit(code=2) from None
        fail(str(exc))
    except WriteError as exc:  # the main process writes; a rank's own write failure is its own to report
        fail(str(exc) if int(os.environ.get("RANK", "0")) == 0 else f"rank {os.environ['RANK']}: {exc}")
    typer.echo(f"final checkpoint: {final}")
