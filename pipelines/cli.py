"""`syllabus`: run a pipeline recipe end to end (`syllabus run pipelines/demo.yaml`), and build its report."""

from __future__ import annotations

from pathlib import Path

import typer

from syllabus.core.cli import fail, new_app

app = new_app("Syllabus pipelines: one command per recipe.", "syllabus")


def _vars(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        out[key] = value
    return out


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="pipeline YAML, e.g. pipelines/demo.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate every stage's arguments and show what would run"),
    only: list[str] = typer.Option([], metavar="STAGE", help="run only these stages (repeatable)"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe variable: key=value (repeatable)"),
) -> None:
    """Run the recipe's stages in order; finished stages (same fingerprint) are skipped."""
    from .runner import PipelineError, load_pipeline, run_pipeline

    try:
        pipeline = load_pipeline(recipe, _vars(set_))
        ran = run_pipeline(pipeline, dry_run=dry_run, only=only or None, echo=typer.echo)
    except PipelineError as exc:
        fail(str(exc))
    typer.echo(f"{pipeline.name}: {'would run' if dry_run else 'ran'} {len(ran)} stage(s); workdir {pipeline.workdir}")


@app.command()
def report(
    workdir: Path = typer.Option(..., help="the pipeline's workdir"),
    title: str = typer.Option("Syllabus report"),
) -> None:
    """Assemble WORKDIR/report.md from the comparison, the plots and the stage timings."""
    from .report import write_report

    if not workdir.is_dir():
        fail(f"{workdir} is not a directory; pass the pipeline's workdir (the recipe's `workdir:`)")
    path = write_report(workdir, title)
    typer.echo(f"wrote {path}")
