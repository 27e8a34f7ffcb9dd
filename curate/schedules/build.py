"""`curate schedule` as a library call: difficulty table + method + parameters -> schedule directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from syllabus.core import on_policy as rules
from syllabus.core.table import NUMERIC_COLUMNS, Table, read_schema, read_table

from .common import Epoch, usable_rows
from .config import ScheduleError, check_at_least, typed_params, typed_value
from .manifest import manifest_bytes, write_schedule
from .methods import METHODS, load_method


def make_config(method: str, params: dict[str, Any]) -> Any:
    """A method's frozen config from parameter names and values (flags or YAML keys).

    `epochs` is accepted by every method: the staged methods (those with `stages` and `epochs_per_stage`) turn it
    into epochs_per_stage.

    Raises:
        ScheduleError: unknown method, unknown parameter (listing the valid ones), wrong type or out of range.
    """
    if method not in METHODS:
        raise ScheduleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cls = load_method(method).config
    params = dict(params)
    staged = {"stages", "epochs_per_stage"} <= {f.name for f in dataclasses.fields(cls)}
    if staged and params.get("epochs", 0) is None:
        params.pop("epochs")
    if staged and "epochs" in params:
        if "epochs_per_stage" in params:
            raise ScheduleError(f"method {method}: give epochs or epochs_per_stage, not both")
        stages = typed_value("stages", int, params.get("stages", cls.stages))
        epochs = typed_value("epochs", int, params.pop("epochs"))
        check_at_least("stages", stages, 1)
        if epochs < 1 or epochs % stages:
            raise ScheduleError(
                f"parameter epochs: method {method} runs {stages} stages, so epochs must be a positive multiple of "
                f"{stages} (got {epochs}); or set epochs_per_stage"
            )
        params["epochs_per_stage"] = epochs // stages
    return cls(**typed_params(cls, method, params))


# Over an on-policy base, the methods whose loss is the base KD method's (the seeds apply SpectrumKD and SRD over
# GKD; full and random are the base itself) train with the mode's loss (GKD's jsd, DistiLLM's skew KL) unless a loss
# is given; L2M-KD's skew ladder and DA-KD's BDL are their methods' own and stay. SpectrumKD and SRD drop the SFT term (kd_weight 1) unless a kd_weight
# is given: "for on-policy KD, no SFT component is used (alpha = 0 throughout)" (SRD B.3.3; SpectrumKD likewise).
BASE_LOSS_SLOT = ("spectrum", "srd", "full", "random")
NO_SFT_ON_POLICY = {"spectrum": ("kd_weight",), "srd": ("kd_weight_first", "kd_weight_last")}


def on_policy_base(method: str, params: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """The on-policy rule in `params` (-p on_policy=gkd -p on_policy_share=0.5), and the method's parameters with
    the defaults an on-policy base changes (GKD's loss, no SFT term: above) unless they were given.

    Raises:
        ScheduleError: an unknown mode, or a share outside [0, 1] (or given without a mode).
    """
    params = dict(params)
    mode = params.pop("on_policy", "off")
    share = params.pop("on_policy_share", None)
    if mode == "gkd" and share is None:
        share = rules.DEFAULT_SHARE
    try:
        rules.check_on_policy(mode, 0.0 if share is None else share)
    except ValueError as err:
        raise ScheduleError(f"parameter {err}") from None
    if mode == "off":
        return mode, 0.0, params
    if method in BASE_LOSS_SLOT and params.get("loss") is None:
        params["loss"], base_params = rules.BASE_LOSS[mode]
        params["loss_params"] = {**base_params, **(params.get("loss_params") or {})}
    for name in NO_SFT_ON_POLICY.get(method, ()):
        params.setdefault(name, rules.KD_WEIGHT)
    return mode, float(share or 0.0), params


def _read(table_path: Path, columns: list[str]) -> Table:
    """The table without its text columns (they can be most of a table's bytes): sample_id, status, the method's
    columns and every score and token count, so that a malformed score is refused whichever column a method uses."""
    present = read_schema(table_path)
    wanted = dict.fromkeys(["sample_id", "status", *columns, *NUMERIC_COLUMNS])
    return read_table(table_path, columns=[c for c in wanted if c in present])


def build_schedule(
    table_path: str | Path,
    method: str,
    out: str | Path,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    reverse: bool = False,
    overwrite: bool = False,
) -> tuple[Path, dict[str, int]]:
    """Compute a method's epochs from a difficulty table and write the schedule directory.

    Args:
        table_path: difficulty table directory (written by `curate score` or `write_table`).
        method: spectrum, srd, l2m, dakd, full or random.
        out: schedule directory to write.
        params: method parameters by name (see each method's config); missing ones take the paper's defaults.
            Every method also takes `on_policy` (off, gkd, distillm) and `on_policy_share` (gkd's, 0.5): see
            `on_policy_base`.
        seed: seed of every random draw (DA-KD's stratified sampling, random); recorded in the manifest.
        reverse: the hard-to-easy ablation of the curriculum.
        overwrite: replace `out` if it holds another schedule.

    Returns:
        (schedule directory, excluded row counts by reason).

    Raises:
        ScheduleError: with the column, parameter or path at fault.
        TableError: the table is missing or incomplete.
    """
    mode, share, params = on_policy_base(method, params or {})
    config = make_config(method, params)
    table = _read(Path(table_path), config.columns())
    frame, excluded = usable_rows(table.frame, config.columns(), method, str(table_path))
    epochs = load_method(method).build(frame, config, seed=seed, reverse=reverse)
    recorded = {**dataclasses.asdict(config), "reverse": reverse}
    if mode != "off":  # recorded only when on, so that an off-policy schedule's manifest is as it always was
        epochs = [Epoch(e.sample_ids, dataclasses.replace(e.plan, on_policy=mode, on_policy_share=share))
                  for e in epochs]
        recorded.update(on_policy=mode, on_policy_share=share)
    manifest = manifest_bytes(method, recorded, table, frame.height, seed, epochs, excluded)
    write_schedule(Path(out), manifest, epochs, overwrite)
    return Path(out), excluded
