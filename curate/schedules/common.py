"""What every schedule shares: the usable rows of a table, ranking, ladders, and writing the schedule directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..table import Table, atomic_write_bytes, atomic_write_parquet

SCHEMA_VERSION = 1
LOSSES = ("sft", "kld", "rkl", "jsd", "tvd", "skl", "srkl", "bdl")


class ScheduleError(ValueError):
    """A schedule cannot be built: missing columns, no usable rows, parameters out of range, a taken directory."""


@dataclass(frozen=True)
class Epoch:
    """One epoch of a schedule: its samples in order, and how to train on them."""

    sample_ids: list[str]
    stage: int
    temperature: float
    kd_weight: float
    loss: str
    loss_params: dict[str, float] = field(default_factory=dict)
    restart_optimizer: bool = False
    rescore: bool = False


def usable_rows(table: Table, columns: list[str], method: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """Rows a method can rank: status ok and no null/NaN in `columns`. Excluded rows are counted by reason.

    Raises:
        ScheduleError: a column is missing (named, with what produces it) or no row is usable.
    """
    frame = table.frame
    missing = [c for c in ["sample_id", *columns] if c not in frame.columns]
    if missing:
        raise ScheduleError(
            f"{table.path}: method {method} needs column(s) {', '.join(missing)}, which the table lacks "
            "(rouge_l and output_ce come from a scoring run with a student; teacher_ce and dds need a teacher)"
        )
    excluded: dict[str, int] = {}
    if "status" in frame.columns:
        for status, count in frame.filter(pl.col("status") != "ok").group_by("status").len().iter_rows():
            excluded[f"status {status}"] = count
        frame = frame.filter(pl.col("status") == "ok")
    for col in columns:
        bad = frame[col].is_null() | (frame[col].cast(pl.Float64).is_nan().fill_null(False))
        if bad.any():
            excluded[f"null or NaN {col}"] = int(bad.sum())
            frame = frame.filter(~bad)
    if frame.height == 0:
        raise ScheduleError(f"{table.path}: no usable row for method {method} (excluded: {excluded or 'empty table'})")
    return frame.select("sample_id", *columns), excluded


def sort_by(frame: pl.DataFrame, column: str, descending: bool) -> pl.DataFrame:
    """Deterministic sort: ties broken by sample_id."""
    return frame.sort([column, "sample_id"], descending=[descending, False])


def ordinal_rank(frame: pl.DataFrame, column: str, descending: bool) -> pl.Series:
    """Ranks from 1 (best first), ties broken by sample_id, aligned with `frame`'s rows."""
    order = frame.with_row_index("_row").sort([column, "sample_id"], descending=[descending, False])
    ranks = pl.Series("rank", range(1, frame.height + 1))
    return order.with_columns(ranks).sort("_row")["rank"]


def ladder(first: float, last: float, i: int, n: int) -> float:
    """Linear value at step i (0-based) of n: first at 0, last at n-1 (the papers' (i-1)/(n-1) with 1-based i)."""
    return first if n <= 1 else first + (last - first) * i / (n - 1)


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous subsets differing by at most one; the remainder goes to the first (easiest)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ScheduleError(f"parameter {name} must be in [{low}, {high}], got {value}")


def check_loss(loss: str, params: dict[str, float]) -> None:
    if loss not in LOSSES:
        raise ScheduleError(f"parameter loss: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    for key, value in params.items():
        check_range(f"loss_params.{key}", value, 0.0, 1.0)


def write_schedule(
    out: Path,
    method: str,
    params: dict[str, Any],
    table: Table,
    seed: int,
    epochs: list[Epoch],
    excluded: dict[str, int],
    overwrite: bool = False,
) -> Path:
    """Write `manifest.json` and one Parquet shard per epoch. Same inputs => byte-identical files.

    Raises:
        ScheduleError: `out` holds something else (another schedule, or other files) and `overwrite` is off.
    """
    manifest_path = out / "manifest.json"
    if out.exists() and any(out.iterdir()) and not overwrite:
        what = "another schedule" if manifest_path.exists() else "other files"
        raise ScheduleError(f"{out} holds {what}; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("epoch-*.parquet"):
        stale.unlink()
    manifest_path.unlink(missing_ok=True)  # the manifest is written last: it marks a complete schedule
    records = []
    for i, epoch in enumerate(epochs):
        if not epoch.sample_ids:
            raise ScheduleError(f"method {method} produced an empty epoch {i + 1}; check its parameters")
        shard = f"epoch-{i:03d}.parquet"
        atomic_write_parquet(pl.DataFrame({"sample_id": epoch.sample_ids}, schema={"sample_id": pl.String}), out / shard)
        records.append({
            "epoch": i + 1, "shard": shard, "num_samples": len(epoch.sample_ids), "stage": epoch.stage,
            "temperature": round(epoch.temperature, 10), "kd_weight": round(epoch.kd_weight, 10), "loss": epoch.loss,
            "loss_params": {k: round(v, 10) for k, v in epoch.loss_params.items()},
            "restart_optimizer": epoch.restart_optimizer, "rescore": epoch.rescore,
        })
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "params": params,
        "seed": seed,
        "table": {"path": str(table.path), "fingerprint": table.fingerprint, "num_rows": table.frame.height},
        "excluded": excluded,
        "epochs": records,
    }
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return out
