"""Baselines: `full` (every usable row, every epoch) and `random` (random subsets: DA-KD's "w/o DDS" ablation).

`random` takes its per-epoch sizes from a fixed size or fraction, or from another schedule (`sizes_from`), so that
an ablation sees exactly as many samples per epoch as the method it is compared with. With `sizes_from` it also
copies that schedule's per-epoch training settings (stage, temperature, kd_weight, loss and its parameters,
optimizer restarts), so that only the selection differs; explicit temperature / kd_weight / loss override them.
It never marks `rescore`: random selection does not look at difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from syllabus.core.schedule import EpochPlan, read_schedule

from .common import Epoch, floor_count
from .config import ScheduleError, check_at_least, check_loss, check_positive, check_range, resolve_loss_params

RANDOM_DEFAULT_EPOCHS = 10  # DA-KD's "w/o DDS" ablation trains 10 epochs


@dataclass(frozen=True)
class FullConfig:
    """Every usable row every epoch: the papers' baselines, and DA-KD's "w/o DiffUp" with --loss bdl."""

    epochs: int = 20  # the MiniLLM/DistiLLM protocol the papers compare with trains 20 epochs
    temperature: float = 1.0  # fixed temperature
    kd_weight: float = 1.0  # fixed KD weight
    loss: str = "kld"  # the papers' baselines use KLD
    loss_params: dict[str, float] = field(default_factory=dict)  # the loss's parameters: skew, beta, lambda

    def __post_init__(self) -> None:
        check_at_least("epochs", self.epochs, 1)
        check_positive("temperature", self.temperature)
        check_range("kd_weight", self.kd_weight, 0.0, 1.0)
        check_loss(self.loss, self.loss_params)

    def columns(self) -> list[str]:
        return []


@dataclass(frozen=True)
class RandomConfig:
    """Random subsets; exactly one of fraction, size, sizes_from sets the per-epoch sizes."""

    epochs: int | None = None  # default 10, or the number of epochs of `sizes_from`
    fraction: float | None = None
    size: int | None = None
    sizes_from: str | None = None  # another schedule directory
    temperature: float | None = None  # default 1.0, or per epoch from `sizes_from`
    kd_weight: float | None = None  # default 1.0, or per epoch from `sizes_from`
    loss: str | None = None  # default kld, or per epoch from `sizes_from`
    loss_params: dict[str, float] = field(default_factory=dict)  # the loss's parameters: skew, beta, lambda

    def __post_init__(self) -> None:
        given = [name for name in ("fraction", "size", "sizes_from") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ScheduleError(
                "method random needs exactly one of the parameters fraction, size, sizes_from "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.epochs is not None:
            check_at_least("epochs", self.epochs, 1)
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ScheduleError(f"parameter fraction must be in (0, 1], got {self.fraction}")
        if self.size is not None:
            check_at_least("size", self.size, 1)
        if self.temperature is not None:
            check_positive("temperature", self.temperature)
        if self.kd_weight is not None:
            check_range("kd_weight", self.kd_weight, 0.0, 1.0)
        if self.loss is not None or self.sizes_from is None:
            check_loss(self.loss or "kld", self.loss_params)

    def columns(self) -> list[str]:
        return []


def build_full(frame: pl.DataFrame, config: FullConfig, seed: int = 0, reverse: bool = False) -> list[Epoch]:
    """Every usable row in every epoch (in sample_id order; the trainer shuffles within an epoch).

    `seed` and `reverse` change nothing: there is no draw and no order to reverse.
    """
    ids = frame["sample_id"].sort()
    params = resolve_loss_params(config.loss, {}, config.loss_params)
    plan = EpochPlan(stage=0, temperature=config.temperature, kd_weight=config.kd_weight, loss=config.loss,
                     loss_params=params)
    return [Epoch(ids, plan) for _ in range(config.epochs)]


def _plans(config: RandomConfig, n: int) -> list[tuple[int, EpochPlan]]:
    """(size, training settings) per epoch, from the config or from `sizes_from`."""
    if config.sizes_from is None:
        size = config.size if config.size is not None else max(1, floor_count(config.fraction, n))
        if size > n:
            raise ScheduleError(f"parameter size: {size} samples per epoch, but the table has {n} usable rows")
        loss = config.loss or "kld"
        plan = EpochPlan(
            stage=0,
            temperature=1.0 if config.temperature is None else config.temperature,
            kd_weight=1.0 if config.kd_weight is None else config.kd_weight,
            loss=loss,
            loss_params=resolve_loss_params(loss, {}, config.loss_params),
        )
        return [(size, plan)] * (config.epochs or RANDOM_DEFAULT_EPOCHS)
    source = read_schedule(Path(config.sizes_from), check_shards=False)
    if config.epochs is not None and config.epochs != len(source.epochs):
        raise ScheduleError(
            f"parameter epochs: {config.epochs} given, but sizes_from {config.sizes_from} has "
            f"{len(source.epochs)} epochs"
        )
    out = []
    for e in source.epochs:
        if e.num_samples > n:
            raise ScheduleError(
                f"parameter sizes_from: epoch {e.index + 1} of {config.sizes_from} has {e.num_samples} samples, "
                f"but this table has {n} usable rows"
            )
        loss = config.loss or e.plan.loss
        given = config.loss_params if config.loss else {**e.plan.loss_params, **config.loss_params}
        check_loss(loss, given)
        out.append((e.num_samples, EpochPlan(
            stage=e.plan.stage,
            temperature=e.plan.temperature if config.temperature is None else config.temperature,
            kd_weight=e.plan.kd_weight if config.kd_weight is None else config.kd_weight,
            loss=loss,
            loss_params=resolve_loss_params(loss, {}, given),
            restart_optimizer=e.plan.restart_optimizer,
        )))
    return out


def build_random(frame: pl.DataFrame, config: RandomConfig, seed: int = 0, reverse: bool = False) -> list[Epoch]:
    """A uniform random subset per epoch (generator seeded by (seed, epoch)), in sample_id order.

    Raises:
        ScheduleError: an epoch larger than the usable rows, a `sizes_from` that is not a schedule, or `reverse`
            (random selection has no difficulty order to reverse).
    """
    if reverse:
        raise ScheduleError("--reverse has no meaning for method random (it does not order by difficulty)")
    ids = frame["sample_id"].sort()
    n = ids.len()
    epochs = []
    for e, (size, plan) in enumerate(_plans(config, n)):
        pick = np.sort(np.random.default_rng([seed, e]).choice(n, size=size, replace=False))
        epochs.append(Epoch(ids.gather(pick), plan))
    return epochs
