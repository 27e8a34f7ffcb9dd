"""Prompt templates shared by scoring (`curate score`) and evaluation: one spelling, so that a student is scored,
trained and evaluated on the same prompts."""

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
