"""Difficulty-table I/O: Parquet parts plus a JSON metadata sidecar.

A table is a directory::

    TABLE/
      part-00000.parquet ...   one row per sample (columns in docs/formats.md)
      metadata.json            provenance + fingerprint; written last, so its presence means "complete"
      rejects.jsonl            input rows that could not be used, with their reason (optional)

Every write goes to a temporary file that is renamed into place, so a crash never leaves a half-written part.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from .io import atomic_write_json, atomic_write_parquet

METADATA_FILE = "metadata.json"
PART_GLOB = "part-*.parquet"
SCORE_COLUMNS = ("student_ce", "teacher_ce", "dds", "rouge_l", "output_ce")
# Columns that define a table's content for its fingerprint (text columns are covered by sample_id).
# output_tokens too: summed CEs (the schedules' default) multiply output_ce by it.
FINGERPRINT_COLUMNS = ("sample_id", "status", "prompt_tokens", "response_tokens", "output_tokens", *SCORE_COLUMNS)


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


def table_fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of a table, independent of row order and of how it is split into parts.

    Covers sample ids, status, token counts and every score column present; floats are hashed through their
    exact repr, so any change of a score changes the fingerprint.
    """
    cols = [c for c in FINGERPRINT_COLUMNS if c in frame.columns]
    canon = frame.select(cols).sort("sample_id")
    h = hashlib.sha256()
    h.update(json.dumps(cols).encode())
    for row in canon.iter_rows():
        h.update(repr(row).encode())
    return h.hexdigest()


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
        metadata: provenance; `table_fingerprint`, `num_rows` and `columns` are added here.
        rows_per_part: rows per Parquet part.

    Returns:
        The written table.
    """
    out = Path(out_dir)
    if "sample_id" not in frame.columns:
        raise TableError(f"{out}: a table needs a sample_id column")
    dup = frame["sample_id"].is_duplicated()
    if dup.any():
        first = frame.filter(dup)["sample_id"][0]
        raise TableError(f"{out}: sample_id {first} appears more than once")
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)  # the table is incomplete until the new metadata lands
    for stale in out.glob(PART_GLOB):
        stale.unlink()
    meta = {
        **metadata,
        "num_rows": frame.height,
        "columns": frame.columns,
        "table_fingerprint": table_fingerprint(frame),
    }
    kv = {"syllabus": json.dumps(meta, sort_keys=True, default=str)}
    n_parts = max(1, -(-frame.height // rows_per_part))
    for i in range(n_parts):
        part = frame.slice(i * rows_per_part, rows_per_part)
        atomic_write_parquet(part, out / f"part-{i:05d}.parquet", kv)
    atomic_write_json(out / METADATA_FILE, meta)
    return Table(out, frame, meta)


def read_table(path: str | Path, columns: list[str] | None = None) -> Table:
    """Read a complete table directory (or a single Parquet file written by `write_table`).

    Raises:
        TableError: the path does not exist, holds no parts, or has no metadata.json (an unfinished run).
    """
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p}: no such table directory")
    if p.is_file():
        arrow = pq.read_table(p, columns=columns)
        raw = (arrow.schema.metadata or {}).get(b"syllabus")
        if raw is None:
            raise TableError(f"{p}: this Parquet file carries no Syllabus metadata; is it a difficulty table part?")
        return Table(p, pl.from_arrow(arrow), json.loads(raw))
    meta_path = p / METADATA_FILE
    if not meta_path.exists():
        raise TableError(
            f"{p}: no {METADATA_FILE}, so this table is incomplete (a scoring run that did not finish?). "
            "Run the same `curate score` command again to resume it."
        )
    parts = sorted(p.glob(PART_GLOB))
    if not parts:
        raise TableError(f"{p}: no {PART_GLOB} files")
    metadata = json.loads(meta_path.read_text())
    frame = pl.concat([pl.read_parquet(f, columns=columns) for f in parts], how="vertical_relaxed")
    return Table(p, frame, metadata)
