"""`train run` configuration: one frozen, validated dataclass; YAML files may only use its field names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus.core.config import ConfigError, read_yaml, typed_fields
from syllabus.core.loss_params import resolve_loss_params
from syllabus.core.precision import PRECISIONS

SCHEDULERS = ("cosine", "linear", "constant")
CACHED = "cached"  # `teacher`: no model, the table's top-K cache (`curate score --teacher-topk K`)
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "mlflow")  # `train run --report-to`


@dataclass(frozen=True)
class TrainConfig:
    manifest: str
    out: str
    student: str = "default"
    teacher: str = "default"  # a model, or CACHED
    table: str | None = None  # default: the table the schedule was built from (manifest's table path)
    loss: str | None = None  # override every epoch's loss (loss ablations over one schedule)
    loss_params: dict[str, float] = field(default_factory=dict)
    kd_weight: float | None = None  # override every epoch's kd_weight
    lr: float = 1e-5  # DA-KD's reproducibility card: AdamW, cosine, 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "cosine"
    micro_batch_size: int = 8
    padding_free: bool = True  # pack each micro-batch's samples end to end (same samples, same loss, no padding)
    pack_tokens: int = 512  # longest packed row (or sample) under sdpa/eager; flash-attention packs one row
    grad_accum: int = 1
    max_seq_len: int | None = None  # default: the table's scoring limit (rows are never cut differently than scored)
    max_grad_norm: float = 1.0
    precision: str = "auto"  # bf16 autocast where native, else fp32 (core/precision.py); resolved at setup
    seed: int = 0
    disable_dropout: bool = False  # the papers train with the model's dropout; TRL's GKD disables it by default
    loss_chunk_tokens: int = 1024
    save_every_steps: int = 50  # resumable state; HF checkpoints come at stage ends and at the end
    rescore_batch_tokens: int | None = None  # DA-KD re-scoring forward batches (default: the scoring engine's)
    keep_every: int = 2
    eval_sets: tuple[str, ...] = ()  # evaluate at stage ends (keep the best checkpoint by average ROUGE-L)
    eval_limit: int | None = 100
    eval_seeds: tuple[int, ...] = (10,)
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs, benchmarks)
    report_to: str = "none"  # an experiment tracker, through accelerate's (metrics.jsonl is written either way)
    lora: str | None = None  # train LoRA adapters instead of every weight: "r=16,alpha=32,dropout=0.05,target=all-linear"
    fsdp: bool = False  # shard the student over the processes (FSDP2); an accelerate FSDP config sets it too
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.micro_batch_size >= 1 and self.grad_accum >= 1, "micro_batch_size and grad_accum must be >= 1"),
            (self.max_seq_len is None or self.max_seq_len >= 2, "max_seq_len must be >= 2"),
            (self.loss_chunk_tokens >= 1, "loss_chunk_tokens must be >= 1"),
            (self.pack_tokens >= 1, "pack_tokens must be >= 1"),
            (self.kd_weight is None or 0 <= self.kd_weight <= 1, "kd_weight must be in [0, 1]"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.save_every_steps >= 1, "save_every_steps must be >= 1"),
            (self.report_to in TRACKERS, f"report_to must be one of {TRACKERS}"),
        ]
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

    @classmethod
    def from_sources(cls, yaml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
        """YAML values first, then explicit command-line values (None = not given), each checked against its field.

        Raises:
            ConfigError: an unknown YAML key, a value of the wrong type (`lr: abc`), a missing manifest or out
                directory, or a value out of range.
        """
        values = read_yaml(yaml_path) if yaml_path is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("manifest", "out") if k not in values]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")
        return cls(**typed_fields(cls, values, str(yaml_path or "train run"), what="setting"))

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
