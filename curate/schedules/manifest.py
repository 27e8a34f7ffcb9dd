"""The schedule directory: `manifest.json` plus one Parquet shard of sample_ids per epoch (design.md, "Schedule").

    SCHEDULE/
      epoch-000.parquet ...   column sample_id, the epoch's samples in training order
      manifest.json           method, parameters, table fingerprint, seed, one record per epoch; written last

Every file is written atomically and the manifest last, so its presence means "complete". Nothing in the
manifest depends on time or on the machine: same table, parameters and seed give byte-identical files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from ..table import Table, atomic_write_bytes
from .common import Epoch
from .config import ScheduleError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_GLOB = "epoch-*.parquet"


def shard_name(index: int) -> str:
    return f"epoch-{index:03d}.parquet"


def _number(x: float) -> float:
    # 12 decimals: ladders like 0.3 + (0.1 - 0.3) / 2 print as 0.2, not 0.19999999999999998.
    return round(float(x), 12)


def epoch_record(index: int, epoch: Epoch) -> dict[str, Any]:
    """The manifest entry of one epoch (index 0-based; "epoch" is 1-based for people)."""
    return {
        "epoch": index + 1,
        "shard": shard_name(index),
        "num_samples": epoch.sample_ids.len(),
        "stage": epoch.stage,
        "temperature": _number(epoch.temperature),
        "kd_weight": _number(epoch.kd_weight),
        "loss": epoch.loss,
        "loss_params": {k: _number(v) for k, v in sorted(epoch.loss_params.items())},
        "restart_optimizer": bool(epoch.restart_optimizer),
        "rescore": bool(epoch.rescore),
    }


def manifest_bytes(
    method: str, params: dict[str, Any], table: Table, usable_rows: int, seed: int, epochs: list[Epoch],
    excluded: dict[str, int],
) -> bytes:
    """The manifest as it will be written (sorted keys, no timestamps)."""
    records = [epoch_record(i, e) for i, e in enumerate(epochs)]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "syllabus.schedule",
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


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a schedule directory.

    Raises:
        ScheduleError: no manifest.json (not a schedule, or an unfinished one) or not valid JSON.
    """
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ScheduleError(f"{path}: no {MANIFEST_FILE}; pass a directory written by `curate schedule`")
    try:
        manifest = json.loads(manifest_path.read_text())
        manifest["epochs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ScheduleError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    return manifest
