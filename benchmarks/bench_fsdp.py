"""What each rank holds, and what a step costs, under DDP and under FSDP: the trainer's own step on 2 processes.

    python benchmarks/bench_fsdp.py --steps 6 --out benchmarks/results/fsdp.json

Runs `torchrun --nproc_per_node 2` (gloo, this CPU, one thread per rank) twice over the embedded pair (teacher
SmolLM2-135M-Instruct, 15-layer pruned student) and the first rows of `dolly_dev_1000`: once with the student
wrapped for DDP and the teacher whole, once with both sharded (`train.distributed.shard_student`/`shard_teacher`, as
`train run --fsdp`). Each rank runs the trainer's `train_step` (bf16 autocast, KL, micro-batches of 4 packed rows,
AdamW), then counts the bytes of the tensors it holds: the student's parameters, gradients (when the optimizer
steps) and AdamW state (its local shards under FSDP) and the teacher's parameters. Seconds per step: median over
the steps after the first.

What it measures is what sharding divides; it does not measure the memory of the gathered units while they compute,
nor GPU throughput (on NCCL the all-gathers overlap the compute; on gloo over one CPU they do not).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from common import embedded_dolly, write_result

MICRO_BATCH = 4


def local_bytes(tensors) -> int:
    """Bytes of this rank's part of each tensor (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def worker(mode: str, steps: int, out: Path) -> None:
    import torch
    from accelerate import Accelerator

    from syllabus.core.logits import checked_logit_head
    from syllabus.train.data import collate
    from syllabus.train.distributed import lockstep_passes, shard_student, shard_teacher
    from syllabus.train.loop import adamw, load_student, load_teacher, train_step
    from syllabus.train.losses import Objective
    from syllabus.train.student import DistillStudent

    teacher_dir, student_dir, tokenizer, encoded = embedded_dolly(limit=MICRO_BATCH * 2 * (steps + 1) * 2)
    acc = Accelerator(mixed_precision="bf16", cpu=True)
    sharded = mode == "fsdp"
    ref = SimpleNamespace(path=str(student_dir), name="student")
    model = load_student(ref, disable_dropout=True)
    teacher, head = load_teacher(SimpleNamespace(path=str(teacher_dir), name="teacher"), "bf16", "cpu")
    checked_logit_head(model, "student")
    if sharded:
        head = shard_teacher(teacher, head, acc)
        student = shard_student(DistillStudent(model, 1024), acc)
    else:
        student = acc.prepare(DistillStudent(model, 1024))
    optimizer = adamw([p for p in student.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    gradients = []  # the gradients' bytes when the optimizer steps (they are freed right after)
    optimizer.register_step_pre_hook(lambda *_: gradients.append(
        local_bytes(p.grad for p in student.parameters() if p.grad is not None)))
    run = SimpleNamespace(accelerator=acc, teacher=teacher, teacher_head=head, sharded=sharded,
                          config=SimpleNamespace(max_grad_norm=1.0))
    objective = Objective("kld", 1.0, 1.0, {})
    samples = list(encoded.values())
    micro = [samples[i:i + MICRO_BATCH] for i in range(0, len(samples), MICRO_BATCH)]
    seconds, tokens = [], []
    for s in range(steps):
        step = micro[2 * s: 2 * s + 2]
        passes, weights = lockstep_passes(step, step[acc.process_index::2], 2, sharded)
        batches = [collate(b, tokenizer.pad_token_id, 512) for b in passes]
        start = time.perf_counter()
        stats = train_step(run, student, batches, objective, optimizer, scheduler, weights)
        seconds.append(time.perf_counter() - start)
        tokens.append(stats["tokens"])
    params = list(student.parameters())
    held = {
        "student_parameters": local_bytes(params),
        "student_gradients": max(gradients),
        "adamw_state": local_bytes(v for state in optimizer.state.values() for v in state.values()
                                   if torch.is_tensor(v) and v.dim() > 0),
        "teacher_parameters": local_bytes(teacher.parameters()),
    }
    record = {"rank": acc.process_index, "bytes": held,
              "seconds_per_step": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
              "tokens_per_step": statistics.mean(tokens)}
    (out / f"rank-{acc.process_index}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        return worker(args.worker, args.steps, args.dir)
    embedded_dolly(limit=1)  # prepares the embedded models once, before two processes would
    result = {"processes": 2, "threads_per_process": 1, "micro_batch_size": MICRO_BATCH, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("ddp", "fsdp"):
            out = Path(tmp) / mode
            out.mkdir()
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                  "2", __file__, "--worker", mode, "--steps", str(args.steps), "--dir", str(out)],
                                 env=env, capture_output=True, text=True)
            if ran.returncode != 0:
                sys.exit(f"{mode} failed:\n{ran.stderr[-3000:]}")
            ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
            result[mode] = {"bytes_per_rank": [r["bytes"] for r in ranks],
                            "seconds_per_step": max(r["seconds_per_step"] for r in ranks),
                            "tokens_per_step": ranks[0]["tokens_per_step"]}
    ddp, fsdp = (sum(result[m]["bytes_per_rank"][0].values()) for m in ("ddp", "fsdp"))
    result["fsdp_over_ddp"] = {"bytes_rank0": round(fsdp / ddp, 3),
                               "seconds_per_step": round(result["fsdp"]["seconds_per_step"]
                                                         / result["ddp"]["seconds_per_step"], 3)}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
