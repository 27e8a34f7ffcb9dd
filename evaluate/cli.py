"""`evaluate`: measure students the way the papers do (MiniLLM protocol), and compare runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from syllabus.core.cli import config_options, fail, new_app

from .config import EvalConfig, JudgeConfig

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
    judged: Optional[str] = typer.Option(None, help="comma-separated `evaluate judge` output directories: a WR "
                                         "column per opponent for the runs they judged"),
) -> None:
    """One table in the papers' layout (rows = models, columns = sets, Avg.) and a bar chart with seed spread."""
    from .compare import CompareError, compare_runs

    try:
        markdown = compare_runs(runs, out, _csv(labels) if labels else None, allow_mismatch,
                                [Path(p) for p in _csv(judged)] if judged else None)
    except CompareError as exc:
        fail(str(exc))
    typer.echo(markdown)
    typer.echo(f"wrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")


@app.command()
@config_options(JudgeConfig)
def judge(
    given: dict[str, Any],
    run_a: Path = typer.Argument(..., help="the evaluation run whose win rate is measured"),
    run_b: str = typer.Argument(..., help="the run it is judged against, or `references` (each set's reference)"),
    config: Optional[Path] = typer.Option(None, help="YAML with any of these settings by name (judge_url: ..., "
                                          "concurrency: 16); the options given here win"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Pairwise LLM-judge win rates (MT-bench's prompt, both orders, a flip counted as a tie) per set and overall."""
    from syllabus.core.config import from_sources
    from syllabus.core.models import ModelError

    from .judge import EndpointJudge, JudgeError, LocalJudge, judge_runs, markdown

    try:
        c = from_sources(JudgeConfig, config, given, "evaluate judge", ValueError)
        if c.judge_url:
            judge_with: Any = EndpointJudge(c.judge_url, c.judge_model, c.judge_api_key_env,
                                            temperature=c.judge_temperature, max_tokens=c.max_tokens,
                                            timeout_s=c.timeout_s, retries=c.retries, concurrency=c.concurrency)
        else:
            judge_with = LocalJudge(c.judge_model, max_tokens=c.max_tokens,
                                    tensor_parallel_size=c.tensor_parallel_size, temperature=c.judge_temperature)
        summary = judge_runs(run_a, run_b, judge_with, Path(c.out), c.seeds or None, progress=not quiet)
    except (JudgeError, ModelError, ValueError) as exc:
        fail(str(exc))
    typer.echo(markdown(summary))
