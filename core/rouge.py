"""ROUGE-L exactly as the papers report it: rouge-score's `rougeL` F1 with the Porter stemmer, max over references.

One implementation, shared by `curate score` (the student-output column) and `evaluate` (the x100 scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F1 of `prediction` against the best-matching reference, in [0, 1].

    Args:
        prediction: generated text.
        references: one reference or a list of them (S-NI rows carry several).

    Returns:
        max over references of rouge-score's rougeL F-measure; 0.0 when there is no reference.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        return 0.0
    scorer = _scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs)
