"""Benchmark one distillation step: Syllabus's trainer step against the peers' naive loop.

    python benchmarks/bench_train.py --batch 8 --seq-len 512 --out benchmarks/results/train.json

Embedded default pair (teacher SmolLM2-135M-Instruct, 15-layer pruned student), batch 8 x 512 tokens, all of them
scored, KL loss, AdamW step included. Each variant runs in its own process:

- syllabus: the trainer's code path (`DistillStudent` + `chunked_loss_sums`): bf16 autocast, teacher in bf16
  under no_grad, logits computed in 1,024-token chunks with closed-form per-chunk gradients (train/losses.py).
- naive: what DistiLLM/MiniLLM-style code does: full (B, T, V) logits for student and teacher, upcast to fp32,
  softmax/log-softmax over the whole vocabulary, same autocast and teacher dtype.

Memory: peak resident set size during the step minus the resident size just before it, sampled every 2 ms from
/proc/self/statm (torch's CPU allocator returns big blocks to the OS, so RSS tracks live tensors). Tokens/s: scored
tokens per second of wall time, median of the measured steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())


def run_variant(variant: str, batch: int, seq_len: int, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from syllabus.core.logits import logit_head
    from syllabus.core.models import prepare_default_models
    from syllabus.train.data import Batch
    from syllabus.train.losses import Objective
    from syllabus.train.losses_reference import kd_divergence
    from syllabus.train.student import DistillStudent

    teacher_dir, student_dir = prepare_default_models()
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16).eval().requires_grad_(False)
    wrapped = DistillStudent(student, chunk_tokens=1024)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    rows = torch.arange(batch).repeat_interleave(seq_len - 1)
    cols = torch.arange(seq_len - 1).repeat(batch)
    targets = ids[rows, cols + 1]
    data = Batch(ids, mask, None, rows, cols, targets)
    objective = Objective("kld", temperature=1.0, kd_weight=1.0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)

    def syllabus_step():
        with torch.no_grad(), autocast:
            t_hidden = teacher.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols]
        with autocast:
            sums = wrapped(data, objective, t_hidden, logit_head(teacher))
        (sums.loss_sum / targets.numel()).backward()

    def naive_step():
        with torch.no_grad(), autocast:
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V) fp32
        with autocast:
            s_logits = student(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V) fp32
        kd = kd_divergence("kld", s_logits[rows, cols], t_logits[rows, cols]).mean()
        kd.backward()

    step = syllabus_step if variant == "syllabus" else naive_step
    times, peaks = [], []
    for i in range(steps + 1):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - t0
        if i > 0:  # the first step warms up allocator and kernels
            times.append(seconds)
            peaks.append(mem.peak - mem.base)
    tokens = int(targets.numel())
    return {"tokens_per_step": tokens, "step_seconds": round(statistics.median(times), 2),
            "tokens_per_second": round(tokens / statistics.median(times), 1),
            "peak_step_memory_mb": round(max(peaks) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variant", choices=["syllabus", "naive"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on stdout
        print(json.dumps(run_variant(args.variant, args.batch, args.seq_len, args.steps)))
        return
    results = {"batch": args.batch, "seq_len": args.seq_len, "machine": {"cpus": os.cpu_count()}}
    for variant in ("syllabus", "naive"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--batch", str(args.batch),
                              "--seq-len", str(args.seq_len), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    results["memory_ratio"] = round(results["syllabus"]["peak_step_memory_mb"] / results["naive"]["peak_step_memory_mb"], 3)
    results["speed_ratio"] = round(results["syllabus"]["tokens_per_second"] / results["naive"]["tokens_per_second"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
