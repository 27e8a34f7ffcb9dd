"""`curate`: score a dataset into a difficulty table, schedule curricula from it, inspect and merge tables.

Thin on purpose: each command builds a config and calls one library function. torch and vllm are imported
inside the commands, so `curate --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from syllabus.core.cli import Commands, choices, fail, with_version
from syllabus.core.cli import value as choice_value
from syllabus.core.config import field_defaults
from syllabus.core.engines import BACKENDS, ENGINE_CHOICES
from syllabus.core.engines.base import GenerationParams
from syllabus.core.precision import DTYPES
from syllabus.core.templates import TEMPLATES

from .data import PRESETS, SUFFIXES
from .score_config import ScoreConfig

SCORE = field_defaults(ScoreConfig)  # the CLI's defaults are the config's
GENERATION = field_defaults(GenerationParams)

Engine = choices("Engine", ENGINE_CHOICES)
Backend = choices("Backend", BACKENDS)
Template = choices("Template", TEMPLATES)
Dtype = choices("Dtype", DTYPES)
Preset = choices("Preset", tuple(PRESETS))
CeReduction = choices("CeReduction", ("sum", "mean"))  # schedules.common.CE_REDUCTIONS, without importing polars

app = with_version(typer.Typer(
    cls=Commands,
    help="Syllabus data curation: score once, schedule many curricula.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
), "curate")
models_app = typer.Typer(help="Prepare and inspect the embedded default models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command()
def score(
    data: str = typer.Argument(
        "dolly_dev_1000", help="jsonl/json/parquet/csv file, a directory of them, a datasets hub id, or dolly_dev_1000"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="table directory to write (resumed if it holds this same run)"),
    student: str = typer.Option(
        SCORE['student'], help="student: local HF directory, hub id, `default` (pruned SmolLM2), or `none` (teacher-only table)"
    ),
    teacher: Optional[str] = typer.Option(SCORE['teacher'], help="teacher: local HF directory, hub id, or `default` (ignored with --teacher-from)"),
    teacher_from: Optional[Path] = typer.Option(None, help="reuse teacher_ce (and, with --teacher-topk, the top-K cache) from this table instead of running the teacher"),
    teacher_topk: int = typer.Option(SCORE['teacher_topk'], help="also keep the teacher's top K log-probs at every response token beside the table, so that `train run --teacher cached` needs no teacher (0: no cache; 128, the measured choice, costs about 1 KB per response token: docs/methods.md, 'K+1 bins')"),
    preset: Preset = typer.Option(SCORE['preset'], help="field preset: minillm (prompt/instruction/input/output) or dolly"),
    instruction_field: Optional[str] = typer.Option(None, help="override the preset's instruction field"),
    input_field: Optional[str] = typer.Option(None, help="override the preset's input/context field"),
    prompt_field: Optional[str] = typer.Option(None, help="override the preset's ready-made prompt field"),
    response_field: Optional[str] = typer.Option(None, help="override the preset's response field (string or list)"),
    template: Template = typer.Option(SCORE['template'], help="alpaca (MiniLLM template), chat (tokenizer's) or none (prompt as is)"),
    split: str = typer.Option(SCORE['split'], help="split, for hub datasets"),
    limit: Optional[int] = typer.Option(None, help="score only the first N usable rows"),
    max_seq_len: int = typer.Option(SCORE['max_seq_len'], help="prompt + response tokens; longer rows get status too_long"),
    truncate: bool = typer.Option(SCORE['truncate'], help="truncate over-long rows instead of marking them too_long"),
    temperature: float = typer.Option(GENERATION['temperature'], help="student sampling temperature (SRD: near-greedy)"),
    top_p: float = typer.Option(GENERATION['top_p']),
    max_new_tokens: int = typer.Option(GENERATION['max_new_tokens']),
    num_samples: int = typer.Option(GENERATION['num_samples'], help="generations per prompt; rouge_l/output_ce are their means"),
    seed: int = typer.Option(GENERATION['seed']),
    gen_engine: Engine = typer.Option(SCORE['gen_engine'], help="auto: vllm if installed"),
    ce_engine: Engine = typer.Option(SCORE['ce_engine'], help="auto: vllm on GPU, hf on CPU"),
    dtype: Dtype = typer.Option(SCORE['dtype'], help="inference dtype; auto: bfloat16 where the machine has native bf16 (GPUs, AVX512-BF16/AMX CPUs), else float32"),
    part_size: int = typer.Option(SCORE['part_size'], help="rows per resumable part"),
    batch_tokens: Optional[int] = typer.Option(None, help="padded tokens per transformers forward (default 2048 CPU, 16384 GPU)"),
    padding_free: Optional[bool] = typer.Option(
        None, "--padding-free/--padded", help="transformers CE pass: pack rows end to end, or length-sorted padded "
        "batches [default: packed where attention is flash-attention; padded elsewhere, faster on CPU]"),
    pack_tokens: int = typer.Option(SCORE['pack_tokens'], help="longest packed row of the transformers CE pass (sdpa, eager; flash-attention packs a row per forward)"),
    num_shards: int = typer.Option(SCORE['num_shards'], help="split the rows into N shards by sample_id (many machines)"),
    shard_index: int = typer.Option(SCORE['shard_index'], help="which shard this run scores"),
    tensor_parallel_size: int = typer.Option(SCORE['tensor_parallel_size'], help="vLLM tensor parallelism (GPUs per engine)"),
    backend: Backend = typer.Option(SCORE['backend'], help="where the passes run: this process, or the engines of a Ray cluster (pip install 'syllabus[ray]')"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (`ray start --head` prints it) [default: the running one, else a local one]"),
    replicas: Optional[int] = typer.Option(None, help="Ray: engines to run [default: one per --tensor-parallel-size GPUs; one without GPUs]"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vLLM memory share (default 0.9 GPU, 0.5 CPU)"),
    keep_every: int = typer.Option(SCORE['keep_every'], help="which default student: the teacher keeping every k-th layer"),
    overwrite: bool = typer.Option(SCORE['overwrite'], help="replace OUT if it holds a different run"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Score a dataset into a Parquet difficulty table (student/teacher CE, DDS, student output, ROUGE-L)."""
    from syllabus.core.io import WriteError
    from syllabus.core.models import ModelError
    from syllabus.core.workdir import RunDirError

    from .data import DataError
    from .score import ScoreError
    from .score import score as run_score
    from .summary import summarize_table

    try:
        config = ScoreConfig(
            data=data, out=str(out), student=None if student == "none" else student,
            teacher=None if teacher_from else teacher,
            teacher_from=str(teacher_from) if teacher_from else None, preset=choice_value(preset),
            instruction_field=instruction_field, input_field=input_field, prompt_field=prompt_field,
            response_field=response_field, template=choice_value(template), split=split, limit=limit, max_seq_len=max_seq_len,
            truncate=truncate,
            generation=GenerationParams(temperature, top_p, max_new_tokens, num_samples, seed),
            gen_engine=choice_value(gen_engine), ce_engine=choice_value(ce_engine), dtype=choice_value(dtype), part_size=part_size, batch_tokens=batch_tokens,
            padding_free=padding_free, pack_tokens=pack_tokens, teacher_topk=teacher_topk,
            num_shards=num_shards, shard_index=shard_index, tensor_parallel_size=tensor_parallel_size,
            backend=choice_value(backend), ray_address=ray_address, replicas=replicas,
            gpu_memory_utilization=gpu_memory_utilization, keep_every=keep_every, overwrite=overwrite,
        )
        table = run_score(config, progress=not quiet)
    except (DataError, ModelError, ScoreError, RunDirError, ValueError, WriteError) as exc:
        fail(str(exc))
    typer.echo(summarize_table(table))
    rejects = out / "rejects.jsonl"
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
    overwrite: bool = typer.Option(False, help="replace OUT if it holds a difficulty table (nothing else)"),
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
    keep_every: int = typer.Option(2, help="the student keeps layers 0, k, 2k, ... of the teacher's 30"),
    force: bool = typer.Option(False, help="rebuild even if the cache holds them"),
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
