"""`curate score` settings: one frozen, validated dataclass (light to import: the CLI takes its defaults from here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus.core.engines import BACKENDS, ENGINE_CHOICES
from syllabus.core.engines.base import GenerationParams
from syllabus.core.precision import DTYPES

from . import data as data_mod


class ScoreError(ValueError):
    """A scoring run cannot start or continue (bad arguments, mismatched resume, incompatible inputs)."""


@dataclass(frozen=True)
class ScoreConfig:
    """Everything a scoring run depends on. Its JSON form (minus `out`/`overwrite`) is the run's identity."""

    data: str
    out: str
    student: str | None = "default"  # None: a teacher-only table, to reuse with --teacher-from
    teacher: str | None = "default"
    teacher_from: str | None = None
    preset: str = "minillm"
    instruction_field: str | None = None
    input_field: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    template: str = "alpaca"
    split: str = "train"
    limit: int | None = None
    max_seq_len: int = 1024
    truncate: bool = False
    generation: GenerationParams = field(default_factory=GenerationParams)
    gen_engine: str = "auto"
    ce_engine: str = "auto"
    dtype: str = "auto"  # bfloat16 where native, else float32 (core/precision.py); resolved when scoring starts
    part_size: int = 256
    batch_tokens: int | None = None  # transformers CE batches; None: 2048 on CPU (cache-friendly), 16384 on GPU
    padding_free: bool | None = None  # transformers CE pass packed; None: where attention is flash-attention
    pack_tokens: int = 512  # packed CE rows under sdpa/eager (hf_engine.SCORING_PACK_TOKENS); flash: one per forward
    teacher_topk: int = 0  # keep the teacher's top K at every response token (core/topk_cache.py); 0: no cache
    num_shards: int = 1
    shard_index: int = 0
    tensor_parallel_size: int = 1
    backend: str = "local"  # where the passes run: this process, or a Ray cluster (curate/backends.py)
    ray_address: str | None = None
    replicas: int | None = None  # Ray: engines to run; None: one per tensor_parallel_size GPUs (one without GPUs)
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    keep_every: int = 2
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.preset not in data_mod.PRESETS:
            raise ScoreError(f"unknown preset {self.preset!r}; choose one of {', '.join(data_mod.PRESETS)}")
        if self.template not in data_mod.TEMPLATES:
            raise ScoreError(f"unknown template {self.template!r}; choose one of {', '.join(data_mod.TEMPLATES)}")
        if self.gen_engine not in ENGINE_CHOICES or self.ce_engine not in ENGINE_CHOICES:
            raise ScoreError(f"engines: --gen-engine and --ce-engine are one of {', '.join(ENGINE_CHOICES)}")
        if self.dtype not in DTYPES:
            raise ScoreError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ScoreError(f"--shard-index must be in [0, {self.num_shards}), got {self.shard_index}")
        if self.part_size < 1 or self.max_seq_len < 2 or (self.batch_tokens is not None and self.batch_tokens < 1) \
                or self.pack_tokens < 1:
            raise ScoreError("--part-size >= 1, --max-seq-len >= 2, --batch-tokens >= 1 and --pack-tokens >= 1 are "
                             "required")
        if self.teacher is None and self.teacher_from is None:
            raise ScoreError("give a --teacher, or --teacher-from TABLE to reuse the teacher scores of another table")
        if self.student is None and self.teacher is None:
            raise ScoreError("a teacher-only table (--student none) needs a --teacher")
        if self.teacher_topk < 0:
            raise ScoreError(f"--teacher-topk must be >= 0 (0: no cache), got {self.teacher_topk}")
        if self.backend not in BACKENDS:
            raise ScoreError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.backend == "local" and (self.ray_address or self.replicas):
            raise ScoreError("--ray-address and --replicas need --backend ray")
        if self.replicas is not None and self.replicas < 1:
            raise ScoreError(f"--replicas must be >= 1, got {self.replicas}")
        if self.limit is not None and self.limit < 1:
            raise ScoreError(f"--limit must be >= 1, got {self.limit}")

    def fields(self) -> data_mod.FieldMap:
        return dataclasses.replace(data_mod.PRESETS[self.preset], **self.named_fields())

    def named_fields(self) -> dict[str, str]:
        """The fields named by flag, by role: unlike a preset's defaults, each must be a field of the data."""
        named = {
            "instruction": self.instruction_field,
            "input": self.input_field,
            "prompt": self.prompt_field,
            "response": self.response_field,
        }
        return {role: name for role, name in named.items() if name is not None}

    def identity(self) -> dict[str, Any]:
        """The settings that decide the table's content (where it is written and --overwrite do not)."""
        ident = dataclasses.asdict(self)
        for key in ("out", "overwrite", "backend", "ray_address", "replicas"):  # where it runs, not what
            ident.pop(key)
        if not self.teacher_topk:  # absent when unused: runs scored before the cache existed keep their identity
            ident.pop("teacher_topk")
        for key in ("data", "student", "teacher", "teacher_from"):  # one file, however the user spelled its path
            if ident[key] is not None and Path(ident[key]).expanduser().exists():
                ident[key] = str(Path(ident[key]).expanduser().resolve())
        return ident
