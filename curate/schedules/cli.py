"""The `curate schedule` command; `curate/cli.py` registers it with `app.command("schedule")(schedule)`.

Only typer is imported here: the work (polars, numpy) is imported inside the command, so `curate --help` stays
instant. The command holds no logic: it merges --config YAML with the flags and calls `build_schedule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

SPECTRUM, SRD, L2M, DAKD, BASE, SHARED = (
    "SpectrumKD (spectrum)", "SRD (srd)", "L2M-KD (l2m)", "DA-KD (dakd)", "Baselines (full, random)",
    "Shared by several methods",
)


def _parse_loss_params(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"expected key=number, e.g. skew=0.1, got {item!r}", param_hint="--loss-param")
    return out


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, e.g. warmup_epochs=2, got {item!r}", param_hint="--param")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)  # YAML scalars: 2 -> int, true -> bool
    return out


def _flag(help: str, panel: str, *names: str) -> Any:
    """A method flag: absent (None) unless given, so that --config and the paper defaults apply."""
    return typer.Option(None, *names, help=help, rich_help_panel=panel)


def schedule(
    table: Path = typer.Argument(..., help="difficulty table directory (from `curate score`)"),
    out: Path = typer.Option(..., "--out", "-o", help="schedule directory to write"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="spectrum, srd, l2m, dakd, full or random"),
    epochs: Optional[int] = typer.Option(None, help="epochs (srd, l2m: a multiple of the stages; default the paper's)"),
    seed: Optional[int] = typer.Option(None, help="seed of every random draw (default 0)"),
    reverse: Optional[bool] = typer.Option(None, "--reverse/--no-reverse", help="hard-to-easy ablation"),
    config: Optional[Path] = typer.Option(None, help="YAML of the same parameters (flags override it)"),
    overwrite: bool = typer.Option(False, help="replace --out if it holds another schedule"),
    param: list[str] = typer.Option([], "--param", "-p", help="any parameter as key=value (repeatable); flags win"),
    loss: Optional[str] = _flag("sft kld rkl jsd tvd skl srkl bdl (default per method)", SHARED),
    loss_param: list[str] = typer.Option([], help="loss parameter key=value, repeatable: skew, beta, lambda",
                                         rich_help_panel=SHARED),
    temperature: Optional[float] = _flag("fixed temperature: l2m, dakd, full, random (default 1)", SHARED),
    kd_weight: Optional[float] = _flag("fixed KD weight: dakd, full, random (default 1)", SHARED),
    tau0: Optional[float] = _flag("first temperature: spectrum, srd (default 1)", SHARED),
    taun: Optional[float] = _flag("last temperature: spectrum, srd (default 2)", SHARED),
    stages: Optional[int] = _flag("curriculum stages n (default srd 3, l2m 4)", SHARED),
    epochs_per_stage: Optional[int] = _flag("epochs per stage p (default srd 8, l2m 2)", SHARED),
    restart_optimizer: Optional[bool] = _flag("restart optimizer + LR schedule per stage: srd, l2m (default yes)",
                                              SHARED, "--restart-optimizer/--no-restart-optimizer"),
    la: Optional[float] = _flag("lambda_a, Early zone share (default 0.1)", SPECTRUM),
    lb: Optional[float] = _flag("lambda_b, Excluded zone share (default 0.1)", SPECTRUM),
    warmup_epochs: Optional[int] = _flag("k warm-up epochs (default 5)", SPECTRUM),
    difficulty: Optional[str] = _flag("student_ce, rouge_l, output_ce, dds, teacher_ce (default student_ce)", SPECTRUM),
    step: Optional[str] = _flag("adaptive, greedy (Algorithm 1 literal), linear (default adaptive)", SPECTRUM),
    sft_weight: Optional[float] = _flag("SFT weight alpha; kd_weight = 1 - alpha (default 0.3)", SPECTRUM),
    keep: Optional[float] = _flag("lambda, retained share (default 0.75)", SRD),
    rrf_k: Optional[int] = _flag("reciprocal rank fusion constant (default 60)", SRD),
    ce_column: Optional[str] = _flag("output_ce (paper, default) or student_ce (reference code)", SRD),
    rank_ties: Optional[str] = _flag("ordinal or min (default ordinal)", SRD),
    sft0: Optional[float] = _flag("first SFT weight (default 0.3)", SRD),
    sftn: Optional[float] = _flag("last SFT weight (default 0.1)", SRD),
    alpha: Optional[float] = _flag("final skew of Eq. 6 (default 0.1; 0.15 best in 9.2)", L2M),
    beta1: Optional[float] = _flag("KD weight of stage 1, Eq. 7 (default 0.7)", L2M),
    betan: Optional[float] = _flag("KD weight of stage n, Eq. 7 (default 1.0)", L2M),
    loss_order: Optional[str] = _flag("l2m (skew 0 -> alpha, default) or m2l", L2M),
    tie_column: Optional[str] = _flag("rouge_l tie-break: student_ce (default), output_ce, none", L2M),
    decay: Optional[str] = _flag("cosine (default) or linear, Eq. 2", DAKD),
    tau: Optional[float] = _flag("share of an epoch drawn from D_low (default 0.1)", DAKD),
    dynamic: Optional[bool] = _flag("re-score DDS before epochs 2..E in training (default dynamic)", DAKD,
                                    "--dynamic/--static"),
    fraction: Optional[float] = _flag("random: epoch size as a share of the rows", BASE),
    size: Optional[int] = _flag("random: epoch size in rows", BASE),
    sizes_from: Optional[Path] = _flag("random: per-epoch sizes and settings of this schedule", BASE),
) -> None:
    """Turn a difficulty table into a schedule: manifest.json + one Parquet shard of sample_ids per epoch.

    Methods: spectrum (SpectrumKD), srd (SRD), l2m (L2M-KD), dakd (DA-KD), full and random (baselines).
    Each method's defaults are its paper's; give only the flags of the chosen method. --config takes the same
    names as YAML keys (method, epochs, seed, reverse, loss, loss_params: {k: v}, la, keep, ...), and so does
    -p key=value. docs/methods.md explains every parameter and choice.
    """
    from ..table import TableError
    from .build import build_schedule
    from .config import ScheduleError, read_config_file
    from .inspect import summarize_schedule

    flags: dict[str, Any] = {
        "method": method, "epochs": epochs, "seed": seed, "reverse": reverse, "loss": loss,
        "temperature": temperature, "kd_weight": kd_weight, "tau0": tau0, "taun": taun, "stages": stages,
        "epochs_per_stage": epochs_per_stage, "restart_optimizer": restart_optimizer, "la": la, "lb": lb,
        "warmup_epochs": warmup_epochs, "difficulty": difficulty, "step": step, "sft_weight": sft_weight,
        "keep": keep, "rrf_k": rrf_k, "ce_column": ce_column, "rank_ties": rank_ties, "sft0": sft0, "sftn": sftn,
        "alpha": alpha, "beta1": beta1, "betan": betan, "loss_order": loss_order, "tie_column": tie_column,
        "decay": decay, "tau": tau, "dynamic": dynamic, "fraction": fraction, "size": size,
        "sizes_from": str(sizes_from) if sizes_from is not None else None,
    }
    try:
        values = read_config_file(config) if config is not None else {}
        values.update(_parse_params(param))  # precedence: --config < --param < explicit flags
        values.update({k: v for k, v in flags.items() if v is not None})
        if loss_param:
            values["loss_params"] = {**(values.get("loss_params") or {}), **_parse_loss_params(loss_param)}
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
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(summarize_schedule(path))
