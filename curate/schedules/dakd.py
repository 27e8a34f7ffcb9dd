"""DA-KD stratified data updating (dakd.txt, section 3.2, Eq. 2, Algorithm 1) with the BDL loss (Eq. 4).

Per epoch e (1-based) of E, the selection ratio is r = 1 - (e-1)/E (linear) or 0.5 cos(pi (e-1)/E) + 0.5
(cosine, the paper's choice). The epoch index enters Eq. 2 0-based: read with e = 1..E the last epoch would be
empty; with e - 1 = 0..E-1 the first epoch uses all data and the sum of r over 10 epochs is 5.5, which is exactly
the paper's Table 3 (1,963 of the baseline's 3,570 iterations: 3,570 / 10 * 5.5 = 1,963.5). tests pin this.
r is clamped to at least 1/N so no epoch is empty; |epoch| = round_half_up(r N).

Stratified sampling: sort by dds descending; D_high = the top |epoch| rows, D_low = the rest; draw
round_half_up((1 - tau) |D_high|) rows from D_high and the remaining tau share from D_low, uniformly at random
(seeded per epoch), tau = 0.1. When D_low is too small, D_high fills in. No sample appears twice in an epoch.
The paper recomputes DDS with the current student before every epoch: in dynamic mode (default) epochs 2..E are
marked `rescore`, and the trainer re-selects with `select_epoch` on fresh dds values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .common import Epoch, ScheduleError, check_range

DECAYS = ("cosine", "linear")


@dataclass(frozen=True)
class DAKDConfig:
    epochs: int = 10
    decay: str = "cosine"
    tau: float = 0.1  # share of an epoch drawn from D_low
    lam: float = 0.9  # BDL lambda
    dynamic: bool = True  # re-score before every epoch after the first (the paper)
    temperature: float = 1.0
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ScheduleError("parameter epochs must be >= 1")
        if self.decay not in DECAYS:
            raise ScheduleError(f"parameter decay must be one of {', '.join(DECAYS)}")
        check_range("tau", self.tau, 0.0, 1.0)
        check_range("lam", self.lam, 0.0, 1.0)
        check_range("kd_weight", self.kd_weight, 0.0, 1.0)

    def columns(self) -> list[str]:
        return ["dds"]


def ratio(epoch: int, num_epochs: int, decay: str) -> float:
    """Eq. 2 for 0-based `epoch` in [0, num_epochs)."""
    x = epoch / num_epochs
    return 1.0 - x if decay == "linear" else 0.5 * math.cos(math.pi * x) + 0.5


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def epoch_size(epoch: int, num_epochs: int, n: int, decay: str) -> int:
    return max(1, min(n, _round_half_up(max(ratio(epoch, num_epochs, decay), 1.0 / n) * n)))


def select_epoch(
    frame: pl.DataFrame, epoch: int, num_epochs: int, seed: int, decay: str = "cosine", tau: float = 0.1,
    reverse: bool = False,
) -> list[str]:
    """The sample ids of one epoch, from (sample_id, dds) rows. Shared by `curate schedule` and the trainer.

    Args:
        frame: columns sample_id and dds (usable rows only).
        epoch: 0-based epoch index; epoch 0 returns every row.
        num_epochs: E.
        seed: schedule seed; each epoch draws with its own generator seeded by (seed, epoch).
        reverse: the ablation that prioritises low-DDS rows instead.

    Returns:
        Selected ids, D_high draws first then D_low draws, each in dds order (training shuffles within an epoch).
    """
    ordered = frame.sort(["dds", "sample_id"], descending=[not reverse, False])
    ids = ordered["sample_id"].to_list()
    n = len(ids)
    size = epoch_size(epoch, num_epochs, n, decay)
    if size >= n:
        return ids
    high, low = ids[:size], ids[size:]
    from_low = min(len(low), size - _round_half_up((1 - tau) * size))
    from_high = size - from_low
    rng = np.random.default_rng([seed, epoch])
    pick_high = np.sort(rng.choice(len(high), size=from_high, replace=False))
    pick_low = np.sort(rng.choice(len(low), size=from_low, replace=False))
    return [high[i] for i in pick_high] + [low[i] for i in pick_low]


def selection_params(params: dict[str, Any]) -> dict[str, Any]:
    """The subset of a manifest's DA-KD params that `select_epoch` takes (for the trainer's dynamic mode)."""
    return {"decay": params.get("decay", "cosine"), "tau": params.get("tau", 0.1), "reverse": params.get("reverse", False)}


def build(frame: pl.DataFrame, config: DAKDConfig, seed: int, reverse: bool = False) -> list[Epoch]:
    return [
        Epoch(select_epoch(frame, e, config.epochs, seed, config.decay, config.tau, reverse), stage=0,
              temperature=config.temperature, kd_weight=config.kd_weight, loss="bdl",
              loss_params={"lambda": config.lam}, rescore=config.dynamic and e > 0)
        for e in range(config.epochs)
    ]
