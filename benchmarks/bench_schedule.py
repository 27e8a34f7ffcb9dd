"""Benchmark `curate schedule` on a synthetic difficulty table (default 1,000,000 rows), every method.

    HF_HUB_OFFLINE=1 python benchmarks/bench_schedule.py --rows 1000000

Times `build_schedule` end to end with each method's paper defaults: read the table's columns, rank, select,
write every shard and the manifest. Writing the synthetic table itself is not timed. The results are printed
(and written as JSON with --out); docs/benchmarks-schedule.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from syllabus.core.table import write_table
from syllabus.curate.schedules.build import build_schedule

CASES = {
    "spectrum": {},  # 25 epochs of 0.8 N
    "srd": {},  # 3 stages x 8 epochs
    "l2m": {},  # 4 stages x 2 epochs
    "dakd": {},  # 10 epochs, cosine
    "full": {},  # 20 epochs of N
    "random": {"fraction": 0.5},  # 10 epochs of 0.5 N
}


def synthetic_frame(n: int, seed: int = 0) -> pl.DataFrame:
    """Difficulty-table columns with the shapes seen on real data: log-normal CEs, ROUGE-L in [0, 1]."""
    rng = np.random.default_rng(seed)
    student_ce, teacher_ce = rng.lognormal(1.0, 0.4, n), rng.lognormal(0.5, 0.3, n)
    ids = pl.Series("sample_id", rng.integers(0, 2**63, n, dtype=np.int64)).cast(pl.String).str.zfill(19)
    return pl.DataFrame({
        "sample_id": ids, "student_ce": student_ce, "teacher_ce": teacher_ce, "dds": student_ce / teacher_ce,
        "rouge_l": rng.uniform(0, 1, n), "output_ce": rng.lognormal(0.0, 0.5, n), "status": ["ok"] * n,
    }).unique("sample_id", keep="first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--methods", nargs="*", default=list(CASES))
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    frame = synthetic_frame(args.rows)
    results: dict = {"rows": frame.height, "cpus": os.cpu_count(), "python": platform.python_version(),
                     "polars": pl.__version__, "seconds": {}, "samples_written": {}}
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(frame, Path(tmp) / "table", {"kind": "synthetic"})
        for method in args.methods:
            t0 = time.perf_counter()
            out, _ = build_schedule(table.path, method, Path(tmp) / method, CASES[method])
            seconds = time.perf_counter() - t0
            manifest = json.loads((out / "manifest.json").read_text())
            results["seconds"][method] = round(seconds, 2)
            results["samples_written"][method] = manifest["total_samples"]
            print(f"{method:>8}: {seconds:6.2f} s, {manifest['num_epochs']} epochs, "
                  f"{manifest['total_samples']:,} sample ids written", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
