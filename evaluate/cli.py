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
def judge(
    run_a: Path = typer.Argument(..., help="the evaluation run whose win rate is measured"),
    run_b: str = typer.Argument(..., help="the run it is judged against, or `references` (each set's reference)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for judgments.jsonl (resumed), judge.json, judge.md"),
    judge_model: str = typer.Option(..., help="the judge: its model name at --judge-url, or without it a model "
                                    "directory or hub id run here (vLLM where installed, else transformers)"),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API root of the judge, e.g. "
                                            "http://localhost:8000/v1 (`vllm serve MODEL`) or a hosted API's"),
    judge_api_key_env: Optional[str] = typer.Option(None, help="environment variable holding the API key"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds whose generations are judged "
                                        "(default: the first of run A's protocol)"),
    concurrency: int = typer.Option(8, help="judge requests in flight at once"),
    timeout_s: float = typer.Option(120.0, help="seconds per judge request"),
    retries: int = typer.Option(4, help="retries of a failed request, with exponential backoff (1, 2, 4, ... s)"),
    tensor_parallel_size: int = typer.Option(1, help="a judge run here: vLLM tensor parallelism (GPUs)"),
    max_tokens: int = typer.Option(1024, help="longest judgment in tokens"),
    judge_temperature: float = typer.Option(0.0, help="the judge's sampling temperature (0: greedy, as MT-bench; "
                                            "SpectrumKD used 0.7)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Pairwise LLM-judge win rates (MT-bench's prompt, both orders, a flip counted as a tie) per set and overall."""
    from syllabus.core.models import ModelError

    from .judge import EndpointJudge, JudgeError, LocalJudge, judge_runs, markdown

    if concurrency < 1 or retries < 0 or timeout_s <= 0 or max_tokens < 1 or tensor_parallel_size < 1 or \
            judge_temperature < 0:
        fail("--concurrency, --max-tokens and --tensor-parallel-size must be >= 1, --retries and "
             "--judge-temperature >= 0, --timeout-s > 0")
    if judge_url:
        judge_with: Any = EndpointJudge(judge_url, judge_model, judge_api_key_env, temperature=judge_temperature,
                                        max_tokens=max_tokens, timeout_s=timeout_s, retries=retries,
                                        concurrency=concurrency)
    else:
        judge_with = LocalJudge(judge_model, max_tokens=max_tokens, tensor_parallel_size=tensor_parallel_size,
                                temperature=judge_temperature)
    try:
        chosen = tuple(int(s) for s in _csv(seeds)) if seeds else None
        summary = judge_runs(run_a, run_b, judge_with, out, chosen, progress=not quiet)
    except (JudgeError, ModelError, ValueError) as exc:
        fail(str(exc))
    typer.echo(markdown(summary))
