"""SRD, Selective Reflection Distillation (srd.txt, sections 3.2-3.3, Algorithm 1).

Rank by rouge_l (descending: higher is easier) and by a CE column (ascending), fuse with reciprocal rank fusion
f = 1/(k + r_rouge) + 1/(k + r_ce), k = 60, ranks from 1 (higher f = easier). Keep the top lambda = 0.75, cut
into n = 3 subsets of increasing difficulty whose sizes differ by at most one, and train stage i on the union of
subsets 1..i (Baby Step) for p epochs. Per stage, temperature 1 -> 2 and SFT weight 0.3 -> 0.1, linear in the
stage index. The optimizer and LR schedule restart at each stage (as the reference code does).

Choice: the paper's Eq. 4 ranks by the CE of the student's own output (`output_ce`); its reference code uses the
CE of the ground truth (`student_ce`). `ce_column` selects; the default follows the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .common import Epoch, ScheduleError, check_loss, check_range, ladder, ordinal_rank, split_sizes


@dataclass(frozen=True)
class SRDConfig:
    stages: int = 3
    epochs_per_stage: int = 4  # the paper trains 60% of a 20-epoch baseline: 3 stages x 4 epochs
    keep: float = 0.75  # lambda
    rrf_k: int = 60
    ce_column: str = "output_ce"
    tau0: float = 1.0
    taun: float = 2.0
    sft0: float = 0.3
    sftn: float = 0.1
    restart_optimizer: bool = True
    loss: str = "kld"

    def __post_init__(self) -> None:
        if self.stages < 1 or self.epochs_per_stage < 1:
            raise ScheduleError("parameters stages and epochs_per_stage must be >= 1")
        check_range("keep", self.keep, 0.0, 1.0)
        check_range("sft0", self.sft0, 0.0, 1.0)
        check_range("sftn", self.sftn, 0.0, 1.0)
        if self.rrf_k < 0:
            raise ScheduleError("parameter rrf_k must be >= 0")
        if self.ce_column not in ("output_ce", "student_ce"):
            raise ScheduleError("parameter ce_column must be output_ce (paper) or student_ce (reference code)")
        check_loss(self.loss, {})

    def columns(self) -> list[str]:
        return ["rouge_l", self.ce_column]


def rrf_scores(frame: pl.DataFrame, ce_column: str, k: int = 60) -> pl.DataFrame:
    """Adds r_rouge, r_ce (ordinal ranks from 1, ties by sample_id) and the fused score f; sorted easiest first."""
    ranked = frame.with_columns(
        r_rouge=ordinal_rank(frame, "rouge_l", descending=True),
        r_ce=ordinal_rank(frame, ce_column, descending=False),
    )
    fused = ranked.with_columns(f=1.0 / (k + pl.col("r_rouge")) + 1.0 / (k + pl.col("r_ce")))
    return fused.sort(["f", "sample_id"], descending=[True, False])


def subsets(frame: pl.DataFrame, config: SRDConfig) -> list[list[str]]:
    """The n subsets of increasing difficulty, after keeping the top `keep` fraction by fused score."""
    ranked = rrf_scores(frame, config.ce_column, config.rrf_k)
    kept = int(config.keep * ranked.height)
    if kept < config.stages:
        raise ScheduleError(f"keep={config.keep} of {ranked.height} rows leaves {kept} rows for {config.stages} stages")
    ids = ranked["sample_id"].to_list()[:kept]
    out, start = [], 0
    for size in split_sizes(kept, config.stages):
        out.append(ids[start : start + size])
        start += size
    return out


def build(frame: pl.DataFrame, config: SRDConfig, reverse: bool = False) -> list[Epoch]:
    """Baby-step epochs; `reverse` introduces the subsets hard to easy (the papers' reverse-curriculum ablation)."""
    parts = subsets(frame, config)
    if reverse:
        parts = parts[::-1]
    epochs: list[Epoch] = []
    seen: list[str] = []
    for stage, part in enumerate(parts):
        seen = seen + part
        for p in range(config.epochs_per_stage):
            epochs.append(Epoch(
                list(seen), stage=stage,
                temperature=ladder(config.tau0, config.taun, stage, config.stages),
                kd_weight=1 - ladder(config.sft0, config.sftn, stage, config.stages),
                loss=config.loss,
                restart_optimizer=config.restart_optimizer and p == 0 and stage > 0,
            ))
    return epochs
