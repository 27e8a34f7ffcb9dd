"""SpectrumKD ("SpectrumKD: Dynamic Dataset Curation for Distribution-Aware Knowledge
Distillation of Large Language Models", sections 3.2-3.3, Algorithm 1): difficulty zones and a sliding window.

Sort by difficulty ascending into s_1..s_N: the student's CE of the ground truth summed over its tokens by default
(3.2: L_i = -log q(y_i|x_i), a sequence log-likelihood; `ce_reduction="mean"` ranks by the per-token mean),
rouge_l (descending) as an option. Zones: Early i <= la N; Continuous up to M; Late up to (1 - lb) N; Excluded
beyond (never trained on), where la = `early_share` and lb = `excluded_share` (the paper's lambda_a, lambda_b).
Window size M = (1 - la - lb) N (see Counts). Epochs 1..k+1 (k warm-up epochs, then the first window: Algorithm 1's
`i <= k + 1`) train on s_1..s_M; the remaining n-k-1 epochs slide the window right so that its summed difficulty
td rises by about Delta_avg = (td(last) - td(first)) / (n-k-1) per epoch, the last window ending at (1 - lb) N.
Temperature tau_j = tau_1 + (tau_n - tau_1)(j-1)/(n-1) over all n epochs (`temperature_first`, `temperature_last`);
the paper's SFT weight alpha = 0.3 is `kd_weight` = 1 - alpha = 0.7.

Choices (docs/methods.md):
- Counts: e1 = floor(la N), E = floor((1 - lb) N) and M = E - e1, which is floor((1 - la - lb) N) or one more.
  Then |Late| = |Early|, so the first window is exactly Early + Continuous and the last exactly Continuous + Late
  (3.3: M is "matching the union of Early and Continuous zones"; 3.1: training ends on "a subset composed solely
  of Continuous and Late-stage instances"), and every Continuous sample is in every epoch (section 1: they "are
  retained throughout training"). With M = floor((1 - la - lb) N), the floors can make Late one longer than
  Early (N = 997: Early ends at s_99, the last window starts at s_101), and s_{e1+1}, a Continuous sample, would
  miss the last epoch.
- `step="adaptive"` (default) puts window j where td is closest to td(first) + j Delta_avg (a cumulative
  target), so every increment is within one position's td change of Delta_avg and the last window ends exactly
  at (1 - lb) N. Algorithm 1's inner loop (`while Delta <= ave.DL: t += 1`) always overshoots, its drift adds up
  and the window reaches the end early: that literal loop is `step="greedy"` (clamped at the end of the curated
  spectrum). `step="linear"` is the paper's "linear step" ablation (equal index steps).
- `--reverse` is the paper's reverse sliding (RS): warm up on the hardest curated window, then slide left over
  the same positions; the Excluded zone stays excluded and the temperature still rises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from syllabus.core.schedule import EpochPlan

from .common import CE_REDUCTIONS, Epoch, ce_columns, difficulty_of, floor_count, ladder, reduce_ce, round_half_up
from .config import (
    ScheduleError,
    check_at_least,
    check_choice,
    check_loss,
    check_positive,
    check_range,
    resolve_loss_params,
)

STEPS = ("adaptive", "greedy", "linear")
DIFFICULTY_COLUMNS = ("student_ce", "rouge_l", "output_ce", "dds", "teacher_ce")


@dataclass(frozen=True)
class SpectrumConfig:
    """SpectrumKD parameters; defaults from the paper (section 4 and appendix C, GPT-2 setting)."""

    epochs: int = 25  # n: baselines train 20 epochs; SpectrumKD uses 80% of the data per epoch, so 25
    warmup_epochs: int = 5  # k
    early_share: float = 0.1  # lambda_a: share of the Early zone
    excluded_share: float = 0.1  # lambda_b: share of the Excluded zone (never trained on)
    difficulty: str = "student_ce"  # the spectrum's metric (rouge_l is ranked descending)
    ce_reduction: str = "sum"  # a CE summed over its tokens (3.2's L_i) or averaged; rouge_l, dds: no effect
    step: str = "adaptive"  # adaptive, greedy (Algorithm 1 literal) or linear window steps
    temperature_first: float = 1.0  # tau of epoch 1
    temperature_last: float = 2.0  # tau of epoch n
    kd_weight: float = 0.7  # 1 - alpha, Eq. 7's SFT weight alpha = 0.3 (off-policy KD)
    loss: str = "kld"  # SpectrumKD is a plug-in over a base KD loss; KLD is its main baseline
    loss_params: dict[str, float] = field(default_factory=dict)  # the loss's parameters: skew, beta, lambda

    def __post_init__(self) -> None:
        check_range("early_share", self.early_share, 0.0, 1.0)
        check_range("excluded_share", self.excluded_share, 0.0, 1.0)
        if 2 * self.early_share + self.excluded_share > 1 + 1e-12:
            raise ScheduleError(
                "parameters early_share, excluded_share: SpectrumKD needs 2*early_share + excluded_share <= 1 (the "
                f"Early zone must fit inside the window), got 2*{self.early_share} + {self.excluded_share} = "
                f"{2 * self.early_share + self.excluded_share:g}"
            )
        check_at_least("epochs", self.epochs, 1)
        check_at_least("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ScheduleError(
                f"parameter warmup_epochs must be < epochs ({self.epochs}), got {self.warmup_epochs}"
            )
        check_choice("difficulty", self.difficulty, DIFFICULTY_COLUMNS)
        check_choice("ce_reduction", self.ce_reduction, CE_REDUCTIONS)
        check_choice("step", self.step, STEPS)
        check_positive("temperature_first", self.temperature_first)
        check_positive("temperature_last", self.temperature_last)
        check_range("kd_weight", self.kd_weight, 0.0, 1.0)
        check_loss(self.loss, self.loss_params)

    def columns(self) -> list[str]:
        return ce_columns(self.difficulty, self.ce_reduction)


def zone_bounds(n: int, early_share: float, excluded_share: float) -> tuple[int, int, int]:
    """Ends of the Early, Continuous and Late zones as counts (s_1..e1, ..e2, ..e3); Excluded is e3+1..N.

    e1 = floor(la N) and e3 = floor((1 - lb) N), the end of the curated spectrum D'_ds, as 3.2 bounds them; e2 is
    also the window size M, taken as e3 - e1 (floor((1 - la - lb) N) or one more) so that the Late zone is as long
    as the Early zone: the window then ends on Continuous + Late, and no Continuous sample misses an epoch.
    """
    early, end = floor_count(early_share, n), floor_count(1 - excluded_share, n)
    return early, end - early, end


def window_starts(difficulty: np.ndarray, m: int, end: int, slides: int, step: str) -> list[int]:
    """0-based start of the window in each of the `slides` epochs after the first window (n - k - 1 of them).

    Args:
        difficulty: ascending difficulty of s_1..s_N (only the first `end` are eligible).
        m: window size M.
        end: end of the curated spectrum, (1 - lb) N (exclusive, 0-based).
        slides: number of epochs after the first window.
        step: adaptive, greedy or linear (see the module docstring).

    Returns:
        Non-decreasing starts; the last one is end - m (the window ends at (1 - lb) N).
    """
    last = end - m
    if slides <= 0:
        return []
    if step == "linear":
        return [round_half_up(last * j / slides) for j in range(1, slides + 1)]
    prefix = np.concatenate([[0.0], np.cumsum(difficulty[:end], dtype=np.float64)])
    td = prefix[m : end + 1] - prefix[: last + 1]  # td[t]: summed difficulty of the window starting at t
    avg = (td[last] - td[0]) / slides  # Delta_avg
    if step == "greedy":
        return _greedy_starts(difficulty, m, last, slides, avg)
    targets = td[0] + avg * np.arange(1, slides + 1)
    right = np.clip(np.searchsorted(td, targets, side="left"), 0, last)  # first start with td >= target
    left = np.maximum(right - 1, 0)
    # Nearest of the two neighbours, the smaller start on a tie; td is non-decreasing, so this is monotone.
    starts = np.where(np.abs(td[left] - targets) <= np.abs(td[right] - targets), left, right)
    starts = np.maximum.accumulate(starts)
    starts[-1] = last  # exact, whatever float rounding did to the last target
    return [int(s) for s in starts]


def _greedy_starts(difficulty: np.ndarray, m: int, last: int, slides: int, avg: float) -> list[int]:
    """Algorithm 1, lines 12-17, literally: slide while the accumulated rise is <= Delta_avg (clamped at `last`)."""
    starts, t = [], 0
    for _ in range(slides):
        delta = 0.0
        while delta <= avg and t < last:
            delta += difficulty[m + t] - difficulty[t]  # s_{M+t} enters, s_t leaves (1-based in the paper)
            t += 1
        starts.append(t)
    starts[-1] = last  # the loop overshoots, so it is already there unless Delta_avg was 0
    return starts


def build(frame: pl.DataFrame, config: SpectrumConfig, seed: int = 0, reverse: bool = False) -> list[Epoch]:
    """The SpectrumKD epochs for the usable rows of a table (columns sample_id and `config.columns()`).

    Deterministic: `seed` is unused (no random draw).

    Raises:
        ScheduleError: early_share, excluded_share leave an empty window for this many rows.
    """
    frame = reduce_ce(frame, config.difficulty, config.ce_reduction)
    ordered = frame.with_columns(_difficulty=difficulty_of(config.difficulty, frame[config.difficulty])).sort(
        ["_difficulty", "sample_id"]  # ties by sample_id: the order never depends on the table's row order
    )
    ids, difficulty = ordered["sample_id"], ordered["_difficulty"].to_numpy()
    n = len(ids)
    _, m, end = zone_bounds(n, config.early_share, config.excluded_share)
    if m < 1:
        raise ScheduleError(
            f"parameters early_share={config.early_share}, excluded_share={config.excluded_share} leave an empty "
            f"window for {n} usable rows (M = floor((1 - excluded_share) N) - floor(early_share N) = 0); lower them or "
            "score more rows"
        )
    k = config.warmup_epochs
    positions = [0, *window_starts(difficulty, m, end, config.epochs - k - 1, config.step)]
    if reverse:
        positions = positions[::-1]  # start on the hardest curated window and slide left
    starts = [positions[0]] * k + positions
    windows: dict[int, pl.Series] = {}
    params = resolve_loss_params(config.loss, {}, config.loss_params)
    return [
        Epoch(
            windows.setdefault(s, ids.slice(s, m)),
            EpochPlan(
                stage=0,
                temperature=ladder(config.temperature_first, config.temperature_last, j, config.epochs),
                kd_weight=config.kd_weight,
                loss=config.loss,
                loss_params=params,
            ),
        )
        for j, s in enumerate(starts)
    ]
