"""Input data: files, directories or hub datasets, mapped onto `(sample_id, prompt, response)` records.

Every row becomes a `Sample` or a `Reject` (file, line, field, reason); bad rows never stop a run unless no row is
usable. `sample_id` is a hash of the normalised prompt and response, never a row index: the SRD reference code
joins by row index after an unordered map, and the id is what rules that bug class out.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus.core.templates import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, TEMPLATES

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
EMBEDDED = {"dolly_dev_1000": Path(__file__).parent / "embedded" / "dolly_dev_1000.jsonl"}  # see embedded/README.md



class DataError(ValueError):
    """The input cannot be read at all, or no row of it is usable."""


@dataclass(frozen=True)
class FieldMap:
    """Which input field holds what. `prompt` is an already templated prompt, used by template `none`."""

    instruction: str | None = "instruction"
    input: str | None = "input"
    prompt: str | None = "prompt"
    response: str = "output"
    passthrough: tuple[str, ...] = ("category", "source", "topic")


PRESETS = {
    # MiniLLM/DistiLLM processed data: `output` may be a list of references (S-NI).
    "minillm": FieldMap(),
    # databricks-dolly-15k as released.
    "dolly": FieldMap(instruction="instruction", input="context", prompt=None, response="response"),
}


@dataclass(frozen=True)
class Sample:
    sample_id: str
    prompt: str
    response: str
    references: tuple[str, ...]
    source_file: str
    source_line: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    source_file: str
    source_line: int
    field: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.source_file, "line": self.source_line, "field": self.field, "reason": self.reason}


def normalise(text: str) -> str:
    """NFC, collapsed whitespace, stripped: the form that sample ids hash."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def make_sample_id(prompt: str, response: str) -> str:
    """A stable 64-bit id (16 hex chars) of the normalised (prompt, response) pair."""
    payload = normalise(prompt) + "\x1f" + normalise(response)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def list_input_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"{source}: directory holds no {', '.join(SUFFIXES)} files")
    return files


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line, record, error) for every row of one file; `line` is 1-based as an editor shows it."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, None, f"malformed JSON ({exc.msg} at column {exc.colno})"
                    continue
                if not isinstance(record, dict):
                    yield line_no, None, f"expected a JSON object, got {type(record).__name__}"
                    continue
                yield line_no, record, None
    elif path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); a .json input is one array of objects") from None
        if isinstance(records, dict):
            records = records.get("data", records.get("rows"))
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON array of objects (or {{'data': [...]}})")
        for i, record in enumerate(records, start=1):  # "line" = position in the array
            ok = isinstance(record, dict)
            yield i, record if ok else None, None if ok else f"element {i} is not an object"
    elif path.suffix in (".parquet", ".csv"):
        import polars as pl

        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=0)
        header = 1 if path.suffix == ".csv" else 0  # csv line numbers count the header line
        for i, record in enumerate(frame.iter_rows(named=True), start=1):
            yield i + header, record, None
    else:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def iter_hub_records(dataset_id: str, split: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:
        raise DataError(
            f"{dataset_id!r} is not a local file or directory and could not be loaded as a hub dataset "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    for i, record in enumerate(ds, start=1):
        yield i, record, None


def _text(record: dict[str, Any], name: str | None) -> str | None:
    if name is None:
        return None
    value = record.get(name)
    return value if isinstance(value, str) else None


def _references(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def build_prompt(record: dict[str, Any], fields: FieldMap, template: str, tokenizer: Any = None) -> tuple[str | None, str | None, str | None]:
    """Template one record's prompt. Returns (prompt, failing_field, reason); prompt is None on failure."""
    instruction = _text(record, fields.instruction)
    context = _text(record, fields.input) or ""
    if template == "none":
        prompt = _text(record, fields.prompt)
        if prompt is None:
            return None, fields.prompt, f"missing or non-text field {fields.prompt!r} (template 'none' uses it as is)"
        return prompt, None, None
    if instruction is None or not instruction.strip():
        # Data that only carries a ready prompt (no instruction field) can still use the chat template.
        prompt_field = _text(record, fields.prompt)
        if template == "chat" and prompt_field:
            instruction, context = prompt_field, ""
        else:
            return None, fields.instruction, f"missing or empty field {fields.instruction!r}"
    if template == "alpaca":
        fmt = ALPACA_WITH_INPUT if context.strip() else ALPACA_NO_INPUT
        return fmt.format(instruction=instruction, input=context), None, None
    user = instruction if not context.strip() else f"{instruction}\n\n{context}"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return prompt, None, None


@dataclass
class LoadResult:
    samples: list[Sample]
    rejects: list[Reject]
    duplicates: int
    files: list[str]

    def fingerprint(self) -> str:
        """Hash of the usable rows (ids in input order), independent of file paths."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(s.sample_id.encode())
        return h.hexdigest()


def load_samples(
    source: str,
    fields: FieldMap,
    template: str = "alpaca",
    tokenizer: Any = None,
    split: str = "train",
) -> LoadResult:
    """Read every row of `source` into samples and rejects.

    Args:
        source: a .jsonl/.json/.parquet/.csv file, a directory of them, an embedded dataset name
            (`dolly_dev_1000`), or a `datasets` hub id.
        fields: field mapping (see `PRESETS`).
        template: `alpaca` (MiniLLM's Alpaca template from instruction/input), `chat` (the tokenizer's chat
            template, which needs `tokenizer`) or `none` (the prompt field as is).
        split: split name for hub datasets.

    Returns:
        Samples in input order (first occurrence of each id), rejects with file/line/field/reason, and the
        number of duplicate rows dropped (each also recorded as a reject).

    Raises:
        DataError: the source is unreadable, or no row is usable (the first rejects are quoted).
    """
    if template not in TEMPLATES:
        raise DataError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if template == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise DataError("template 'chat' needs a tokenizer with a chat template; use --template alpaca instead")
    path = Path(source).expanduser()
    if not path.exists() and source in EMBEDDED:
        path = EMBEDDED[source]
    if path.exists():
        streams = [(str(f), iter_records(f)) for f in list_input_files(path)]
    elif Path(source).suffix in SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file or directory")
    else:
        streams = [(source, iter_hub_records(source, split))]
    samples: list[Sample] = []
    rejects: list[Reject] = []
    seen: dict[str, tuple[str, int]] = {}
    duplicates = 0
    for name, stream in streams:
        for line, record, error in stream:
            if error is not None:
                rejects.append(Reject(name, line, None, error))
                continue
            prompt, bad_field, reason = build_prompt(record, fields, template, tokenizer)
            if prompt is None:
                rejects.append(Reject(name, line, bad_field, reason))
                continue
            refs = _references(record.get(fields.response))
            if refs is None:
                rejects.append(Reject(name, line, fields.response, f"missing or non-text field {fields.response!r}"))
                continue
            if not refs[0].strip():
                rejects.append(Reject(name, line, fields.response, "empty response"))
                continue
            sample_id = make_sample_id(prompt, refs[0])
            if sample_id in seen:
                first_file, first_line = seen[sample_id]
                rejects.append(Reject(name, line, None, f"duplicate of {first_file}:{first_line} (sample_id {sample_id})"))
                duplicates += 1
                continue
            seen[sample_id] = (name, line)
            extra = {k: record[k] for k in fields.passthrough if k in record and record[k] is not None}
            samples.append(Sample(sample_id, prompt, refs[0], tuple(refs), name, line, extra))
    if not samples:
        first = "; ".join(f"{r.source_file}:{r.source_line}: {r.reason}" for r in rejects[:3])
        raise DataError(f"{source}: no usable row ({len(rejects)} rejected; first: {first or 'the input is empty'})")
    return LoadResult(samples, rejects, duplicates, [name for name, _ in streams])
