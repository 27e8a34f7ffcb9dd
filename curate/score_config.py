"""`curate score` settings: one frozen, validated dataclass (light to import: the CLI takes its defaults from here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus.core import settings
from syllabus.core.config import check_choices, setting
from syllabus.core.engines.base import GenerationParams
from syllabus.core.models import DEFAULT_STUDENT, DEFAULT_TEACHER, recorded_name
from syllabus.core.settings import check_placement

from . import data as data_mod


class ScoreError(ValueError):
    """A scoring run cannot start or continue (bad arguments, mismatched resume, incompatible inputs)."""


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Everything a scoring run depends on. Its JSON form (minus `out`/`overwrite`) is the run's identity.
    `curate score`'s options and its `--config` YAML keys are these fields (the sampling ones may also go under
    `generation:` in YAML)."""

    data: str = setting("dolly_dev_1000", "jsonl/json/parquet/csv file, a directory of them, a datasets hub id, or "
                        "dolly_dev_1000", argument=True)
    out: str = setting(help="table directory to write (resumed if it holds this same run)", flags=("--out", "-o"),
                       path=True)
    student: str | None = setting(DEFAULT_STUDENT, "student: local HF directory, hub id, default-student (the "
                                  "embedded pair's, pruned SmolLM2), or `none` (a teacher-only table, to reuse with "
                                  "--teacher-from)")
    teacher: str | None = setting(DEFAULT_TEACHER, "teacher: local HF directory, hub id, or default-teacher (the "
                                  "embedded SmolLM2-135M-Instruct; ignored with --teacher-from)")
    teacher_from: str | None = setting(None, "reuse teacher_ce (and, with --teacher-topk, the top-K cache) from "
                                       "this table instead of running the teacher", path=True)
    preset: str = setting("minillm", "field preset: minillm (prompt/instruction/input/output) or dolly",
                          choices=tuple(data_mod.PRESETS))
    instruction_field: str | None = setting(None, "override the preset's instruction field")
    input_field: str | None = setting(None, "override the preset's input/context field")
    prompt_field: str | None = setting(None, "override the preset's ready-made prompt field")
    response_field: str | None = setting(None, "override the preset's response field (string or list)")
    template: str = settings.template("alpaca (MiniLLM's template), chat (the tokenizer's) or none (the prompt as "
                                      "is)")
    split: str = setting("train", "split, for hub datasets")
    limit: int | None = setting(None, "score only the first N usable rows")
    max_seq_len: int = setting(1024, "prompt + response tokens; longer rows get status too_long")
    truncate: bool = setting(False, "truncate over-long rows instead of marking them too_long")
    generation: GenerationParams = field(default_factory=GenerationParams)
    gen_engine: str = settings.engine("student's generation")
    ce_engine: str = settings.engine("cross-entropy passes", auto="vllm on GPU, hf on CPU")
    dtype: str = settings.dtype()
    attention: str = settings.attention()
    part_size: int = setting(256, "rows per resumable part")
    batch_tokens: int | None = setting(None, "padded tokens per transformers forward",
                                       shown="2048 on CPU (cache-friendly), 16384 on GPU")
    padding_free: bool | None = setting(None, "transformers CE pass: pack rows end to end, or length-sorted padded "
                                        "batches", flags=("--padding-free/--padded",),
                                        shown="packed where attention is flash-attention; padded elsewhere, faster "
                                        "on CPU")
    pack_tokens: int = setting(512, "longest packed row of the transformers CE pass (sdpa, eager; "
                               "flash-attention packs a row per forward)")  # core.scoring.SCORING_PACK_TOKENS
    teacher_topk: int = setting(0, "also keep the teacher's top K log-probs at every response token beside the "
                                "table, so that `train run --teacher cached` needs no teacher (0: no cache; 128, "
                                "the measured choice, costs about 1 KB per response token: docs/methods.md, 'K+1 "
                                "bins')")  # core/topk_cache.py
    num_shards: int = setting(1, "split the rows into N shards by sample_id (many machines)")
    shard_index: int = setting(0, "which shard this run scores")
    tensor_parallel_size: int = settings.tensor_parallel_size()
    backend: str = settings.backend()  # where the passes run (core/backends.py)
    ray_address: str | None = settings.ray_address()
    replicas: int | None = settings.replicas()
    gpu_memory_utilization: float | None = setting(None, "vLLM memory share", shown="0.9 on GPU, 0.5 on CPU")
    enforce_eager: bool | None = None
    keep_every: int = settings.keep_every()
    overwrite: bool = setting(False, "replace OUT if it holds a different run")

    def __post_init__(self) -> None:
        if self.student == "none":  # the command line's word for a teacher-only table
            object.__setattr__(self, "student", None)
        if self.teacher_from is not None:  # the teacher's scores come from that table
            object.__setattr__(self, "teacher", None)
        check_choices(self, ScoreError)
        check_placement(self, ScoreError)
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
        if ident["attention"] in ("auto", "sdpa"):  # what models loaded with before the setting existed
            ident.pop("attention")
        for role in ("student", "teacher"):  # the embedded pair, however it was named
            ident[role] = recorded_name(ident[role], role)
        for key in ("data", "student", "teacher", "teacher_from"):  # one file, however the user spelled its path
            if ident[key] is not None and Path(ident[key]).expanduser().exists():
                ident[key] = str(Path(ident[key]).expanduser().resolve())
        return ident
