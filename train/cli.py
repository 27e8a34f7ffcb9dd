"""`train`: distil a student on a schedule written by `curate schedule`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Syllabus trainer: white-box KD over curriculum schedules.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def _main() -> None:
    """Keep `run` a real subcommand even while it is the only one."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _params(values: list[str]) -> dict[str, float]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--loss-param takes key=value, got {item!r}")
        out[key.strip()] = float(value)
    return out


@app.command()
def run(
    manifest: Optional[Path] = typer.Option(None, help="schedule directory (manifest.json + epoch shards)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory"),
    student: Optional[str] = typer.Option(None, help="student: directory, hub id or `default` (pruned SmolLM2)"),
    teacher: Optional[str] = typer.Option(None, help="teacher: directory, hub id or `default`"),
    table: Optional[Path] = typer.Option(None, help="difficulty table (default: the one the schedule names)"),
    config: Optional[Path] = typer.Option(None, help="YAML with any of these settings (flags win)"),
    loss: Optional[str] = typer.Option(None, help="override every epoch's loss: sft kld rkl jsd tvd skl srkl bdl"),
    loss_param: list[str] = typer.Option([], help="loss parameter key=value (skew, beta, lambda), repeatable"),
    kd_weight: Optional[float] = typer.Option(None, help="override every epoch's kd_weight"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (default 1e-5)"),
    warmup_ratio: Optional[float] = typer.Option(None, help="share of each LR horizon spent warming up (default 0)"),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 0; L2M-KD uses 0.01)"),
    scheduler: Optional[str] = typer.Option(None, help="cosine (default), linear or constant"),
    micro_batch_size: Optional[int] = typer.Option(None, help="default 8"),
    grad_accum: Optional[int] = typer.Option(None, help="default 1"),
    max_seq_len: Optional[int] = typer.Option(None, help="default 512"),
    precision: Optional[str] = typer.Option(None, help="bf16 (autocast; default) or fp32"),
    seed: Optional[int] = typer.Option(None),
    save_every_steps: Optional[int] = typer.Option(None, help="resumable snapshot interval (default 50)"),
    max_steps: Optional[int] = typer.Option(None, help="stop after N optimizer steps"),
    eval_sets: Optional[str] = typer.Option(None, help="comma-separated sets to evaluate at stage ends"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last snapshot (a fresh --out simply starts)"),
    overwrite: bool = typer.Option(False, help="start over in --out; with --resume, replace --out only if it holds another run"),
) -> None:
    """Train the student on the schedule's epochs, with the manifest's loss, temperature and kd_weight per epoch."""
    from syllabus.core.models import ModelError
    from syllabus.core.schedule import ScheduleError
    from syllabus.core.table import TableError

    from .config import ConfigError, TrainConfig
    from .data import DataError

    overrides = {
        "manifest": str(manifest) if manifest else None, "out": str(out) if out else None, "student": student,
        "teacher": teacher, "table": str(table) if table else None, "loss": loss,
        "loss_params": _params(loss_param) or None, "kd_weight": kd_weight, "lr": lr, "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay,
        "scheduler": scheduler, "micro_batch_size": micro_batch_size, "grad_accum": grad_accum,
        "max_seq_len": max_seq_len, "precision": precision, "seed": seed, "save_every_steps": save_every_steps,
        "max_steps": max_steps, "eval_sets": tuple(eval_sets.split(",")) if eval_sets else None,
        "resume": resume or None, "overwrite": overwrite or None,
    }
    try:
        cfg = TrainConfig.from_sources(config, overrides)
        from .loop import train

        final = train(cfg)
    except (ConfigError, ScheduleError, TableError, ModelError, DataError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"final checkpoint: {final}")
