"""Benchmark `curate schedule` on a synthetic 1,000,000-row difficulty table, every method.

    python benchmarks/bench_schedule.py --rows 1000000

Times `build_schedule` end to end (read the table, rank, select, write every shard and the manifest).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from syllabus.curate.schedules.build import build_schedule
from syllabus.curate.table import write_table

CASES = {
    "spectrum": {"epochs": 25, "warmup_epochs": 5},
    "srd": {},
    "l2m": {},
    "dakd": {"epochs": 10},
    "full": {"epochs": 20},
    "random": {"epochs": 10, "fraction": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/schedule.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows
    student_ce, teacher_ce = rng.lognormal(1.0, 0.4, n), rng.lognormal(0.5, 0.3, n)
    frame = pl.DataFrame({
        "sample_id": [f"{i:016x}" for i in range(n)], "student_ce": student_ce, "teacher_ce": teacher_ce,
        "dds": student_ce / teacher_ce, "rouge_l": rng.uniform(0, 1, n), "output_ce": rng.lognormal(0, 0.5, n),
        "status": ["ok"] * n,
    })
    results = {"rows": n}
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(frame, Path(tmp) / "table", {"kind": "synthetic"})
        for method, params in CASES.items():
            t0 = time.perf_counter()
            build_schedule(table.path, method, Path(tmp) / method, params)
            results[method] = round(time.perf_counter() - t0, 2)
            print(f"{method}: {results[method]} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
