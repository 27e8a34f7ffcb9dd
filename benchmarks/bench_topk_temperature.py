"""How to soften a top-K teacher cache at another temperature: the tail bin's share, measured on the real teacher.

    python benchmarks/bench_topk_temperature.py --rows 24 --out benchmarks/results/topk_temperature.json

A cache keeps, per response token, the teacher's top-K log-probs and the log of the mass outside them, at
temperature 1. At temperature tau the top K soften exactly (p_k^(1/tau), renormalised), but the tail's softened mass
sum_{j in tail} p_j^(1/tau) depends on how the tail is split, which the cache does not keep. Two closed forms bound it
for tau > 1: the tail as one token, p_T^(1/tau) (a lower bound), and the tail spread evenly over its V - K ids,
(V - K)^(1 - 1/tau) p_T^(1/tau) (an upper bound). This measures both against the truth on the embedded teacher
(SmolLM2-135M-Instruct, bf16 forward, fp32/fp64 softmax) over the response tokens of the first `--rows` Dolly rows:
the error of the softened tail bin's probability, and the KL between the true softened K+1 bins and each
approximation's, per K and tau (median and 90th percentile over tokens).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from common import embedded_dolly, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--tau", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from syllabus.core.logits import logit_head

    teacher_dir, _, _, encoded = embedded_dolly(args.rows)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16).eval()
    head = logit_head(model)
    log_probs = []
    with torch.inference_mode():
        for enc in encoded.values():
            hidden = model.get_decoder()(input_ids=torch.tensor([enc.ids])).last_hidden_state[0]
            positions = range(len(enc.prompt_ids) - 1, len(enc.ids) - 1)
            log_probs.append(torch.log_softmax(head.logits(hidden[list(positions)]).double(), -1))
    log_p = torch.cat(log_probs)  # (tokens, V) float64, temperature 1
    vocab = log_p.shape[-1]
    result: dict = {"rows": args.rows, "tokens": log_p.shape[0], "vocab": vocab}
    for k in args.k:
        top, ids = log_p.topk(k, dim=-1)
        tail_ids = torch.ones_like(log_p, dtype=torch.bool).scatter_(1, ids, False)
        log_tail = torch.where(tail_ids, log_p, -torch.inf).logsumexp(-1)
        for tau in args.tau:
            alpha = 1 / tau
            true_tail = torch.where(tail_ids, log_p * alpha, -torch.inf).logsumexp(-1)
            candidates = {"true": true_tail, "tail as one token": log_tail * alpha,
                          "tail spread evenly": log_tail * alpha + (1 - alpha) * math.log(vocab - k)}
            bins = {name: torch.log_softmax(torch.cat([top * alpha, tail[:, None]], 1), -1)
                    for name, tail in candidates.items()}
            row = {}
            for name in ("tail as one token", "tail spread evenly"):
                tail_error = (bins[name][:, -1].exp() - bins["true"][:, -1].exp()).abs()
                kl = (bins["true"].exp() * (bins["true"] - bins[name])).sum(-1)
                row[name] = {"tail_prob_abs_error_median": round(tail_error.median().item(), 5),
                             "tail_prob_abs_error_p90": round(tail_error.quantile(0.9).item(), 5),
                             "kl_true_vs_approx_median": float(f"{kl.median().item():.3g}"),
                             "kl_true_vs_approx_p90": float(f"{kl.quantile(0.9).item():.3g}")}
            row["true_tail_prob_median"] = round(bins["true"][:, -1].exp().median().item(), 5)
            result[f"K={k}, tau={tau}"] = row
    write_result(result, args.out)


if __name__ == "__main__":
    main()
