"""Run a pipeline YAML: a list of stage commands (the stage CLIs), each skipped when already done.

A recipe only wires the stage CLIs together::

    name: demo
    workdir: runs/demo
    vars: {data: dolly_dev_1000}
    stages:
      - name: score
        cmd: curate score ${data} --out ${workdir}/table
      - name: schedule-${method}
        matrix: {method: [srd, dakd]}
        needs: [score]
        cmd: curate schedule ${workdir}/table --method ${method} --out ${workdir}/schedules/${method}

A stage's fingerprint hashes its resolved command and the fingerprints of the stages it `needs`; after it
succeeds, `WORKDIR/.pipeline/<stage>.json` records it. A re-run skips stages whose record matches, so after a crash
or an edit only what changed (and what depends on it) runs again. A failing stage stops the run with its own error;
finished stages stay.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

PROGRAMS = ("curate", "train", "evaluate", "syllabus")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
STAGE_KEYS = {"name", "cmd", "needs", "matrix", "outputs", "note"}
TOP_KEYS = {"name", "description", "workdir", "notice", "vars", "stages"}


class PipelineError(ValueError):
    """A recipe is malformed, or a stage failed."""


@dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]
    needs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Pipeline:
    path: Path
    name: str
    workdir: Path
    notice: str
    stages: tuple[Stage, ...]

    def marker(self, stage: Stage) -> Path:
        return self.workdir / ".pipeline" / f"{stage.name}.json"


def _interpolate(text: str, variables: dict[str, str], where: str) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in variables:
            raise PipelineError(f"{where}: unknown variable ${{{key}}}; defined: {', '.join(sorted(variables))}")
        return str(variables[key])

    return _VAR.sub(sub, str(text))


def load_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> Pipeline:
    """Parse and validate a recipe; expand matrices and variables.

    Raises:
        PipelineError: unknown keys, unknown variables or programs, duplicate stage names, or `needs` that do not
            name an earlier stage.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineError(f"{p}: cannot read the recipe ({exc})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{p}: a recipe is a mapping with name, workdir and stages")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise PipelineError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    variables = {k: str(v) for k, v in (raw.get("vars") or {}).items()}
    variables.update(overrides or {})
    workdir = _interpolate(raw.get("workdir", f"runs/{p.stem}"), variables, f"{p}: workdir")
    variables["workdir"] = workdir
    stages: list[Stage] = []
    for i, spec in enumerate(raw.get("stages") or []):
        where = f"{p}: stage {i + 1}"
        if not isinstance(spec, dict) or "name" not in spec or "cmd" not in spec:
            raise PipelineError(f"{where}: a stage needs `name` and `cmd`")
        bad = set(spec) - STAGE_KEYS
        if bad:
            raise PipelineError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; allowed: {', '.join(sorted(STAGE_KEYS))}")
        matrix = spec.get("matrix") or {}
        keys = list(matrix)
        for combo in itertools.product(*(matrix[k] for k in keys)) if keys else [()]:
            local = {**variables, **{k: str(v) for k, v in zip(keys, combo)}}
            name = _interpolate(spec["name"], local, where)
            argv = tuple(_interpolate(a, local, f"{where} ({name})") for a in
                         (shlex.split(spec["cmd"]) if isinstance(spec["cmd"], str) else spec["cmd"]))
            if not argv or argv[0] not in PROGRAMS:
                raise PipelineError(f"{where} ({name}): cmd must start with one of {', '.join(PROGRAMS)}")
            needs = tuple(_interpolate(n, local, where) for n in spec.get("needs") or [])
            outputs = tuple(_interpolate(o, local, where) for o in spec.get("outputs") or [])
            stages.append(Stage(name, argv, needs, outputs))
    names = [s.name for s in stages]
    for k, stage in enumerate(stages):
        if stage.name in names[:k]:
            raise PipelineError(f"{p}: two stages are named {stage.name!r}")
        for need in stage.needs:
            if need not in names[:k]:
                raise PipelineError(f"{p}: stage {stage.name!r} needs {need!r}, which is not an earlier stage")
    if not stages:
        raise PipelineError(f"{p}: no stages")
    notice = _interpolate(str(raw.get("notice", "")).strip(), variables, f"{p}: notice")
    return Pipeline(p, str(raw.get("name", p.stem)), Path(workdir), notice, tuple(stages))


def fingerprints(pipeline: Pipeline) -> dict[str, str]:
    out: dict[str, str] = {}
    for stage in pipeline.stages:
        payload = json.dumps({"argv": stage.argv, "needs": {n: out[n] for n in stage.needs}}, sort_keys=True)
        out[stage.name] = hashlib.sha256(payload.encode()).hexdigest()
    return out


def is_done(pipeline: Pipeline, stage: Stage, fingerprint: str) -> bool:
    marker = pipeline.marker(stage)
    if not marker.exists():
        return False
    record = json.loads(marker.read_text())
    return record.get("fingerprint") == fingerprint and all(Path(o).exists() for o in stage.outputs)


def stage_app(program: str):
    """The Typer app behind a stage program, found the way the shell finds it: the project's console scripts.

    Raises:
        PipelineError: the program is not installed (the project is not installed in this environment).
    """
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="console_scripts", name=program) if ep.value.startswith("syllabus.")]
    if not found:
        raise PipelineError(f"program {program!r} is not installed here; install the project (make install)")
    return found[0].load()


def validate_arguments(stage: Stage) -> None:
    """Parse the stage's arguments with its own CLI (without running it): unknown options fail here."""
    import typer

    command = typer.main.get_command(stage_app(stage.argv[0]))
    args = list(stage.argv[1:])
    try:
        ctx = command.make_context(stage.argv[0], list(args), resilient_parsing=False)
        while hasattr(command, "get_command"):  # a group: descend into the subcommand (typer vendors click)
            rest = list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])) + ctx.args
            if not rest:
                break
            sub = command.get_command(ctx, rest[0])
            if sub is None:
                raise PipelineError(f"stage {stage.name}: {stage.argv[0]} has no command {rest[0]!r}")
            command, ctx = sub, sub.make_context(rest[0], rest[1:], parent=ctx)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # not a usage error: a bug, let it surface
            raise
        raise PipelineError(f"stage {stage.name}: {shlex.join(stage.argv)}: {exc.format_message()}") from None


def program_path(name: str) -> str:
    """The stage CLI next to this interpreter (the venv's), falling back to PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def run_pipeline(pipeline: Pipeline, dry_run: bool = False, only: list[str] | None = None, echo=print) -> list[str]:
    """Run the stages in order, skipping finished ones. Returns the names of the stages that ran (or would run).

    Raises:
        PipelineError: a stage failed (its exit code and command are named) or its arguments do not parse.
    """
    if pipeline.notice:
        echo(pipeline.notice)
    for stage in pipeline.stages:
        validate_arguments(stage)
    if dry_run:
        return _run_stages(pipeline, dry_run, only, echo)
    lock_path = pipeline.workdir / ".pipeline" / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"another `syllabus run` is using {pipeline.workdir}; wait for it or stop it "
                                "(two runs in one workdir would overwrite each other's stages)") from None
        return _run_stages(pipeline, dry_run, only, echo)


def _run_stages(pipeline: Pipeline, dry_run: bool, only: list[str] | None, echo) -> list[str]:
    prints = fingerprints(pipeline)
    ran: list[str] = []
    for k, stage in enumerate(pipeline.stages, start=1):
        if only and stage.name not in only:
            continue
        head = f"[{k}/{len(pipeline.stages)}] {stage.name}"
        if is_done(pipeline, stage, prints[stage.name]):
            echo(f"{head}: done, skipped")
            continue
        ran.append(stage.name)
        echo(f"{head}: {'would run' if dry_run else 'running'}: {shlex.join(stage.argv)}")
        if dry_run:
            continue
        start = time.perf_counter()
        argv = [program_path(stage.argv[0]), *stage.argv[1:]]
        code = subprocess.call(argv, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
        if code != 0:
            raise PipelineError(
                f"stage {stage.name} failed (exit {code}): {shlex.join(stage.argv)}. Finished stages are kept; "
                "fix the cause and run the pipeline again to continue from here."
            )
        seconds = time.perf_counter() - start
        marker = pipeline.marker(stage)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": prints[stage.name], "argv": stage.argv,
                                      "seconds": round(seconds, 1), "finished_at": time.time()}, indent=2) + "\n")
        echo(f"{head}: finished in {seconds:.0f} s")
    return ran


def stage_times(workdir: Path) -> dict[str, float]:
    """Seconds of every finished stage of the pipeline run in `workdir`, in the order they finished."""
    records = []
    for marker in (Path(workdir) / ".pipeline").glob("*.json"):
        record = json.loads(marker.read_text())
        records.append((record.get("finished_at", 0.0), marker.stem, record.get("seconds", 0.0)))
    return {name: seconds for _, name, seconds in sorted(records)}
