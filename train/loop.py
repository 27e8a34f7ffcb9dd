"""`train run`: a lean distillation loop that streams a schedule (setup -> fit -> cleanup).

Everything the loop needs is built before it starts; the loop itself reads top to bottom: per epoch, maybe restart
the optimizer, maybe re-score (DA-KD), then micro-batches -> loss -> step, with state saved for exact resume.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from syllabus.curate.models import check_same_tokenizer, load_tokenizer, resolve_model
from syllabus.curate.table import Table, atomic_write_json, read_table
from syllabus.curate.workdir import claim_output

from . import state as state_io
from .config import TrainConfig
from .data import Batch, SampleStore, collate, epoch_micro_batches, read_shard
from .losses import LossSums, chunked_loss_sums, resolve_loss_params
from .manifest import EpochPlan, Schedule, read_schedule
from .rescore import rescore_epoch


class TrainError(ValueError):
    """Training cannot start: mismatched schedule and table, tokenizers, or output directory."""


class DistillStudent(torch.nn.Module):
    """The student plus the chunked loss in one forward, so DDP/FSDP see every parameter use inside `forward`."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, teacher_hidden: torch.Tensor | None, teacher_head: torch.Tensor | None,
                plan: EpochPlan, loss: str, loss_params: dict, kd_weight: float, chunk_tokens: int) -> LossSums:
        hidden = self.model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return chunked_loss_sums(
            hidden[batch.rows, batch.cols],
            self.model.get_output_embeddings().weight,
            batch.targets,
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            loss=loss,
            temperature=plan.temperature,
            kd_weight=kd_weight,
            chunk_tokens=chunk_tokens,
            **loss_params,
        )


@dataclass
class Run:
    """Everything built by `setup`."""

    config: TrainConfig
    out: Path
    schedule: Schedule
    table: Table
    accelerator: Any
    student: DistillStudent
    teacher: Any
    tokenizer: Any
    store: SampleStore
    manifest_fingerprint: str
    progress: state_io.Progress = field(default_factory=state_io.Progress)


def setup(config: TrainConfig) -> Run:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    schedule = read_schedule(config.manifest)
    table_path = config.table or schedule.table_path
    if table_path is None:
        raise TrainError(f"{config.manifest}: the manifest names no table; pass --table")
    table = read_table(table_path)
    if table.fingerprint != schedule.table_fingerprint:
        raise TrainError(
            f"{config.manifest} was built from a table with fingerprint {schedule.table_fingerprint[:16]}, but "
            f"{table_path} has {table.fingerprint[:16]}: rebuild the schedule from this table, or pass the right --table"
        )
    student_ref = resolve_model(config.student, "student", config.keep_every)
    teacher_ref = resolve_model(config.teacher, "teacher", config.keep_every)
    check_same_tokenizer(student_ref, teacher_ref)
    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if config.precision == "bf16" else "no", cpu=cpu)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(student_ref.path, dtype=torch.float32)  # fp32 master weights
    model.config.use_cache = False
    teacher = AutoModelForCausalLM.from_pretrained(
        teacher_ref.path, dtype=torch.bfloat16 if config.precision == "bf16" else torch.float32
    ).to(accelerator.device)
    teacher.eval().requires_grad_(False)
    tokenizer = load_tokenizer(student_ref)
    chat = table.metadata.get("template") == "chat"
    store = SampleStore(table.frame, tokenizer, config.max_seq_len, chat)
    for plan in schedule.epochs:
        loss, params, _ = epoch_loss(plan, config)
        try:
            resolve_loss_params(loss, params)
        except ValueError as err:
            raise TrainError(f"{config.manifest}, epoch {plan.epoch}: {err}") from None
        store.check(read_shard(plan.shard), str(plan.shard))
    identity = {
        # stopping and snapshot settings do not change what a step computes, so a resumed run may change them
        "config": {k: v for k, v in config.as_dict().items()
                   if k not in ("resume", "overwrite", "max_steps", "save_every_steps")},
        "manifest_fingerprint": state_io.fingerprint_manifest(schedule.path),
        "table_fingerprint": table.fingerprint,
        "student": student_ref.identity(),
        "teacher": teacher_ref.identity(),
    }
    out = Path(config.out)
    if config.overwrite and not config.resume and out.exists():
        shutil.rmtree(out)  # --overwrite alone starts over; with --resume it replaces only another run's directory
    claim_output(out, identity, config.overwrite, what="training run")
    atomic_write_json(out / "config.json", {**identity, "schedule": schedule.raw})
    return Run(config, out, schedule, table, accelerator, DistillStudent(model), teacher, tokenizer, store,
               identity["manifest_fingerprint"])


def steps_in_epoch(plan: EpochPlan, config: TrainConfig, world_size: int) -> int:
    micro = math.ceil(plan.num_samples / config.micro_batch_size)
    per_rank = math.ceil(micro / world_size)
    return math.ceil(per_rank / config.grad_accum)


def build_optimizer(run: Run, first_epoch: int) -> tuple[Any, Any]:
    """AdamW + LR schedule whose horizon runs until the next optimizer restart (SRD restarts per stage)."""
    from transformers import get_scheduler

    epochs = run.schedule.epochs
    horizon = 0
    for plan in epochs[first_epoch:]:
        if plan.index > first_epoch and plan.restart_optimizer:
            break
        horizon += steps_in_epoch(plan, run.config, run.accelerator.num_processes)
    params = [p for p in run.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.config.lr, weight_decay=run.config.weight_decay)
    scheduler = get_scheduler(run.config.scheduler if run.config.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(run.config.warmup_ratio * horizon),
                              num_training_steps=max(1, horizon))
    return optimizer, scheduler


def epoch_loss(plan: EpochPlan, config: TrainConfig) -> tuple[str, dict, float]:
    """The epoch's loss, its parameters and kd_weight: the manifest's, unless overridden for an ablation."""
    loss = config.loss or plan.loss
    params = dict(config.loss_params) if config.loss else dict(plan.loss_params)
    kd_weight = plan.kd_weight if config.kd_weight is None else config.kd_weight
    return loss, params, kd_weight


def train_step(run: Run, model: Any, group: list[Batch], plan: EpochPlan, optimizer: Any, scheduler: Any) -> dict:
    """One optimizer step over a group of micro-batches, normalised by the global count of response tokens."""
    acc = run.accelerator
    loss_name, loss_params, kd_weight = epoch_loss(plan, run.config)
    local_tokens = sum(b.num_tokens for b in group)
    global_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), reduction="sum").item())
    # DDP averages gradients over ranks; scale so the result is the sum over all tokens / global token count.
    scale = acc.num_processes / max(1, global_tokens)
    loss_total = sft_total = kd_total = 0.0
    for k, batch in enumerate(group):
        batch = Batch(*(t.to(acc.device) for t in (batch.input_ids, batch.attention_mask, batch.rows, batch.cols, batch.targets)))
        teacher_hidden = teacher_head = None
        if kd_weight > 0 and loss_name != "sft":  # the teacher runs only for batches that need it
            with torch.no_grad(), acc.autocast():
                hidden = run.teacher.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            teacher_hidden = hidden[batch.rows, batch.cols]
            teacher_head = run.teacher.get_output_embeddings().weight
        sync = acc.no_sync(model) if k < len(group) - 1 else _nullcontext()
        with sync, acc.autocast():
            sums = model(batch, teacher_hidden, teacher_head, plan, loss_name, loss_params, kd_weight,
                         run.config.loss_chunk_tokens)
        acc.backward(sums.loss_sum * scale)
        loss_total += sums.loss_sum.item()
        sft_total += sums.sft_sum.item()
        kd_total += sums.kd_sum.item()
    grad_norm = acc.clip_grad_norm_(model.parameters(), run.config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    n = max(1, local_tokens)
    return {"loss": loss_total / n, "ce": sft_total / n,  # cross-entropy of the ground truth (the SFT term)
            "kd": kd_total / n, "kd_weight": kd_weight, "loss_name": loss_name, "tokens": local_tokens,
            "grad_norm": float(grad_norm)}


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def fit(run: Run) -> Path:
    from tqdm.auto import tqdm

    config, acc, schedule = run.config, run.accelerator, run.schedule
    progress = run.progress
    model = acc.prepare(run.student)
    # The optimizer and scheduler stay unwrapped: the LR horizon is counted in this rank's optimizer steps
    # (accelerate's scheduler wrapper would step it once per process).
    optimizer, scheduler = build_optimizer(run, progress.optimizer_epoch)
    if progress.global_step > 0:
        state_io.load_optimizer(run.out, optimizer, scheduler)
    total_steps = sum(steps_in_epoch(p, config, acc.num_processes) for p in schedule.epochs)
    bar = tqdm(total=total_steps, initial=progress.global_step, desc="train", unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)
    metrics = state_io.MetricsLog(run.out / "metrics.jsonl", progress.global_step)
    stopped = False
    for plan in schedule.epochs[progress.epoch:]:
        if plan.restart_optimizer and plan.index > progress.optimizer_epoch and progress.step_in_epoch == 0:
            progress.optimizer_epoch = plan.index
            optimizer, scheduler = build_optimizer(run, plan.index)
        sample_ids = progress.epoch_ids if progress.epoch_ids is not None else read_shard(plan.shard)
        if plan.rescore and progress.epoch_ids is None:
            sample_ids = rescore_epoch(run, plan, model)
        progress.epoch_ids = sample_ids
        micro = epoch_micro_batches(sample_ids, config.seed, plan.index, config.micro_batch_size,
                                    acc.process_index, acc.num_processes)
        groups = [micro[i : i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
        for step_in_epoch in range(progress.step_in_epoch, len(groups)):
            t0 = time.perf_counter()
            batches = [collate([run.store.encoded(s) for s in ids], run.tokenizer.pad_token_id) for ids in groups[step_in_epoch]]
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            stats = train_step(run, model, batches, plan, optimizer, scheduler)
            progress.advance()
            elapsed = time.perf_counter() - t0
            record = {"step": progress.global_step, "epoch": plan.index, "stage": plan.stage,
                      "temperature": plan.temperature, "lr": lr,
                      "tokens_per_second": stats["tokens"] * acc.num_processes / elapsed, **stats}
            metrics.write(record, acc.is_main_process)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", kd=f"{stats['kd']:.3f}", tok_s=f"{record['tokens_per_second']:.0f}")
            if progress.global_step % config.save_every_steps == 0:
                state_io.save(run, model, optimizer, scheduler)
            _crash_hook(progress.global_step)
            if config.max_steps is not None and progress.global_step >= config.max_steps:
                stopped = True
                break
        if stopped:
            break
        progress.finish_epoch()
        state_io.save(run, model, optimizer, scheduler)
        if plan.index in schedule.stage_ends():
            checkpoint = state_io.save_checkpoint(run, model, f"stage-{plan.stage}")
            if config.eval_sets and acc.is_main_process:
                evaluate_stage(run, checkpoint, plan.stage)
    bar.close()
    state_io.save(run, model, optimizer, scheduler)
    return state_io.save_checkpoint(run, model, "final")


def evaluate_stage(run: Run, checkpoint: Path, stage: int) -> None:
    """Evaluate a stage checkpoint on the dev sets (the papers keep the best checkpoint by ROUGE-L)."""
    from syllabus.evaluate.protocol import EvalProtocol
    from syllabus.evaluate.run import EvalConfig, evaluate

    config = run.config
    summary = evaluate(EvalConfig(model=str(checkpoint), out=str(run.out / "eval" / checkpoint.name),
                                  sets=config.eval_sets, limit=config.eval_limit,
                                  protocol=EvalProtocol(seeds=config.eval_seeds), engine="hf", overwrite=True),
                       progress=False)
    score = summary["results"]["average"]
    best_file = run.out / "checkpoints" / "best.json"
    best = json.loads(best_file.read_text()) if best_file.exists() else None
    if best is None or score > best["average"]:
        shutil.rmtree(run.out / "checkpoints" / "best", ignore_errors=True)
        shutil.copytree(checkpoint, run.out / "checkpoints" / "best")
        atomic_write_json(best_file, {"checkpoint": checkpoint.name, "stage": stage, "average": score})


def _crash_hook(step: int) -> None:
    """Test hook: SIGKILL after N optimizer steps, as a preemption would."""
    import os
    import signal

    limit = os.environ.get("SYLLABUS_KILL_AFTER_STEPS")
    if limit is not None and step >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def train(config: TrainConfig) -> Path:
    """Build, (resume,) fit. Returns the final checkpoint directory."""
    run = setup(config)
    existing = state_io.load_progress(run.out)  # --resume on a fresh directory simply starts
    if existing is not None and not config.resume:
        raise TrainError(
            f"{run.out} holds this run, stopped at step {existing.global_step}; pass --resume to continue it "
            "or --overwrite to start over"
        )
    if existing is not None:
        run.progress = existing
        state_io.load_student(run.out, run.student)
    return fit(run)
