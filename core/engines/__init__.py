"""Scoring engines: `open_engine` starts one; an `EngineSlot` holds at most one open, reused while the same model is
asked for, and is owned (opened and closed) by whoever runs engine work in a process."""

from __future__ import annotations

import gc
from typing import Any

from .base import Engine, Generation, GenerationParams, ScoringRequest

ENGINES = ("vllm", "hf")
ENGINE_CHOICES = ("auto", *ENGINES)  # auto: vLLM where it is installed (and, for scoring CE, on GPU)
BACKENDS = ("local", "ray")  # where engines run: this process, or Ray replicas (core/backends.py)


def open_engine(kind: str, model_path: str, **options: Any) -> Engine:
    """Start an engine for `model_path`; the caller owns it and closes it (`engine.close()`), or holds it in an
    `EngineSlot`.

    Args:
        kind: "vllm" or "hf".
        model_path: local Hugging Face model directory.
        options: engine settings (dtype, max_model_len, ...).
    """
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(str(model_path), **options)
    if kind == "hf":
        from .hf_engine import HFEngine

        return HFEngine(str(model_path), **options)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")


class EngineSlot:
    """At most one open engine, kept while the same model and settings are asked for (a start costs 35-100 s on
    CPU) and closed before another starts, so that one model at a time is in memory.

    Whoever runs engine work in a process owns one and closes it: the local backend for the command's process
    (`core/backends.py:LocalBackend`, closed when the pass's backend closes), each Ray replica for its actor. The
    workers (`curate/passes.py`, `evaluate/run.py`) take their engine from the slot they are handed.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._engine: Engine | None = None

    def get(self, kind: str, model_path: str, **options: Any) -> Engine:
        """The engine for `model_path` with these settings: the open one if it is that, else a new one."""
        key = (kind, str(model_path), tuple(sorted(options.items())))
        if self._engine is None or self._key != key:
            self.close()
            self._engine, self._key = open_engine(kind, model_path, **options), key
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = self._key = None
            gc.collect()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


__all__ = ["BACKENDS", "ENGINES", "ENGINE_CHOICES", "Engine", "Generation", "GenerationParams", "ScoringRequest", "open_engine", "EngineSlot", "vllm_available"]
