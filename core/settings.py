"""Settings that more than one command has, declared once: each config puts the field in its class
(`backend: str = settings.backend()`), so `curate score` and `evaluate run` share the name, type, default, help and
checks of the engines' placement, number format, attention and prompt template. Light: no torch, no vllm.
"""

from __future__ import annotations

from typing import Any

from syllabus.core.attention import ATTENTIONS, AUTO_ATTENTION_RULE
from syllabus.core.config import setting
from syllabus.core.engines import BACKENDS, ENGINE_CHOICES
from syllabus.core.models import DEFAULT_KEEP_EVERY
from syllabus.core.precision import DTYPES
from syllabus.core.templates import TEMPLATES

RAY = "pip install 'syllabus[ray]'"
KEEP_EVERY_HELP = "which default student: the teacher's decoder layers 0, k, 2k, ... of its 30"


def engine(role: str = "generation", auto: str = "vllm if installed") -> Any:
    return setting("auto", f"engine of the {role}; auto: {auto}", choices=ENGINE_CHOICES)


def dtype() -> Any:
    return setting("auto", "inference dtype; auto: bfloat16 where the machine has native bf16 (GPUs, "
                   "AVX512-BF16/AMX CPUs), else float32", choices=DTYPES)  # resolved when the command starts


def attention(what: str = "the transformers engine's model (vLLM picks its own)") -> Any:
    return setting("auto", f"attention implementation of {what}; auto: {AUTO_ATTENTION_RULE}",
                   choices=ATTENTIONS)  # resolved when the command starts (core/attention.py)


def template(how: str) -> Any:
    return setting("alpaca", f"prompts: {how}", choices=TEMPLATES)


def tensor_parallel_size() -> Any:
    return setting(1, "vLLM tensor parallelism (GPUs per engine)")


def backend() -> Any:
    return setting("local", f"where the engines run: this process, or the replicas of a Ray cluster ({RAY})",
                   choices=BACKENDS)


def ray_address() -> Any:
    return setting(None, "Ray cluster to join (`ray start --head` prints it)",
                   shown="the running one, else a local one")


def replicas() -> Any:
    return setting(None, "Ray: engines to run", shown="one per --tensor-parallel-size GPUs; one without GPUs")


def keep_every() -> Any:
    return setting(DEFAULT_KEEP_EVERY, KEEP_EVERY_HELP)


def check_placement(config: Any, error: type[ValueError]) -> None:
    """The checks of `backend`, `ray_address`, `replicas` and `tensor_parallel_size`, for every config that has them.

    Raises:
        `error`: Ray settings without `--backend ray`, or a count below 1.
    """
    if config.backend == "local" and (config.ray_address or config.replicas):
        raise error("--ray-address and --replicas need --backend ray")
    if config.tensor_parallel_size < 1 or (config.replicas is not None and config.replicas < 1):
        raise error("--tensor-parallel-size and --replicas must be >= 1")
