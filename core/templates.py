"""Prompt templates shared by scoring (`curate score`) and evaluation: one spelling, so that a student is scored,
trained and evaluated on the same prompts."""

from __future__ import annotations

from typing import Any

# The Alpaca template exactly as MiniLLM/DistiLLM apply it (the `prompt` field of their processed data).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat", "none")


def format_prompt(template: str, instruction: str, context: str = "", tokenizer: Any = None) -> str:
    """An instruction (and its input, if any) as a prompt: MiniLLM's Alpaca template, or the tokenizer's chat
    template (the instruction, then a blank line and the input, as the user's turn; the assistant's turn opened).
    `none` has no formatting of its own: its callers use a ready prompt."""
    if template == "alpaca":
        fmt = ALPACA_WITH_INPUT if context.strip() else ALPACA_NO_INPUT
        return fmt.format(instruction=instruction, input=context)
    if template == "chat":
        user = instruction if not context.strip() else f"{instruction}\n\n{context}"
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"template {template!r} formats nothing; choose alpaca or chat")
