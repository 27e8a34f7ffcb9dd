"""The GPU check's measurements: Syllabus's own code paths at the shapes users distil, on one CUDA GPU.

    python benchmarks/gpu/bench_gpu.py --out OUT            # the GPU machine (benchmarks/gpu/run.sh calls it)
    python benchmarks/gpu/bench_gpu.py --out OUT --dry-run  # here: tiny shapes, same code path, same files

Models are random-initialised on the device at real shapes (weights do not change speed): a Qwen2.5-1.5B-shaped
student and a Qwen2.5-7B-shaped teacher (Llama-style decoders with qkv biases), both with the 1.5B's 151,936-id
head (the real 7B pads its head to 152,064 rows; a top-K cache naming an id past the student's vocabulary is
refused, so the cached step needs one vocabulary). Rows are prompt + response
sequences of 256 to 1,024 tokens, a quarter of each the prompt, every response token scored.

Phases, each timed after a warm-up with CUDA synchronised around it, its peak memory read from torch's allocator:
- matmul: an 8192^3 bf16 matrix product, the ceiling the utilisation figures are taken against;
- ce_padded / ce_packed: the teacher-forcing CE pass of `curate score`'s transformers engine
  (`core.scoring.response_scores`) over the teacher, in length-sorted padded batches and in packed rows;
- topk_capture: the same pass keeping the teacher's top 128 at every response token (`--teacher-topk 128`);
- kd_step_live / kd_step_cached / kd_step_checkpointed: `train.loop.train_step` on packed micro-batches (bf16
  autocast over fp32 master weights, the chunked loss, fused AdamW, gradient clipping) with the live teacher, with
  the teacher's cached top K in its place, and with --gradient-checkpointing.

Model FLOPs (MFU counts these, never the recompute of checkpointing): per token 2 x the decoder's matrix weights,
plus causal attention (2 x L x heads x head_dim per token and layer at context length L, the average of a causal
row), plus 2 x hidden x vocab per scored token for the head; a training step counts the student's 3 x (forward and
backward) and the teacher's 1 x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STUDENT_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
TEACHER_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=151936, tie_word_embeddings=False)
DRY_STUDENT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True)
DRY_TEACHER = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=3,
                   num_key_value_heads=1, vocab_size=512, tie_word_embeddings=False)


@dataclass(frozen=True)
class Plan:
    """What one invocation measures: the shapes, how much work each phase gets, and where it runs."""

    student: dict[str, int]
    teacher: dict[str, int]
    ce_sequences: int  # rows of the CE pass and the top-K capture
    min_len: int
    max_len: int
    micro_batch_size: int  # samples per micro-batch of the KD step
    steps: int  # measured KD steps after one warm-up step
    matmul_n: int
    batch_tokens: int  # padded tokens per CE forward (the engine's GPU default is 16,384)
    pack_tokens: int  # packed-row budget under sdpa
    topk: int
    device: str


def plan_for(dry_run: bool) -> Plan:
    if dry_run:
        return Plan(DRY_STUDENT, DRY_TEACHER, ce_sequences=12, min_len=24, max_len=64, micro_batch_size=4, steps=2,
                    matmul_n=256, batch_tokens=512, pack_tokens=256, topk=16, device="cpu")
    return Plan(STUDENT_1_5B, TEACHER_7B, ce_sequences=192, min_len=256, max_len=1024, micro_batch_size=8, steps=4,
                matmul_n=8192, batch_tokens=16384, pack_tokens=2048, topk=128, device="cuda")


def build_model(shape: dict[str, int], dtype: Any, device: str, attention: str, seed: int) -> Any:
    """A random-initialised Qwen2-style causal LM built directly on `device` (no CPU copy of 7B weights)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    config = Qwen2Config(**shape, head_dim=head_dim, max_position_embeddings=4096, use_cache=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    return model


def matmul_flops_per_token(shape: dict[str, int]) -> int:
    """2 x the decoder's matrix weights (q, k, v, o and the MLP of every layer), per token of a forward."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = h // shape["num_attention_heads"]
    kv = 2 * shape["num_key_value_heads"] * head_dim
    return 2 * layers * (h * h + h * kv + h * h + 3 * h * i)


def forward_flops(shape: dict[str, int], lengths: list[int], scored: int) -> float:
    """Model FLOPs of one forward over sequences of these lengths, with the head on `scored` positions."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    dense = matmul_flops_per_token(shape) * sum(lengths)
    attention = sum(2 * 2 * layers * h * n * n / 2 for n in lengths)  # QK^T and AV over a causal half-square
    head = 2 * h * shape["vocab_size"] * scored
    return dense + attention + head


def make_rows(plan: Plan, count: int, vocab: int, seed: int) -> list[Any]:
    """`count` (prompt, response) token sequences of plan.min_len..max_len tokens, a quarter of each the prompt."""
    import torch

    from syllabus.core.tokens import Encoded

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        n = int(torch.randint(plan.min_len, plan.max_len + 1, (1,), generator=g))
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        rows.append(Encoded(ids[: n // 4], ids[n // 4:], "ok"))
    return rows


class Timer:
    """Wall time of a phase with the device synchronised at both ends; peak allocated memory over it."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.cuda = torch, device == "cuda"

    def __call__(self, work: Callable[[], Any], repeats: int = 1, warmup: int = 1) -> tuple[float, float]:
        """(median seconds per call, peak GiB allocated during the measured calls; 0 on CPU)."""
        torch = self.torch
        for _ in range(warmup):
            work()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            if self.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0
        return statistics.median(times), peak


def measure_matmul(plan: Plan, timer: Timer) -> dict[str, float]:
    import torch

    n = plan.matmul_n
    a, b = (torch.randn(n, n, device=plan.device, dtype=torch.bfloat16) for _ in range(2))  # random, never zeros
    seconds, _ = timer(lambda: a @ b, repeats=10, warmup=3)
    return {"n": n, "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def measure_ce(plan: Plan, teacher: Any, rows: list[Any], timer: Timer, peak_tflops: float) -> dict[str, Any]:
    """The CE pass padded and packed, and the top-K capture (packed), through `core.scoring.response_scores`."""
    from syllabus.core.engines.base import ScoringRequest
    from syllabus.core.packing import packing_is_exact
    from syllabus.core.scoring import response_scores

    requests = [ScoringRequest(r.ids, len(r.prompt_ids)) for r in rows]
    lengths = [len(r.ids) for r in rows]
    scored = sum(len(r.response_ids) for r in rows)
    flops = forward_flops(plan.teacher, lengths, scored)
    out: dict[str, Any] = {"sequences": len(rows), "tokens": sum(lengths), "scored_tokens": scored,
                           "packing_is_exact": bool(packing_is_exact(teacher, plan.pack_tokens))}
    results = {}
    for name, pack, topk in (("ce_padded", None, 0), ("ce_packed", plan.pack_tokens, 0),
                             ("topk_capture", plan.pack_tokens, plan.topk)):
        holder = {}

        def work(pack=pack, topk=topk):
            holder["result"] = response_scores(teacher, requests, plan.batch_tokens, 0, pack, topk)

        seconds, peak = timer(work, repeats=2, warmup=1)
        results[name] = holder["result"][0]
        out[name] = {"seconds": seconds, "tokens_per_second": sum(lengths) / seconds,
                     "mfu": flops / seconds / 1e12 / peak_tflops, "peak_gib": peak}
    # the layouts must score alike (bf16: within a few hundredths of a nat per row)
    out["ce_max_abs_diff_packed_vs_padded"] = max(abs(a - b) for a, b in zip(results["ce_padded"],
                                                                             results["ce_packed"]))
    return out


def teacher_bins(plan: Plan, teacher: Any, batches: list[Any]) -> list[Any]:
    """The teacher's top K at each batch's scored positions, as a `--teacher cached` run reads them."""
    import torch

    from syllabus.core.logits import TopK
    from syllabus.core.scoring import token_scores

    out = []
    with torch.inference_mode(), torch.autocast(plan.device, dtype=torch.bfloat16):
        for batch in batches:
            b = batch.to(plan.device)
            hidden = teacher.get_decoder()(**b.model_inputs()).last_hidden_state[b.rows, b.cols]
            _, top = token_scores(teacher, hidden, b.targets, plan.topk)
            out.append(TopK(top.ids.clone(), top.log_probs.clone(), top.log_tail.clone()))
    return out


def measure_kd(plan: Plan, rows: list[Any], peak_tflops: float, attention: str,
               profile: Path | None = None) -> dict[str, Any]:
    """`train.loop.train_step` with the live teacher, with its cached top K, and with gradient checkpointing."""
    import torch
    from accelerate import Accelerator

    from syllabus.core.logits import checked_logit_head
    from syllabus.train.data import collate
    from syllabus.train.losses import Objective

    micro = [rows[i: i + plan.micro_batch_size] for i in range(0, len(rows), plan.micro_batch_size)]
    batches = [collate(m, 0, plan.pack_tokens) for m in micro]
    acc = Accelerator(mixed_precision="bf16", cpu=plan.device == "cpu")
    objective = Objective("kld", temperature=1.0, kd_weight=1.0)
    teacher = build_model(plan.teacher, torch.bfloat16, plan.device, attention, seed=1).eval().requires_grad_(False)
    teacher_head = checked_logit_head(teacher, "teacher")
    bins = teacher_bins(plan, teacher, batches)
    # the warm-up step takes micro-batch 0, the measured steps 1..steps: their mean tokens and FLOPs per step
    measured = range(1, len(batches))
    tokens = statistics.mean(sum(len(r.ids) for r in micro[k]) for k in measured)
    scored = statistics.mean(batches[k].num_tokens for k in measured)
    student_flops = statistics.mean(3 * forward_flops(plan.student, [len(r.ids) for r in micro[k]],
                                                      batches[k].num_tokens) for k in measured)
    teacher_flops = statistics.mean(forward_flops(plan.teacher, [len(r.ids) for r in micro[k]],
                                                  batches[k].num_tokens) for k in measured)
    out: dict[str, Any] = {"micro_batch_size": plan.micro_batch_size, "tokens_per_step": tokens,
                           "scored_tokens_per_step": scored, "pack_tokens": plan.pack_tokens, "objective": "kld",
                           "attention": attention}
    for name in ("kd_step_live", "kd_step_checkpointed", "kd_step_cached"):
        cached = name == "kd_step_cached"
        if cached:  # last: the teacher leaves the GPU, as a cached run never loads it
            teacher = teacher_head = None
            if plan.device == "cuda":
                torch.cuda.empty_cache()
        seconds, peak, records = kd_variant(plan, acc, batches, bins if cached else None, teacher, teacher_head,
                                            objective, attention, checkpointing=name == "kd_step_checkpointed",
                                            profile=profile if name == "kd_step_live" else None)
        flops = student_flops + (0 if cached else teacher_flops)
        out[name] = {"seconds": seconds, "tokens_per_second": tokens / seconds,
                     "mfu": flops / seconds / 1e12 / peak_tflops, "peak_gib": peak,
                     "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"]}
        acc.free_memory()  # the variant's student and optimizer went with its frame
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    # recomputing the layers in the backward pass must not change what the step computes
    out["checkpointing_loss_diff"] = abs(out["kd_step_live"]["loss_first"] - out["kd_step_checkpointed"]["loss_first"])
    return out


def kd_variant(plan: Plan, acc: Any, batches: list[Any], bins: list[Any] | None, teacher: Any, teacher_head: Any,
               objective: Any, attention: str, checkpointing: bool,
               profile: Path | None) -> tuple[float, float, list[dict]]:
    """One KD-step variant on a fresh student (seed 0): (median s/step, peak GiB, each step's metrics)."""
    import torch

    from syllabus.train.loop import adamw, train_step
    from syllabus.train.student import DistillStudent

    student = build_model(plan.student, torch.float32, plan.device, attention, seed=0).train()
    if checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = acc.prepare(DistillStudent(student, chunk_tokens=1024,
                                       cached_teacher_vocab=plan.teacher["vocab_size"] if bins else None))
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    run = SimpleNamespace(accelerator=acc, teacher=teacher, teacher_head=teacher_head, sharded=False,
                          config=SimpleNamespace(max_grad_norm=1.0))  # what `train_step` reads of a `Run`
    records: list[dict] = []

    def step() -> None:
        k = len(records) % len(batches)
        batch = dataclasses.replace(batches[k], teacher_bins=bins[k]) if bins else batches[k]
        records.append(train_step(run, model, [batch], objective, optimizer, scheduler, [1.0]))

    seconds, peak = Timer(plan.device)(step, repeats=plan.steps, warmup=1)
    if profile is not None:
        write_profile(profile, step, plan.device)
    return seconds, peak, records


def write_profile(path: Path, step: Callable[[], Any], device: str) -> None:
    """Two more steps under torch.profiler: the operators by their own device time, largest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60) + "\n")


def environment(plan: Plan) -> dict[str, Any]:
    import accelerate
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "date": time.strftime("%Y-%m-%d"), "device": plan.device}
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
    return info


def table(results: dict[str, Any]) -> str:
    """The short table the script prints last (and writes to OUT/gpu.txt)."""
    env = results["environment"]
    lines = [f"# {env.get('gpu', env['device'])}, torch {env['torch']} (CUDA {env['cuda']}), transformers "
             f"{env['transformers']}, {env['date']}",
             f"bf16 matmul {results['matmul']['n']}^3: {results['matmul']['tflops']:.1f} TFLOP/s (the MFU ceiling)",
             f"{'phase':<22} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>9}"]
    for group in ("ce", "kd"):
        for name, row in results.get(group, {}).items():
            if isinstance(row, dict) and "tokens_per_second" in row:
                lines.append(f"{name:<22} {row['tokens_per_second']:>12,.0f} {row['mfu']:>7.1%} "
                             f"{row['peak_gib']:>9.1f}")
    if "ce" in results:
        lines.append(f"packed vs padded CE, largest per-row difference: "
                     f"{results['ce']['ce_max_abs_diff_packed_vs_padded']:.4f} nats; packing exact under "
                     f"{results['attention']}: {results['ce']['packing_is_exact']}")
    if "kd" in results:
        lines.append(f"checkpointing changes the first step's loss by {results['kd']['checkpointing_loss_diff']:.2e}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: the same code path and files")
    parser.add_argument("--attention", default="auto", help="the models' attention implementation (core/attention.py)")
    parser.add_argument("--only", default="ce,kd", help="comma-separated phases besides matmul: ce, kd")
    parser.add_argument("--profile", action="store_true", help="also profile two live KD steps (OUT/profile.txt)")
    args = parser.parse_args()
    import torch

    from syllabus.core.attention import resolve_attention

    plan = plan_for(args.dry_run)
    if plan.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA GPU here; pass --dry-run to check the code path on the CPU")
    attention = resolve_attention(args.attention)
    timer = Timer(plan.device)
    results: dict[str, Any] = {"environment": environment(plan), "attention": attention,
                               "shapes": {"student": plan.student, "teacher": plan.teacher}}
    started = time.perf_counter()
    results["matmul"] = measure_matmul(plan, timer)
    peak = results["matmul"]["tflops"]
    print(f"matmul {peak:.1f} TFLOP/s", flush=True)
    phases = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    if "ce" in phases:
        teacher = build_model(plan.teacher, torch.bfloat16, plan.device, attention, seed=1).eval()
        results["ce"] = measure_ce(plan, teacher.requires_grad_(False),
                                   make_rows(plan, plan.ce_sequences, plan.student["vocab_size"], 0), timer, peak)
        print("ce", json.dumps(results["ce"]), flush=True)
        del teacher
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    if "kd" in phases:
        kd_rows = make_rows(plan, plan.micro_batch_size * (plan.steps + 1), plan.student["vocab_size"], 1)
        results["kd"] = measure_kd(plan, kd_rows, peak, attention,
                                   args.out / "profile.txt" if args.profile else None)
        print("kd", json.dumps(results["kd"]), flush=True)
    results["seconds"] = time.perf_counter() - started
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (args.out / "gpu.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
