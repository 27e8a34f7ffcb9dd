"""`curate`: score a dataset into a difficulty table, schedule curricula from it, inspect and merge tables.

Thin on purpose: each command builds a config and calls one library function. torch and vllm are imported
inside the commands, so `curate --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from syllabus.core.cli import choices, config_options, fail, new_app
from syllabus.core.cli import value as choice_value
from syllabus.core.config import from_sources
from syllabus.core.models import DEFAULT_KEEP_EVERY
from syllabus.core.settings import KEEP_EVERY_HELP

from .data import SUFFIXES
from .score_config import ScoreConfig, ScoreError

CeReduction = choices("CeReduction", ("sum", "mean"))  # schedules.common.CE_REDUCTIONS, without importing polars

app = new_app("Syllabus data curation: score once, schedule many curricula.", "curate")
models_app = typer.Typer(help="Prepare and inspect the embedded default models.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(models_app, name="models")


@app.command()
@config_options(ScoreConfig)
def score(
    given: dict[str, Any],
    config: Optional[Path] = typer.Option(None, help="YAML with any of these settings by name (max_seq_len: 512, "
                                          "temperature: 0.7); the options given here win"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Score a dataset into a Parquet difficulty table (student/teacher CE, DDS, student output, ROUGE-L)."""
    from syllabus.core.io import WriteError
    from syllabus.core.models import ModelError
    from syllabus.core.workdir import RunDirError

    from .data import DataError
    from .score import score as run_score
    from .summary import summarize_table

    try:
        settings = from_sources(ScoreConfig, config, given, "curate score", ScoreError)
        table = run_score(settings, progress=not quiet)
    except (DataError, ModelError, ScoreError, RunDirError, ValueError, WriteError) as exc:
        fail(str(exc))
    typer.echo(summarize_table(table))
    rejects = Path(settings.out) / "rejects.jsonl"
    if rejects.exists():
        typer.echo(f"  rejected input rows: {sum(1 for _ in rejects.open())} (reasons in {rejects})")
    skipped = table.metadata["dataset"].get("skipped_files") or []
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        typer.echo(f"  files not read (not {'/'.join(SUFFIXES)}): {', '.join(skipped[:5])}{more}")


@app.command()
def merge(
    shards: list[Path] = typer.Argument(..., help="the shard tables of one run"),
    out: Path = typer.Option(..., "--out", "-o", help="merged table directory"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace OUT if it holds a difficulty table (nothing else)"),
) -> None:
    """Merge the shard tables of a `--num-shards` scoring run into one table."""
    from syllabus.core.table import TableError

    from .merge import merge_tables
    from .summary import summarize_table

    try:
        table = merge_tables(shards, out, overwrite)
    except TableError as exc:
        fail(str(exc))
    typer.echo(summarize_table(table))


@app.command()
def inspect(
    paths: list[Path] = typer.Argument(..., help="a difficulty table, or one or more schedule directories"),
    plots: Optional[Path] = typer.Option(None, help="also write PNG plots into this directory"),
    column: str = typer.Option("student_ce", help="difficulty column: a table's plots, a schedule's epoch means"),
    ce_reduction: CeReduction = typer.Option(
        "sum", help="a CE column summed over its tokens (what the schedules rank by, by default) or its per-token mean"),
) -> None:
    """Summarise a difficulty table (counts, statuses, metric quantiles) or schedules (per-epoch curriculum)."""
    from syllabus.core.schedule import ScheduleError
    from syllabus.core.table import TableError, check_numeric_column, read_table

    if plots is not None and plots.exists() and not plots.is_dir():
        fail(f"--plots {plots} is a file; give a directory for the PNG plots")
    if all((p / "manifest.json").exists() for p in paths):
        from .schedules.inspect import inspect_schedule

        try:
            typer.echo(inspect_schedule(list(paths), plots, column, choice_value(ce_reduction)))
        except ScheduleError as exc:
            fail(str(exc))
        return
    if len(paths) != 1:
        fail("give one table, or schedule directories only (each holding a manifest.json)")
    from .summary import summarize_table

    try:
        table = read_table(paths[0])
        check_numeric_column(table.frame.schema, column, f"--column: the table {table.path}")
    except TableError as exc:
        fail(str(exc))
    typer.echo(summarize_table(table))
    if plots is not None:
        from .plots import plot_table

        try:
            pngs = plot_table(table, plots, column=column, ce_reduction=choice_value(ce_reduction))
        except ValueError as exc:  # the column holds no finite value in rows with status ok
            fail(str(exc))
        for png in pngs:
            typer.echo(f"  wrote {png}")


@models_app.command("prepare")
def models_prepare(
    keep_every: int = typer.Option(DEFAULT_KEEP_EVERY, help=KEEP_EVERY_HELP),
    force: bool = typer.Option(False, "--force", help="rebuild even if the cache holds them"),
) -> None:
    """Convert the embedded SmolLM2-135M-Instruct GGUF into the default teacher and its depth-pruned student."""
    from syllabus.core.models import ModelError, cache_dir, prepare_default_models

    try:
        teacher, student = prepare_default_models(keep_every, force=force)
    except ModelError as exc:
        fail(str(exc))
    typer.echo(f"teacher: {teacher}\nstudent: {student}\n(cache: {cache_dir()}; set SYLLABUS_CACHE to move it)")


from .schedules.cli import schedule  # noqa: E402  (light: typer only; work is imported inside)

app.command("schedule")(schedule)
