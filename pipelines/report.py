"""report.md for a pipeline workdir: results table, training curves, plots, per-method training time and stage
timings. The curves come from each run's metrics.jsonl (the source of truth), drawn into WORKDIR/training/."""

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
            records.append({**{k: float(record[k]) for k in ("step", "tokens", "tokens_per_second", "loss")},
                            **{k: float(record[k]) for k in CURVES if k in record and record[k] is not None},
                            "loss_name": str(record.get("loss_name", "?")),
                            "kd_weight": float(record.get("kd_weight", float("nan")))})
        except (ValueError, KeyError, TypeError):
            unreadable += bool(line.strip())
    return records, unreadable


CURVES = {"loss": "loss", "kd": "KD term", "ce": "SFT term (CE of the ground truth)", "lr": "learning rate",
          "temperature": "temperature"}


def _runs(workdir: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """Every training run under WORKDIR/runs with its step records, and notes on unreadable lines."""
    runs, notes = {}, []
    for run_dir in sorted((workdir / "runs").glob("*")):
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            continue
        records, unreadable = _metrics(metrics)
        if unreadable:
            notes.append(f"{metrics}: {unreadable} unreadable line(s) left out.")
        if records:
            runs[run_dir.name] = records
    return runs, notes


def _compute(records: list[dict]) -> tuple[float, float]:
    """Response tokens trained on, and seconds spent in optimizer steps."""
    tokens = sum(r["tokens"] for r in records)
    return tokens, sum(r["tokens"] / r["tokens_per_second"] for r in records if r["tokens_per_second"])


def _training_summary(workdir: Path) -> list[str]:
    runs, notes = _runs(workdir)
    if not runs:
        return []
    rows = []
    for name, records in runs.items():
        tokens, seconds = _compute(records)
        last = records[-1]
        ce = f"{last['ce']:.3f}" if "ce" in last else "n/a"
        rows.append(f"| {name} | {last['step']:.0f} | {tokens:.0f} | {seconds:.0f} | {ce} | {last['loss']:.3f} "
                    f"({last['loss_name']}, kd_weight {last['kd_weight']:g}) |")
    figures = [f"![{p.stem}](training/{p.name})" for p in training_figures(workdir, runs)]
    return ["## Training", "",
            "| run | optimizer steps | response tokens | train seconds | last CE of the ground truth | last loss "
            "(its own objective) |",
            "|---|---:|---:|---:|---:|---:|", *rows, "",
            "The CE of the ground truth is the same quantity in every run (the SFT term, nats per response token of "
            "the last step's batch); each run's loss is its own objective (its KD loss and kd_weight), so losses do not "
            "compare across runs.", "", *figures, "", *[note + "\n" for note in notes]]


def _evaluated_runs(workdir: Path, runs: dict[str, list[dict]]) -> dict[str, float]:
    """Average score of each training run's final checkpoint, from the evaluations under WORKDIR that name it."""
    scores = {}
    for summary_file in sorted(workdir.glob("*/*/summary.json")):
        try:
            summary = json.loads(summary_file.read_text())
            model = Path(summary["model"]["path"])
            average = float(summary["results"]["average"])
        except (ValueError, KeyError, TypeError, OSError):
            continue
        run = model.parent.parent  # RUN/checkpoints/final
        if model.name == "final" and run.parent.resolve() == (workdir / "runs").resolve() and run.name in runs:
            scores[run.name] = average
    return scores


def training_figures(workdir: Path, runs: dict[str, list[dict]]) -> list[Path]:
    """WORKDIR/training/curves.png (loss, KD, SFT, learning rate and temperature per optimizer step, one line per
    run) and, where runs were evaluated, score-vs-compute.png (average score against response tokens trained on and
    against training seconds). Returns the figures written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = workdir / "training"
    out.mkdir(exist_ok=True)
    keys = [k for k in CURVES if any(k in r for records in runs.values() for r in records)]
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 2.3 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for name, records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([x for x, _ in points], [y for _, y in points], label=name, linewidth=1.2)
        ax.set_ylabel(CURVES[key], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(runs)), loc="upper right")
    axes[0, 0].set_title("training curves (metrics.jsonl)")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    written = [out / "curves.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)
    scores = _evaluated_runs(workdir, runs)
    if scores:
        fig, (by_tokens, by_time) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for name, score in scores.items():
            tokens, seconds = _compute(runs[name])
            for ax, x in ((by_tokens, tokens), (by_time, seconds)):
                ax.scatter([x], [score])
                ax.annotate(name, (x, score), fontsize=8, xytext=(4, 3), textcoords="offset points")
        by_tokens.set_xlabel("response tokens trained on")
        by_time.set_xlabel("seconds in optimizer steps")
        by_tokens.set_ylabel("average score (evaluate run)")
        for ax in (by_tokens, by_time):
            ax.grid(alpha=0.3)
        fig.suptitle("final checkpoints: score against training compute")
        fig.tight_layout()
        written.append(out / "score-vs-compute.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write_report(workdir: Path, title: str) -> Path:
    lines = [f"# {title}", ""]
    compare = workdir / "compare" / "compare.md"
    if compare.exists():
        runs, _ = _runs(workdir)
        steps = max((records[-1]["step"] for records in runs.values()), default=0)
        lines += ["## Results", "", compare.read_text(), "![results](compare/compare.png)", "",
                  f"How far to read this: the runs here trained for {steps:.0f} optimizer steps at most, and a "
                  "difference smaller than the spread over evaluation seeds (the table's std) is noise. A run this "
                  "size shows that every stage works; it does not rank the methods (docs/results.md has a "
                  "1,000-row comparison with training seeds).", ""]
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
