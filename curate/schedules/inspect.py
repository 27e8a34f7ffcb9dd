"""Text summaries of schedules, and their per-epoch curriculum plots."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def load_manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def epoch_difficulty(path: Path, column: str = "student_ce") -> pl.DataFrame:
    """Per epoch: sample count and mean of `column` over the epoch's samples (from the schedule's table)."""
    from ..table import read_table

    manifest = load_manifest(path)
    table = read_table(manifest["table"]["path"], columns=["sample_id", column]).frame
    rows = []
    for e in manifest["epochs"]:
        ids = pl.read_parquet(path / e["shard"], columns=["sample_id"])
        mean = ids.join(table, on="sample_id", how="left")[column].mean()
        rows.append({"epoch": e["epoch"], "num_samples": e["num_samples"], "mean": mean, "stage": e["stage"]})
    return pl.DataFrame(rows)


def summarize_schedule(path: Path) -> str:
    manifest = load_manifest(path)
    epochs = manifest["epochs"]
    total = sum(e["num_samples"] for e in epochs)
    lines = [
        f"schedule {path}: method {manifest['method']}, {len(epochs)} epochs, {total} samples in all, seed {manifest['seed']}",
        f"  table {manifest['table']['path']} (fingerprint {manifest['table']['fingerprint'][:16]}, "
        f"{manifest['table']['num_rows']} rows); excluded: {manifest['excluded'] or 'none'}",
        f"  {'epoch':>5} {'stage':>5} {'samples':>8} {'temp':>6} {'kd_w':>6} {'loss':>5}  params  flags",
    ]
    for e in epochs:
        flags = " ".join(f for f, on in (("restart", e["restart_optimizer"]), ("rescore", e["rescore"])) if on)
        lines.append(f"  {e['epoch']:>5} {e['stage']:>5} {e['num_samples']:>8} {e['temperature']:>6.3f} "
                     f"{e['kd_weight']:>6.3f} {e['loss']:>5}  {e['loss_params'] or ''}  {flags}")
    return "\n".join(lines)


def inspect_schedule(paths: list[Path], plots_dir: Path | None, column: str = "student_ce") -> str:
    """Summaries of one or more schedules; with `plots_dir`, a curriculum plot of all of them on shared axes."""
    text = "\n\n".join(summarize_schedule(p) for p in paths)
    if plots_dir is not None:
        from ..plots import plot_curricula

        png = plot_curricula({p.name: epoch_difficulty(p, column) for p in paths},
                             plots_dir / "curricula.png", column)
        text += f"\n  wrote {png}"
    return text
