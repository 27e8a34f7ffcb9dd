"""The MiniLLM/DistiLLM evaluation protocol and its per-row metrics."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation

from syllabus.core.templates import TEMPLATES

DEFAULT_SEEDS = (10, 20, 30, 40, 50)


@dataclass(frozen=True)
class EvalProtocol:
    """Sampling settings of the papers' tables (MiniLLM protocol). Runs compare only under equal protocols."""

    max_prompt_tokens: int = 256  # prompts are cut to their first 256 tokens
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0  # and no top-k
    no_repeat_ngram_size: int = 6
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    template: str = "alpaca"  # how a row's instruction becomes a prompt: the papers' Alpaca, the chat template, or as given

    def __post_init__(self) -> None:
        # the sampling checks repeat GenerationParams', so that a bad value fails before a model loads
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.max_prompt_tokens < 1 or self.max_new_tokens < 1:
            raise ValueError("max_prompt_tokens and max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; choose one of {', '.join(TEMPLATES)}")

    def as_dict(self) -> dict:
        """The protocol as runs record and `compare` checks it; the papers' Alpaca template is left out, so runs
        recorded before the template was a setting compare equal to Alpaca runs."""
        out = {**asdict(self), "seeds": list(self.seeds)}
        if self.template == "alpaca":
            del out["template"]
        return out


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _canonical(number: str) -> str | None:
    cleaned = number.replace(",", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    normal = value.normalize()
    return format(normal, "f") if normal == normal.to_integral() else str(normal)


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a GSM8K solution, canonicalised ("1,000.00" -> "1000").

    The number after the last "####" when there is one (the references' format), else the last number in the text.
    """
    if "####" in text:
        match = _NUMBER.search(text.rsplit("####", 1)[1])
        if match:
            return _canonical(match.group())
    numbers = _NUMBER.findall(text)
    return _canonical(numbers[-1]) if numbers else None


def gsm8k_correct(generation: str, reference: str) -> bool:
    predicted = extract_final_number(generation)
    return predicted is not None and predicted == extract_final_number(reference)


def score_row(metric: str, generation: str, references: tuple[str, ...]) -> float:
    """Per-row score x100: ROUGE-L F1 (max over references) or GSM8K exact match of the final number."""
    from syllabus.core.rouge import rouge_l  # here: the CLI imports this module for the protocol's defaults

    if metric == "gsm8k_accuracy":
        return 100.0 * gsm8k_correct(generation, references[0])
    return 100.0 * rouge_l(generation, references)
