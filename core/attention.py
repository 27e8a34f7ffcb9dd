"""The attention implementation a transformers model is loaded with: one setting (`settings.attention`) for every
command that loads one (`train run`'s student and teacher, the transformers engine of `curate score` and `evaluate
run`; vLLM picks its own attention backend). Light: torch is imported only to resolve "auto".

Packed rows (`core.packing`) work under each: flash-attention 2 reads restarting position ids in one row and runs
varlen kernels, so each sample costs its own length; sdpa, flex attention and eager get the block-diagonal mask
that transformers builds from the position ids, over each row's whole square. `core.packing.packing_is_exact`
checks the layout with the model as loaded, whatever it runs.
"""

from __future__ import annotations

import importlib.util

ATTENTIONS = ("auto", "flash_attention_2", "sdpa", "flex_attention", "eager")
AUTO_ATTENTION_RULE = "flash_attention_2 on a CUDA GPU where flash-attn is installed, else sdpa"
FLASH_INSTALL = "pip install flash-attn --no-build-isolation"


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(choice: str) -> str:
    """The implementation to load models with: `choice` itself, or for "auto" flash-attention 2 where it can run
    (a CUDA GPU and the flash-attn package), else sdpa (torch's fused attention, on every device).

    Raises:
        ValueError: an unknown choice, or flash_attention_2 where it cannot run (no CUDA GPU, or flash-attn
            missing), saying what to install or choose instead.
    """
    if choice not in ATTENTIONS:
        raise ValueError(f"unknown attention {choice!r}; choose one of {', '.join(ATTENTIONS)}")
    if choice not in ("auto", "flash_attention_2"):
        return choice
    import torch

    runnable = torch.cuda.is_available() and flash_attention_installed()
    if choice == "auto":
        return "flash_attention_2" if runnable else "sdpa"
    if not torch.cuda.is_available():
        raise ValueError("--attention flash_attention_2 runs on CUDA GPUs only; use sdpa (or auto) here")
    if not flash_attention_installed():
        raise ValueError(f"--attention flash_attention_2 needs the flash-attn package ({FLASH_INSTALL}, built for "
                         "this machine's torch and CUDA); or use sdpa")
    return choice
