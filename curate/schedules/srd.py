"""SRD, Selective Reflection Distillation (Liu et al., "Less is More: Selective Reflection for Compatible and
Efficient Knowledge Distillation in Large Language Models", sections 3.2-3.3, Algorithm 1, appendix B.3).

Rank by rouge_l (descending: higher is easier) and by a CE column (ascending), ranks from 1, and fuse them with
reciprocal rank fusion f = 1/(k + r_rouge) + 1/(k + r_ce), k = 60 (higher f = easier). Keep the top
lambda = 0.75 (floor(lambda N) rows), cut them into n = 3 subsets of increasing difficulty whose sizes differ by
at most one, and train stage i on the union of subsets 1..i (Baby Step) for p epochs. Per stage (1-based i):
tau_i = tau_1 + (tau_n - tau_1)(i-1)/(n-1) (1 -> 2) and SFT ratio
alpha_i = alpha_0 - (alpha_0 - alpha_n)(i-1)/(n-1) (0.3 -> 0.1), given as kd_weight = 1 - alpha_i:
`kd_weight_first` 0.7 -> `kd_weight_last` 0.9. The optimizer and LR schedule restart at each stage.

Choices (docs/methods.md):
- CE column: Eq. 4 ranks by the CE of the student's own output (`output_ce`); the reference code uses the CE of
  the ground truth (`student_ce`). `ce_column` selects; the default follows the paper.
- CE reduction: Eq. 4 (appendix A) is a sum over the output's tokens, L_ce = -sum_i log q(y_i|x, y_<i), so
  `ce_reduction="sum"` (default) ranks by the table's per-token mean times its token count; "mean" ranks by the
  mean. A sum ranks long outputs as harder, so the two give different curricula.
- alpha_0 = 0.3: Algorithm 1 initialises "tau_0 = 1, alpha_0 = 1", but section 4 and B.3.3 (off-policy KD) both
  decay alpha "from alpha_0=0.3 to alpha_n=0.1", and Table 5's "Standard" is "alpha from 0.3 to 0.1"; we read
  Algorithm 1's 1 as a typo.
- p = 8 epochs per stage: B.3.1 trains "8 epochs per curriculum stage" for 60% of a 20-epoch baseline's steps,
  and 8 x (1/3 + 2/3 + 3/3) x 0.75 N = 12 N = 60% of 20 N checks out.
- Ties in a ranking get consecutive ranks in sample_id order (`rank_ties="ordinal"`, what ranking a sorted list
  does); `rank_ties="min"` gives tied rows the same (best) rank, as TREC's RRF does with equal scores.
- `--reverse` is Table 5's "Reverse" (hard-to-easy order): the subsets enter hardest first; the temperature and
  SFT ladders keep their direction (Table 5 ablates those separately: set temperature_first/_last or
  kd_weight_first/_last).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from syllabus.core.schedule import EpochPlan

from .common import (
    CE_REDUCTIONS,
    Epoch,
    ce_columns,
    cumulative_stages,
    cut,
    floor_count,
    ladder,
    reduce_ce,
    split_sizes,
)
from .config import (
    ScheduleError,
    check_at_least,
    check_choice,
    check_loss,
    check_positive,
    check_range,
    resolve_loss_params,
)

CE_COLUMNS = ("output_ce", "student_ce")
RANK_TIES = ("ordinal", "min")


@dataclass(frozen=True)
class SRDConfig:
    """SRD parameters; defaults from appendix B.3 (instruction following)."""

    stages: int = 3  # n: baby-step stages, the kept rows cut easy to hard into n parts, each stage adding one
    epochs_per_stage: int = 8  # p: epochs of each stage (the total is n * p)
    keep_share: float = 0.75  # lambda: share of the rows kept (the easiest by fused rank)
    rrf_k: int = 60  # reciprocal rank fusion constant
    ce_column: str = "output_ce"  # output_ce (paper, Eq. 4) or student_ce (reference code)
    ce_reduction: str = "sum"  # the CE's sum over its tokens (Eq. 4) or its per-token mean
    rank_ties: str = "ordinal"  # ordinal or min
    temperature_first: float = 1.0  # tau of stage 1
    temperature_last: float = 2.0  # tau of stage n
    # alpha_0 = 0.3 as in section 4 and B.3.3 ("linearly decayed from alpha_0=0.3 to alpha_n=0.1"), not Algorithm 1's
    # "alpha_0 = 1" (docs/methods.md, deviations).
    kd_weight_first: float = 0.7  # 1 - alpha_0 (SFT ratio 0.3, off-policy KD)
    kd_weight_last: float = 0.9  # 1 - alpha_n (SFT ratio 0.1)
    restart_optimizer: bool = True  # restart optimizer + LR schedule per stage (reference code)
    loss: str = "kld"  # SRD is a plug-in over a base KD loss; its main tables use KLD
    loss_params: dict[str, float] = field(default_factory=dict)  # the loss's parameters: skew, beta, lambda

    def __post_init__(self) -> None:
        check_at_least("stages", self.stages, 1)
        check_at_least("epochs_per_stage", self.epochs_per_stage, 1)
        check_range("keep_share", self.keep_share, 0.0, 1.0)
        check_at_least("rrf_k", self.rrf_k, 0)
        check_choice("ce_column", self.ce_column, CE_COLUMNS)
        check_choice("ce_reduction", self.ce_reduction, CE_REDUCTIONS)
        check_choice("rank_ties", self.rank_ties, RANK_TIES)
        check_positive("temperature_first", self.temperature_first)
        check_positive("temperature_last", self.temperature_last)
        check_range("kd_weight_first", self.kd_weight_first, 0.0, 1.0)
        check_range("kd_weight_last", self.kd_weight_last, 0.0, 1.0)
        check_loss(self.loss, self.loss_params)

    def columns(self) -> list[str]:
        return ["rouge_l", *ce_columns(self.ce_column, self.ce_reduction)]


def rrf_scores(frame: pl.DataFrame, ce_column: str, k: int = 60, ties: str = "ordinal") -> pl.DataFrame:
    """Adds r_rouge, r_ce (ranks from 1) and the fused score f; returned sorted easiest first (f descending).

    Args:
        frame: sample_id, rouge_l and `ce_column`.
        ce_column: output_ce (paper) or student_ce (reference code).
        k: the RRF constant.
        ties: "ordinal" (ties in sample_id order) or "min" (ties share the best rank).
    """
    if ties == "min":
        ranked = frame.with_columns(
            r_rouge=pl.col("rouge_l").rank(method="min", descending=True).cast(pl.Int64),
            r_ce=pl.col(ce_column).rank(method="min").cast(pl.Int64),
        )
    else:  # ordinal: the position in the list sorted by the metric, ties by sample_id
        ranked = (
            frame.sort(["rouge_l", "sample_id"], descending=[True, False]).with_row_index("r_rouge", offset=1)
            .sort([ce_column, "sample_id"]).with_row_index("r_ce", offset=1)
            .with_columns(pl.col("r_rouge").cast(pl.Int64), pl.col("r_ce").cast(pl.Int64))
        )
    fused = ranked.with_columns(f=1.0 / (k + pl.col("r_rouge")) + 1.0 / (k + pl.col("r_ce")))
    return fused.sort(["f", "sample_id"], descending=[True, False])


def subsets(frame: pl.DataFrame, config: SRDConfig) -> list[pl.Series]:
    """The n subsets of increasing difficulty, after keeping the top floor(keep_share * N) rows by fused score.

    `frame` holds sample_id and `config.columns()`; the CE is ranked summed or averaged as `config.ce_reduction` says.

    Raises:
        ScheduleError: fewer kept rows than stages.
    """
    frame = reduce_ce(frame, config.ce_column, config.ce_reduction)
    ranked = rrf_scores(frame, config.ce_column, config.rrf_k, config.rank_ties)
    kept = floor_count(config.keep_share, ranked.height)
    if kept < config.stages:
        raise ScheduleError(
            f"parameter keep_share: keep_share={config.keep_share} of {ranked.height} usable rows leaves {kept} "
            f"rows for {config.stages} stages; raise keep_share or lower stages"
        )
    return cut(ranked["sample_id"].head(kept), split_sizes(kept, config.stages))


def build(frame: pl.DataFrame, config: SRDConfig, seed: int = 0, reverse: bool = False) -> list[Epoch]:
    """Baby-step epochs with the per-stage temperature and SFT ladders (columns sample_id and `config.columns()`).

    Deterministic: `seed` is unused (no random draw).
    """
    parts = subsets(frame, config)
    if reverse:
        parts = parts[::-1]
    params = resolve_loss_params(config.loss, {}, config.loss_params)
    epochs = []
    for stage, ids in enumerate(cumulative_stages(parts)):
        for p in range(config.epochs_per_stage):
            epochs.append(Epoch(ids, EpochPlan(
                stage=stage,
                temperature=ladder(config.temperature_first, config.temperature_last, stage, config.stages),
                kd_weight=ladder(config.kd_weight_first, config.kd_weight_last, stage, config.stages),
                loss=config.loss,
                loss_params=params,
                restart_optimizer=config.restart_optimizer and p == 0 and stage > 0,
            )))
    return epochs
