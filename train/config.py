"""`train run` configuration: one frozen, validated dataclass; YAML files may only use its field names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syllabus.core import settings
from syllabus.core.config import ConfigError, check_choices, from_sources, setting
from syllabus.core.loss_params import LOSSES, resolve_loss_params
from syllabus.core.models import DEFAULT_STUDENT, DEFAULT_TEACHER
from syllabus.core.on_policy import DEFAULT_SHARE
from syllabus.core.on_policy import AUTO_ENGINE_RULE, ON_POLICY_ENGINES
from syllabus.core.on_policy import MODES as ON_POLICY_MODES
from syllabus.core.precision import PRECISIONS

SCHEDULERS = ("cosine", "linear", "constant")
CACHED = "cached"  # `teacher`: no model, the table's top-K cache (`curate score --teacher-topk K`)
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "mlflow")  # `train run --report-to`


@dataclass(frozen=True)
class TrainConfig:
    """Every `train run` setting: the command's options and the `--config` YAML keys are these fields."""

    manifest: str = setting(help="schedule directory (manifest.json + epoch shards)", path=True)
    out: str = setting(help="run directory", flags=("--out", "-o"), path=True)
    student: str = setting(DEFAULT_STUDENT, "student: directory, hub id or default-student (the embedded pair's, "
                           "pruned SmolLM2)")
    teacher: str = setting(DEFAULT_TEACHER, "teacher: directory, hub id, default-teacher, or `cached`: no model, "
                           "the table's top-K cache (`curate score --teacher-topk K`)")  # a model, or CACHED
    table: str | None = setting(None, "difficulty table", path=True, shown="the one the schedule names")
    loss: str | None = setting(None, "override every epoch's loss (loss ablations over one schedule)",
                               choices=LOSSES, shown="each epoch's, from the schedule")
    loss_params: dict[str, float] = setting(help="loss parameter key=value (skew, beta, lambda), repeatable",
                                            flags=("--loss-param",), factory=dict)
    kd_weight: float | None = setting(None, "override every epoch's kd_weight", shown="each epoch's")
    on_policy: str | None = setting(None, "override every epoch's on-policy rule: gkd trains a share of each step's "
                                    "samples on responses the student samples, with GKD's loss (jsd, beta 0.1, "
                                    "no SFT term); distillm lets DistiLLM's adaptive threshold choose fresh, "
                                    "replayed or ground-truth micro-batches, with skew KL 0.1; both unless --loss "
                                    "/ --kd-weight say otherwise; off trains on the ground truth",
                                    choices=ON_POLICY_MODES, shown="each epoch's, from the schedule")
    on_policy_share: float | None = setting(None, "on-policy: the share of each optimizer step's samples trained on "
                                            "the student's own responses (GKD's lambda)", shown=str(DEFAULT_SHARE))
    on_policy_max_new_tokens: int | None = setting(None, "on-policy: the longest response the student generates",
                                                   shown="the table's length limit minus the prompt")
    on_policy_engine: str = setting("auto", "on-policy: what generates the student's responses: transformers "
                                    "generate on the model being trained, or vLLM in this process with the "
                                    "student's weights loaded into it every --on-policy-sync-every steps",
                                    choices=ON_POLICY_ENGINES, shown="auto: " + AUTO_ENGINE_RULE)
    on_policy_sync_every: int = setting(1, "on-policy, vLLM: optimizer steps between loads of the student's weights "
                                        "into the engine (TRL's vllm_sync_frequency)")
    on_policy_vllm_memory: float = setting(0.3, "on-policy, vLLM on a GPU: the share of its memory the engine may "
                                           "hold, weights and KV cache (TRL's colocate default); on CPU the KV "
                                           "cache holds one micro-batch of full-length sequences")
    distillm_valid_set: str = setting("dollyeval", "distillm: the evaluation set (name or JSONL) whose ground-truth "
                                      "CE under the student raises the threshold")
    distillm_valid_rows: int = setting(100, "distillm: its first N rows are the validation rows")
    distillm_valid_every: int | None = setting(None, "distillm: steps between validations (DistiLLM's eval "
                                               "interval)", shown="each epoch's end")
    distillm_loss_eps: float = setting(0.1, "distillm: a validation CE this much above the last reference raises "
                                       "the threshold by 0.1")
    distillm_init_threshold: float = setting(0.0, "distillm: the threshold at the start")
    distillm_capacity: int = setting(1000, "distillm: the most student outputs the replay buffer keeps")
    lr: float = setting(1e-5, "peak learning rate")  # DA-KD's reproducibility card: AdamW, cosine, 1e-5
    weight_decay: float = setting(0.0, "AdamW weight decay (L2M-KD uses 0.01)")
    warmup_ratio: float = setting(0.0, "share of each LR horizon spent warming up")
    scheduler: str = setting("cosine", "LR schedule", choices=SCHEDULERS)
    micro_batch_size: int = setting(8, "samples per forward and backward pass")
    padding_free: bool = setting(True, "pack each micro-batch's samples end to end (no compute on padding; same "
                                 "samples and loss) or pad them", flags=("--padding-free/--padded",),
                                 shown="padding-free where the models' attention allows it")
    pack_tokens: int = setting(512, "longest packed row in tokens, sdpa and eager attention (flash-attention packs "
                               "one row)")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    max_seq_len: int | None = setting(None, "longest prompt + response in tokens; a limit below a scheduled row's "
                                      "length is refused", shown="the limit the table was scored with")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this before each optimizer step")
    precision: str = setting("auto", "bf16 autocast or fp32; auto: bf16 where the machine has native bf16 (GPUs, "
                             "AVX512-BF16/AMX CPUs)", choices=PRECISIONS)  # resolved at setup (core/precision.py)
    seed: int = setting(0, "seed of the data order, the dropout and the sampling")
    disable_dropout: bool = setting(False, "train with dropout off (TRL's GKD default); the papers keep the model's "
                                    "dropout")
    attention: str = settings.attention("the student and the teacher")
    gradient_checkpointing: bool = setting(False, "recompute the student's decoder layers in the backward pass "
                                           "instead of keeping their activations (about a third more compute, "
                                           "activations of one layer at a time; with packing, LoRA and FSDP)")
    loss_chunk_tokens: int = setting(1024, "response tokens per chunk of the KD loss (bounds the memory of the "
                                     "vocabulary-wide logits)")
    save_every_steps: int = setting(50, "resumable snapshot interval in optimizer steps (Hugging Face checkpoints "
                                    "come at stage ends and at the end)")
    rescore_batch_tokens: int | None = setting(None, "DA-KD: tokens per forward of the re-scoring between epochs",
                                               shown="the scoring engine's")
    keep_every: int = settings.keep_every()
    eval_sets: tuple[str, ...] = setting(help="comma-separated sets to evaluate at stage ends (the best checkpoint "
                                         "by average ROUGE-L is kept)", factory=tuple)
    eval_limit: int | None = setting(100, "first N rows of each set evaluated at stage ends")
    eval_seeds: tuple[int, ...] = setting((10,), "comma-separated sampling seeds of the stage-end evaluations")
    max_steps: int | None = setting(None, "stop after N optimizer steps (smoke runs, benchmarks)")
    report_to: str = setting("none", "also log every step to this tracker (OUT/trackers for the local ones; "
                             "metrics.jsonl is written either way)", choices=TRACKERS)
    lora: str | None = setting(None, "train LoRA adapters, not every weight (pip install 'syllabus[lora]'): "
                               "r=16,alpha=32,dropout=0.05,target=all-linear (or q_proj+v_proj); checkpoints hold "
                               "the merged model and the adapter in adapter/")
    fsdp: bool = setting(False, "shard the student's weights, gradients and optimizer state over the processes "
                         "(FSDP2, one unit per decoder layer); an accelerate FSDP config does the same")
    resume: bool = setting(False, "continue the run in --out from its last snapshot (a fresh --out simply starts)")
    overwrite: bool = setting(False, "start over in --out; with --resume, replace --out only if it holds another "
                              "run")

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.micro_batch_size >= 1 and self.grad_accum >= 1, "micro_batch_size and grad_accum must be >= 1"),
            (self.max_seq_len is None or self.max_seq_len >= 2, "max_seq_len must be >= 2"),
            (self.loss_chunk_tokens >= 1, "loss_chunk_tokens must be >= 1"),
            (self.pack_tokens >= 1, "pack_tokens must be >= 1"),
            (self.kd_weight is None or 0 <= self.kd_weight <= 1, "kd_weight must be in [0, 1]"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.save_every_steps >= 1, "save_every_steps must be >= 1"),
            (self.on_policy_share is None or 0 <= self.on_policy_share <= 1, "on_policy_share must be in [0, 1]"),
            (self.on_policy_max_new_tokens is None or self.on_policy_max_new_tokens >= 1,
             "on_policy_max_new_tokens must be >= 1"),
            (self.on_policy_sync_every >= 1, "on_policy_sync_every must be >= 1"),
            (0 < self.on_policy_vllm_memory < 1, "on_policy_vllm_memory must be in (0, 1)"),
            (self.distillm_valid_rows >= 1 and self.distillm_capacity >= 1,
             "distillm_valid_rows and distillm_capacity must be >= 1"),
            (self.distillm_valid_every is None or self.distillm_valid_every >= 1, "distillm_valid_every must be >= 1"),
            (0 <= self.distillm_init_threshold <= 1, "distillm_init_threshold must be in [0, 1]"),
            (self.distillm_loss_eps >= 0, "distillm_loss_eps must be >= 0"),
        ]
        check_choices(self)
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.lora_settings()  # a bad --lora fails here, before any model loads
        if self.fsdp and self.lora:
            raise ConfigError("--fsdp with --lora is not supported yet: train the adapters with DDP (without --fsdp); "
                              "the frozen base is replicated per rank there, as the teacher is")
        if self.loss is not None:  # the override of every epoch's loss: checked before any model loads
            try:
                resolve_loss_params(self.loss, self.loss_params)
            except ValueError as err:
                raise ConfigError(f"--loss {self.loss}: {err}") from None
        elif self.loss_params:
            raise ConfigError("--loss-param needs --loss: the schedule's own losses keep their parameters")
        if self.on_policy == "distillm" and self.on_policy_share is not None:
            raise ConfigError("--on-policy-share: distillm draws its own share (its adaptive threshold); the share "
                              "is --on-policy gkd's")
        if self.on_policy in (None, "off") and self.on_policy_share is not None:
            raise ConfigError("--on-policy-share needs --on-policy gkd (it overrides every epoch's rule with its own "
                              "share; a schedule's on-policy epochs keep theirs without it)")

    @classmethod
    def from_sources(cls, yaml_path: Path | None, given: dict[str, Any]) -> TrainConfig:
        """YAML values first, then the values given on the command line, each checked against its field.

        Raises:
            ConfigError: an unknown YAML key, a value of the wrong type (`lr: abc`), a missing manifest or out
                directory, or a value out of range.
        """
        return from_sources(cls, yaml_path, given, "train run")

    def lora_settings(self) -> dict[str, Any] | None:
        """`lora` as LoRA settings: rank r, alpha (default 2r), dropout (0.05) and target modules (`+`-separated
        module names, or all-linear, the default); None without `lora`.

        Raises:
            ConfigError: an unknown key, or a value out of range (naming it).
        """
        if self.lora is None:
            return None
        settings: dict[str, Any] = {"dropout": 0.05, "target": "all-linear"}
        for item in (part.strip() for part in self.lora.split(",") if part.strip()):
            key, sep, value = item.partition("=")
            if not sep or key not in ("r", "alpha", "dropout", "target"):
                raise ConfigError(f"--lora {self.lora!r}: {item!r} is not one of r=INT, alpha=NUM, dropout=NUM, "
                                  "target=NAME+NAME (or all-linear)")
            try:
                settings[key] = (int(value) if key == "r" else value if key == "target" else float(value))
            except ValueError:
                raise ConfigError(f"--lora {self.lora!r}: {key} takes a number, got {value!r}") from None
        if settings.get("r", 0) < 1 or not 0 <= settings["dropout"] < 1:
            raise ConfigError(f"--lora {self.lora!r}: needs r >= 1 (r=16) and a dropout in [0, 1)")
        settings.setdefault("alpha", 2.0 * settings["r"])
        if not (math.isfinite(settings["alpha"]) and settings["alpha"] > 0):  # the update's scale, alpha / r
            raise ConfigError(f"--lora {self.lora!r}: alpha scales the adapters' update (alpha / r) and must be a "
                              f"positive number, got {settings['alpha']:g}; the usual is 2r "
                              f"(alpha={2 * settings['r']})")
        target = settings["target"]
        settings["target"] = target if target == "all-linear" else [t for t in target.split("+") if t]
        return settings

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
