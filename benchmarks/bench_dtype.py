"""Why `--dtype auto` / `--precision auto` (core/precision.py) is not bf16 everywhere: bf16 against fp32, side by side.

    python benchmarks/bench_dtype.py --out benchmarks/results/dtype.json

Two measurements, each format in turn, best of `--repeats`: a square matmul (GFLOP/s), and a teacher-forced forward
of the embedded teacher (SmolLM2-135M-Instruct) over one 256-token row (tokens/s), as `curate score`'s CE pass runs
it. The result records torch's CPU capability and whether `core.precision.native_bf16()` holds here.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: kernels chosen, caches filled
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(size: int, dtype, repeats: int) -> float:
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    return 2 * size**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def forward_tokens_per_second(model_dir: Path, dtype, tokens: int, repeats: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    with torch.inference_mode():
        return tokens / best_seconds(lambda: model(ids), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="matmul side")
    parser.add_argument("--tokens", type=int, default=256, help="forward row length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from common import write_result
    from syllabus.core.models import prepare_default_models
    from syllabus.core.precision import native_bf16

    teacher_dir, _ = prepare_default_models()
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
              "load_average_1min": os.getloadavg()[0], "formats": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result["formats"][name] = {
            "matmul_gflops": round(matmul_gflops(args.size, dtype, args.repeats), 2),
            "forward_tokens_per_second": round(forward_tokens_per_second(teacher_dir, dtype, args.tokens,
                                                                         args.repeats), 1),
        }
    fp32, bf16 = result["formats"]["fp32"], result["formats"]["bf16"]
    result["bf16_over_fp32"] = {k: round(bf16[k] / fp32[k], 3) for k in fp32}
    result["load_average_1min_after"] = os.getloadavg()[0]
    write_result(result, args.out)


if __name__ == "__main__":
    main()
