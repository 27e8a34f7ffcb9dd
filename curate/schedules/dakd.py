"""DA-KD stratified data updating (He et al., "DA-KD: Difficulty-Aware Knowledge Distillation for Efficient
Large Language Models", ICML 2025, section 3.2, Eq. 2, Algorithm 1) with the BDL loss (Eq. 4).

Epoch e (0-based, e = 0..E-1) uses the selection ratio
    linear:  r = 1 - e/E            cosine (the paper's choice):  r = 0.5 cos(pi e / E) + 0.5      (Eq. 2)
and |epoch| = round_half_up(r N), at least 1. Sort by dds descending; D_high = the top |epoch| rows, D_low = the
rest; draw round_half_up((1 - tau)|D_high|) rows from D_high and the remaining ~tau|D_high| from D_low, uniformly
at random with a generator seeded by (seed, e); tau = `low_share` = 0.1 (the paper's data-mixing ratio). When D_low holds fewer rows than its share (r near 1),
D_high fills in. No sample appears twice in an epoch; epoch 0 is every row.

Why the epoch index is 0-based (docs/methods.md): read with e = 1..E, Eq. 2 empties the last epoch (r = 0) and
the sum of r over 10 epochs is 4.5, which would give 3,570 x 0.45 = 1,606 iterations; with e = 0..E-1 the first
epoch uses all data (as section 3.2 and Algorithm 1 say) and the sum is 5.5, i.e. 3,570 x 0.55 = 1,963.5:
Table 3's 1,963 iterations. (Linear decay sums to 5.5 as well, so Table 3 fixes the index, not the decay.)

The paper recomputes DDS with the current student before every epoch after the first (Algorithm 1, lines 2-6).
With `dynamic=true` (default) epochs 1..E-1 are marked `rescore`: the shards hold the selection from the table's
DDS, and the trainer reselects with `select_epoch` on fresh DDS values (student CE recomputed, teacher CE from the
table). `dynamic=false` trains on the shards as written (static DDS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from syllabus.core.schedule import EpochPlan

from .common import Epoch, round_half_up, usable_rows
from .config import (
    ScheduleError,
    check_at_least,
    check_choice,
    check_loss,
    check_positive,
    check_range,
    resolve_loss_params,
)

DECAYS = ("cosine", "linear")


@dataclass(frozen=True)
class DAKDConfig:
    """DA-KD parameters; defaults from section 4.1 (implementation details)."""

    epochs: int = 10  # E
    decay: str = "cosine"  # cosine (the paper's choice) or linear, Eq. 2
    low_share: float = 0.1  # tau: share of an epoch drawn from D_low (stratified sampling)
    dynamic: bool = True  # recompute DDS before every epoch after the first, as the paper does
    temperature: float = 1.0  # fixed temperature
    kd_weight: float = 1.0  # Algorithm 1 back-propagates BDL alone
    loss: str = "bdl"  # Eq. 4; lambda = 0.9 is the loss default
    loss_params: dict[str, float] = field(default_factory=dict)  # the loss's parameters: skew, beta, lambda

    def __post_init__(self) -> None:
        check_at_least("epochs", self.epochs, 1)
        check_choice("decay", self.decay, DECAYS)
        check_range("low_share", self.low_share, 0.0, 1.0)
        check_positive("temperature", self.temperature)
        check_range("kd_weight", self.kd_weight, 0.0, 1.0)
        check_loss(self.loss, self.loss_params)

    def columns(self) -> list[str]:
        return ["dds"]


def ratio(epoch: int, num_epochs: int, decay: str = "cosine") -> float:
    """Eq. 2 for a 0-based `epoch` in [0, num_epochs): 1 at epoch 0, never 0."""
    x = epoch / num_epochs
    return 1.0 - x if decay == "linear" else 0.5 * math.cos(math.pi * x) + 0.5


def epoch_size(epoch: int, num_epochs: int, n: int, decay: str = "cosine") -> int:
    """|epoch| = round_half_up(r N), clamped to [1, N] so that no epoch is empty."""
    return max(1, min(n, round_half_up(ratio(epoch, num_epochs, decay) * n)))


def stratum_counts(size: int, n: int, low_share: float) -> tuple[int, int]:
    """(rows drawn from D_high, rows drawn from D_low) for an epoch of `size` rows out of `n`.

    D_high has `size` rows and D_low n - size; when D_low is too small for its share, D_high fills in.
    """
    from_high = round_half_up((1.0 - low_share) * size)
    from_low = min(size - from_high, n - size)
    return size - from_low, from_low


def select_ordered(ordered: pl.Series, epoch: int, num_epochs: int, seed: int, decay: str = "cosine",
                   low_share: float = 0.1) -> pl.Series:
    """One epoch's sample ids from ids already sorted by priority (dds descending): see `select_epoch`."""
    n = ordered.len()
    size = epoch_size(epoch, num_epochs, n, decay)
    if size >= n:
        return ordered
    from_high, from_low = stratum_counts(size, n, low_share)
    rng = np.random.default_rng([seed, epoch])
    pick_high = np.sort(rng.choice(size, size=from_high, replace=False))
    pick_low = size + np.sort(rng.choice(n - size, size=from_low, replace=False))
    return ordered.gather(np.concatenate([pick_high, pick_low]))


def priority_order(frame: pl.DataFrame, reverse: bool = False) -> pl.Series:
    """sample_ids by dds descending (ascending with `reverse`, the low-DDS-first ablation), ties by sample_id.

    Raises:
        ScheduleError: no rows, or a dds that is null, NaN or infinite (named by sample_id).
    """
    if frame.height == 0:
        raise ScheduleError("DA-KD selection: no rows to select from")
    bad = frame.filter(~pl.col("dds").cast(pl.Float64).is_finite().fill_null(False))
    if bad.height:
        raise ScheduleError(
            f"DA-KD selection: dds is null, NaN or infinite for {bad.height} row(s) (first sample_id "
            f"{bad['sample_id'][0]}); drop them before selecting"
        )
    return frame.sort(["dds", "sample_id"], descending=[not reverse, False])["sample_id"]


def select_epoch(
    frame: pl.DataFrame,
    epoch: int,
    num_epochs: int,
    seed: int,
    decay: str = "cosine",
    low_share: float = 0.1,
    reverse: bool = False,
) -> list[str]:
    """The sample ids of one DA-KD epoch. Shared by `curate schedule` and the trainer's dynamic mode.

    Args:
        frame: columns sample_id and dds (usable rows only).
        epoch: 0-based epoch index; epoch 0 returns every row.
        num_epochs: E.
        seed: the schedule's seed; epoch e draws with a generator seeded by (seed, e).
        decay: cosine or linear (Eq. 2).
        low_share: share of the epoch drawn from D_low (the paper's tau).
        reverse: prioritise low dds instead (the reversed-priority ablation).

    Returns:
        The D_high draws then the D_low draws, each in priority order (the trainer shuffles within an epoch).

    Raises:
        ScheduleError: an epoch outside [0, num_epochs), bad decay or low_share, no rows, or a non-finite dds.
    """
    check_at_least("num_epochs", num_epochs, 1)
    if not 0 <= epoch < num_epochs:
        raise ScheduleError(f"DA-KD selection: epoch {epoch} is outside [0, {num_epochs})")
    check_choice("decay", decay, DECAYS)
    check_range("low_share", low_share, 0.0, 1.0)
    return select_ordered(priority_order(frame, reverse), epoch, num_epochs, seed, decay, low_share).to_list()


def selection_pool(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """The rows DA-KD selects from, as `curate schedule` finds them usable (status ok and a finite dds: a finite
    student CE and a teacher CE > 0); the trainer's dynamic mode re-selects from exactly these.

    Raises:
        ScheduleError: the table has no dds column, or no usable row.
    """
    usable, _ = usable_rows(frame, DAKDConfig().columns(), "dakd", where)
    return usable


def selection_params(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `select_epoch` held in a DA-KD manifest's "params" (for the trainer).

    Raises:
        ScheduleError: a key is missing (a manifest from another version: rebuild the schedule).
    """
    missing = [k for k in ("decay", "low_share", "reverse") if k not in params]
    if missing:
        raise ScheduleError(f"DA-KD manifest params lack {', '.join(missing)}; rebuild the schedule")
    return {"decay": params["decay"], "low_share": params["low_share"], "reverse": params["reverse"]}


def build(frame: pl.DataFrame, config: DAKDConfig, seed: int, reverse: bool = False) -> list[Epoch]:
    """The DA-KD epochs from the table's dds (columns sample_id and dds)."""
    ordered = priority_order(frame, reverse)
    params = resolve_loss_params(config.loss, {}, config.loss_params)
    return [
        Epoch(
            select_ordered(ordered, e, config.epochs, seed, config.decay, config.low_share),
            EpochPlan(
                stage=0,
                temperature=config.temperature,
                kd_weight=config.kd_weight,
                loss=config.loss,
                loss_params=params,
                rescore=config.dynamic and e > 0,
            ),
        )
        for e in range(config.epochs)
    ]
