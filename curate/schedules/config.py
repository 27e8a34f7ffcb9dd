"""Parameter checking shared by the method configs, the loss table, and reading parameters from YAML.

Pure Python (no polars, no numpy) so that the CLI can validate parameters before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from syllabus.core import loss_params as trainer_losses
from syllabus.core.schedule import ScheduleError  # noqa: F401 (re-exported: the error of every schedule module)

# docs/methods.md, "Losses": the trainer's loss table (names, parameters, defaults). The manifest always carries every
# parameter of its loss, so a schedule means the same thing whatever defaults the trainer has.
LOSS_DEFAULTS = trainer_losses.DEFAULT_PARAMS
LOSSES = trainer_losses.LOSSES


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
        if key not in LOSS_DEFAULTS[loss]:
            accepted = ", ".join(LOSS_DEFAULTS[loss]) or "none"
            raise ScheduleError(f"parameter loss_params.{key}: loss {loss} does not read it (it reads: {accepted})")
        check_range(f"loss_params.{key}", value, 0.0, 1.0)
    try:  # the loss's own rules (e.g. jsd's beta strictly inside (0, 1)): what the trainer will accept
        trainer_losses.resolve_loss_params(loss, loss_params)
    except ValueError as err:
        raise ScheduleError(f"parameter loss_params: {err}") from None


def resolve_loss_params(loss: str, from_method: dict[str, float], given: dict[str, float]) -> dict[str, float]:
    """Every parameter of `loss`: design defaults, then the method's per-epoch values, then the user's.

    Method values the loss does not read are dropped, so `--loss kld` on L2M-KD simply loses the skew ladder.
    """
    keys = LOSS_DEFAULTS[loss]
    return {**keys, **{k: v for k, v in from_method.items() if k in keys}, **given}


def _accepts(annotation: Any, value: Any) -> Any:
    """`value` converted to the field type, or raise TypeError. Ints are accepted for floats; bools only for bool."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _accepts(option, value)
            except TypeError:
                pass
        raise TypeError
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise TypeError
        return {str(k): _accepts(float, v) for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError
    return value


def typed_params(cls: type, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check names and types of `params` against the fields of a config dataclass.

    Raises:
        ScheduleError: an unknown name (listing the valid ones) or a value of the wrong type (naming the parameter).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ScheduleError(
            f"method {method}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
        )
    return {key: typed_value(key, hints[key], value) for key, value in params.items()}


def typed_value(name: str, annotation: Any, value: Any) -> Any:
    """`value` as the type `annotation` (ints pass for floats, integral floats for ints, nothing else converts).

    Raises:
        ScheduleError: naming the parameter and the expected type.
    """
    try:
        return _accepts(annotation, value)
    except (TypeError, ValueError):
        want = getattr(annotation, "__name__", str(annotation))
        raise ScheduleError(f"parameter {name}: expected {want}, got {value!r}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping of a `--config` YAML file; dashes in keys become underscores (flags and keys read the same).

    Raises:
        ScheduleError: the file is missing, is not YAML, or is not a mapping.
    """
    import yaml

    if not path.is_file():
        raise ScheduleError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScheduleError(f"--config {path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ScheduleError(f"--config {path}: expected a mapping of parameter: value, got {type(loaded).__name__}")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}
