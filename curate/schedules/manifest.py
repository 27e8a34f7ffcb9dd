"""Writing a schedule directory (the contract, its file names and its epoch record are in `syllabus.core.schedule`).

Every file is written atomically and the manifest last, so its presence means "complete". Nothing in the
manifest depends on time or on the machine: same table, parameters and seed give byte-identical files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from syllabus.core.io import atomic_write_bytes
from syllabus.core.schedule import KIND, MANIFEST_FILE, SCHEMA_VERSION, SHARD_GLOB, ScheduleError, shard_name
from syllabus.core.table import Table

from .common import Epoch


def manifest_bytes(
    method: str, params: dict[str, Any], table: Table, usable_rows: int, seed: int, epochs: list[Epoch],
    excluded: dict[str, int],
) -> bytes:
    """The manifest as it will be written (sorted keys, no timestamps)."""
    records = [e.plan.record(i, e.sample_ids.len()) for i, e in enumerate(epochs)]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "method": method,
        "params": params,
        "seed": seed,
        "table": {
            "path": str(Path(table.path).resolve()),
            "fingerprint": table.fingerprint,
            "num_rows": table.frame.height,
            "usable_rows": usable_rows,
        },
        "excluded": excluded,
        "num_epochs": len(records),
        "total_samples": sum(r["num_samples"] for r in records),
        "epochs": records,
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def shard_bytes(sample_ids: pl.Series) -> bytes:
    buffer = io.BytesIO()
    # zstd level 1: measured on 800k ids, twice as fast as the default level and no larger (hex ids compress little).
    pl.DataFrame({"sample_id": sample_ids.cast(pl.String)}).write_parquet(
        buffer, compression="zstd", compression_level=1
    )
    return buffer.getvalue()


def claim_directory(out: Path, manifest: bytes, overwrite: bool) -> None:
    """Make sure `out` may receive this schedule.

    An empty or missing directory is fine, and so is one holding this very schedule (same manifest: a rerun).

    Raises:
        ScheduleError: `out` is a file, or holds another schedule or other files, and `overwrite` is off.
    """
    if out.exists() and not out.is_dir():
        raise ScheduleError(f"--out {out} is a file; give a directory")
    if not out.exists() or not any(out.iterdir()) or overwrite:
        return
    existing = out / MANIFEST_FILE
    if existing.is_file() and existing.read_bytes() == manifest:
        return
    what = "another schedule" if existing.is_file() else "files that are not a complete schedule"
    raise ScheduleError(f"--out {out} holds {what}; choose another directory or pass --overwrite to replace it")


def write_schedule(out: Path, manifest: bytes, epochs: list[Epoch], overwrite: bool = False) -> Path:
    """Write the shards, remove stale ones, then the manifest (the completion marker).

    Raises:
        ScheduleError: see `claim_directory`; or an empty epoch (a method bug, reported rather than written).
    """
    claim_directory(out, manifest, overwrite)
    for i, epoch in enumerate(epochs):
        if epoch.sample_ids.len() == 0:
            raise ScheduleError(f"epoch {i + 1} would be empty; check the method's parameters")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the new manifest lands
    previous, data = None, b""
    for i, epoch in enumerate(epochs):
        if epoch.sample_ids is not previous:  # consecutive epochs over one subset share one serialisation
            previous, data = epoch.sample_ids, shard_bytes(epoch.sample_ids)
        atomic_write_bytes(out / shard_name(i), data)
    keep = {shard_name(i) for i in range(len(epochs))}
    for stale in out.glob(SHARD_GLOB):
        if stale.name not in keep:
            stale.unlink()
    atomic_write_bytes(out / MANIFEST_FILE, manifest)
    return out
