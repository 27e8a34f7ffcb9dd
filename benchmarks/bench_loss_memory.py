"""Peak memory and time of one KD loss step: chunked (Syllabus) against naive full-vocabulary logits.

    python benchmarks/bench_loss_memory.py                       # kld, bf16 autocast, N = 8 x 512, V = 49152, H = 576
    python benchmarks/bench_loss_memory.py --loss bdl --precision fp32 --out benchmarks/results/loss_bdl_fp32.json

Figures and how to read them: docs/benchmarks-loss.md.

The "loss step" is forward + backward of the loss given final hidden states: student logits (with gradient),
teacher logits (no gradient), SFT cross-entropy and KD divergence over all N tokens, and the backward into the
student's hidden states and lm_head weight (its .grad is set to None before each step, as the optimizer's
zero_grad(set_to_none=True) leaves it). Shapes default to SmolLM2-135M (V = 49152, H = 576) at batch 8 x 512.
Student weights are fp32 (master weights), teacher weights bf16, as in `train run`.

Variants, each in its own fresh subprocess:
- distillm (kld only): DistiLLM's `forward_kl` verbatim over the model's full (N, V) logits (`F.softmax(...,
  dtype=float32)`, inf mask, cross-entropy form), with the temperature added as SRD/SpectrumKD do, plus the SFT
  cross-entropy: the naive baseline the peers run.
- naive: full (N, V) logits, `syllabus.train.losses_reference.loss_sums` (the tests' oracle: plain autograd).
- checkpoint: logits per chunk of tokens under torch.utils.checkpoint, recomputed in backward (the textbook way).
- chunked: `syllabus.train.losses.chunked_loss_sums`, the trainer's path.

Memory method: torch's CPU allocator takes memory from glibc, which serves every block above 32 MB with mmap and
returns it on free, so the process's resident set follows live tensors; tracemalloc sees none of it. Before a
measured step the worker resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0),
and after it reads VmHWM: peak = VmHWM - VmRSS at the reset, exact at page granularity, no sampling to miss a
short peak. Reported: the largest such delta over the measured steps. Time: median wall-clock per step after one
warm-up step. Threads: --threads (default: all cores); other load on the machine inflates the times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("distillm", "naive", "checkpoint", "chunked")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status: this benchmark needs Linux")


def _reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS; return that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from syllabus.train.losses import Objective, chunked_loss_sums
    from syllabus.train.losses_reference import loss_sums

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, v, h = args.batch * args.seq_len, args.vocab, args.hidden
    student_hidden = torch.randn(n, h, requires_grad=True)  # (N, H)
    student_head = torch.nn.Parameter(torch.randn(v, h) * h**-0.5)  # (V, H) fp32 master weight
    teacher_hidden = torch.randn(n, h).bfloat16()  # (N, H)
    teacher_head = (torch.randn(v, h) * h**-0.5).bfloat16()  # (V, H) bf16 teacher
    targets = torch.randint(0, v, (n,))
    settings = dict(loss=args.loss, temperature=2.0, kd_weight=0.7)
    objective = Objective(**settings)

    def distillm():  # DistiLLM's distillm/losses.py forward_kl, temperature added, and the SFT term
        logits = F.linear(student_hidden, student_head)  # (N, V)
        teacher_logits = F.linear(teacher_hidden, teacher_head)
        tau = settings["temperature"]
        sft = F.cross_entropy(logits.float(), targets, reduction="sum")
        teacher_probs = F.softmax(teacher_logits / tau, dim=-1, dtype=torch.float32)
        inf_mask = torch.isinf(logits)
        student_logprobs = F.log_softmax(logits / tau, dim=-1, dtype=torch.float32)
        prod_probs = torch.masked_fill(teacher_probs * student_logprobs, inf_mask, 0)
        kd = -prod_probs.sum() * tau**2
        return (1 - settings["kd_weight"]) * sft + settings["kd_weight"] * kd

    def naive():
        return loss_sums(F.linear(student_hidden, student_head), F.linear(teacher_hidden, teacher_head), targets,
                         objective=objective).loss_sum

    def chunk_loss(hidden, teacher, chunk_targets):
        return loss_sums(F.linear(hidden, student_head), F.linear(teacher, teacher_head), chunk_targets,
                         objective=objective).loss_sum

    def checkpointed():
        total = 0.0
        for start in range(0, n, args.chunk_tokens):
            part = slice(start, start + args.chunk_tokens)
            total = total + checkpoint(chunk_loss, student_hidden[part], teacher_hidden[part], targets[part],
                                       use_reentrant=False)
        return total

    def chunked():
        return chunked_loss_sums(student_hidden, student_head, targets, teacher_hidden=teacher_hidden,
                                 teacher_head=teacher_head, chunk_tokens=args.chunk_tokens, objective=objective).loss_sum

    if args.variant == "distillm" and args.loss != "kld":
        raise SystemExit("the distillm variant is DistiLLM's forward_kl: use it with --loss kld")
    step = {"distillm": distillm, "naive": naive, "checkpoint": checkpointed, "chunked": chunked}[args.variant]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    seconds, peaks = [], []
    for repeat in range(args.repeats + 1):
        student_hidden.grad = student_head.grad = None
        baseline = _reset_peak_rss()
        start = time.perf_counter()
        with autocast:
            loss = step()
        loss.backward()
        elapsed = time.perf_counter() - start
        peak = _status_kb("VmHWM") * 1024 - baseline
        if repeat > 0:  # the first step warms up kernels and the allocator
            seconds.append(elapsed)
            peaks.append(peak)
        value = float(loss.detach())
        del loss
    return {"variant": args.variant, "loss_sum": value,
            "peak_mb": round(max(peaks) / 2**20, 1), "seconds": round(statistics.median(seconds), 3),
            "seconds_all": [round(s, 3) for s in seconds],
            "grad_norm": float(student_head.grad.float().norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", default="kld")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16: the lm_head matmuls under bf16 autocast, as `train run` does by default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} (default: all "
                        "that apply to the loss)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the worker subprocesses
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return
    results = {"settings": {k: v for k, v in vars(args).items() if k not in ("variant", "out", "variants")},
               "tokens": args.batch * args.seq_len}
    applicable = [v for v in VARIANTS if v != "distillm" or args.loss == "kld"]
    variants = args.variants.split(",") if args.variants else applicable
    for variant in variants:
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{done.stderr}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:>10}: peak {r['peak_mb']:>8.1f} MB  {r['seconds']:>7.3f} s/step  "
              f"({args.batch * args.seq_len / r['seconds']:.0f} tokens/s)", flush=True)
    for baseline in ("distillm", "naive"):
        if baseline in results and "chunked" in results:
            base, chunked = results[baseline], results["chunked"]
            print(f"chunked vs {baseline}: peak memory {chunked['peak_mb'] / max(base['peak_mb'], 0.1):.2f}x, "
                  f"speed {base['seconds'] / chunked['seconds']:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
