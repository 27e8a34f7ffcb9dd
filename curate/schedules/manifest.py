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

from syllabus.core.io import JSONFileError, atomic_write_bytes, read_json
from syllabus.core.schedule import KIND, MANIFEST_FILE, SCHEMA_VERSION, SHARD_GLOB, ScheduleError, shard_name
from syllabus.core.table import Table
from syllabus.core.workdir import SCHEDULE, RunDirError, changes, describe_output, held_output, replace_output

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

    An empty or missing directory is fine, and so is one holding this very schedule (same manifest: a rerun), or an
    unfinished one (shards without a manifest: its writing stopped), which is emptied for this one. With `overwrite`,
    a directory holding another schedule is emptied too; files of anyone else's are never deleted (refused).

    Raises:
        ScheduleError: `out` is a file; or holds another schedule (the differing settings named, old -> new) and
            `overwrite` is off; or holds anything but a schedule (named), whatever `overwrite` says.
    """
    if out.exists() and not out.is_dir():
        raise ScheduleError(f"--out {out} is a file; give a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    existing = out / MANIFEST_FILE
    if existing.is_file() and existing.read_bytes() == manifest:
        return
    try:
        if overwrite or (not existing.is_file() and held_output(out) == SCHEDULE):
            # (without a manifest, a schedule whose writing stopped, a full disk say: the same command redoes it)
            replace_output(out, SCHEDULE)
            return
        held = held_output(out)
        what = describe_output(out)
    except RunDirError as err:
        raise ScheduleError(str(err)) from None
    if held != SCHEDULE:
        raise ScheduleError(f"--out {out} holds {what}; choose another directory")
    what = f"another schedule ({_changed_settings(existing, manifest)})"
    raise ScheduleError(f"--out {out} holds {what}; choose another directory or pass --overwrite to replace it")


def _changed_settings(existing: Path, manifest: bytes) -> str:
    """How the schedule in `existing` differs from `manifest` in the settings that decide it, old -> new."""
    try:
        old = read_json(existing)
    except JSONFileError as err:
        return f"its manifest is damaged: {err}"
    new = json.loads(manifest)
    settings = [_settings(old), _settings(new)]
    if settings[0]["method"] != settings[1]["method"]:
        for s in settings:  # another method has other parameters altogether
            s.pop("params")
    changed = [f"{key}: {a!r} -> {b!r}" for key, a, b in changes(*settings)]
    if not changed:
        return "the same settings, but other epochs: written by another Syllabus version?"
    return "differs in " + "; ".join(changed)


def _settings(manifest: Any) -> dict[str, Any]:
    """The settings a schedule is built from: method, parameters, seed and table."""
    manifest = manifest if isinstance(manifest, dict) else {}
    table = manifest.get("table") if isinstance(manifest.get("table"), dict) else {}
    fingerprint = table.get("fingerprint")
    return {
        "method": manifest.get("method"),
        "params": manifest.get("params"),
        "seed": manifest.get("seed"),
        "table": {"path": table.get("path"), "fingerprint": fingerprint[:16] if isinstance(fingerprint, str) else None},
    }


def write_schedule(out: Path, manifest: bytes, epochs: list[Epoch], overwrite: bool = False) -> Path:
    """Write the shards, remove stale ones, then the manifest (the completion marker).

    Raises:
        ScheduleError: see `claim_directory`; or an empty epoch (a method bug, reported rather than written).
    """
    for i, epoch in enumerate(epochs):
        if epoch.sample_ids.len() == 0:
            raise ScheduleError(f"epoch {i + 1} would be empty; check the method's parameters")
    claim_directory(out, manifest, overwrite)  # last check: with --overwrite it empties `out`
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
