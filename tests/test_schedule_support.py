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
    return pl.DataFrame({
        "sample_id": ids,
        "prompt": ["p"] * n,
        "response": ["r"] * n,
        "student_ce": student_ce,
        "teacher_ce": teacher_ce,
        "dds": student_ce / teacher_ce,
        "rouge_l": rouge_l,
        "output_ce": output_ce,
        "status": ["ok"] * n,
    })


def write(tmp_path, frame: pl.DataFrame, name: str = "table") -> Table:
    return write_table(frame, tmp_path / name, {"kind": "difficulty_table"})


def ids_of(epoch) -> list[str]:
    return epoch.sample_ids.to_list()
