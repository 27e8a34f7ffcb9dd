"""L2M-KD, least-to-most staged KD (Zhang et al., "Staged Knowledge Distillation Through Least-to-Most
Prompting", section 3.2, Algorithm 1, appendix 9.2).

Rank by rouge_l descending, ties by student_ce ascending (3.2.1: "supplemented by the cross-entropy loss with
respect to the ground-truth response"), cut into n = 4 subsets of floor(N/n) or floor(N/n)+1 samples with the
remainder to the easiest subsets first, and train stage i on subsets 1..i (Baby Step) for p = 2 epochs.
Per stage i (1-based):
  alpha_i = alpha * (i-1)/(n-1)                          Eq. 6: skew of the skew KL, alpha = `skew_last` = 0.1
  beta_i  = beta_1 - (beta_1 - beta_n) * (i-1)/(n-1)     Eq. 7: KD ratio 0.7 -> 1.0 (`kd_weight_first`, `_last`);
                                                         total (1-beta) CE + beta KD
so stage 1 trains with plain KL (skew 0). The manifest stores loss "skl" with {"skew": alpha_i} and
kd_weight = beta_i.

Choices (docs/methods.md):
- The tie-break CE is summed over the response's tokens (`ce_reduction="sum"`): the paper's only "cross-entropy
  loss" is Eq. 1's L_ce = -sum_i log q(y_i|x, y_<i). It reorders only rows whose rouge_l ties.
- alpha = 0.1 (section 3.2 and Algorithm 1); 9.2 and Table 4 report 0.15 as best: pass -p skew_last=0.15.
- p = 2 epochs per stage (9.2: "8 epochs across its four stages"; the same paragraph also says "5 per stage").
- Optimizer restart per stage: 9.2 starts each stage "using the previous stage's checkpoint for initialization",
  i.e. a new training run (with its own linear LR schedule and warm-up), so restart_optimizer defaults to true.
- `--reverse` orders the subsets hard to easy; `loss_order="m2l"` is Table 3's most-to-least variant (skew from
  alpha down to 0); the two are separate ablations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from syllabus.core.schedule import EpochPlan

from .common import CE_REDUCTIONS, Epoch, ce_columns, cumulative_stages, cut, ladder, reduce_ce, split_sizes
from .config import (
    ScheduleError,
    check_at_least,
    check_choice,
    check_loss,
    check_positive,
    check_range,
    resolve_loss_params,
)

LOSS_ORDERS = ("l2m", "m2l")
TIE_COLUMNS = ("student_ce", "output_ce", "none")


@dataclass(frozen=True)
class L2MConfig:
    """L2M-KD parameters; defaults from section 3.2 and appendix 9.2."""

    stages: int = 4  # n
    epochs_per_stage: int = 2  # p
    skew_last: float = 0.1  # alpha: the skew of stage n (Eq. 6); stage 1 is plain KL
    kd_weight_first: float = 0.7  # beta_1: KD ratio of stage 1 (Eq. 7)
    kd_weight_last: float = 1.0  # beta_n: KD ratio of stage n
    loss_order: str = "l2m"  # m2l: skew ladder reversed (Table 3)
    tie_column: str = "student_ce"  # breaks rouge_l ties; "none": ties by sample_id only
    ce_reduction: str = "sum"  # the tie CE's sum over its tokens (Eq. 1's L_ce) or its per-token mean
    temperature: float = 1.0  # fixed temperature
    restart_optimizer: bool = True  # restart optimizer + LR schedule per stage
    loss: str = "skl"  # Eq. 6 is the skew KL with a per-stage skew
    loss_params: dict[str, float] = field(default_factory=dict)  # the loss's parameters: skew, beta, lambda

    def __post_init__(self) -> None:
        check_at_least("stages", self.stages, 1)
        check_at_least("epochs_per_stage", self.epochs_per_stage, 1)
        check_range("skew_last", self.skew_last, 0.0, 1.0)
        check_range("kd_weight_first", self.kd_weight_first, 0.0, 1.0)
        check_range("kd_weight_last", self.kd_weight_last, 0.0, 1.0)
        check_choice("loss_order", self.loss_order, LOSS_ORDERS)
        check_choice("tie_column", self.tie_column, TIE_COLUMNS)
        check_choice("ce_reduction", self.ce_reduction, CE_REDUCTIONS)
        check_positive("temperature", self.temperature)
        check_loss(self.loss, self.loss_params)
        if "skew" in self.loss_params:
            raise ScheduleError("parameter loss_params.skew: L2M-KD sets the skew per stage (Eq. 6); use skew_last")

    def columns(self) -> list[str]:
        return ["rouge_l"] + ([] if self.tie_column == "none" else ce_columns(self.tie_column, self.ce_reduction))


def subsets(frame: pl.DataFrame, config: L2MConfig) -> list[pl.Series]:
    """The n subsets, easiest first: rouge_l descending, then the tie column ascending (summed or averaged as
    `config.ce_reduction` says), then sample_id. `frame` holds sample_id and `config.columns()`.

    Raises:
        ScheduleError: fewer rows than stages.
    """
    stages, tie_column = config.stages, config.tie_column
    if frame.height < stages:
        raise ScheduleError(f"parameter stages: {stages} stages need at least {stages} usable rows, got {frame.height}")
    if tie_column != "none":
        frame = reduce_ce(frame, tie_column, config.ce_reduction)
    keys = ["rouge_l"] + ([] if tie_column == "none" else [tie_column]) + ["sample_id"]
    descending = [True] + ([] if tie_column == "none" else [False]) + [False]
    ids = frame.sort(keys, descending=descending)["sample_id"]
    return cut(ids, split_sizes(frame.height, stages))


def build(frame: pl.DataFrame, config: L2MConfig, seed: int = 0, reverse: bool = False) -> list[Epoch]:
    """Baby-step epochs with Eq. 6 (skew alpha_i) and Eq. 7 (kd_weight beta_i) per stage (`seed` is unused)."""
    parts = subsets(frame, config)
    if reverse:
        parts = parts[::-1]
    epochs = []
    for stage, ids in enumerate(cumulative_stages(parts)):
        skew_step = stage if config.loss_order == "l2m" else config.stages - 1 - stage
        skew = ladder(0.0, config.skew_last, skew_step, config.stages)
        params = resolve_loss_params(config.loss, {"skew": skew}, config.loss_params)
        for p in range(config.epochs_per_stage):
            epochs.append(Epoch(ids, EpochPlan(
                stage=stage,
                temperature=config.temperature,
                kd_weight=ladder(config.kd_weight_first, config.kd_weight_last, stage, config.stages),
                loss=config.loss,
                loss_params=params,
                restart_optimizer=config.restart_optimizer and p == 0 and stage > 0,
            )))
    return epochs
