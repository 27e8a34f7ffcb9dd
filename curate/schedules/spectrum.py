"""SpectrumKD (spectrumkd.txt, sections 3.2-3.3, Algorithm 1): difficulty zones and a sliding window.

Sort by difficulty ascending (student_ce by default; rouge_l, descending, as an option) into s_1..s_N. Zones:
Early i <= la N; Continuous up to (1 - la - lb) N; Late up to (1 - lb) N; Excluded beyond (never trained on).
Window size M = (1 - la - lb) N. Epochs 1..k+1 (k warm-up epochs, then the first window) train on s_1..s_M; the
remaining n-k-1 epochs slide the window right so that its summed difficulty td rises by about
Delta_avg = (td(last) - td(first)) / (n-k-1) per epoch, the last window ending at (1 - lb) N.

Choice (documented in docs/methods.md): Algorithm 1's inner loop ("while Delta <= ave.DL: t += 1") overshoots the
target every epoch, so its drift accumulates and the window can reach the end early. `step="adaptive"` (default)
instead places window j at the position whose td is closest to td(first) + j * Delta_avg: every increment is as
close to Delta_avg as the data allows and the last window ends exactly at (1 - lb) N. `step="greedy"` is the literal
loop (clamped at the end of the curated spectrum), `step="linear"` the paper's "linear step" ablation (equal index
steps). Temperature is linear from tau0 to taun over all n epochs; SFT weight 0.3 => kd_weight 0.7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .common import Epoch, ScheduleError, check_loss, check_range, ladder, sort_by

STEPS = ("adaptive", "greedy", "linear")


@dataclass(frozen=True)
class SpectrumConfig:
    epochs: int = 25  # the paper: 25 epochs (baseline 20), the first 5 warm-up
    warmup_epochs: int = 5
    la: float = 0.1
    lb: float = 0.1
    difficulty: str = "student_ce"  # or "rouge_l" (ranked descending: high ROUGE-L = easy)
    step: str = "adaptive"
    tau0: float = 1.0
    taun: float = 2.0
    sft_weight: float = 0.3
    loss: str = "kld"

    def __post_init__(self) -> None:
        check_range("la", self.la, 0.0, 1.0)
        check_range("lb", self.lb, 0.0, 1.0)
        if 2 * self.la + self.lb > 1:
            raise ScheduleError(f"parameters la, lb: SpectrumKD needs 2*la + lb <= 1, got {2 * self.la + self.lb:.3f}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs < self.epochs:
            raise ScheduleError(f"parameters epochs, warmup_epochs: need epochs >= 1 and 0 <= warmup_epochs < epochs")
        if self.step not in STEPS:
            raise ScheduleError(f"parameter step must be one of {', '.join(STEPS)}")
        if self.difficulty not in ("student_ce", "rouge_l", "dds", "teacher_ce", "output_ce"):
            raise ScheduleError(f"parameter difficulty: unsupported column {self.difficulty!r}")
        check_range("sft_weight", self.sft_weight, 0.0, 1.0)
        check_loss(self.loss, {})

    def columns(self) -> list[str]:
        return [self.difficulty]


def zone_bounds(n: int, la: float, lb: float) -> tuple[int, int, int]:
    """(end of Early, end of Continuous, end of Late) as counts: zones are s_1..e1, ..e2, ..e3; Excluded after e3."""
    return int(np.floor(la * n)), int(np.floor((1 - la - lb) * n)), int(np.floor((1 - lb) * n))


def window_starts(difficulty: np.ndarray, m: int, end: int, slides: int, step: str) -> list[int]:
    """0-based start of the window for each of the `slides` post-warm-up epochs after the first window.

    Args:
        difficulty: ascending difficulty of the spectrum s_1..s_N (only the first `end` are eligible).
        m: window size. end: last eligible index (exclusive), (1 - lb) N. slides: n - k - 1.
    """
    last = end - m
    if slides <= 0:
        return []
    if step == "linear":
        return [round(last * j / slides) for j in range(1, slides + 1)]
    prefix = np.concatenate([[0.0], np.cumsum(difficulty[:end], dtype=np.float64)])
    td = prefix[m : end + 1] - prefix[: last + 1]  # td[t] = summed difficulty of window starting at t
    avg = (td[last] - td[0]) / slides
    starts: list[int] = []
    if step == "greedy":  # Algorithm 1, lines 12-17, clamped at the end of the curated spectrum
        t = 0
        for _ in range(slides):
            delta = 0.0
            while delta <= avg and t < last:
                delta += difficulty[m + t] - difficulty[t]
                t += 1
            starts.append(t)
        starts[-1] = last
        return starts
    previous = 0
    for j in range(1, slides + 1):
        target = td[0] + j * avg
        k = int(np.searchsorted(td, target))  # td is non-decreasing: first start reaching the target
        candidates = [c for c in (k - 1, k) if previous <= c <= last]
        best = min(candidates, key=lambda c: (abs(td[c] - target), c)) if candidates else previous
        starts.append(best)
        previous = best
    starts[-1] = last
    return starts


def build(frame: pl.DataFrame, config: SpectrumConfig, reverse: bool = False) -> list[Epoch]:
    """The SpectrumKD epochs for the usable rows of a table.

    `reverse` is the paper's reverse-sliding ablation: the same windows, visited from hard to easy.
    """
    descending = config.difficulty == "rouge_l"  # high ROUGE-L is easy
    ordered = sort_by(frame, config.difficulty, descending)
    ids = ordered["sample_id"].to_list()
    difficulty = ordered[config.difficulty].cast(pl.Float64).to_numpy()
    if descending:
        difficulty = -difficulty  # ascending difficulty for the window arithmetic
    n = len(ids)
    _, m, end = zone_bounds(n, config.la, config.lb)
    if m < 1:
        raise ScheduleError(f"parameters la, lb leave an empty window for {n} rows")
    slides = config.epochs - config.warmup_epochs - 1
    starts = [0] * (config.warmup_epochs + 1) + window_starts(difficulty, m, end, slides, config.step)
    if reverse:
        starts = starts[::-1]
    return [
        Epoch(ids[s : s + m], stage=0, temperature=ladder(config.tau0, config.taun, j, config.epochs),
              kd_weight=1 - config.sft_weight, loss=config.loss)
        for j, s in enumerate(starts)
    ]
