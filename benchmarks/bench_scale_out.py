"""Scoring on Ray replicas against the local backend: the teacher CE pass of the embedded teacher over Dolly rows.

    python benchmarks/bench_scale_out.py --rows 128 --out benchmarks/results/scale_out.json

Four runs of `curate score --student none` (the teacher pass alone, transformers bf16, parts of 16 rows), each in a
fresh output directory, the engine start included:

    local-1   the local backend on one thread          (a replica's share of this 2-core machine)
    ray-1     --backend ray --replicas 1, one CPU      (the same work through Ray: its overhead)
    local-2   the local backend on two threads         (what one process makes of the whole machine)
    ray-2     --backend ray --replicas 2, one CPU each (scaling by replicas)

Run it on an otherwise idle machine: the ratios are only meaningful when no other work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import write_result


def run(data: Path, out: Path, teacher: Path, backend: str, replicas: int | None) -> dict:
    from syllabus.core.table import read_table
    from syllabus.curate.score import ScoreConfig, score

    config = ScoreConfig(data=str(data), out=str(out), student=None, teacher=str(teacher), ce_engine="hf",
                         part_size=16, backend=backend, replicas=replicas)
    start = time.perf_counter()
    score(config, progress=False)
    seconds = time.perf_counter() - start
    stats = read_table(out).metadata["pass_stats"]["teacher-ce"]
    return {"seconds": round(seconds, 1), "tokens": stats["tokens"],
            "tokens_per_second": round(stats["tokens"] / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from syllabus.core.models import prepare_default_models
    from syllabus.curate.data import EMBEDDED

    teacher, _ = prepare_default_models()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        lines = Path(EMBEDDED["dolly_dev_1000"]).read_text().splitlines()[: args.rows]
        data.write_text("\n".join(lines) + "\n")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[f"local-{threads}"] = run(data, Path(tmp) / f"local-{threads}", teacher, "local", None)
            ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
            try:
                results[f"ray-{threads}"] = run(data, Path(tmp) / f"ray-{threads}", teacher, "ray", threads)
            finally:
                ray.shutdown()
            print(json.dumps(results))
    base = results["ray-1"]["tokens_per_second"]
    result = {"rows": args.rows, "runs": results,
              "ray_overhead": round(results["local-1"]["tokens_per_second"] / base, 2),
              "replica_scaling_2": round(results["ray-2"]["tokens_per_second"] / base, 2),
              "ray_2_over_local_2": round(results["ray-2"]["tokens_per_second"]
                                          / results["local-2"]["tokens_per_second"], 2),
              "load_avg_at_end": os.getloadavg()}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
