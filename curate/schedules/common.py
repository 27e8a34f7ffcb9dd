"""What every schedule shares: the epoch record, the usable rows of a table, counting and ladder arithmetic."""

from __future__ import annotations

import math
from typing import NamedTuple

import polars as pl

from syllabus.core.schedule import EpochPlan, ScheduleError

# Relative tolerance for turning a fraction of N into a count: (1 - 0.15 - 0.05) * 20 is 15.999999999999998 in
# floats, and the papers' "i <= 0.8 N" means 16 there.
_COUNT_EPS = 1e-9


class Epoch(NamedTuple):
    """One epoch of a schedule: its samples in training order, and how to train on them.

    Consecutive epochs over the same subset share one `sample_ids` Series (the writer serialises it once).
    """

    sample_ids: pl.Series  # String, unique
    plan: EpochPlan


def floor_count(fraction: float, n: int) -> int:
    """floor(fraction * n), robust to float error (the papers' index bounds `i <= fraction * N`)."""
    return int(math.floor(fraction * n * (1 + _COUNT_EPS) + _COUNT_EPS))


def round_half_up(x: float) -> int:
    """Nearest integer, halves up. Python's round() goes to even (round(2.5) == 2), which would make sizes of
    otherwise symmetric epochs differ for no reason."""
    return int(math.floor(x + 0.5))


def ladder(first: float, last: float, i: int, n: int) -> float:
    """Linear value at step i (0-based) of n: `first + (last - first) * (i-1)/(n-1)` with the papers' 1-based i.

    With a single step (n = 1) the papers' formula is 0/0; we take `first`.
    """
    return first if n <= 1 else first + (last - first) * i / (n - 1)


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous subsets that differ by at most one; the remainder goes to the first (easiest).

    L2M-KD 3.2.1 says so ("remainder distributed evenly ... starting from the easiest"); SRD only says
    "about lambda N / n or lambda N / n + 1", and we use the same rule.
    """
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def cumulative_stages(parts: list[pl.Series]) -> list[pl.Series]:
    """Baby Step (Bengio et al., 2009): stage i trains on the union of subsets 1..i, in that order."""
    out, seen = [], parts[0].clear()
    for part in parts:
        seen = pl.concat([seen, part])
        out.append(seen)
    return out


def cut(ids: pl.Series, sizes: list[int]) -> list[pl.Series]:
    """Consecutive slices of `ids` with the given sizes."""
    out, start = [], 0
    for size in sizes:
        out.append(ids.slice(start, size))
        start += size
    return out


# The token count each CE column of the table is a per-token mean over (docs/scoring.md): student_ce and teacher_ce
# over the ground-truth response (EOS included), output_ce over the student's own output.
CE_TOKEN_COUNTS = {"student_ce": "response_tokens", "teacher_ce": "response_tokens", "output_ce": "output_tokens"}
TOKEN_COUNT_COLUMNS = frozenset(CE_TOKEN_COUNTS.values())
# "sum": the papers' sequence CE, -sum_t log q(y_t | x, y_<t); "mean": the table's per-token mean.
CE_REDUCTIONS = ("sum", "mean")


def usable_rows(
    frame: pl.DataFrame, columns: list[str], method: str, where: str
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Rows a method can rank: status "ok", a finite value in each of `columns` and at least one token in each token
    count among them (a summed CE's). Excluded rows are counted.

    Args:
        frame: the table's rows (at least sample_id, status and `columns`).
        columns: the metrics the method ranks by.
        method: for messages.
        where: the table path, for messages.

    Returns:
        (sample_id + `columns` of the usable rows,
        {"status <reason>" | "null/NaN/inf <column>" | "<token count column> < 1": count}).

    Raises:
        ScheduleError: a column is missing (named, with what produces it), the table is empty, or no row is usable.
    """
    missing = [c for c in ["sample_id", *columns] if c not in frame.columns]
    if missing:
        raise ScheduleError(
            f"{where}: method {method} needs column(s) {', '.join(missing)}, which the table lacks. rouge_l, "
            "output_ce, output_tokens and student_ce come from `curate score` with a student; teacher_ce and dds "
            "need a teacher. A summed CE (-p ce_reduction=sum) needs the token counts response_tokens (student_ce, "
            "teacher_ce) or output_tokens (output_ce); -p ce_reduction=mean ranks by the stored means alone."
        )
    if frame.height == 0:
        raise ScheduleError(f"{where}: the table has no rows; score a dataset first (`curate score`)")
    excluded: dict[str, int] = {}
    if "status" in frame.columns:
        not_ok = frame.filter(pl.col("status").is_null() | (pl.col("status") != "ok"))
        for status, count in not_ok.group_by("status").len().sort("status").iter_rows():
            excluded[f"status {status}"] = count
        frame = frame.filter(pl.col("status") == "ok")
    for col in columns:
        values = frame[col].cast(pl.Float64)
        bad = values.is_null() | ~values.is_finite().fill_null(False)
        count = int(bad.sum())
        if count:
            excluded[f"null/NaN/inf {col}"] = count
            frame = frame.filter(~bad)
    for col in [c for c in columns if c in TOKEN_COUNT_COLUMNS]:
        empty = frame[col] < 1  # a CE summed over no token would rank the row as the easiest of all
        count = int(empty.sum())
        if count:
            excluded[f"{col} < 1"] = count
            frame = frame.filter(~empty)
    if frame.height == 0:
        raise ScheduleError(f"{where}: no usable row for method {method} (excluded: {excluded})")
    return frame.select("sample_id", *columns), excluded


# Metrics where a higher value means an easier sample (ROUGE-L of the student's output vs the reference).
HIGHER_IS_EASIER = ("rouge_l",)


def difficulty_of(column: str, values: pl.Series) -> pl.Series:
    """The metric as a difficulty (higher = harder): 1 - rouge_l (ROUGE-L distance), the others as they are."""
    values = values.cast(pl.Float64)
    return 1.0 - values if column in HIGHER_IS_EASIER else values


def is_summed(column: str, reduction: str) -> bool:
    """Whether ranking by `column` under `reduction` sums a CE over its tokens (a CE column, reduction "sum")."""
    return reduction == "sum" and column in CE_TOKEN_COUNTS


def ce_columns(column: str, reduction: str) -> list[str]:
    """The table columns a ranking by `column` reads: the column, and its token count when a CE is summed."""
    return [column, CE_TOKEN_COUNTS[column]] if is_summed(column, reduction) else [column]


def reduce_ce(frame: pl.DataFrame, column: str, reduction: str) -> pl.DataFrame:
    """`frame` with `column` as the method ranks it: a CE column's stored per-token mean, or its sum over the tokens.

    The sum is mean x token count: the mean was that sum divided by that count, so this is exact up to float
    rounding. One exception: with `curate score --num-samples k > 1`, output_ce is the mean of k per-sample means
    and output_tokens the first sample's length, so the product only approximates a per-sample sum
    (docs/methods.md). rouge_l and dds, and every column under "mean", pass unchanged (DDS is a ratio of two CEs
    over the same tokens: the same either way).
    """
    if not is_summed(column, reduction):
        return frame
    return frame.with_columns(pl.col(column).cast(pl.Float64) * pl.col(CE_TOKEN_COUNTS[column]).cast(pl.Float64))
