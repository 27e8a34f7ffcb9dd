"""What every engine does for scoring: teacher-forced response NLL and sampled generation with raw log-probs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from syllabus.core.config import setting

if TYPE_CHECKING:
    from syllabus.core.logits import TopK


def request_seed(seed: int, key: str) -> int:
    """Per-request sampling seed from a run seed and a stable key (sample_id): a generation then depends on neither
    the batch it ran in nor where a resumed run restarted."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings. Defaults follow SRD's "reflection": near-greedy decoding (temperature 0.01)."""

    temperature: float = setting(0.01, "student sampling temperature (SRD: near-greedy)")
    top_p: float = setting(1.0, "nucleus sampling: sample from the smallest set of tokens whose probability reaches p")
    max_new_tokens: int = setting(256, "longest student generation in tokens")
    num_samples: int = setting(1, "generations per prompt; rouge_l and output_ce are their means")
    seed: int = setting(0, "sampling seed")
    no_repeat_ngram_size: int = 0  # 0 = off; the MiniLLM evaluation protocol uses 6 (EvalProtocol sets it)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError("max_new_tokens and num_samples must be >= 1")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]  # generated tokens, EOS included when the model stopped by itself
    logprobs: list[float]  # raw (temperature 1) log-prob of each generated token under the generating model


@dataclass(frozen=True)
class ScoringRequest:
    ids: list[int]  # prompt + response
    prompt_len: int  # positions >= prompt_len are scored


class Engine(Protocol):
    name: str

    def response_nll(self, requests: list[ScoringRequest]) -> list[float]:
        """Mean NLL (nats) of ids[prompt_len:] given everything before, teacher-forced, temperature 1."""

    def response_scores(self, requests: list[ScoringRequest], topk: int = 0) -> tuple[list[float], list[TopK] | None]:
        """`response_nll`, and with `topk` > 0 each request's top K at its response tokens (`core.logits.TopK`,
        (T, K) on the CPU, temperature 1), from the same forward."""

    def generate(self, prompts: list[list[int]], params: GenerationParams, seeds: list[int],
                 budgets: list[int] | None = None) -> list[list[Generation]]:
        """`params.num_samples` generations per prompt; `seeds[i]` seeds prompt i where the engine allows it, and
        `budgets[i]` (default `params.max_new_tokens`) is the most tokens prompt i's generations may have."""

    def close(self) -> None: ...
