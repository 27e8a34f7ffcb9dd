"""Shared builders for the `curate schedule` tests (imported by the test_schedule_* modules; holds no tests)."""

from __future__ import annotations

import numpy as np
import polars as pl

from syllabus.core.table import Table, write_table


def make_frame(n: int, seed: int = 0, ties: bool = False) -> pl.DataFrame:
    """A difficulty table's score columns for n rows; `ties` rounds every metric so that many rows tie."""
    rng = np.random.default_rng(seed)
    student_ce = rng.lognormal(1.0, 0.4, n)
    teacher_ce = rng.lognormal(0.5, 0.3, n)
    rouge_l = rng.uniform(0, 1, n)
    output_ce = rng.lognormal(0.0, 0.5, n)
    if ties:
        student_ce, teacher_ce = np.round(student_ce, 0) + 1, np.round(teacher_ce, 0) + 1
        rouge_l, output_ce = np.round(rouge_l, 1), np.round(output_ce, 0)
    ids = [f"{x:016x}" for x in rng.permutation(n) * 7919 + 13]  # unique, in no relation to the scores
    # Token counts the CE means are over (a summed CE is mean x count); drawn last so the columns above keep values.
    response_tokens, output_tokens = rng.integers(1, 300, n), rng.integers(1, 64, n)
    return pl.DataFrame({
        "sample_id": ids,
        "prompt": ["p"] * n,
        "response": ["r"] * n,
        "response_tokens": response_tokens,
        "student_ce": student_ce,
        "teacher_ce": teacher_ce,
        "dds": student_ce / teacher_ce,
        "rouge_l": rouge_l,
        "output_ce": output_ce,
        "output_tokens": output_tokens,
        "status": ["ok"] * n,
    })


def summed(frame: pl.DataFrame, column: str) -> list[float]:
    """A CE column summed over its tokens, computed here independently of the schedules' own helper."""
    count = {"student_ce": "response_tokens", "teacher_ce": "response_tokens", "output_ce": "output_tokens"}[column]
    return [mean * tokens for mean, tokens in zip(frame[column], frame[count])]


def write(tmp_path, frame: pl.DataFrame, name: str = "table") -> Table:
    return write_table(frame, tmp_path / name, {"kind": "difficulty_table"})


def ids_of(epoch) -> list[str]:
    return epoch.sample_ids.to_list()
