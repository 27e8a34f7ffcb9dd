"""Benchmark the packed CE pass (`curate score`'s transformers engine, DA-KD re-scoring) against the padded one.

    python benchmarks/bench_packed_scoring.py --repeats 2 --out benchmarks/results/packed_scoring.json

Real rows of `dolly_dev_1000` (Alpaca template, 1,024-token limit, as `curate score` keeps them), the embedded
default pair: the teacher in bf16 as the scoring engine loads it, and the pruned student in fp32 under bf16 autocast
as DA-KD re-scores it. Both variants score the same rows in the same forward budget (`batch_tokens`); the padded one
batches them by length (`length_batches`), the packed one lays them end to end in rows of `pack_tokens`
(`best_fit_rows`). The measured rows are one part as `curate score` scores it (the first 256 usable rows); the
variants alternate, `--repeats` times each, so that the machine's noise hits all of them.

Reported: the padding share of each variant over all the dataset's rows, scored in parts of 256 rows as `curate
score` does and as one pool as DA-KD re-scores (no model needed); per model and variant the useful (non-pad)
tokens per second over the measured part, the ratio to padded, and the largest difference of a row's CE from the
padded pass's.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import embedded_dolly, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def padding_share(lengths: list[int], batch_tokens: int, pack_tokens: int | None, part_size: int = 256) -> float:
    """The share of computed tokens that are padding, scoring in parts of `part_size` rows as `curate score` does."""
    from syllabus.core.scoring import scoring_forwards

    computed = 0
    for start in range(0, len(lengths), part_size):
        part = lengths[start : start + part_size]
        computed += sum(inputs["input_ids"].numel() for _, inputs, _ in
                        scoring_forwards([[1] * n for n in part], [1] * len(part), batch_tokens, 0, pack_tokens))
    return round(1 - sum(lengths) / computed, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="the measured part: the first N usable rows")
    parser.add_argument("--repeats", type=int, default=2, help="passes per variant, alternating with the others")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="tokens per forward (the CPU default)")
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from syllabus.core.engines.base import ScoringRequest
    from syllabus.core.scoring import response_nll

    teacher_dir, student_dir, tokenizer, encoded = embedded_dolly()
    requests = [ScoringRequest(e.ids, len(e.prompt_ids)) for e in encoded.values()]
    lengths = [len(r.ids) for r in requests]
    variants = {"padded": None, **{f"packed-{n}": n for n in args.pack_tokens}}
    result: dict = {
        "rows": len(requests), "measured_rows": args.rows, "repeats": args.repeats, "batch_tokens": args.batch_tokens,
        "cpu_threads": torch.get_num_threads(),
        "padding_share": {f"{scope}, batch_tokens {b}": {name: padding_share(lengths, b, pack, part)
                                                          for name, pack in variants.items()}
                          for scope, part in (("parts of 256 rows", 256), ("one pool", len(lengths)))
                          for b in (args.batch_tokens, 16384)},
    }
    measured = requests[: args.rows]
    models = {
        "teacher bf16 (curate score)": (AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16), False),
        "student fp32 + bf16 autocast (DA-KD re-scoring)": (
            AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32), True),
    }
    load = [os.getloadavg()[0]]
    for label, (model, autocast) in models.items():
        model.eval()
        seconds = dict.fromkeys(variants, 0.0)
        nll: dict[str, list[float]] = {name: [] for name in variants}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            response_nll(model, measured[:8], args.batch_tokens, tokenizer.pad_token_id)  # warm-up
            for _ in range(args.repeats):
                for name, pack in variants.items():
                    start = time.perf_counter()
                    nll[name] = response_nll(model, measured, args.batch_tokens, tokenizer.pad_token_id, pack)
                    seconds[name] += time.perf_counter() - start
        useful = sum(len(r.ids) for r in measured) * args.repeats
        padded_rate = useful / seconds["padded"]
        result[label] = {name: {"useful_tokens_per_second": round(useful / s, 1),
                                "speedup_over_padded": round(useful / s / padded_rate, 2),
                                "max_abs_nll_difference": round(max(abs(a - b) for a, b in
                                                                    zip(nll[name], nll["padded"])), 4)}
                         for name, s in seconds.items()}
        load.append(os.getloadavg()[0])
    result["load_average_during"] = [round(x, 2) for x in load]
    write_result(result, args.out)


if __name__ == "__main__":
    main()
