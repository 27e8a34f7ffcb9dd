"""Input data: files, directories or hub datasets, mapped onto `(sample_id, prompt, response)` records.

Every row becomes a `Sample` or a `Reject` (file, line, field, reason); bad rows never stop a run unless no row is
usable. `sample_id` is a hash of the normalised prompt and response, never a row index: the SRD reference code
joins by row index after an unordered map, and the id is what rules that bug class out.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syllabus.core.io import UTF8_BOM, jsonl_lines
from syllabus.core.templates import TEMPLATES, format_prompt

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # matched in any case: DATA.JSONL is a .jsonl file
EMBEDDED = {"dolly_dev_1000": Path(__file__).parent / "embedded" / "dolly_dev_1000.jsonl"}  # see embedded/README.md
_SURROGATE = re.compile("[\ud800-\udfff]")

Row = tuple[int, dict[str, Any] | None, str | None]  # (1-based line, record or None, why it is unusable)


class DataError(ValueError):
    """The input cannot be read at all, or no row of it is usable."""


class RowError(ValueError):
    """One row cannot be used: the field at fault (None for the row as a whole) and why. Becomes a `Reject`."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


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


def list_input_files(source: Path) -> tuple[list[Path], list[Path]]:
    """The input files of `source`, and the files of a directory source that are not read (other suffixes).

    Hidden files and directories (`.git/`, macOS `._name` forks, editor locks) are neither read nor listed.

    Raises:
        DataError: a directory holds no file with a known suffix (the files it does hold are named).
    """
    if source.is_file():
        return [source], []
    visible = (p for p in source.rglob("*") if not any(part.startswith(".") for part in p.relative_to(source).parts))
    found = sorted(p for p in visible if p.is_file())
    files = [p for p in found if p.suffix.lower() in SUFFIXES]
    skipped = [p for p in found if p.suffix.lower() not in SUFFIXES]
    if not files:
        held = f"it holds {_listing([str(p) for p in skipped])}" if skipped else "it is empty"
        raise DataError(f"{source}: directory holds no {', '.join(SUFFIXES)} files ({held})")
    return files, skipped


def iter_records(path: Path) -> Iterator[Row]:
    """Yield (line, record, error) for every row of one file; `line` is 1-based as an editor shows it.

    Text is UTF-8 (a leading byte-order mark is skipped). A byte that is not UTF-8 rejects the row that holds it:
    JSONL lines are decoded one by one, JSON and CSV keep such bytes as surrogate escapes for `load_samples`.

    Raises:
        DataError: the file as a whole cannot be read (a .json that is not one array, a corrupt Parquet file, an
            unknown suffix).
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_records(path)
    elif suffix == ".json":
        yield from _json_records(path)
    elif suffix == ".csv":
        yield from _csv_records(path)
    elif suffix == ".parquet":
        yield from _parquet_records(path)
    else:
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _jsonl_records(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:  # bytes: one undecodable line must not fail the file
        yield from jsonl_lines(f)


def _json_records(path: Path) -> Iterator[Row]:
    text = path.read_bytes().removeprefix(UTF8_BOM).decode("utf-8", errors="surrogateescape")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); a .json input is one array "
            "of objects (one object per line is a .jsonl file)"
        ) from None
    if isinstance(records, dict):
        records = records.get("data", records.get("rows"))
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of objects (or {{'data': [...]}})")
    for i, record in enumerate(records, start=1):  # "line" = position in the array
        ok = isinstance(record, dict)
        yield i, record if ok else None, None if ok else f"element {i} is {_kind(record)}, not an object"


def _csv_records(path: Path) -> Iterator[Row]:
    # Python's reader, not polars': it reports each ragged row on its own and knows where a quoted field that
    # spans lines started, so rejects carry the line an editor shows.
    csv.field_size_limit(2**31 - 1)  # a long response is one field; the default limit is 128 KiB
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return  # an empty file has no rows to reject
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataError(f"{path}:1: the header line names {', '.join(map(repr, repeated))} more than once")
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:
                    yield start, None, "blank line"
                elif len(row) != len(header):
                    yield start, None, (f"{len(row)} field{'s' * (len(row) > 1)} where the header line has "
                                        f"{len(header)} (a field holding a comma or a line break must be quoted)")
                else:  # an empty field is a missing value, as polars and pandas read it
                    yield start, {k: v if v != "" else None for k, v in zip(header, row)}, None
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from None


def _parquet_records(path: Path) -> Iterator[Row]:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: not a readable Parquet file ({reason}); write it again, or move it out of the input"
        ) from None
    for i, record in enumerate(frame.iter_rows(named=True), start=1):  # "line" = row number
        yield i, record, None


def iter_hub_records(dataset_id: str, split: str) -> Iterator[Row]:
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


def _kind(value: Any) -> str:
    """How a JSON value reads in a message: `a number (7)`, `a list`, ..."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if value is None:
        return "null"
    names = {str: "a string", list: "a list", tuple: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _listing(names: list[str], limit: int = 20) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_unicode(name: str, text: str) -> None:
    """Refuse text holding a byte that was not UTF-8 (kept as a surrogate escape) or half a UTF-16 pair (a JSON
    `\\ud83d` escape whose other half was cut off): neither can be hashed, tokenised or written to Parquet."""
    bad = _SURROGATE.search(text)
    if bad is None:
        return
    code, where = ord(bad.group()), bad.start() + 1
    if 0xDC80 <= code <= 0xDCFF:
        raise RowError(name, f"field {name!r} is not UTF-8 (byte 0x{code - 0xDC00:02x} at character {where}); "
                             "save the file as UTF-8")
    raise RowError(name, f"field {name!r} holds half a UTF-16 pair (\\u{code:04x} at character {where}), "
                         "not a character")


def _text(record: dict[str, Any], name: str | None) -> str | None:
    """Field `name` as text; None when absent, null or NaN (pandas' missing value).

    Raises:
        RowError: the field holds something other than text (a number, a list, ...), or text that is not valid.
    """
    if name is None:
        return None
    value = record.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise RowError(name, f"field {name!r} holds {_kind(value)}, not text; store it as text")
    _check_unicode(name, value)
    return value


def _references(record: dict[str, Any], name: str) -> tuple[str, ...]:
    """The response field: one text, or a non-empty list of texts (S-NI's several references; the first is scored).

    Raises:
        RowError: missing, not text, or an empty first reference.
    """
    value = record.get(name)
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowError(name, f"field {name!r} is an empty list")
        for k, item in enumerate(value, start=1):
            if not isinstance(item, str):
                raise RowError(name, f"field {name!r}: element {k} is {_kind(item)}, not text")
            _check_unicode(name, item)
        refs = tuple(value)
    else:
        text = _text(record, name)
        if text is None:
            raise RowError(name, f"missing field {name!r}")
        refs = (text,)
    if not refs[0].strip():
        raise RowError(name, "empty response")
    return refs


def build_prompt(record: dict[str, Any], fields: FieldMap, template: str, tokenizer: Any = None) -> str:
    """Template one record's prompt.

    Returns:
        The prompt, never blank: an empty prompt leaves no position to predict the first response token from.

    Raises:
        RowError: the prompt (or instruction) field is missing, blank or not text.
    """
    if template == "none":
        prompt = _text(record, fields.prompt)
        if prompt is None or not prompt.strip():
            raise RowError(fields.prompt, f"missing or empty field {fields.prompt!r} (template 'none' uses it as is)")
        return prompt
    instruction = _text(record, fields.instruction) or ""
    context = _text(record, fields.input) or ""
    if not instruction.strip():
        # Data that only carries a ready prompt (no instruction field) can still use the chat template.
        ready = _text(record, fields.prompt) if template == "chat" else None
        if not ready or not ready.strip():
            raise RowError(fields.instruction, f"missing or empty field {fields.instruction!r}")
        instruction, context = ready, ""
    return format_prompt(template, instruction, context, tokenizer)


def _passthrough(record: dict[str, Any], fields: FieldMap) -> dict[str, Any]:
    extra = {k: record[k] for k in fields.passthrough if k in record and record[k] is not None}
    for k, v in extra.items():
        if isinstance(v, str):
            _check_unicode(k, v)
    return extra


@dataclass
class LoadResult:
    samples: list[Sample]
    rejects: list[Reject]
    duplicates: int
    files: list[str]
    skipped_files: list[str] = field(default_factory=list)  # files of an input directory with another suffix

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
    named_fields: dict[str, str] | None = None,
) -> LoadResult:
    """Read every row of `source` into samples and rejects.

    Args:
        source: a .jsonl/.json/.parquet/.csv file (suffix in any case), a directory of them, an embedded dataset
            name (`dolly_dev_1000`), or a `datasets` hub id.
        fields: field mapping (see `PRESETS`).
        template: `alpaca` (MiniLLM's Alpaca template from instruction/input), `chat` (the tokenizer's chat
            template, which needs `tokenizer`) or `none` (the prompt field as is).
        split: split name for hub datasets.
        named_fields: the fields the user named by flag, by role (`{"input": "context"}` for --input-field);
            each must be a field of at least one row (a preset's default may be absent, a user's spelling not).

    Returns:
        Samples in input order (first occurrence of each id), rejects with file/line/field/reason, the number of
        duplicate rows dropped (each also recorded as a reject), and the files of a directory that were not read.

    Raises:
        DataError: the source is unreadable, a named field is in no row (the fields the rows have are listed), or
            no row is usable (the first rejects are quoted).
    """
    if template not in TEMPLATES:
        raise DataError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if template == "none" and fields.prompt is None:
        raise DataError("template 'none' uses a ready prompt, and this preset has no prompt field: pass --prompt-field")
    if template == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise DataError("template 'chat' needs a tokenizer with a chat template; use --template alpaca instead")
    path = Path(source).expanduser()
    if not path.exists() and source in EMBEDDED:
        path = EMBEDDED[source]
    skipped: list[Path] = []
    if path.exists():
        files, skipped = list_input_files(path)
        streams = [(str(f), iter_records(f)) for f in files]
    elif Path(source).suffix.lower() in SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file or directory")
    else:
        streams = [(source, iter_hub_records(source, split))]
    samples: list[Sample] = []
    rejects: list[Reject] = []
    seen: dict[str, tuple[str, int]] = {}
    fields_seen: dict[str, None] = {}  # every field name of every row, in order of first appearance
    duplicates = 0
    for name, stream in streams:
        for line, record, error in stream:
            if error is not None:
                rejects.append(Reject(name, line, None, error))
                continue
            fields_seen.update(dict.fromkeys(record))
            try:
                prompt = build_prompt(record, fields, template, tokenizer)
                refs = _references(record, fields.response)
                extra = _passthrough(record, fields)
            except RowError as exc:
                rejects.append(Reject(name, line, exc.field, exc.reason))
                continue
            sample_id = make_sample_id(prompt, refs[0])
            if sample_id in seen:
                first_file, first_line = seen[sample_id]
                reason = f"duplicate of {first_file}:{first_line} (sample_id {sample_id})"
                rejects.append(Reject(name, line, None, reason))
                duplicates += 1
                continue
            seen[sample_id] = (name, line)
            samples.append(Sample(sample_id, prompt, refs[0], refs, name, line, extra))
    absent = {role: f for role, f in (named_fields or {}).items() if fields_seen and f not in fields_seen}
    if absent:
        named = ", ".join(f"{f!r} (--{role}-field)" for role, f in absent.items())
        raise DataError(
            f"{source}: no row has the field {named}; its rows have {_listing([repr(f) for f in fields_seen])}. "
            "Name one of these, or drop the flag to use the preset's field."
        )
    if not samples:
        first = "; ".join(f"{r.source_file}:{r.source_line}: {r.reason}" for r in rejects[:3])
        raise DataError(f"{source}: no usable row ({len(rejects)} rejected; first: {first or 'the input is empty'})")
    return LoadResult(samples, rejects, duplicates, [name for name, _ in streams], [str(p) for p in skipped])
