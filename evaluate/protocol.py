"""The MiniLLM/DistiLLM evaluation protocol and its per-row metrics."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation

from syllabus.core import settings
from syllabus.core.config import check_choices, setting

DEFAULT_SEEDS = (10, 20, 30, 40, 50)


@dataclass(frozen=True)
class EvalProtocol:
    """Sampling settings of the papers' tables (MiniLLM protocol). Runs compare only under equal protocols."""

    max_prompt_tokens: int = setting(256, "prompts are cut to their first N tokens")
    max_new_tokens: int = setting(256, "longest generation in tokens")
    temperature: float = setting(1.0, "sampling temperature")
    top_p: float = setting(1.0, "nucleus sampling: sample from the smallest set of tokens whose probability reaches "
                           "p")  # and no top-k
    no_repeat_ngram_size: int = setting(6, "block repeated n-grams of this size (0: off)")
    seeds: tuple[int, ...] = setting(DEFAULT_SEEDS, "comma-separated sampling seeds, one generation of every set each")
    template: str = settings.template("the papers' Alpaca template, the model's chat template (for a student "
                                      "trained on chat-templated data), or each set's prompt as given")

    def __post_init__(self) -> None:
        # the sampling checks repeat GenerationParams', so that a bad value fails before a model loads
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"--seeds repeats {', '.join(map(str, repeated))}; give each seed once")
        if self.max_prompt_tokens < 1 or self.max_new_tokens < 1:
            raise ValueError("max_prompt_tokens and max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        check_choices(self, ValueError)

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
    """Per-row score x100: ROUGE-L F1 (max over references), GSM8K exact match of the final number, or whether the
    code passes its tests (pass@1: run in the sandbox, `evaluate/code.py`)."""
    from syllabus.core.rouge import rouge_l  # here: the CLI imports this module for the protocol's defaults

    if metric == "pass@1":
        from .code import passes

        return 100.0 * passes(generation, references)
    if metric == "gsm8k_accuracy":
        return 100.0 * gsm8k_correct(generation, references[0])
    return 100.0 * rouge_l(generation, references)
