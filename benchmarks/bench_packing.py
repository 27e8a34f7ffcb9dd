"""Benchmark padding-free training steps against padded ones on real, uneven rows.

    python benchmarks/bench_packing.py --steps 12 --pack-tokens 512 1024 2048 4096 --out benchmarks/results/packing.json

Embedded default pair (teacher SmolLM2-135M-Instruct, 15-layer pruned student), the rows of `dolly_dev_1000` with
the Alpaca template at a 1,024-token limit (what `curate score` keeps), micro-batches of 8 drawn as the trainer
draws them (a seeded permutation of the rows). One step = teacher forward (bf16, no grad) + student forward and
backward through the chunked KL loss (bf16 autocast) + AdamW, exactly `train/loop.py`'s step. The two variants run
the same micro-batches, alternating padded and packed step by step so that the machine's noise hits both.

Reported: the padding share of a whole epoch of padded micro-batches, and per variant (padded; packed with each
row budget) the useful (non-pad) tokens per second of wall time, median over the measured steps after one warm-up
step each, and its ratio to the padded variant.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from common import embedded_dolly, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PARTS = ("teacher_forward", "student_forward_and_loss", "backward", "optimizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[2048])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from syllabus.core.logits import logit_head
    from syllabus.train.data import collate, epoch_micro_batches
    from syllabus.train.loop import adamw
    from syllabus.train.losses import Objective
    from syllabus.train.student import DistillStudent

    torch.manual_seed(0)
    teacher_dir, student_dir, tokenizer, encoded = embedded_dolly(args.rows)
    batches = epoch_micro_batches(list(encoded), seed=0, epoch=0, micro_batch_size=args.micro_batch)
    pad = tokenizer.pad_token_id
    real = sum(len(e.ids) for e in encoded.values())
    padded_total = sum(len(ids) * max(len(encoded[s].ids) for s in ids) for ids in batches)

    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32, use_cache=False).train()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16).eval().requires_grad_(False)
    wrapped, teacher_head = DistillStudent(student, chunk_tokens=1024), logit_head(teacher)
    optimizer = adamw(list(student.parameters()), lr=1e-5, weight_decay=0.0)  # the trainer's
    objective = Objective("kld", temperature=1.0, kd_weight=1.0)

    def step(batch) -> dict[str, float]:
        """Seconds of one training step, in total and by part."""
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                hidden = teacher.get_decoder()(**batch.model_inputs()).last_hidden_state[batch.rows, batch.cols]
            marks.append(time.perf_counter())
            sums = wrapped(batch, objective, hidden, teacher_head)  # student forward + chunked loss (+ its grads)
        marks.append(time.perf_counter())
        (sums.loss_sum / batch.num_tokens).backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        parts = dict(zip(PARTS, (b - a for a, b in zip(marks, marks[1:]))))
        return {"total": marks[-1] - marks[0], **parts}

    variants = {"padded": None, **{f"packed-{n}": n for n in args.pack_tokens}}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    useful: list[int] = []
    for k, ids in enumerate(batches[: args.steps + 1]):
        rows = [encoded[s] for s in ids]
        for variant, pack in variants.items():
            seconds = step(collate(rows, pad, pack))
            if k > 0:  # the first step of each variant warms up
                times[variant].append(seconds)
        if k > 0:
            useful.append(sum(len(r.ids) for r in rows))
    result = {
        "rows": len(encoded), "micro_batch": args.micro_batch, "pack_tokens": args.pack_tokens,
        "measured_steps": args.steps, "epoch_padding_share": round(1 - real / padded_total, 4),
        "cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
    }
    for variant, steps in times.items():
        rates = [n / s["total"] for n, s in zip(useful, steps)]
        result[variant] = {"median_useful_tokens_per_second": round(statistics.median(rates), 1),
                           **{f"median_{part}_seconds": round(statistics.median(s[part] for s in steps), 3)
                              for part in ("total", *PARTS)}}
    for variant in variants:
        result[variant]["speedup_over_padded"] = round(
            result[variant]["median_useful_tokens_per_second"] / result["padded"]["median_useful_tokens_per_second"], 2)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
