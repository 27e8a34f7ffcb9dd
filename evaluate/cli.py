"""`evaluate`: measure students the way the papers do (MiniLLM protocol), and compare runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from syllabus.core.cli import config_options, fail, new_app

from .config import EvalConfig

app = new_app("Evaluate students with the papers' protocol.", "evaluate")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
@config_options(EvalConfig)
def run(
    given: dict[str, Any],
    config: Optional[Path] = typer.Option(None, help="YAML with any of these settings by name (limit: 50, "
                                          "seeds: [10, 20]); the options given here win"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Generate and score on each set under each seed; write generations, summary.json and summary.md."""
    from syllabus.core.config import from_sources
    from syllabus.core.models import ModelError

    from .run import evaluate, markdown_summary
    from .sets import EvalSetError

    try:
        settings = from_sources(EvalConfig, config, given, "evaluate run", ValueError)
        summary = evaluate(settings, progress=not quiet)
    except (ModelError, EvalSetError, ValueError) as exc:
        fail(str(exc))
    typer.echo(markdown_summary(summary))


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="evaluation run directories"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for compare.md, compare.csv, compare.png"),
    labels: Optional[str] = typer.Option(None, help="comma-separated row names (default: each run's label)"),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch",
                                        help="compare runs evaluated under different protocols"),
) -> None:
    """One table in the papers' layout (rows = models, columns = sets, Avg.) and a bar chart with seed spread."""
    from .compare import CompareError, compare_runs

    try:
        markdown = compare_runs(runs, out, _csv(labels) if labels else None, allow_mismatch)
    except CompareError as exc:
        fail(str(exc))
    typer.echo(markdown)
    typer.echo(f"wrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")
