"""Parameter checking shared by the method configs, the loss table, and reading parameters from YAML.

Pure Python (no polars, no numpy) so that the CLI can validate parameters before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from syllabus.core.config import parse_pairs, read_yaml, typed_fields
from syllabus.core.config import typed_value as core_typed_value
from syllabus.core.loss_params import DEFAULT_PARAMS, LOSSES
from syllabus.core.loss_params import resolve_loss_params as loss_rules
from syllabus.core.schedule import ScheduleError  # noqa: F401 (re-exported: the error of every schedule module)

# The loss table (names, parameters, defaults) is core's, shared with the trainer. The manifest always carries every
# parameter of its loss, so a schedule means the same thing whatever defaults a later trainer has.


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ScheduleError naming `name` unless low <= value <= high."""
    if not low <= value <= high:
        raise ScheduleError(f"parameter {name} must be in [{low}, {high}], got {value}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ScheduleError(f"parameter {name} must be > 0, got {value}")


def check_at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ScheduleError(f"parameter {name} must be >= {low}, got {value}")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ScheduleError(f"parameter {name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_loss(loss: str, loss_params: dict[str, float]) -> None:
    """A known loss, and parameters that this loss reads, each in [0, 1].

    Raises:
        ScheduleError: unknown loss, a parameter the loss ignores (most likely a typo), or one out of range.
    """
    check_choice("loss", loss, LOSSES)
    for key, value in loss_params.items():
        if key not in DEFAULT_PARAMS[loss]:
            accepted = ", ".join(DEFAULT_PARAMS[loss]) or "none"
            raise ScheduleError(f"parameter loss_params.{key}: loss {loss} does not read it (it reads: {accepted})")
        check_range(f"loss_params.{key}", value, 0.0, 1.0)
    try:  # the loss's own rules (e.g. jsd's beta strictly inside (0, 1)): what the trainer will accept
        loss_rules(loss, loss_params)
    except ValueError as err:
        raise ScheduleError(f"parameter loss_params: {err}") from None


def resolve_loss_params(loss: str, from_method: dict[str, float], given: dict[str, float]) -> dict[str, float]:
    """Every parameter of `loss`: design defaults, then the method's per-epoch values, then the user's.

    Method values the loss does not read are dropped, so `--loss kld` on L2M-KD simply loses the skew ladder.
    """
    keys = DEFAULT_PARAMS[loss]
    return {**keys, **{k: v for k, v in from_method.items() if k in keys}, **given}


# Parameter names of earlier versions, for the message that names the new one (the papers' symbols stay in the docs).
RENAMED = {
    "la": "early_share", "lb": "excluded_share", "tau0": "temperature_first", "taun": "temperature_last",
    "sft_weight": "kd_weight (= 1 - sft_weight)", "sft0": "kd_weight_first (= 1 - sft0)",
    "sftn": "kd_weight_last (= 1 - sftn)", "keep": "keep_share", "alpha": "skew_last", "beta1": "kd_weight_first",
    "betan": "kd_weight_last", "tau": "low_share",
}


def typed_params(cls: type, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check names and types of `params` against the fields of a method's config (`syllabus.core.config` rules).

    Raises:
        ScheduleError: an unknown name (listing the valid ones, and the new name of a renamed one) or a value of
            the wrong type (naming the parameter).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    renamed = [f"{old} is now {RENAMED[old]}" for old in params if old not in names and old in RENAMED]
    try:
        return typed_fields(cls, params, f"method {method}", ScheduleError)
    except ScheduleError as err:
        if renamed:
            raise ScheduleError(f"{err} ({'; '.join(renamed)})") from None
        raise


def typed_value(name: str, annotation: Any, value: Any) -> Any:
    """`value` as the type `annotation`; ScheduleError naming the parameter and the expected type otherwise."""
    return core_typed_value(name, annotation, value, ScheduleError)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping of a `--config` YAML file (dashes in keys become underscores).

    Raises:
        ScheduleError: the file is missing, is not YAML, or is not a mapping.
    """
    return read_yaml(path, "--config", ScheduleError)


def parse_params(items: list[str], option: str = "--param") -> dict[str, Any]:
    """`key=value` items (YAML scalars); ScheduleError naming the option for an item without `=`."""
    return parse_pairs(items, option, ScheduleError)
