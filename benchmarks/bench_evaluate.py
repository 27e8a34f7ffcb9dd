"""Benchmark `evaluate run` generation against transformers `generate` under the same protocol.

    python benchmarks/bench_evaluate.py --rows 64 --out benchmarks/results/evaluate.json

Both sides: the embedded default teacher (SmolLM2-135M-Instruct), bf16, DollyEval prompts cut to 256 tokens,
temperature 1.0, top-p 1.0, no top-k, at most 256 new tokens, no_repeat_ngram_size 6, one seed.
Syllabus: `evaluate run` on vLLM (engine start timed separately). Reference: transformers `generate` in batches of
8 prompts (left-padded), which is how MiniLLM/DistiLLM's evaluation generates.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def reference_generate(model_dir: Path, prompts: list[list[int]], batch_size: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    torch.manual_seed(10)
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=256, no_repeat_ngram_size=6, pad_token_id=tok.pad_token_id)
        new = out[:, width:]
        for row in new.tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    seconds = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1)}


def syllabus_generate(model_dir: Path, prompts: list[list[int]]) -> dict:
    from syllabus.core.engines import open_engine
    from syllabus.core.engines.base import GenerationParams, request_seed

    t0 = time.perf_counter()
    engine = open_engine("vllm", str(model_dir), dtype="bfloat16", max_model_len=512, seed=0)
    start_s = time.perf_counter() - t0
    params = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=256, seed=10, no_repeat_ngram_size=6)
    t0 = time.perf_counter()
    gens = engine.generate(prompts, params, [request_seed(10, f"dollyeval:{i}") for i in range(len(prompts))])
    seconds = time.perf_counter() - t0
    engine.close()
    tokens = sum(len(g[0].token_ids) for g in gens)
    return {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1),
            "engine_start_seconds": round(start_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/evaluate.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from syllabus.core.models import prepare_default_models
    from syllabus.evaluate.sets import load_set

    teacher_dir, _ = prepare_default_models()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    rows = load_set("dollyeval", limit=args.rows).rows
    prompts = [tok(r.prompt).input_ids[:256] for r in rows]
    results = {"rows": args.rows, "machine": {"cpus": os.cpu_count()}}
    results["syllabus_vllm"] = syllabus_generate(teacher_dir, prompts)
    print(json.dumps(results["syllabus_vllm"]), flush=True)
    results["transformers_generate"] = reference_generate(teacher_dir, prompts)
    print(json.dumps(results["transformers_generate"]), flush=True)
    results["speedup"] = round(results["syllabus_vllm"]["tokens_per_second"]
                               / results["transformers_generate"]["tokens_per_second"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
