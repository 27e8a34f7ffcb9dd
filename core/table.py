"""Difficulty-table I/O: Parquet parts plus a JSON metadata sidecar.

A table is a directory::

    TABLE/
      part-00000.parquet ...   one row per sample (columns in docs/formats.md)
      metadata.json            provenance, fingerprint, row count and part names; written last ("complete")
      rejects.jsonl            input rows that could not be used, with their reason (optional)

Every write goes to a temporary file that is renamed into place, so a crash never leaves a half-written part.
Every read checks what a later stage would otherwise trust blindly: the parts are the ones metadata.json lists, with
its row counts (a deleted part must not pass for a smaller table under the old fingerprint), each part reads as
Parquet, sample_ids are unique and score columns hold numbers. A failed check names the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .cards import CARD_FILE, write_table_card
from .io import JSONFileError, atomic_write_json, atomic_write_parquet, read_json, read_parquet
from .schedule import MANIFEST_FILE

METADATA_FILE = "metadata.json"
PART_GLOB = "part-*.parquet"
TABLE_FILES = (METADATA_FILE, PART_GLOB, "rejects.jsonl", CARD_FILE)  # every name a table's writers put in its directory
TOPK_CACHE_DIR = "teacher-topk"  # the teacher's top-K cache (core/topk_cache.py)
TABLE_DIRS = (TOPK_CACHE_DIR,)  # the subdirectories a table's writers make
SCORE_COLUMNS = ("student_ce", "teacher_ce", "dds", "rouge_l", "output_ce")  # what `curate score` measures
# The leading columns of every table, in the order `curate score` writes them (docs/formats.md has them all).
LEAD_COLUMNS = ("sample_id", "prompt", "response", "prompt_tokens", "response_tokens", "student_ce", "teacher_ce",
                "dds", "student_output", "rouge_l", "output_ce", "status")
# Columns that define a table's content for its fingerprint (text columns are covered by sample_id).
# output_tokens too: summed CEs (the schedules' default) multiply output_ce by it.
FINGERPRINT_COLUMNS = ("sample_id", "status", "prompt_tokens", "response_tokens", "output_tokens", *SCORE_COLUMNS)
NUMERIC_COLUMNS = (*SCORE_COLUMNS, "prompt_tokens", "response_tokens", "output_tokens")
# Metadata keys `write_table` computes from the rows it writes (a merge must not copy them from its inputs).
DERIVED_KEYS = ("table_fingerprint", "num_rows", "columns", "parts")
_SHOWN = 5  # ids or file names quoted in a message before "and N more"


def with_dds(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with DDS (DA-KD Eq. 1) = student_ce / teacher_ce: null when teacher_ce is not > 0 (or either is
    missing). The one definition, for scoring (`curate score`) and for DA-KD's re-scoring during training."""
    return frame.with_columns(
        dds=pl.when(pl.col("teacher_ce") > 0).then(pl.col("student_ce") / pl.col("teacher_ce")).otherwise(None)
    )


class TableError(ValueError):
    """A table directory is missing, incomplete or malformed."""


@dataclass(frozen=True)
class Table:
    path: Path
    frame: pl.DataFrame
    metadata: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.metadata["table_fingerprint"]


def table_fingerprint(frame: pl.DataFrame, cache: str | None = None) -> str:
    """A content hash of a table, independent of row order and of how it is split into parts.

    Covers sample ids, status, token counts and every score column present; floats are hashed through their
    exact repr, so any change of a score changes the fingerprint. A table with a teacher top-K cache covers the
    cache's fingerprint too (`cache`): schedules then name the cache they were built beside.
    """
    cols = [c for c in FINGERPRINT_COLUMNS if c in frame.columns]
    canon = frame.select(cols).sort("sample_id")
    h = hashlib.sha256()
    h.update(json.dumps(cols).encode())
    if cache:
        h.update(cache.encode())
    for row in canon.iter_rows():
        h.update(repr(row).encode())
    return h.hexdigest()


def part_name(index: int) -> str:
    """The file of part `index` (0-based)."""
    return f"part-{index:05d}.parquet"


def write_table(
    frame: pl.DataFrame,
    out_dir: str | Path,
    metadata: dict[str, Any],
    rows_per_part: int = 100_000,
) -> Table:
    """Write a complete table: parts first, then metadata.json (the completion marker).

    Args:
        frame: one row per sample; must hold a unique `sample_id` column.
        out_dir: table directory (created; stale parts from an earlier write are removed).
        metadata: provenance; the `DERIVED_KEYS` (fingerprint, row count, columns, part names) are added here.
        rows_per_part: rows per Parquet part.

    Returns:
        The written table.

    Raises:
        TableError: no sample_id column, or a sample_id that appears more than once.
    """
    out = Path(out_dir)
    if "sample_id" not in frame.columns:
        raise TableError(f"{out}: a table needs a sample_id column")
    _check_unique_ids(frame, str(out), "a table holds one row per sample")
    n_parts = max(1, -(-frame.height // rows_per_part))
    parts = {part_name(i): frame.slice(i * rows_per_part, rows_per_part) for i in range(n_parts)}
    meta = {
        **metadata,
        "num_rows": frame.height,
        "columns": frame.columns,
        "parts": {name: part.height for name, part in parts.items()},
        "table_fingerprint": table_fingerprint(frame, (metadata.get("teacher_topk") or {}).get("cache_fingerprint")),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)  # the table is incomplete until the new metadata lands
    for stale in out.glob(PART_GLOB):
        stale.unlink()
    kv = {"syllabus": json.dumps(meta, sort_keys=True, default=str)}
    for name, part in parts.items():
        atomic_write_parquet(part, out / name, kv)
    atomic_write_json(out / METADATA_FILE, meta)
    write_table_card(frame, meta, out)  # README.md: for people (and the hub); no reader depends on it
    return Table(out, frame, meta)


def read_table(path: str | Path, columns: list[str] | None = None) -> Table:
    """Read and check a complete table directory (or a one-part table's Parquet file, written by `write_table`).

    Args:
        path: the table directory, or the Parquet file of a table written in one part.
        columns: read only these columns (every one must exist); None for all.

    Raises:
        TableError: naming the file and what to do, when the path does not exist or is a schedule; metadata.json
            is missing (an unfinished run), not valid JSON or lacks its keys; a part it lists is missing, a part
            it does not list is present, or a row count differs from it; a part is not readable Parquet (truncated)
            or lacks a requested column; a sample_id appears more than once; a score or token-count column holds
            something that is not a number (numbers written as text are read as numbers).
    """
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p}: no such table directory")
    if p.is_file():
        frame, metadata = _read_one_part_table(p, columns)
    else:
        metadata = _read_metadata(p)
        frame = _read_parts(p, metadata, columns)
    if columns is None and "sample_id" not in frame.columns:
        raise TableError(f"{p}: no sample_id column, so this is not a difficulty table")
    if "sample_id" in frame.columns:
        _check_unique_ids(frame, str(p), "keep one row per sample (a table merged by hand?), or score it again")
    frame = _as_numbers(frame, str(p))
    return Table(p, frame, metadata)


def read_schema(path: str | Path) -> pl.Schema:
    """The columns of a table and their types, from its metadata.json and first part (no rows are read).

    Raises:
        TableError: as `read_table`, for the files it looks at.
    """
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p}: no such table directory")
    metadata = None if p.is_file() else _read_metadata(p)
    files = [p] if p.is_file() else sorted(p.glob(PART_GLOB))
    if not files:
        raise TableError(f"{p}: no {PART_GLOB} files; {_rewrite_hint(metadata)}")
    try:
        return pl.read_parquet_schema(files[0])
    except (pl.exceptions.PolarsError, OSError) as err:
        raise TableError(_unreadable(files[0], err, _rewrite_hint(metadata))) from None


def numeric_columns(schema: pl.Schema) -> list[str]:
    """The columns of `schema` that hold numbers (the ones a difficulty can be read from)."""
    return [name for name, dtype in schema.items() if dtype.is_numeric()]


def check_numeric_column(schema: pl.Schema, column: str, where: str) -> None:
    """Raise unless `column` is a numeric column of `schema`.

    Raises:
        TableError: the column is absent or holds no numbers; the message lists the numeric columns.
    """
    if column in schema and schema[column].is_numeric():
        return
    problem = f"column {column} holds {schema[column]}, not numbers" if column in schema else f"no column {column}"
    raise TableError(f"{where}: {problem}; numeric columns: {', '.join(numeric_columns(schema)) or 'none'}")


def _rewrite_hint(metadata: dict[str, Any] | None) -> str:
    """What to do about a damaged table: run again the command that wrote it (read from its metadata, if any)."""
    if metadata and (metadata.get("shard") or {}).get("merged_from"):
        return "re-run the `curate merge` command that wrote it, with --overwrite"
    score = "re-run the `curate score` command that wrote it, with the same --out (it resumes and rewrites the table)"
    if metadata and "config" in metadata:
        return score
    return f"{score}; or, for a merged table, the `curate merge` command with --overwrite"


def _unreadable(part: Path, err: Exception, hint: str) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{part}: not a readable Parquet file ({reason}); it is truncated or damaged: {hint}"


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _read_metadata(p: Path) -> dict[str, Any]:
    meta_path = p / METADATA_FILE
    if not meta_path.exists():
        if (p / MANIFEST_FILE).exists():
            raise TableError(f"{p} is a schedule (it holds {MANIFEST_FILE}), not a difficulty table; pass the table "
                             "it was built from (its manifest names it under table.path)")
        raise TableError(
            f"{p}: no {METADATA_FILE}, so this table is incomplete (a scoring run that did not finish?). "
            "Run the same `curate score` command again to resume it."
        )
    try:
        metadata = read_json(meta_path)
    except JSONFileError as err:
        raise TableError(f"{err}; the file is damaged: {_rewrite_hint(None)}") from None
    if not isinstance(metadata, dict):
        raise TableError(f"{meta_path}: holds {type(metadata).__name__}, not a mapping; {_rewrite_hint(None)}")
    missing = [k for k in ("table_fingerprint", "num_rows") if k not in metadata]
    if missing:
        raise TableError(f"{meta_path}: lacks {', '.join(missing)}, which `write_table` records with every table; "
                         f"{_rewrite_hint(metadata)}")
    parts = metadata.get("parts", {})
    counts = [metadata["num_rows"], *(parts.values() if isinstance(parts, dict) else [None])]
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
        raise TableError(f"{meta_path}: num_rows and parts must hold row counts; {_rewrite_hint(metadata)}")
    return metadata


def _read_parts(p: Path, metadata: dict[str, Any], columns: list[str] | None) -> pl.DataFrame:
    """The rows of every part, after checking the parts against metadata.json (names and row counts)."""
    hint = _rewrite_hint(metadata)
    on_disk = sorted(f.name for f in p.glob(PART_GLOB))
    listed: dict[str, int] | None = metadata.get("parts")  # absent in tables written before part names were kept
    num_rows = metadata["num_rows"]
    if listed is not None:
        missing = [name for name in listed if name not in on_disk]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            lost = sum(listed[name] for name in missing)
            raise TableError(
                f"{p}: {_listed(missing)} ({len(missing)} of its {len(listed)} parts, {lost} of its {num_rows} rows) "
                f"{verb} missing, so the table is incomplete: {hint}"
            )
        stray = [name for name in on_disk if name not in listed]
        if stray:
            raise TableError(f"{p}: holds {_listed(stray)}, which its {METADATA_FILE} does not list (a part of "
                             f"another table?); remove it, or {hint}")
    if not on_disk:
        raise TableError(f"{p}: no {PART_GLOB} files; {hint}")
    frames = []
    for name in on_disk:
        frame = _read_part(p / name, columns, hint)
        if listed is not None and frame.height != listed[name]:
            raise TableError(f"{p / name}: holds {frame.height} rows, but {METADATA_FILE} records {listed[name]}; "
                             f"the part was replaced: {hint}")
        frames.append(frame)
    try:
        frame = pl.concat(frames, how="vertical_relaxed")
    except pl.exceptions.PolarsError as err:
        raise TableError(f"{p}: its parts do not share one schema ({err}); {hint}") from None
    if frame.height != num_rows:
        raise TableError(f"{p}: holds {frame.height} rows in {len(on_disk)} parts, but its {METADATA_FILE} records "
                         f"{num_rows}: a part is missing or was replaced; {hint}")
    return frame


def _read_part(part: Path, columns: list[str] | None, hint: str) -> pl.DataFrame:
    try:
        schema = pl.read_parquet_schema(part)
        absent = [c for c in columns or [] if c not in schema]
        if not absent:
            return read_parquet(part, columns)
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as err:
        raise TableError(_unreadable(part, err, hint)) from None
    raise TableError(f"{part}: no column(s) {', '.join(absent)}; its columns: {', '.join(schema)}")


def _read_one_part_table(p: Path, columns: list[str] | None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A table given as its Parquet file: only a whole table (written in one part) passes for one."""
    try:
        schema = pq.read_schema(p)
        absent = [c for c in columns or [] if c not in schema.names]
        arrow = None if absent else pq.read_table(p, columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as err:
        raise TableError(_unreadable(p, err, _rewrite_hint(None))) from None
    if arrow is None:
        raise TableError(f"{p}: no column(s) {', '.join(absent)}; its columns: {', '.join(schema.names)}")
    raw = (arrow.schema.metadata or {}).get(b"syllabus")
    try:
        metadata = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as err:
        raise TableError(f"{p}: its Syllabus metadata is not valid JSON ({err.msg}); {_rewrite_hint(None)}") from None
    if not isinstance(metadata, dict):
        raise TableError(f"{p}: this Parquet file carries no Syllabus metadata; is it a difficulty table part?")
    if metadata.get("num_rows") != arrow.num_rows:
        raise TableError(f"{p}: holds {arrow.num_rows} of the table's {metadata.get('num_rows')} rows: pass the "
                         f"table directory ({p.parent}), not one of its parts")
    return pl.from_arrow(arrow), metadata


def _check_unique_ids(frame: pl.DataFrame, where: str, remedy: str) -> None:
    repeated = frame.filter(frame["sample_id"].is_duplicated())["sample_id"].unique(maintain_order=True)
    if repeated.len() == 1:
        raise TableError(f"{where}: sample_id {repeated[0]} appears more than once; {remedy}")
    if repeated.len():
        raise TableError(f"{where}: {repeated.len()} sample_ids appear more than once: "
                         f"{_listed(repeated.cast(pl.String).to_list())}; a sample has one row of scores: {remedy}")


def _as_numbers(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """`frame` with its score and token-count columns as numbers: numbers stored as text (a hand-made table's) are
    read as Float64; anything else that is not a number is refused, naming the column and the first such row."""
    for column in [c for c in NUMERIC_COLUMNS if c in frame.columns]:
        values = frame[column]
        if values.dtype.is_numeric() or values.dtype == pl.Null:
            continue
        if values.dtype == pl.String:
            parsed = values.cast(pl.Float64, strict=False)
        else:  # a boolean, a list, a date: no number in any row
            parsed = pl.repeat(None, len(values), dtype=pl.Float64, eager=True).alias(column)
        bad = values.is_not_null() & parsed.is_null()
        if bad.any():
            first = frame.filter(bad).row(0, named=True)
            row = f" (sample_id {first['sample_id']})" if "sample_id" in first else ""
            count = int(bad.sum())
            raise TableError(
                f"{where}: column {column} holds {first[column]!r}{row}, which is not a number ({count} such "
                f"row{'s' if count > 1 else ''}; the column's type is {values.dtype}); scores and token counts must "
                "be numbers: fix the table, or score the dataset with `curate score`"
            )
        frame = frame.with_columns(parsed)
    return frame
