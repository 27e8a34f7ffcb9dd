"""L2M-KD, least-to-most staged KD (l2m-kd.txt, section 3.2, Algorithm 1, appendix 9.2).

Rank by rouge_l descending (ties by student_ce ascending, the paper's "supplemented by the cross-entropy"), cut
into n = 4 subsets of floor(N/n) or floor(N/n)+1 samples with the remainder to the easiest subsets first, and
train stage i on subsets 1..i (Baby Step) for p = 2 epochs. Per stage i (1-based):
  alpha_i = alpha * (i-1)/(n-1)                          (Eq. 6: skew of the skew KL; alpha = 0.1, 0.15 best in 9.2)
  beta_i  = beta_1 - (beta_1 - beta_n) * (i-1)/(n-1)     (Eq. 7: KD ratio, 0.7 -> 1.0; total (1-beta) CE + beta KD)
Stage 1 thus trains with plain KL (skew 0). The manifest stores loss "skl" with {"skew": alpha_i} and
kd_weight = beta_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .common import Epoch, ScheduleError, check_range, ladder, split_sizes


@dataclass(frozen=True)
class L2MConfig:
    stages: int = 4
    epochs_per_stage: int = 2
    alpha: float = 0.1
    beta1: float = 0.7
    betan: float = 1.0
    temperature: float = 1.0
    restart_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.stages < 1 or self.epochs_per_stage < 1:
            raise ScheduleError("parameters stages and epochs_per_stage must be >= 1")
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("beta1", self.beta1, 0.0, 1.0)
        check_range("betan", self.betan, 0.0, 1.0)
        if self.temperature <= 0:
            raise ScheduleError("parameter temperature must be > 0")

    def columns(self) -> list[str]:
        return ["rouge_l", "student_ce"]


def subsets(frame: pl.DataFrame, stages: int) -> list[list[str]]:
    ranked = frame.sort(["rouge_l", "student_ce", "sample_id"], descending=[True, False, False])
    if ranked.height < stages:
        raise ScheduleError(f"{ranked.height} usable rows cannot fill {stages} stages")
    ids = ranked["sample_id"].to_list()
    out, start = [], 0
    for size in split_sizes(len(ids), stages):
        out.append(ids[start : start + size])
        start += size
    return out


def build(frame: pl.DataFrame, config: L2MConfig, reverse: bool = False) -> list[Epoch]:
    parts = subsets(frame, config.stages)
    if reverse:
        parts = parts[::-1]
    epochs: list[Epoch] = []
    seen: list[str] = []
    for stage, part in enumerate(parts):
        seen = seen + part
        skew = ladder(0.0, config.alpha, stage, config.stages)
        beta = ladder(config.beta1, config.betan, stage, config.stages)
        for p in range(config.epochs_per_stage):
            epochs.append(Epoch(list(seen), stage=stage, temperature=config.temperature, kd_weight=beta, loss="skl",
                                loss_params={"skew": skew},
                                restart_optimizer=config.restart_optimizer and p == 0 and stage > 0))
    return epochs
