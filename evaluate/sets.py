"""The evaluation sets: the shipped copies (sets/README.md) or any jsonl in the same format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from syllabus.core.templates import ALPACA_NO_INPUT

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

# GSM8K, zero-shot (DA-KD reports zero-shot accuracy): the Alpaca template around the question plus an answer-format
# instruction, so that the final number can be read after "####" as in the references.
GSM8K_INSTRUCTION = (
    "{question}\nSolve the problem step by step. End with a line of the form \"#### <number>\" giving the final answer."
)


class EvalSetError(ValueError):
    """An evaluation set cannot be found or read."""


@dataclass(frozen=True)
class EvalRow:
    prompt: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    metric: str  # "rouge_l" or "gsm8k_accuracy"
    rows: tuple[EvalRow, ...]
    sha256: str


def load_set(name_or_path: str, limit: int | None = None) -> EvalSet:
    """Load a shipped set by name, or a jsonl path (MiniLLM format, or GSM8K's question/answer).

    Raises:
        EvalSetError: unknown name, missing file, or a row without prompt/references (with its line).
    """
    path = SETS_DIR / SHIPPED[name_or_path] if name_or_path in SHIPPED else Path(name_or_path)
    if not path.exists():
        raise EvalSetError(f"{name_or_path!r}: not a shipped set ({', '.join(SHIPPED)}) and no such file")
    name = name_or_path if name_or_path in SHIPPED else path.stem
    raw = path.read_bytes()
    rows: list[EvalRow] = []
    metric = "rouge_l"
    for line_no, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
        if "question" in record and "answer" in record:  # GSM8K
            metric = "gsm8k_accuracy"
            prompt = ALPACA_NO_INPUT.format(instruction=GSM8K_INSTRUCTION.format(question=record["question"]))
            rows.append(EvalRow(prompt, (record["answer"],)))
            continue
        refs = record.get("output")
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(record.get("prompt"), str) or not refs or not all(isinstance(r, str) for r in refs):
            raise EvalSetError(f"{path}:{line_no}: a row needs a `prompt` string and an `output` string or list")
        rows.append(EvalRow(record["prompt"], tuple(refs)))
        if limit is not None and len(rows) >= limit:
            break
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EvalSetError(f"{path}: no rows")
    return EvalSet(name, path, metric, tuple(rows), hashlib.sha256(raw).hexdigest())
