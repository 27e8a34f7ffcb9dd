"""Text summary of a difficulty table: counts, status counts and quantiles of every metric."""

from __future__ import annotations

import polars as pl

from syllabus.core.table import SCORE_COLUMNS, Table

METRICS = (*SCORE_COLUMNS, "prompt_tokens", "response_tokens")
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


def metric_quantiles(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per metric present: non-null count, mean and the quantiles of `QUANTILES` (NaN counted as null)."""
    rows = []
    for name in METRICS:
        if name not in frame.columns:
            continue
        col = frame[name].cast(pl.Float64).fill_nan(None).drop_nulls()
        row = {"metric": name, "count": col.len(), "mean": col.mean()}
        for q in QUANTILES:
            row[f"q{int(q * 100):02d}"] = col.quantile(q, interpolation="linear") if col.len() else None
        rows.append(row)
    return pl.DataFrame(rows)


def summarize_table(table: Table) -> str:
    frame = table.frame
    meta = table.metadata
    lines = [f"table {table.path}", f"  rows: {frame.height}    fingerprint: {meta.get('table_fingerprint', '?')[:16]}"]
    for key in ("student", "teacher"):
        if isinstance(meta.get(key), dict):
            lines.append(f"  {key}: {meta[key].get('name')} ({meta[key].get('path')})")
    if "template" in meta:
        lines.append(f"  template: {meta['template']}    engines: {meta.get('engines', {})}")
    if "status" in frame.columns:
        counts = frame.group_by("status").len().sort(["len", "status"], descending=[True, False])
        lines.append("  status: " + ", ".join(f"{s}={n}" for s, n in counts.iter_rows()))
    stats = metric_quantiles(frame)
    if stats.height:
        header = f"  {'metric':<16}{'count':>7}{'mean':>9}" + "".join(f"{'p' + str(int(q * 100)):>9}" for q in QUANTILES)
        lines.append(header)
        for row in stats.iter_rows(named=True):
            cells = [row["mean"]] + [row[f"q{int(q * 100):02d}"] for q in QUANTILES]
            lines.append(f"  {row['metric']:<16}{row['count']:>7}" + "".join(_fmt(v) for v in cells))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return f"{'-':>9}" if value is None else f"{value:>9.3f}"
