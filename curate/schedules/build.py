"""`curate schedule` as a library call: table + method + parameters -> schedule directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..table import read_table
from . import baselines, dakd, l2m, spectrum, srd
from .common import Epoch, ScheduleError, usable_rows, write_schedule

CONFIGS = {
    "spectrum": spectrum.SpectrumConfig,
    "srd": srd.SRDConfig,
    "l2m": l2m.L2MConfig,
    "dakd": dakd.DAKDConfig,
    "full": baselines.FullConfig,
    "random": baselines.RandomConfig,
}
METHODS = tuple(CONFIGS)


def make_config(method: str, params: dict[str, Any]) -> Any:
    """Build a method's frozen config; unknown parameter names are errors that list the valid ones.

    `epochs` is accepted by every method: staged methods (srd, l2m) turn it into epochs_per_stage.
    """
    if method not in CONFIGS:
        raise ScheduleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cls = CONFIGS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    params = dict(params)
    if "epochs" in params and "epochs" not in names:
        stages = params.get("stages", cls().stages)
        epochs = int(params.pop("epochs"))
        if epochs % stages:
            raise ScheduleError(f"parameter epochs: method {method} runs {stages} stages, so epochs must be a multiple "
                                f"of {stages} (got {epochs}); or set epochs_per_stage")
        params["epochs_per_stage"] = epochs // stages
    unknown = sorted(set(params) - names)
    if unknown:
        raise ScheduleError(f"method {method}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ScheduleError(f"method {method}: {exc}") from None


def build_epochs(method: str, frame: Any, config: Any, seed: int, reverse: bool) -> list[Epoch]:
    if method == "spectrum":
        return spectrum.build(frame, config, reverse)
    if method == "srd":
        return srd.build(frame, config, reverse)
    if method == "l2m":
        return l2m.build(frame, config, reverse)
    if method == "dakd":
        return dakd.build(frame, config, seed, reverse)
    if method == "full":
        return baselines.build_full(frame, config)
    return baselines.build_random(frame, config, seed)


def build_schedule(
    table_path: str | Path, method: str, out: str | Path, params: dict[str, Any] | None = None, seed: int = 0,
    reverse: bool = False, overwrite: bool = False,
) -> tuple[Path, dict[str, int]]:
    """Compute a method's epochs from a difficulty table and write the schedule directory.

    Returns:
        (schedule directory, excluded row counts by reason).

    Raises:
        ScheduleError, TableError: with the column, parameter or path at fault.
    """
    config = make_config(method, params or {})
    table = read_table(table_path)
    frame, excluded = usable_rows(table, config.columns(), method)
    epochs = build_epochs(method, frame, config, seed, reverse)
    recorded = {**dataclasses.asdict(config), "reverse": reverse}
    write_schedule(Path(out), method, recorded, table, seed, epochs, excluded, overwrite)
    return Path(out), excluded
