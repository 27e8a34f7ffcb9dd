"""Benchmark `curate score` against the naive scoring loop of the peers' code.

    python benchmarks/bench_score.py --rows 256 --out benchmarks/results/score.json

Syllabus: `curate score` with the embedded default pair (student generation on vLLM, teacher forcing on the engine
chosen by `auto`), one model at a time. Also times teacher forcing of the same rows on both engines, so the default
engine per device is a measured choice.

Naive reference (what SRD/DA-KD-style scripts do): for each batch of 8 rows, transformers `generate` with the
student, then a separate fp32 forward of the student and of the teacher over prompt + response with full-vocabulary
log-softmax. Both models stay loaded.

Run on an idle machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def naive_score(rows: list[dict], student_dir: Path, teacher_dir: Path, max_new_tokens: int, batch_size: int = 8) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    gen_tokens = ce_tokens = 0
    gen_s = ce_s = 0.0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        tok.padding_side = "left"
        enc = tok([r["prompt"] for r in batch], return_tensors="pt", padding=True)
        g0 = time.perf_counter()
        with torch.no_grad():
            out = student.generate(**enc, do_sample=True, temperature=0.01, top_p=1.0, top_k=0,
                                   max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        gen_s += time.perf_counter() - g0
        gen_tokens += int((out[:, enc.input_ids.shape[1]:] != tok.pad_token_id).sum())
        tok.padding_side = "right"
        full = tok([r["prompt"] + r["output"] + tok.eos_token for r in batch], return_tensors="pt", padding=True,
                   truncation=True, max_length=1024)
        c0 = time.perf_counter()
        with torch.no_grad():
            for model in (student, teacher):
                logprobs = model(**full).logits.float().log_softmax(-1)  # full (B, T, V) fp32
                logprobs.gather(-1, full.input_ids[:, 1:, None])
        ce_s += time.perf_counter() - c0
        ce_tokens += 2 * int(full.attention_mask.sum())
    total = time.perf_counter() - t0
    return {"rows": len(rows), "seconds": round(total, 1), "rows_per_second": round(len(rows) / total, 3),
            "generation_tokens_per_second": round(gen_tokens / gen_s, 1),
            "ce_tokens_per_second_per_model": round(ce_tokens / ce_s, 1)}


def syllabus_score(rows: int, out: Path, max_new_tokens: int) -> dict:
    from syllabus.core.engines.base import GenerationParams
    from syllabus.curate.score import ScoreConfig, score

    t0 = time.perf_counter()
    table = score(ScoreConfig(data="dolly_dev_1000", out=str(out), limit=rows, overwrite=True,
                              generation=GenerationParams(max_new_tokens=max_new_tokens)), progress=False)
    total = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(total, 1), "rows_per_second": round(rows / total, 3),
            "passes": table.metadata["pass_stats"]}


def ce_engine_speeds(rows: list[dict], model_dir: Path) -> dict:
    """Teacher forcing of the same rows on each engine (engine start excluded, one warm-up batch)."""
    from transformers import AutoTokenizer

    from syllabus.core.engines import open_engine
    from syllabus.core.engines.base import ScoringRequest
    from syllabus.core.tokens import encode_pair

    tok = AutoTokenizer.from_pretrained(model_dir)
    requests = []
    for r in rows:
        enc = encode_pair(tok, r["prompt"], r["output"], max_seq_len=1024, truncate=True)
        requests.append(ScoringRequest(enc.ids, len(enc.prompt_ids)))
    tokens = sum(len(r.ids) for r in requests)
    out = {}
    for kind, options in (("hf", {"dtype": "bfloat16"}),
                          ("vllm", {"dtype": "bfloat16", "max_model_len": 1280})):
        engine = open_engine(kind, str(model_dir), **options)
        engine.response_nll(requests[:8])
        t0 = time.perf_counter()
        engine.response_nll(requests)
        seconds = time.perf_counter() - t0
        out[kind] = {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1)}
        engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/syllabus-bench-score"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/score.json"))
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    from syllabus.core.models import prepare_default_models
    from syllabus.curate.data import EMBEDDED

    teacher_dir, student_dir = prepare_default_models()
    rows = [json.loads(line) for line in EMBEDDED["dolly_dev_1000"].open()][: args.rows]
    results = {"machine": {"cpus": os.cpu_count()}, "rows": args.rows, "max_new_tokens": args.max_new_tokens}
    results["syllabus_default"] = syllabus_score(args.rows, args.work / "table", args.max_new_tokens)
    print(json.dumps(results["syllabus_default"], indent=2), flush=True)
    results["ce_engines_teacher"] = ce_engine_speeds(rows, teacher_dir)
    print(json.dumps(results["ce_engines_teacher"], indent=2), flush=True)
    if not args.skip_naive:
        results["naive"] = naive_score(rows, student_dir, teacher_dir, args.max_new_tokens)
        print(json.dumps(results["naive"], indent=2), flush=True)
        results["speedup_whole_scoring"] = round(results["naive"]["seconds"] / results["syllabus_default"]["seconds"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
