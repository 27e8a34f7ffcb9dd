"""`no_repeat_ngram_size` for vLLM: the MiniLLM evaluation protocol's n-gram blocking (transformers' semantics).

transformers bans, at each step, every token that would complete an n-gram already present in the sequence
(prompt included). vLLM has no such option, so this is a vLLM v1 logits processor, enabled per request with
`SamplingParams(extra_args={"no_repeat_ngram_size": n})`. The index of (n-1)-gram -> next tokens is updated
incrementally, so a step costs O(new tokens), not O(sequence).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

EXTRA_ARG = "no_repeat_ngram_size"
PROCESSOR_FQCN = "syllabus.core.engines.ngram:NoRepeatNGramLogitsProcessor"


def banned_tokens(tokens: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of `tokens` if appended (the plain definition, used as reference)."""
    if n < 1 or len(tokens) < n - 1:
        return set()
    if n == 1:
        return set(tokens)
    prefix = tuple(tokens[len(tokens) - n + 1 :])
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == prefix}


class NGramBlocker:
    """Per-request state: call with (prompt_ids, output_ids, logits) each step; output_ids grows in place."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: dict[tuple[int, ...], set[int]] = defaultdict(set)
        self.indexed = 0  # n-grams ending before this position of the full sequence are in `seen`

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: Any) -> Any:
        seq = list(prompt_ids) + list(output_ids)
        n = self.n
        for end in range(max(self.indexed, n - 1), len(seq)):  # n-gram seq[end-n+1 .. end]
            self.seen[tuple(seq[end - n + 1 : end])].add(seq[end])
        self.indexed = len(seq)
        if len(seq) >= n - 1:
            banned = self.seen.get(tuple(seq[len(seq) - n + 1 :]) if n > 1 else ())
            if banned:
                logits[list(banned)] = float("-inf")
        return logits


def _adapter_base() -> type:
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    return AdapterLogitsProcessor


try:  # the class only exists where vLLM does; importing this module never requires vLLM
    class NoRepeatNGramLogitsProcessor(_adapter_base()):  # type: ignore[misc]
        """vLLM v1 logits processor; requests opt in through `extra_args`."""

        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params: Any) -> NGramBlocker | None:
            n = (params.extra_args or {}).get(EXTRA_ARG, 0)
            return NGramBlocker(int(n)) if n else None
except ImportError:
    NoRepeatNGramLogitsProcessor = None  # type: ignore[assignment,misc]
