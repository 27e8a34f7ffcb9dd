"""report.md for a pipeline workdir: results table, plots, per-method training time and stage timings."""

from __future__ import annotations

import json
from pathlib import Path

from syllabus.core.io import atomic_write_bytes


def _metrics(path: Path) -> tuple[list[dict], int]:
    """The step records of a run's metrics.jsonl, and how many lines were unreadable (a run killed mid-line)."""
    records, unreadable = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            records.append({k: float(record[k]) for k in ("step", "tokens", "tokens_per_second", "loss")})
        except (ValueError, KeyError, TypeError):
            unreadable += bool(line.strip())
    return records, unreadable


def _training_summary(workdir: Path) -> list[str]:
    rows, notes = [], []
    for run_dir in sorted((workdir / "runs").glob("*")):
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            continue
        records, unreadable = _metrics(metrics)
        if unreadable:
            notes.append(f"{metrics}: {unreadable} unreadable line(s) left out.")
        if not records:
            continue
        tokens = sum(r["tokens"] for r in records)
        seconds = sum(r["tokens"] / r["tokens_per_second"] for r in records if r["tokens_per_second"])
        last = records[-1]
        rows.append(f"| {run_dir.name} | {last['step']:.0f} | {tokens:.0f} | {seconds:.0f} | {last['loss']:.3f} |")
    if not rows:
        return []
    return ["## Training", "", "| run | optimizer steps | response tokens | train seconds | last loss |",
            "|---|---:|---:|---:|---:|", *rows, "", *[note + "\n" for note in notes]]


def write_report(workdir: Path, title: str) -> Path:
    lines = [f"# {title}", ""]
    compare = workdir / "compare" / "compare.md"
    if compare.exists():
        lines += ["## Results", "", compare.read_text(), "![results](compare/compare.png)", ""]
    lines += _training_summary(workdir)
    plots = sorted((workdir / "plots").glob("*.png")) if (workdir / "plots").exists() else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    from .runner import stage_times

    times = stage_times(workdir)
    if times:
        lines += ["## Stage timings", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.0f} |" for name, seconds in times.items()]
        lines += [f"| total | {sum(times.values()):.0f} |", ""]
    path = workdir / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
