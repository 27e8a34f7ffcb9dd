"""The loss names, their parameters and defaults (docs/methods.md, "Losses"), and their validation.

Pure Python, so that `curate schedule` checks a schedule's losses with the trainer's own rules without importing
torch. `syllabus.train.losses` computes them.
"""

from __future__ import annotations

import math

LOSSES = ("sft", "kld", "rkl", "jsd", "tvd", "skl", "srkl", "bdl")
DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "sft": {}, "kld": {}, "rkl": {}, "tvd": {},
    "jsd": {"beta": 0.5},    # GKD's generalised JSD; 0.5 is the symmetric JSD
    "skl": {"skew": 0.1},    # DistiLLM's default skew
    "srkl": {"skew": 0.1},
    "bdl": {"lambda": 0.9},  # DA-KD's best lambda (Fig. 4)
}


def resolve_loss_params(name: str, params: dict[str, float] | None = None) -> dict[str, float]:
    """Check a loss name and its parameters; return the parameters with defaults filled in.

    Raises:
        ValueError: an unknown loss (the message lists the valid ones), a parameter the loss does not take, or a
            value out of range (skew and lambda in [0, 1], beta in (0, 1)).
    """
    if name not in DEFAULT_PARAMS:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    params = dict(params or {})
    defaults = DEFAULT_PARAMS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        takes = f"its parameter is {next(iter(defaults))}" if defaults else "it takes none"
        raise ValueError(f"loss {name!r} does not take parameter(s) {', '.join(unknown)} ({takes})")
    resolved = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"loss parameter {key} of {name!r} must be a finite number, got {value!r}")
        if key == "beta" and not 0.0 < value < 1.0:
            raise ValueError(f"loss parameter beta of 'jsd' must be in (0, 1), got {value}: at 0 or 1 the "
                             "generalised JSD is identically 0 (use kld or rkl for those limits)")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"loss parameter {key} of {name!r} must be in [0, 1], got {value}")
        resolved[key] = float(value)
    return resolved


def check_temperature(temperature: float) -> float:
    """The temperature as a float, or ValueError unless it is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_kd_weight(kd_weight: float) -> float:
    """The KD weight as a float, or ValueError unless it is a number in [0, 1]."""
    if isinstance(kd_weight, bool) or not isinstance(kd_weight, (int, float)) or not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight!r}")
    return float(kd_weight)
