"""Benchmark an on-policy step (`train run --on-policy gkd`) against the off-policy step on the same rows, and
against TRL's GKDTrainer at lambda 0.5 on the same pair, rows, micro-batch and generation length.

    python benchmarks/bench_on_policy.py --rows 64 --steps 8 --max-new-tokens 64 --out benchmarks/results/on_policy.json

Embedded default pair (teacher SmolLM2-135M-Instruct, pruned student), the first `rows` rows of dolly_dev_1000 under
the Alpaca template, micro-batch 8, grad_accum 1, bf16 autocast, the teacher live. Each variant runs in its own
process, after one warm-up step (not counted):

- off: `train run` as it is, jsd (beta 0.1) at kd_weight 1, the ground truth for every sample.
- gkd: `train run --on-policy gkd --on-policy-engine transformers`: 4 of each step's 8 samples on responses the
  student samples (transformers `generate` on the model being trained, at most `max_new_tokens`), the same loss.
- gkd-vllm: the same with `--on-policy-engine vllm`: vLLM in the training process, handed the student's weights
  before every step's generation (`--on-policy-sync-every 1`); the load is timed apart (`weight_sync`, inside
  `generation`), and the engine's start falls in the warm-up step.
- trl: TRL's `GKDTrainer` (lmbda 0.5, beta 0.5, temperature 1, the same max_new_tokens, bf16, per-device batch 8):
  one coin per step decides whether all 8 samples are generated; its rows are the same prompts and responses as
  chat messages (TRL formats them with the tokenizer's chat template).

Syllabus steps are split into generation, teacher forward, optimizer step and the rest (the student's forward and
backward with the chunked loss), by timing those functions in the child process. A table of the rows is written
with dummy scores (the schedule is `full`: no score is read).
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from common import write_result  # noqa: E402

MICRO_BATCH = 8
MAX_SEQ_LEN = 512


def dolly_rows(limit: int) -> tuple[list[tuple[str, str]], object]:
    """(prompt, response) of the first `limit` dolly_dev_1000 rows that fit MAX_SEQ_LEN under the Alpaca template,
    and the tokenizer."""
    from transformers import AutoTokenizer

    from syllabus.core.models import prepare_default_models
    from syllabus.core.tokens import encode_pair
    from syllabus.curate.data import EMBEDDED, PRESETS, load_samples

    _, student_dir = prepare_default_models()
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    samples = load_samples(str(EMBEDDED["dolly_dev_1000"]), PRESETS["minillm"], "alpaca", tokenizer, "train").samples
    fits = [s for s in samples if encode_pair(tokenizer, s.prompt, s.response, MAX_SEQ_LEN).status == "ok"]
    return [(s.prompt, s.response) for s in fits[:limit]], tokenizer


def write_inputs(work: Path, limit: int) -> Path:
    """A difficulty table of the rows (dummy scores) and its `full` schedule of one epoch; returns the schedule."""
    import polars as pl

    from syllabus.core.table import write_table
    from syllabus.core.tokens import encode_pair
    from syllabus.curate.data import make_sample_id
    from syllabus.curate.schedules.build import build_schedule

    rows, tokenizer = dolly_rows(limit)
    encoded = [encode_pair(tokenizer, p, r, MAX_SEQ_LEN) for p, r in rows]
    frame = pl.DataFrame({
        "sample_id": [make_sample_id(p, r) for p, r in rows], "prompt": [p for p, _ in rows],
        "response": [r for _, r in rows], "prompt_tokens": [len(e.prompt_ids) for e in encoded],
        "response_tokens": [len(e.response_ids) for e in encoded], "student_ce": [1.0] * len(rows),
        "teacher_ce": [1.0] * len(rows), "dds": [1.0] * len(rows), "status": ["ok"] * len(rows),
    })
    table = write_table(frame, work / "table", {"kind": "difficulty_table", "template": "alpaca",
                                                 "config": {"max_seq_len": MAX_SEQ_LEN, "truncate": False}})
    schedule, _ = build_schedule(table.path, "full", work / "schedule", {"epochs": 1})
    return schedule


class Timer:
    """Wall seconds spent in wrapped functions, per optimizer step."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def wrap(self, owner: object, name: str, part: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[part] = self.current.get(part, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)


def run_syllabus(variant: str, work: Path, steps: int, max_new_tokens: int) -> dict:
    import torch

    from syllabus.train import loop
    from syllabus.train.config import TrainConfig
    from syllabus.train.metrics import MetricsLog

    timer, records = Timer(), []
    timer.wrap(loop, "student_responses", "generation")
    timer.wrap(loop, "teacher_states", "teacher")
    timer.wrap(torch.optim.AdamW, "step", "optimizer")
    if variant.endswith("vllm"):
        from syllabus.core.engines.vllm_engine import VLLMEngine

        timer.wrap(VLLMEngine, "load_weights", "weight_sync")
    write = MetricsLog.write

    def record(self, entry, main_process):  # a step is done: its parts are the ones timed since the last
        records.append({**entry, **{f"{k}_seconds": v for k, v in timer.current.items()}})
        timer.current = {}
        write(self, entry, main_process)

    MetricsLog.write = record
    extra = {"on_policy": "gkd", "on_policy_share": 0.5, "on_policy_max_new_tokens": max_new_tokens,
             "on_policy_engine": "vllm" if variant == "gkd-vllm" else "transformers"} \
        if variant.startswith("gkd") else {"loss": "jsd", "loss_params": {"beta": 0.1}, "kd_weight": 1.0}
    loop.train(TrainConfig(manifest=str(work / "schedule"), out=str(work / f"run-{variant}"),
                           micro_batch_size=MICRO_BATCH, max_steps=steps + 1, precision="bf16", lr=1e-5,
                           save_every_steps=10_000, overwrite=True, **extra))
    measured = records[1:]  # the first step warms up kernels and the allocator
    step = [r["tokens"] / r["tokens_per_second"] for r in measured]
    parts = {part: statistics.mean(r.get(f"{part}_seconds", 0.0) for r in measured)
             for part in ("generation", "teacher", "optimizer")}
    parts["student"] = statistics.mean(step) - sum(parts.values())
    sync = {"weight_sync_seconds": round(statistics.mean(r.get("weight_sync_seconds", 0.0) for r in measured), 3)} \
        if variant.endswith("vllm") else {}
    return {"step_seconds": round(statistics.mean(step), 3), "steps": len(measured),
            "parts_seconds": {k: round(v, 3) for k, v in parts.items()}, **sync,
            "warm_up_step_seconds": round(records[0]["tokens"] / records[0]["tokens_per_second"], 3),
            "generated_tokens_per_step": statistics.mean(r.get("generated_tokens", 0) for r in measured),
            "tokens_per_step": statistics.mean(r["tokens"] for r in measured)}


def run_trl(work: Path, steps: int, max_new_tokens: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from syllabus.core.models import prepare_default_models

    teacher_dir, student_dir = prepare_default_models()
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    rows, _ = dolly_rows(MICRO_BATCH * (steps + 1))
    data = Dataset.from_list([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
                              for p, r in rows])
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16)
    generation = {"seconds": 0.0, "calls": 0}
    original = GKDTrainer.generate_on_policy_outputs

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            generation["seconds"] += time.perf_counter() - t0
            generation["calls"] += 1

    GKDTrainer.generate_on_policy_outputs = staticmethod(timed) if isinstance(
        GKDTrainer.__dict__["generate_on_policy_outputs"], staticmethod) else timed

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[tuple[float, int]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.calls = time.perf_counter(), generation["calls"]

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((time.perf_counter() - self.t0, generation["calls"] - self.calls))

    steps_cb = Steps()
    config = GKDConfig(output_dir=str(work / "trl"), per_device_train_batch_size=MICRO_BATCH, max_steps=steps + 1,
                       lmbda=0.5, beta=0.5, temperature=1.0, max_new_tokens=max_new_tokens, max_length=MAX_SEQ_LEN,
                       bf16=True, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                       learning_rate=1e-5, seed=0, dataloader_num_workers=0)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data,
                         processing_class=tokenizer, callbacks=[steps_cb])
    trainer.train()
    measured = steps_cb.times[1:]
    generating = [t for t, calls in measured if calls]
    ground = [t for t, calls in measured if not calls]
    return {"step_seconds": round(statistics.mean(t for t, _ in measured), 3), "steps": len(measured),
            "generating_steps": len(generating),
            "generating_step_seconds": round(statistics.mean(generating), 3) if generating else None,
            "ground_truth_step_seconds": round(statistics.mean(ground), 3) if ground else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=72, help="rows of the schedule (>= micro-batch x (steps + 1))")
    parser.add_argument("--steps", type=int, default=8, help="measured steps (after one warm-up step)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--variants", default="off,gkd,gkd-vllm,trl")
    parser.add_argument("--variant", choices=["off", "gkd", "gkd-vllm", "trl"])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/on_policy.json"))
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on its last line
        run = run_trl if args.variant == "trl" else lambda *a: run_syllabus(args.variant, *a)
        print(json.dumps(run(args.work, args.steps, args.max_new_tokens)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_inputs(work, args.rows)
        result = {"rows": args.rows, "micro_batch": MICRO_BATCH, "max_new_tokens": args.max_new_tokens,
                  "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}}
        for variant in args.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--work", str(work), "--steps",
                                  str(args.steps), "--max-new-tokens", str(args.max_new_tokens)],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
            result[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(variant, result[variant], flush=True)
    for variant in ("gkd", "gkd-vllm"):
        if "off" in result and variant in result:
            result[f"{variant}_over_off"] = round(result[variant]["step_seconds"] / result["off"]["step_seconds"], 2)
    if "gkd" in result and "gkd-vllm" in result:
        result["vllm_generation_speedup"] = round(result["gkd"]["parts_seconds"]["generation"]
                                                  / result["gkd-vllm"]["parts_seconds"]["generation"], 2)
    if "trl" in result and "gkd" in result:
        result["trl_over_gkd"] = round(result["trl"]["step_seconds"] / result["gkd"]["step_seconds"], 2)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
