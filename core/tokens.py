"""Tokenisation shared by scoring and training, so both see exactly the same token ids.

A sequence is `prompt_ids + response_ids`, where the response ends with the EOS token: the EOS target is part of
what the student learns and of the cross-entropy. Masks are built from these lengths, never by matching pad ids
(pad == eos in many tokenizers, SmolLM2's included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS unless truncated
    status: str  # "ok" or "too_long"
    truncated: bool = False

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def encode_pair(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_seq_len: int,
    truncate: bool = False,
    chat_template: bool = False,
) -> Encoded:
    """Tokenise a (prompt, response) pair for teacher forcing.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token.
        prompt: the templated prompt.
        response: the ground-truth response (EOS is appended).
        max_seq_len: longest allowed prompt + response, in tokens.
        truncate: cut an over-long pair instead of flagging it, keeping the heads of both: the response is cut
            first, down to what the whole prompt leaves; the prompt is cut (its head kept, as the MiniLLM evaluation
            truncates prompts) only where it is longer than half the budget, and never below that half.
        chat_template: the prompt already holds the template's special tokens, so none are added.

    Returns:
        The encoded pair; status `too_long` (ids kept, nothing truncated) when it does not fit and
        `truncate` is off.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=not chat_template).input_ids
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(response_ids) <= max_seq_len:
        return Encoded(prompt_ids, response_ids, "ok")
    if not truncate:
        return Encoded(prompt_ids, response_ids, "too_long")
    # The prompt keeps what the response leaves, and at least half the budget: a long response never squeezes the
    # instruction out (the old rule, min(prompt, half, budget - response), cut it down to one token).
    prompt_budget = min(len(prompt_ids), max(max_seq_len - len(response_ids), max_seq_len // 2))
    prompt_ids = prompt_ids[:prompt_budget]
    response_ids = response_ids[: max_seq_len - len(prompt_ids)]
    return Encoded(prompt_ids, response_ids, "ok", truncated=True)
