"""The one place the default number format is decided: bf16 where the machine computes it natively, else fp32.

Every command's `--dtype` (engines) and `train run --precision` default to "auto", resolved once when the command
starts, on the machine that launches it, and recorded resolved (table metadata, run identity, evaluation summary),
so a resumed run on another machine is held to the format it started with. An explicit value always wins.

Why not bf16 everywhere: torch computes bf16 matmuls natively on CUDA GPUs from Ampere on and on CPUs with
AVX512-BF16 or AMX; elsewhere it emulates them. On an AVX2-only EPYC a 2048x2048 bf16 matmul ran at 0.27 GFLOP/s
against 101 for fp32 (about 370x slower), and SmolLM2-135M scored 51 tokens/s in bf16 against 224 in fp32
(docs/benchmarks.md, "Machines without native bf16"). GPUs without bf16 (V100, T4) get float16 for inference, as
vLLM's own "auto" does, and fp32 for training (Syllabus has no fp16 loss scaling).
"""

from __future__ import annotations

import platform
import warnings
from functools import cache
from pathlib import Path

DTYPES = ("auto", "bfloat16", "float16", "float32")  # engines' --dtype (curate score, evaluate run)
PRECISIONS = ("auto", "bf16", "fp32")  # train run --precision: bf16 autocast over fp32 weights, or none


@cache
def native_bf16() -> bool:
    """Whether this machine's torch device computes bf16 matmuls natively (CUDA: Ampere or later; CPU: AVX512-BF16,
    AMX, or an Arm core with the BF16 extension)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" in _cpu_features()  # aarch64 Linux lists the BF16 extension as "bf16"


def _cpu_features() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no probe, so the safe format
        return set()
    return {flag for line in text.splitlines() if line.lower().startswith(("flags", "features"))
            for flag in line.partition(":")[2].split()}


def resolve_dtype(choice: str) -> str:
    """An engine dtype: `choice` itself, or for "auto" bfloat16 where native, else float16 on a GPU, float32 on a CPU.

    Raises:
        ValueError: `choice` is not one of DTYPES.
    """
    if choice not in DTYPES:
        raise ValueError(f"unknown dtype {choice!r}; choose one of {', '.join(DTYPES)}")
    if choice != "auto":
        return choice
    if native_bf16():
        return "bfloat16"
    _warn_no_bf16()
    import torch

    return "float16" if torch.cuda.is_available() else "float32"


def resolve_precision(choice: str) -> str:
    """A training precision: `choice` itself, or for "auto" bf16 where native, else fp32.

    Raises:
        ValueError: `choice` is not one of PRECISIONS.
    """
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    if native_bf16():
        return "bf16"
    _warn_no_bf16()
    return "fp32"


@cache  # once per process, whichever command asks first
def _warn_no_bf16() -> None:
    warnings.warn("this machine has no native bf16 (no AVX512-BF16 or AMX on this CPU, or a GPU before Ampere), "
                  "where bf16 runs emulated and many times slower: using float32 (float16 for inference on a GPU). "
                  "Pass --dtype bfloat16 / --precision bf16 to insist", stacklevel=2)
