"""The `curate schedule` command (registered on the `curate` app)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

PARAMS_HELP = """Method parameters (-p key=value, or keys of --config YAML), defaults from each paper:
spectrum: epochs=25 warmup_epochs=5 la=0.1 lb=0.1 difficulty=student_ce|rouge_l step=adaptive|greedy|linear
  tau0=1 taun=2 sft_weight=0.3 loss=kld.
srd: stages=3 epochs_per_stage=4 keep=0.75 rrf_k=60 ce_column=output_ce|student_ce tau0=1 taun=2 sft0=0.3 sftn=0.1
  restart_optimizer=true loss=kld.
l2m: stages=4 epochs_per_stage=2 alpha=0.1 beta1=0.7 betan=1.0 temperature=1 restart_optimizer=false.
dakd: epochs=10 decay=cosine|linear tau=0.1 lam=0.9 dynamic=true temperature=1 kd_weight=1.
full: epochs=20 temperature=1 kd_weight=1 loss=kld.  random: epochs=10 and one of fraction|size|sizes_from=DIR."""


def _parse_params(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"-p takes key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def schedule(
    table: Path = typer.Argument(..., help="difficulty table directory"),
    method: Optional[str] = typer.Option(None, help="spectrum, srd, l2m, dakd, full or random"),
    out: Path = typer.Option(..., "--out", "-o", help="schedule directory to write"),
    epochs: Optional[int] = typer.Option(None, help="number of epochs (staged methods: a multiple of the stages)"),
    param: list[str] = typer.Option([], "--param", "-p", help="method parameter key=value (repeatable); see below"),
    config: Optional[Path] = typer.Option(None, help="YAML with method, seed, reverse and method parameters"),
    seed: Optional[int] = typer.Option(None, help="seed for random draws (default 0)"),
    reverse: bool = typer.Option(False, help="hard-to-easy ablation of the curriculum"),
    overwrite: bool = typer.Option(False, help="replace --out if it holds another schedule"),
) -> None:
    """Turn a difficulty table into per-epoch shards + manifest.json for one curriculum method."""
    import yaml

    from ..table import TableError
    from .build import build_schedule
    from .common import ScheduleError
    from .inspect import summarize_schedule

    values: dict = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text()) or {}
        if not isinstance(loaded, dict):
            typer.secho(f"error: {config}: expected a mapping", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        values.update(loaded)
    values.update(_parse_params(param))
    if epochs is not None:
        values["epochs"] = epochs
    chosen = method or values.pop("method", None)
    values.pop("method", None)
    seed_value = seed if seed is not None else int(values.pop("seed", 0))
    values.pop("seed", None)
    reverse_value = reverse or bool(values.pop("reverse", False))
    if chosen is None:
        typer.secho("error: --method is required (or `method:` in --config)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        path, excluded = build_schedule(table, chosen, out, values, seed_value, reverse_value, overwrite)
    except (ScheduleError, TableError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(summarize_schedule(path))


schedule.__doc__ = (schedule.__doc__ or "") + "\n\n" + PARAMS_HELP
