"""The `curate schedule` command; `curate/cli.py` registers it with `app.command("schedule")(schedule)`.

Only typer and the pure-Python method table are imported here: the work (polars, numpy) is imported inside the
command, so `curate --help` stays instant. The command holds no logic: it merges --config YAML, `-p key=value` and
the few options every method shares, and calls `build_schedule`.

Method parameters have one way in, `-p key=value` (or the same keys in --config); their names, types and paper
defaults come from each method's config dataclass, and `--help-params` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from syllabus.core.cli import choices, fail
from syllabus.core.cli import value as choice_value
from syllabus.core.loss_params import LOSSES

from .methods import METHODS

MethodName = choices("MethodName", tuple(METHODS))
LossName = choices("LossName", LOSSES)


def _show_params(ctx: typer.Context, method: Optional[str]) -> None:
    """--help-params: the parameters of one method (or all), from its config dataclass, with the paper defaults."""
    if not method:
        return
    from .params_help import describe

    names = list(METHODS) if method == "all" else [method]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise typer.BadParameter(f"unknown method {unknown[0]!r}; choose all or one of {', '.join(METHODS)}")
    typer.echo("\n\n".join(describe(name) for name in names))
    raise typer.Exit()


def schedule(
    table: Path = typer.Argument(..., help="difficulty table directory (from `curate score`)"),
    out: Path = typer.Option(..., "--out", "-o", help="schedule directory to write"),
    method: Optional[MethodName] = typer.Option(None, "--method", "-m", help="the curriculum method"),
    param: list[str] = typer.Option([], "--param", "-p", metavar="KEY=VALUE",
                                    help="a method parameter as key=value (repeatable); "
                                    "--help-params lists them"),
    epochs: Optional[int] = typer.Option(None, help="epochs (srd, l2m: a multiple of the stages) [default: the "
                                         "paper's]"),
    loss: Optional[LossName] = typer.Option(None, help="KD loss of every epoch [default: the method's]"),
    loss_param: list[str] = typer.Option([], metavar="KEY=VALUE",
                                         help="loss parameter key=number, repeatable: skew, beta, lambda"),
    seed: Optional[int] = typer.Option(None, help="seed of every random draw [default: 0]"),
    reverse: Optional[bool] = typer.Option(None, "--reverse/--no-reverse", help="hard-to-easy ablation"),
    config: Optional[Path] = typer.Option(None, help="YAML with any of these keys and the method's parameters "
                                          "(-p and options override it)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it holds another schedule"),
    help_params: Optional[str] = typer.Option(None, "--help-params", metavar="METHOD", is_eager=True,
                                              callback=_show_params, help="list a method's parameters (or all) "
                                              "with the paper's defaults, and exit"),
) -> None:
    """Turn a difficulty table into a schedule: manifest.json + one Parquet shard of sample_ids per epoch.

    Methods: spectrum (SpectrumKD), srd (SRD), l2m (L2M-KD), dakd (DA-KD), full and random (baselines). Each
    method's defaults are its paper's; set a parameter with -p key=value (`--help-params METHOD` lists them).
    --config takes the same names as YAML keys (method, epochs, seed, reverse, loss, loss_params: {k: v}, and the
    method's parameters). docs/methods.md explains every parameter and choice.
    """
    from syllabus.core.table import TableError

    from .build import build_schedule
    from .config import ScheduleError, parse_params, read_config_file
    from .inspect import summarize_schedule

    options: dict[str, Any] = {
        "method": choice_value(method), "epochs": epochs, "seed": seed, "reverse": reverse,
        "loss": choice_value(loss),
    }
    try:
        values = read_config_file(config) if config is not None else {}
        values.update(parse_params(param))  # precedence: --config < -p < explicit options
        values.update({k: v for k, v in options.items() if v is not None})
        if loss_param:
            values["loss_params"] = {**(values.get("loss_params") or {}), **parse_params(loss_param, "--loss-param")}
        chosen = values.pop("method", None)
        if chosen is None:
            raise ScheduleError("--method is required (or `method:` in --config)")
        seed_value = values.pop("seed", 0)
        reverse_value = values.pop("reverse", False)
        if isinstance(seed_value, bool) or not isinstance(seed_value, int):
            raise ScheduleError(f"parameter seed: expected an integer, got {seed_value!r}")
        if not isinstance(reverse_value, bool):
            raise ScheduleError(f"parameter reverse: expected true or false, got {reverse_value!r}")
        path, excluded = build_schedule(table, chosen, out, values, seed_value, reverse_value, overwrite)
    except (ScheduleError, TableError) as exc:
        fail(str(exc))
    typer.echo(summarize_schedule(path))
