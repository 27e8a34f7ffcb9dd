"""`curate inspect` on schedules: a text summary per schedule, and their curricula plotted on shared axes."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from syllabus.core.schedule import ScheduleError, read_schedule
from syllabus.core.table import TableError, check_numeric_column, read_schema, read_table

from .common import ce_columns, is_summed, reduce_ce


def _scores(table_path: str, column: str, ce_reduction: str) -> pl.DataFrame | None:
    """sample_id and `column` of a schedule's table, a CE summed over its tokens unless `ce_reduction` is "mean"
    (as the schedules rank); None when the table cannot be read (moved, deleted, damaged) or lacks the columns."""
    columns = ce_columns(column, ce_reduction)
    try:
        schema = read_schema(table_path)
        for name in columns:
            check_numeric_column(schema, name, table_path)
        frame = read_table(table_path, columns=["sample_id", *columns]).frame
    except TableError:
        return None
    return reduce_ce(frame, column, ce_reduction).select("sample_id", column)


def check_column(path: Path, column: str) -> None:
    """Refuse a `column` that the schedule's table, if it can be read, lacks or holds as text.

    Raises:
        ScheduleError: `path` is not a schedule, or `column` is not a numeric column of its table (those are listed).
    """
    table_path = read_schedule(path).table_path
    try:
        schema = read_schema(table_path)
    except TableError:
        return  # the table moved or is damaged: the summary says so, and shows no means
    try:
        check_numeric_column(schema, column, f"--column: the table {table_path} of {path}")
    except TableError as err:
        raise ScheduleError(str(err)) from None


def epoch_profile(path: Path, column: str = "student_ce", ce_reduction: str = "sum") -> pl.DataFrame:
    """Per epoch of a schedule: its training settings and the mean of `column` over the epoch's samples (a CE
    summed over its tokens, as the schedules rank, unless `ce_reduction` is "mean").

    The mean comes from the table the manifest names; it is null when that table cannot be read or has no such
    numeric column (the rest of the profile only needs the manifest).

    Raises:
        ScheduleError: `path` is not a schedule directory, or one of its shards is not readable.
    """
    schedule = read_schedule(path)
    epochs = schedule.epochs
    profile = pl.DataFrame({
        "epoch": [e.index + 1 for e in epochs],
        "stage": [e.plan.stage for e in epochs],
        "num_samples": [e.num_samples for e in epochs],
        "temperature": [float(e.plan.temperature) for e in epochs],
        "kd_weight": [float(e.plan.kd_weight) for e in epochs],
    })
    scores = _scores(schedule.table_path, column, ce_reduction)
    if scores is None:
        return profile.with_columns(mean=pl.lit(None, dtype=pl.Float64))
    scores = scores.with_columns(pl.col(column).cast(pl.Float64).fill_nan(None))
    means, cache = [], {}
    for e in epochs:
        key = e.shard.read_bytes()  # epochs over the same subset have identical shards: join once
        if key not in cache:
            try:
                ids = pl.read_parquet(e.shard, columns=["sample_id"])
            except (pl.exceptions.PolarsError, OSError) as err:
                raise ScheduleError(f"{e.shard}: not a readable epoch shard ({str(err).splitlines()[0]}); build the "
                                    "schedule again with the `curate schedule` command that wrote it, adding "
                                    "--overwrite") from None
            cache[key] = ids.join(scores, on="sample_id", how="left")[column].mean()
        means.append(cache[key])
    return profile.with_columns(mean=pl.Series(means, dtype=pl.Float64))


def summarize_schedule(path: Path, column: str = "student_ce", ce_reduction: str = "sum") -> str:
    """A text summary: method, parameters, table, exclusions, then one line per epoch.

    Raises:
        ScheduleError: `path` is not a schedule directory, or one of its shards is not readable.
    """
    schedule = read_schedule(path)
    manifest = schedule.manifest
    table = manifest["table"]
    profile = epoch_profile(path, column, ce_reduction)
    shown_column = f"{column}{' sum' if is_summed(column, ce_reduction) else ''}"
    usable = table.get("usable_rows") or 1
    total = int(profile["num_samples"].sum())
    params = ", ".join(f"{k}={v}" for k, v in sorted(manifest["params"].items()) if v not in (None, {}))
    lines = [
        f"schedule {path}: method {manifest['method']}, {len(profile)} epochs, {total} samples in all "
        f"({total / usable:.2f} x the usable rows), seed {manifest['seed']}",
        f"  params: {params}",
        f"  table {table['path']} (fingerprint {table['fingerprint'][:16]}): {table['num_rows']} rows, "
        f"{table.get('usable_rows')} usable; excluded: {manifest['excluded'] or 'none'}",
        f"  {'epoch':>5} {'stage':>5} {'samples':>9} {'mean ' + shown_column:>16} {'temp':>6} {'kd_w':>6} "
        f"{'loss':>5}  loss params / flags",
    ]
    for epoch, mean in zip(schedule.epochs, profile["mean"]):
        plan = epoch.plan
        flags = [f for f, on in (("restart", plan.restart_optimizer), ("rescore", plan.rescore)) if on]
        if plan.on_policy != "off":
            flags.append(f"{plan.on_policy}={plan.on_policy_share:g}")
        loss_params = " ".join(f"{k}={v:g}" for k, v in plan.loss_params.items())
        shown = "n/a" if mean is None else f"{mean:.4f}"
        lines.append(
            f"  {epoch.index + 1:>5} {plan.stage:>5} {epoch.num_samples:>9} {shown:>16} "
            f"{plan.temperature:>6.3f} {plan.kd_weight:>6.3f} {plan.loss:>5}  "
            f"{' '.join([loss_params, *flags]).strip()}"
        )
    if profile["mean"].null_count() == len(profile):
        lines.append(f"  (mean {shown_column} n/a: {_why_no_means(table['path'], ce_columns(column, ce_reduction))})")
    return "\n".join(lines)


def _why_no_means(table_path: str, columns: list[str]) -> str:
    """Why a schedule's summary shows no means: a teacher-only table (no student, by design), or a table that
    cannot be read or lacks the columns."""
    try:
        metadata = read_table(table_path, columns=["sample_id"]).metadata
    except TableError:
        return f"the table {table_path} cannot be read (moved, deleted or damaged); the schedule itself is whole"
    if "student" in metadata and metadata["student"] is None and any(c.startswith("student") for c in columns):
        return (f"{table_path} is a teacher-only table (scored with --student none), so it has no student scores; "
                "full and random schedules need none, and a student's table made with --teacher-from has them")
    return f"the table {table_path} lacks numeric {' and '.join(columns)}"


def _labels(paths: list[Path]) -> list[str]:
    """Legend labels: directory names, with the parent added where two names clash."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def inspect_schedule(paths: list[Path], plots_dir: Path | None, column: str = "student_ce",
                     ce_reduction: str = "sum") -> str:
    """Text summaries of one or several schedules; with `plots_dir`, their curricula on shared axes.

    Args:
        paths: schedule directories.
        plots_dir: where to write `curricula.png` (samples per epoch, mean difficulty, temperature and
            kd_weight per epoch, one line per schedule); None for text only.
        column: the table column averaged per epoch as the difficulty.
        ce_reduction: "sum" (a CE column summed over its tokens, as the schedules rank by default) or "mean".

    Returns:
        The text to print (with the written PNG path, if any).

    Raises:
        ScheduleError: a path is not a schedule directory, or `column` is not a numeric column of a table.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        check_column(path, column)
    text = "\n\n".join(summarize_schedule(p, column, ce_reduction) for p in paths)
    if plots_dir is not None:
        from ..plots import plot_curricula

        profiles = {label: epoch_profile(p, column, ce_reduction) for label, p in zip(_labels(paths), paths)}
        png = plot_curricula(profiles, Path(plots_dir) / "curricula.png", column, is_summed(column, ce_reduction))
        text += f"\n  wrote {png}"
    return text
