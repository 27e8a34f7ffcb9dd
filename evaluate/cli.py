"""`evaluate`: measure students the way the papers do (MiniLLM protocol), and compare runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from syllabus.core.cli import Commands, choices, fail, with_version
from syllabus.core.cli import value as choice_value
from syllabus.core.config import field_defaults
from syllabus.core.engines import BACKENDS, ENGINE_CHOICES
from syllabus.core.precision import DTYPES
from syllabus.core.templates import TEMPLATES

from .protocol import EvalProtocol

Engine = choices("Engine", ENGINE_CHOICES)
Backend = choices("Backend", BACKENDS)
Template = choices("Template", TEMPLATES)
Dtype = choices("Dtype", DTYPES)
PROTOCOL = field_defaults(EvalProtocol)  # the CLI's defaults are the protocol's (MiniLLM's)

app = with_version(typer.Typer(cls=Commands, help="Evaluate students with the papers' protocol.", no_args_is_help=True,
                               pretty_exceptions_enable=False, add_completion=False), "evaluate")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in _csv(value))
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {value!r}") from None
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds repeats {', '.join(map(str, repeated))}; give each seed once")
    return seeds


@app.command()
def run(
    model: str = typer.Option(..., help="model directory, hub id, or default-teacher / default-student"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (resumed if it holds this same run)"),
    sets: str = typer.Option("dollyeval,selfinst,vicunaeval,sni,unni_short",
                             help="comma-separated shipped set names (also gsm8k) or jsonl paths"),
    seeds: str = typer.Option(",".join(map(str, PROTOCOL["seeds"])), help="comma-separated sampling seeds"),
    limit: Optional[int] = typer.Option(None, help="first N rows of each set (a reduced run; recorded)"),
    max_new_tokens: int = typer.Option(PROTOCOL["max_new_tokens"]),
    max_prompt_tokens: int = typer.Option(PROTOCOL["max_prompt_tokens"],
                                          help="prompts are cut to their first N tokens"),
    temperature: float = typer.Option(PROTOCOL["temperature"]),
    top_p: float = typer.Option(PROTOCOL["top_p"]),
    no_repeat_ngram_size: int = typer.Option(PROTOCOL["no_repeat_ngram_size"], help="0 turns n-gram blocking off"),
    template: Template = typer.Option(PROTOCOL["template"], help="prompts: the papers' Alpaca template, the model's chat template (for a student trained on chat-templated data), or each set's prompt as given"),
    engine: Engine = typer.Option("auto", help="auto: vllm if installed"),
    dtype: Dtype = typer.Option("auto", help="auto: bfloat16 where the machine has native bf16 (GPUs, AVX512-BF16/AMX CPUs), else float32"),
    tensor_parallel_size: int = typer.Option(1, help="vLLM tensor parallelism (GPUs per engine)"),
    backend: Backend = typer.Option("local", help="where the (set, seed) jobs run: this process, or the engines of a Ray cluster (pip install 'syllabus[ray]')"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join [default: the running one, else a local one]"),
    replicas: Optional[int] = typer.Option(None, help="Ray: engines to run [default: one per --tensor-parallel-size GPUs; one without GPUs]"),
    label: Optional[str] = typer.Option(None, help="name of this model in comparisons"),
    overwrite: bool = typer.Option(False, help="replace OUT if it holds a different run"),
    quiet: bool = typer.Option(False),
) -> None:
    """Generate and score on each set under each seed; write generations, summary.json and summary.md."""
    from syllabus.core.models import ModelError

    from .run import EvalConfig, evaluate, markdown_summary
    from .sets import EvalSetError

    try:
        protocol = EvalProtocol(max_prompt_tokens, max_new_tokens, temperature, top_p, no_repeat_ngram_size,
                                _seeds(seeds), choice_value(template))
        config = EvalConfig(model, str(out), tuple(_csv(sets)), limit, protocol, choice_value(engine), choice_value(dtype),
                            label=label, overwrite=overwrite, tensor_parallel_size=tensor_parallel_size,
                            backend=choice_value(backend), ray_address=ray_address, replicas=replicas)
        summary = evaluate(config, progress=not quiet)
    except (ModelError, EvalSetError, ValueError) as exc:
        fail(str(exc))
    typer.echo(markdown_summary(summary))


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="evaluation run directories"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for compare.md, compare.csv, compare.png"),
    labels: Optional[str] = typer.Option(None, help="comma-separated row names (default: each run's label)"),
    allow_mismatch: bool = typer.Option(False, help="compare runs evaluated under different protocols"),
) -> None:
    """One table in the papers' layout (rows = models, columns = sets, Avg.) and a bar chart with seed spread."""
    from .compare import CompareError, compare_runs

    try:
        markdown = compare_runs(runs, out, _csv(labels) if labels else None, allow_mismatch)
    except CompareError as exc:
        fail(str(exc))
    typer.echo(markdown)
    typer.echo(f"wrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")
