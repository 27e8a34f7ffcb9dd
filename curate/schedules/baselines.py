"""Baselines: `full` (every usable row, every epoch) and `random` (random subsets: DA-KD's "w/o DDS" ablation).

`random` takes its per-epoch sizes from a fixed size or fraction, or from another schedule's manifest, so that an
ablation sees exactly as many samples per epoch as the method it is compared with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .common import Epoch, ScheduleError, check_loss, check_range


@dataclass(frozen=True)
class FullConfig:
    epochs: int = 20  # MiniLLM/SpectrumKD baselines train 20 epochs
    temperature: float = 1.0
    kd_weight: float = 1.0
    loss: str = "kld"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ScheduleError("parameter epochs must be >= 1")
        check_range("kd_weight", self.kd_weight, 0.0, 1.0)
        check_loss(self.loss, {})

    def columns(self) -> list[str]:
        return []


@dataclass(frozen=True)
class RandomConfig:
    epochs: int = 10
    fraction: float | None = None
    size: int | None = None
    sizes_from: str | None = None  # another schedule directory
    temperature: float = 1.0
    kd_weight: float = 1.0
    loss: str = "kld"

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.fraction, self.size, self.sizes_from)]
        if sum(given) != 1:
            raise ScheduleError("method random needs exactly one of --fraction, --size, --sizes-from")
        if self.fraction is not None:
            check_range("fraction", self.fraction, 0.0, 1.0)
        if self.size is not None and self.size < 1:
            raise ScheduleError("parameter size must be >= 1")
        check_range("kd_weight", self.kd_weight, 0.0, 1.0)
        check_loss(self.loss, {})

    def columns(self) -> list[str]:
        return []

    def sizes(self, n: int) -> list[int]:
        if self.sizes_from is not None:
            path = Path(self.sizes_from) / "manifest.json"
            if not path.exists():
                raise ScheduleError(f"parameter sizes_from: {path} does not exist")
            return [e["num_samples"] for e in json.loads(path.read_text())["epochs"]]
        size = self.size if self.size is not None else max(1, round(self.fraction * n))
        return [size] * self.epochs


def build_full(frame: pl.DataFrame, config: FullConfig) -> list[Epoch]:
    ids = frame.sort("sample_id")["sample_id"].to_list()
    return [Epoch(list(ids), stage=0, temperature=config.temperature, kd_weight=config.kd_weight, loss=config.loss)
            for _ in range(config.epochs)]


def build_random(frame: pl.DataFrame, config: RandomConfig, seed: int) -> list[Epoch]:
    ids = frame.sort("sample_id")["sample_id"].to_list()
    epochs = []
    for e, size in enumerate(config.sizes(len(ids))):
        if size > len(ids):
            raise ScheduleError(f"epoch {e + 1} asks for {size} samples but the table has {len(ids)} usable rows")
        pick = np.sort(np.random.default_rng([seed, e]).choice(len(ids), size=size, replace=False))
        epochs.append(Epoch([ids[i] for i in pick], stage=0, temperature=config.temperature,
                            kd_weight=config.kd_weight, loss=config.loss))
    return epochs
