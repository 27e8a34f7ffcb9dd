"""What a top-K teacher cache costs and saves, through the real commands: the scoring pass with and without it, the
cache's bytes per token, and training steps with the cached teacher against the live one.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_teacher_cache.py --rows 128 --k 8 32 128 --repeats 2 \
        --steps 12 --out benchmarks/results/teacher_cache.json

On the embedded pair (teacher SmolLM2-135M-Instruct, bf16; the pruned student) and the first `--rows` Dolly rows:

- scoring: `curate score --student none` (the teacher-forcing pass alone, transformers engine) without a cache and
  with `--teacher-topk K`, each into a fresh directory, the variants interleaved `--repeats` times; the pass's
  seconds come from the table's `pass_stats` (the fastest repeat of each: a shared machine only ever slows a run).
- bytes per token: the cache's size on disk over its response tokens (cache.json).
- training: `train run` on the full-data schedule of that table, `--teacher cached` against `--teacher default-teacher`,
  same seed and steps (micro-batch 8, bf16); tokens/s is the median of the steps after the first (metrics.jsonl),
  peak memory the child process's maximum resident set size.

Every command runs in its own process, one after the other: pin the benchmark to one core and compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BIN = Path(sys.executable).parent


# Runs a command and prints its peak RSS (KiB): a fresh parent per command, so that no earlier child's peak counts.
PEAK = "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)"


def run(command: list[str]) -> tuple[float, int]:
    """Run a console script; return its wall seconds and its peak resident set size in bytes."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, str(BIN / command[0]), *command[1:]], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--train-k", type=int, default=32, help="the cache K of the training comparison")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the scoring variants")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from syllabus.core.models import prepare_default_models
    from syllabus.curate.data import EMBEDDED

    prepare_default_models()
    rows = [json.loads(line) for line in EMBEDDED["dolly_dev_1000"].read_text().splitlines()[: args.rows]]
    result: dict = {"rows": args.rows, "threads": os.environ.get("OMP_NUM_THREADS"), "scoring": {}, "training": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        seconds: dict[int, list[float]] = {k: [] for k in [0, *args.k]}
        for repeat in range(args.repeats):
            for k in seconds:
                out = root / (f"table-k{k}" if repeat == 0 else f"table-k{k}-{repeat}")  # fresh: no resume
                run(["curate", "score", str(data), "--out", str(out), "--student", "none", "--teacher-topk", str(k),
                     "--ce-engine", "hf", "--quiet"])
                seconds[k].append(json.loads((out / "metadata.json").read_text())["pass_stats"]["teacher-ce"]["seconds"])
        for k, times in seconds.items():
            out = root / f"table-k{k}"
            stats = json.loads((out / "metadata.json").read_text())["pass_stats"]["teacher-ce"]
            entry = {"seconds": min(times), "all_seconds": times,
                     "tokens_per_second": round(stats["tokens"] / min(times), 1)}
            if k:
                cache = json.loads((out / "teacher-topk" / "cache.json").read_text())
                entry |= {"bytes_per_token": cache["bytes_per_token"], "response_tokens": cache["response_tokens"],
                          "overhead": round(min(times) / result["scoring"]["0"]["seconds"] - 1, 3)}
            result["scoring"][str(k)] = entry
            print(f"scoring, K={k}: {entry}", flush=True)
        table = root / f"table-k{args.train_k}"
        manifest = root / "schedule"
        run(["curate", "schedule", str(table), "--out", str(manifest), "--method", "full", "-p", "epochs=1"])
        for teacher in ("cached", "default"):
            out = root / f"run-{teacher}"
            _, peak = run(["train", "run", "--manifest", str(manifest), "--out", str(out), "--teacher", teacher,
                           "--max-steps", str(args.steps), "--seed", "0"])
            steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            result["training"][teacher] = {
                "tokens_per_second": round(statistics.median(s["tokens_per_second"] for s in steps[1:]), 1),
                "peak_rss_mib": round(peak / 2**20), "first_step_kd": round(steps[0]["kd"], 4)}
            print(f"training, teacher {teacher}: {result['training'][teacher]}", flush=True)
    cached, live = result["training"]["cached"], result["training"]["default"]
    result["training"]["speedup"] = round(cached["tokens_per_second"] / live["tokens_per_second"], 2)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
