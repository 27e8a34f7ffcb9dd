"""How well a top-K teacher cache reproduces the live teacher's KD loss and its gradient, per loss, K and temperature.

    python benchmarks/bench_topk_accuracy.py --out benchmarks/results/topk_accuracy.json   # 17 CPU minutes, 1 thread
    python benchmarks/bench_topk_accuracy.py --student runs/results/heal/checkpoints/final \
        --out benchmarks/results/topk_accuracy-healed.json

The first uses the embedded student as `curate models prepare` makes it: the teacher pruned to every 2nd layer, not
yet trained, so far from the teacher (KL about 12 nats per token). The second uses that student healed by SFT (the
`heal` stage of `pipelines/results.yaml`), what distillation starts from in the recipes.

A cache keeps, per response token, the teacher's top-K log-probs and the log of the mass outside them, at temperature
1 (`core.scoring.token_scores`, as `curate score` would store them: fp32 log-probs, int32 ids); the loss then takes the
divergence over K+1 bins (`chunked_loss_sums(teacher_bins=...)`), softening the bins at tau != 1 with the tail spread
evenly over its ids (an approximation: `bench_topk_temperature.py`). This compares that loss, and its gradient over
every student parameter, with the loss against the live teacher (full vocabulary) on the same micro-batches.

Setup: the embedded pair (teacher bf16, student fp32 in eval mode and without autocast, so that the differences are
the cache's and not bf16 noise or dropout); the first `--batches` x `--micro-batch` Dolly rows, sorted by length into
padded micro-batches (as `curate score` batches them: the student's backward, run once per variant, dominates the run
time, and padding only adds to it); kd_weight 1 (the KD term alone); each loss at its default parameters, at tau 1,
and also at tau 2 for kld and rkl (SRD's and SpectrumKD's temperature ladders). The student's forward is
`DistillStudent.forward`'s body, run once per micro-batch and differentiated for every variant (`retain_graph`); the
loss is the per-token mean the trainer backpropagates. Reported per (loss, tau, K), over micro-batches: the relative
error of the loss value and of the gradient's norm (median and max), and the cosine between the cached and live
gradients (median and min); the live loss of each micro-batch for context.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import embedded_dolly, write_result

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOSSES = ("kld", "rkl", "jsd", "tvd", "skl", "srkl", "bdl")
LADDER_LOSSES = ("kld", "rkl")  # also measured at tau 2


def grad_comparison(cached: torch.Tensor, live: torch.Tensor) -> dict[str, float]:
    """Relative error of the norm, and cosine, of a cached-teacher gradient against the live one (flat fp32)."""
    cached, live = cached.double(), live.double()
    cached_norm, live_norm = cached.norm().item(), live.norm().item()
    return {"grad_norm": abs(cached_norm - live_norm) / live_norm,
            "cosine": (cached @ live).item() / (cached_norm * live_norm)}


def summary(values: list[float], worst: str) -> dict[str, float]:
    """The median and the worst (`max` or `min`) of per-batch values, to 3 significant digits (cosines to 1e-6)."""
    if worst == "min":
        return {"median": round(statistics.median(values), 6), "min": round(min(values), 6)}
    return {"median": float(f"{statistics.median(values):.3g}"), "max": float(f"{max(values):.3g}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--student", type=Path, default=None, help="a student directory (default: the embedded one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from syllabus.core.scoring import token_scores
    from syllabus.core.logits import logit_head
    from syllabus.train.data import collate
    from syllabus.train.losses import Objective, chunked_loss_sums
    from syllabus.train.student import scaled

    teacher_dir, student_dir, tokenizer, encoded = embedded_dolly(args.batches * args.micro_batch)
    student_dir = args.student or student_dir
    rows = sorted(encoded.values(), key=lambda e: len(e.ids))  # less padding to run through the student's backward
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    params = list(student.parameters())
    teacher_head = logit_head(teacher)
    objectives = {f"{loss}, tau={tau:g}": Objective(loss, tau, kd_weight=1.0) for loss in args.losses
                  for tau in ((1.0, 2.0) if loss in LADDER_LOSSES else (1.0,))}
    live_losses: dict[str, list[float]] = {name: [] for name in objectives}
    errors: dict[tuple[str, int], list[dict[str, float]]] = {(name, k): [] for name in objectives for k in args.k}
    tokens = []
    for start in range(0, len(rows), args.micro_batch):
        batch = collate(rows[start:start + args.micro_batch], tokenizer.pad_token_id)
        tokens.append(batch.num_tokens)
        with torch.no_grad():
            teacher_hidden = teacher.get_decoder()(**batch.model_inputs()).last_hidden_state[batch.rows, batch.cols]
            caches = {k: token_scores(teacher, teacher_hidden, batch.targets, topk=k)[1] for k in args.k}
        live_teacher = {"teacher_hidden": scaled(teacher_hidden, teacher_head.scale),
                        "teacher_head": teacher_head.weight, "teacher_softcap": teacher_head.softcap,
                        "teacher_bias": scaled(teacher_head.bias, teacher_head.scale)}
        hidden = student.get_decoder()(**batch.model_inputs()).last_hidden_state  # (R, T, H), kept for every backward
        head = logit_head(student)

        def loss_and_grad(objective: Objective, hidden: torch.Tensor, **teacher_kwargs: Any) -> tuple[float, torch.Tensor]:
            """The per-token mean loss and its gradient over every student parameter, flattened."""
            mean = chunked_loss_sums(scaled(hidden[batch.rows, batch.cols], head.scale), head.weight, batch.targets,
                                     objective=objective, student_bias=scaled(head.bias, head.scale),
                                     student_softcap=head.softcap, chunk_tokens=1024, **teacher_kwargs).mean()
            grads = torch.autograd.grad(mean, params, retain_graph=True)
            return mean.item(), torch.cat([g.reshape(-1) for g in grads])

        for name, objective in objectives.items():
            live_loss, live_grad = loss_and_grad(objective, hidden, **live_teacher)
            live_losses[name].append(live_loss)
            for k, cache in caches.items():
                cached_loss, cached_grad = loss_and_grad(objective, hidden, teacher_bins=cache)
                errors[name, k].append({"value": abs(cached_loss - live_loss) / abs(live_loss),
                                        **grad_comparison(cached_grad, live_grad)})
        del hidden  # free this micro-batch's graph before the next forward

    result: dict[str, Any] = {
        "teacher": teacher_dir.name, "student": str(args.student) if args.student else student_dir.name, "vocab": teacher_head.weight.shape[0],
        "rows": len(rows), "batches": args.batches, "micro_batch": args.micro_batch,
        "response_tokens_per_batch": tokens, "kd_weight": 1.0, "k": args.k,
        "cache_bytes_per_token": {k: 8 * k + 4 for k in args.k},
    }
    for name, objective in objectives.items():
        row: dict[str, Any] = {"params": objective.params,
                               "live_loss_per_batch": [round(v, 5) for v in live_losses[name]]}
        for k in args.k:
            per_batch = errors[name, k]
            row[f"K={k}"] = {"value_rel_error": summary([e["value"] for e in per_batch], "max"),
                             "grad_norm_rel_error": summary([e["grad_norm"] for e in per_batch], "max"),
                             "grad_cosine": summary([e["cosine"] for e in per_batch], "min")}
        result[name] = row
    write_result(result, args.out)


if __name__ == "__main__":
    main()
