"""Scoring engines. `open_engine` keeps at most one engine alive, so only one model is ever in memory, and reuses
it when the same model is asked for again (an engine start costs 35-100 s on CPU)."""

from __future__ import annotations

import gc
from typing import Any

from .base import Engine, Generation, GenerationParams, ScoringRequest

ENGINES = ("vllm", "hf")
ENGINE_CHOICES = ("auto", *ENGINES)  # auto: vLLM where it is installed (and, for scoring CE, on GPU)
BACKENDS = ("local", "ray")  # where engines run: this process, or Ray replicas (core/backends.py)
_current: tuple[tuple, Engine] | None = None


def open_engine(kind: str, model_path: str, **options: Any) -> Engine:
    """Return an engine for `model_path`, closing whichever other engine is open.

    Args:
        kind: "vllm" or "hf".
        model_path: local Hugging Face model directory.
        options: engine settings (dtype, max_model_len, ...); a different value starts a new engine.
    """
    global _current
    key = (kind, str(model_path), tuple(sorted(options.items())))
    if _current is not None and _current[0] == key:
        return _current[1]
    close_engine()
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        engine: Engine = VLLMEngine(str(model_path), **options)
    elif kind == "hf":
        from .hf_engine import HFEngine

        engine = HFEngine(str(model_path), **options)
    else:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    _current = (key, engine)
    return engine


def close_engine() -> None:
    global _current
    if _current is not None:
        _current[1].close()
        _current = None
        gc.collect()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


__all__ = ["BACKENDS", "ENGINES", "ENGINE_CHOICES", "Engine", "Generation", "GenerationParams", "ScoringRequest", "open_engine", "close_engine", "vllm_available"]
