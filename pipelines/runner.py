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

Stage names (after matrix expansion) are identifiers, `[A-Za-z0-9_][A-Za-z0-9_.-]*`: each names a file in
`WORKDIR/.pipeline/`. A matrix value is a list (`{method: [srd]}` for one value).

A stage is done when `WORKDIR/.pipeline/<stage>.json` (written atomically, after the stage succeeds) holds its
current fingerprint and its outputs exist (its `--out` and `--plots`, and its declared `outputs`). The fingerprint
hashes the resolved command, the Syllabus version, the stages it `needs` (their fingerprints and when they last
finished, so that a stage run again, its output deleted say, runs what needs it again too), and the content of every
existing file or directory its arguments name outside the workdir (its data, models, tables from elsewhere), except
what it writes. Paths inside the workdir are products of earlier stages and enter through `needs`, so a stage never
hashes its own output. The stage CLIs' own run identities are not enough to decide "done" alone: asking them means
starting every stage (imports, model hashing) on every run, and some stages (`--overwrite`, plots) always redo
their work. A dry run also checks that every path a stage reads exists or is made by an earlier stage.

A re-run thus runs what changed and what depends on it; a failing stage stops the run with its own error; finished
stages stay. A killed `syllabus run` (even by SIGKILL) stops its stage: on Linux the stage gets SIGTERM when its
runner dies. The lock `WORKDIR/.pipeline/lock` is an flock that the stage process inherits, so the workdir stays
locked until the stage has exited too, and a second run never starts a stage beside a live one.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from syllabus.core.io import atomic_write_json
from syllabus.core.processes import parent_death_signal

PROGRAMS = ("curate", "train", "evaluate", "syllabus")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VAR = re.compile(r"\$\{(" + _IDENTIFIER.pattern + r")\}")
_STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
STAGE_KEYS = {"name", "cmd", "needs", "matrix", "outputs", "note"}
TOP_KEYS = {"name", "description", "workdir", "notice", "vars", "env", "stages"}
# The variables a recipe's `env:` may set: the hub, tokenizer and thread settings a recipe needs, nothing that
# makes a stage load code (PYTHONPATH, PYTHONSTARTUP, LD_PRELOAD, ...): a recipe received from someone else must not
# run code of their choosing
RECIPE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
              "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT",
              "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE",
              "VLLM_CPU_OMP_THREADS_BIND")
OUTPUT_OPTIONS = ("--out", "-o", "--plots")  # where stage CLIs write: never an input of their own stage
HASH_LIMIT_BYTES = 64 * 2**20  # larger files (model weights) enter the fingerprint by size and mtime


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
    env: dict[str, str] = field(default_factory=dict)  # every stage's environment, unless the user's sets them

    def marker(self, stage: Stage) -> Path:
        return self.workdir / ".pipeline" / f"{stage.name}.json"


def _interpolate(text: Any, variables: dict[str, str], where: str) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in variables:
            raise PipelineError(f"{where}: unknown variable ${{{key}}}; defined: {', '.join(sorted(variables))}")
        return variables[key]

    text = str(text)
    if "${" in _VAR.sub("", text):
        raise PipelineError(f"{where}: {text!r} has a malformed ${{...}}; a variable is ${{name}}, name made of "
                            "letters, digits and _")
    return _VAR.sub(sub, text)


def _read_recipe(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise PipelineError(f"{where}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: a recipe is a mapping with name, workdir and stages")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise PipelineError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(TOP_KEYS))}")
    if not isinstance(raw.get("vars") or {}, dict):
        raise PipelineError(f"{path}: `vars` is a mapping of name: value")
    if not isinstance(raw.get("env") or {}, dict):
        raise PipelineError(f"{path}: `env` is a mapping of NAME: value")
    if not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise PipelineError(f"{path}: `stages` is a non-empty list of stages")
    return raw


def _scalar(value: Any, where: str) -> str:
    if value is None or isinstance(value, (list, dict)):
        raise PipelineError(f"{where}: expected a single value (text or number), got {value!r}")
    return str(value)


def _list(value: Any, where: str) -> list[str]:
    """A YAML list of scalars; a bare string is refused (it would be read character by character)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise PipelineError(f"{where}: expected a list, got {value!r}; write [{value}] for one item")
    return [_scalar(item, where) for item in value]


def _matrix(value: Any, where: str) -> list[dict[str, str]]:
    """Every combination of a stage's matrix, as variables; [{}] without a matrix."""
    if value is None:
        return [{}]
    if not isinstance(value, dict) or not value:
        raise PipelineError(f"{where}: `matrix` is a mapping of variable: [values], e.g. {{method: [srd, dakd]}}")
    for key in value:
        if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key) or key == "workdir":
            raise PipelineError(f"{where}: matrix variable {key!r} is not a variable name (letters, digits, _; "
                                "not workdir)")
    columns = {key: _list(values, f"{where}: matrix {key}") for key, values in value.items()}
    for key, values in columns.items():
        if not values:
            raise PipelineError(f"{where}: matrix {key} is an empty list")
    return [dict(zip(columns, combo)) for combo in itertools.product(*columns.values())]


def _command(cmd: Any, where: str) -> list[str]:
    if isinstance(cmd, list):
        return [_scalar(arg, where) for arg in cmd]
    try:
        return shlex.split(_scalar(cmd, where))
    except ValueError as exc:  # an unclosed quote
        raise PipelineError(f"{where}: cannot split the command into arguments ({exc})") from None


def load_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> Pipeline:
    """Parse and validate a recipe; expand matrices and variables.

    Args:
        path: the recipe YAML.
        overrides: values for variables the recipe defines or uses (`syllabus run --set key=value`).

    Raises:
        PipelineError: invalid YAML (file and line named), unknown keys, unknown or malformed variables, unknown
            programs, stage names that are not identifiers, duplicate stage names, `needs` that do not name an
            earlier stage, or a list-valued key (`matrix` values, `needs`, `outputs`) given as something else.
    """
    p = Path(path)
    raw = _read_recipe(p)
    variables = {str(k): _scalar(v, f"{p}: vars: {k}") for k, v in (raw.get("vars") or {}).items()}
    # a recipe may use a variable that only --set gives; workdir comes from `workdir:`, matrix variables per stage
    matrices = [spec.get("matrix") for spec in raw["stages"] if isinstance(spec, dict)]
    matrix_keys = {str(k) for matrix in matrices if isinstance(matrix, dict) for k in matrix}
    used = set(_VAR.findall(json.dumps(raw, default=str))) - {"workdir"} - matrix_keys
    unknown = set(overrides or {}) - set(variables) - used
    if unknown:
        raise PipelineError(f"{p}: --set {', '.join(sorted(unknown))}: the recipe has no such variable; "
                            f"its variables: {', '.join(sorted(set(variables) | used)) or 'none'}")
    variables.update(overrides or {})
    workdir = _interpolate(_scalar(raw.get("workdir", f"runs/{p.stem}"), f"{p}: workdir"), variables,
                           f"{p}: workdir")
    if not workdir.strip():
        raise PipelineError(f"{p}: workdir is empty")
    variables["workdir"] = workdir
    stages: list[Stage] = []
    for i, spec in enumerate(raw["stages"]):
        where = f"{p}: stage {i + 1}"
        if not isinstance(spec, dict) or "name" not in spec or "cmd" not in spec:
            raise PipelineError(f"{where}: a stage needs `name` and `cmd`")
        bad = set(spec) - STAGE_KEYS
        if bad:
            raise PipelineError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; "
                                f"allowed: {', '.join(sorted(STAGE_KEYS))}")
        cmd = _command(spec["cmd"], f"{where}: cmd")
        needs, outputs = _list(spec.get("needs"), f"{where}: needs"), _list(spec.get("outputs"), f"{where}: outputs")
        for combo in _matrix(spec.get("matrix"), where):
            local = {**variables, **combo}
            name = _interpolate(_scalar(spec["name"], f"{where}: name"), local, where)
            if not _STAGE_NAME.fullmatch(name):
                raise PipelineError(f"{where}: stage name {name!r} is not an identifier (letters, digits, _ . -, "
                                    "at most 100, not starting with . or -): it names the stage's file in "
                                    "WORKDIR/.pipeline/")
            argv = tuple(_interpolate(a, local, f"{where} ({name})") for a in cmd)
            if not argv or argv[0] not in PROGRAMS:
                raise PipelineError(f"{where} ({name}): cmd must start with one of {', '.join(PROGRAMS)}")
            stages.append(Stage(name, argv, tuple(_interpolate(n, local, where) for n in needs),
                                tuple(_interpolate(o, local, where) for o in outputs)))
    names = [s.name for s in stages]
    for k, stage in enumerate(stages):
        if stage.name in names[:k]:
            raise PipelineError(f"{p}: two stages are named {stage.name!r}")
        for need in stage.needs:
            if need not in names[:k]:
                raise PipelineError(f"{p}: stage {stage.name!r} needs {need!r}, which is not an earlier stage")
    notice = _interpolate(str(raw.get("notice", "")).strip(), variables, f"{p}: notice")
    env = {str(k): _interpolate(_scalar(v, f"{p}: env: {k}"), variables, f"{p}: env: {k}")
           for k, v in (raw.get("env") or {}).items()}
    refused = sorted(set(env) - set(RECIPE_ENV))
    if refused:
        raise PipelineError(f"{p}: env: {', '.join(refused)}: a recipe may set only {', '.join(RECIPE_ENV)} (others, "
                            "such as PYTHONPATH or LD_PRELOAD, would let a recipe run code of its choosing); set "
                            "what else you need in your own environment before `syllabus run`")
    return Pipeline(p, str(raw.get("name", p.stem)), Path(workdir), notice, tuple(stages), env)


def syllabus_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syllabus")
    except PackageNotFoundError:
        return "not installed"


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > HASH_LIMIT_BYTES:
        return f"size {stat.st_size}, mtime_ns {stat.st_mtime_ns}"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _path_digest(path: Path, workdir: Path) -> str:
    """A file's digest, or a directory's: every file under it (minus the workdir, if inside), by relative path."""
    if not path.is_dir():
        return _file_digest(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if Path(root, d).resolve() != workdir)
        for name in sorted(files):
            file = Path(root, name)
            if file.is_file():
                h.update(f"{file.relative_to(path)}\0{_file_digest(file)}\n".encode())
    return h.hexdigest()


def stage_inputs(stage: Stage, workdir: Path) -> dict[str, str]:
    """Digests of the existing files and directories the stage's arguments name outside the workdir, by argument.

    Files up to HASH_LIMIT_BYTES are hashed by content; larger ones by size and mtime. The value of `--out` is
    skipped (the stage's own output), and so is everything inside the workdir (earlier stages' products, which
    the `needs` fingerprints cover).
    """
    workdir = workdir.resolve()
    inputs: dict[str, str] = {}
    args = stage.argv[1:]
    for k, arg in enumerate(args):
        if k and args[k - 1] in OUTPUT_OPTIONS:
            continue
        option, eq, value = arg.partition("=")
        if arg.startswith("-") and eq:
            if option in OUTPUT_OPTIONS:
                continue
            arg = value
        try:
            path = Path(arg)
            if not arg or not path.exists():
                continue
            resolved = path.resolve()
        except (OSError, ValueError):  # too long or otherwise not a path
            continue
        if resolved == workdir or workdir in resolved.parents:
            continue
        try:
            inputs[arg] = _path_digest(path, workdir)
        except OSError as exc:  # unreadable: the stage itself will say so
            inputs[arg] = f"unreadable ({exc.strerror or exc})"
    return inputs


def stage_fingerprint(stage: Stage, fingerprints: dict[str, str], workdir: Path) -> dict[str, Any]:
    """What decides whether a finished stage is still done: its command, Syllabus version, needs and inputs.

    Returns:
        The record's fields: `fingerprint` (sha256 of the rest), `argv`, `syllabus`, `needs`, `inputs`.
    """
    record = {"argv": list(stage.argv), "syllabus": syllabus_version(),
              "needs": {n: fingerprints[n] for n in stage.needs}, "inputs": stage_inputs(stage, workdir)}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, **record}


def why_run(pipeline: Pipeline, stage: Stage, current: dict[str, Any]) -> str | None:
    """Why the stage must run (a short phrase), or None when its marker matches and its outputs exist."""
    marker = pipeline.marker(stage)
    if not marker.exists():
        return "not run yet"
    try:
        record = _read_marker(marker)
    except (OSError, ValueError) as exc:
        return f"its marker {marker} is unreadable ({exc}), so it runs again"
    if record.get("fingerprint") != current["fingerprint"]:
        if record.get("syllabus") != current["syllabus"]:
            return f"Syllabus changed ({record.get('syllabus', 'older')} -> {current['syllabus']})"
        if record.get("argv") != current["argv"]:
            return "its command changed"
        changed = [a for a in current["inputs"] if (record.get("inputs") or {}).get(a) != current["inputs"][a]]
        if changed:
            return f"input changed: {', '.join(changed)}"
        return "a stage it needs ran again" if record.get("needs") != current["needs"] else "its inputs changed"
    missing = [o for o in stage_outputs(stage) if not Path(o).exists()]
    return f"its output {missing[0]} is missing" if missing else None


def _read_marker(marker: Path) -> dict[str, Any]:
    record = json.loads(marker.read_text())
    if not isinstance(record, dict) or "fingerprint" not in record:
        raise ValueError("not a JSON object with a fingerprint")
    return record


def stage_outputs(stage: Stage) -> tuple[str, ...]:
    """What a finished stage leaves behind: its declared `outputs` and the value of its `--out`."""
    args = stage.argv[1:]
    out = [value for option, value in zip(args, args[1:]) if option in OUTPUT_OPTIONS]
    out += [arg.partition("=")[2] for arg in args if arg.partition("=")[0] in OUTPUT_OPTIONS and "=" in arg]
    return (*stage.outputs, *(o for o in out if o not in stage.outputs))


def _as_needed(record: dict[str, Any]) -> str:
    """What a stage that needs this finished one records of it: its fingerprint and when it finished, so that a
    stage run again (its output deleted, say) runs what needs it again too."""
    return hashlib.sha256(f"{record['fingerprint']}\0{record.get('finished_at')}".encode()).hexdigest()


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


def validate_arguments(stage: Stage) -> list[str]:
    """Parse the stage's arguments with its own CLI (without running it): unknown options fail here, and so do
    flags that would make the stage print something and exit 0 without doing its work (`--help`, `--version`).

    Returns:
        The paths the stage reads (`_read_paths`), for a dry run to check.
    """
    import contextlib
    import io

    import typer

    command = typer.main.get_command(stage_app(stage.argv[0]))
    args = list(stage.argv[1:])
    eager = {"--help", "-h"}  # options that act while parsing, then exit
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            leaf, ctx = _parse(stage, command, args, eager)
    except typer.Exit:
        flags = [a for a in args if a.partition("=")[0] in eager] or ["--help"]
        raise PipelineError(f"stage {stage.name}: {shlex.join(stage.argv)}: {', '.join(flags)} would print and end "
                            "the stage without running it; remove it from the recipe") from None
    return _read_paths(leaf, ctx)


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".yaml", ".yml", ".txt")


def _read_paths(command: Any, ctx: Any) -> list[str]:
    """The values of a parsed stage command that name files or directories it reads: options typed as paths, and
    text that can only be a path (absolute, ./ ../ ~, two or more slashes, or a data file's suffix), not a hub id
    (owner/name) nor a name (`default`, `dolly_dev_1000`); the value of a `key=value` parameter likewise. What it
    writes (`OUTPUT_OPTIONS`) is not read."""
    paths = []
    for param in command.params:
        if set(getattr(param, "opts", ())) & set(OUTPUT_OPTIONS) or param.name not in ctx.params:
            continue
        values = ctx.params[param.name]
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value is None or isinstance(value, bool) or value == param.default:
                continue
            text = str(value)
            key, eq, rest = text.partition("=")
            if eq and _IDENTIFIER.fullmatch(key):  # a method parameter, -p sizes_from=PATH
                text = rest
            if isinstance(value, Path) or text.startswith(("/", "./", "../", "~")) or \
                    text.count("/") >= 2 or text.lower().endswith(DATA_SUFFIXES):
                paths.append(text)
    return paths


def _parse(stage: Stage, command: Any, args: list[str], eager: set[str]) -> tuple[Any, Any]:
    """Parse `args` down the command's groups (typer vendors click); the eager options met are added to `eager`.
    Returns the command reached and its parsed context."""
    eager.update(o for p in command.params if p.is_eager for o in p.opts)
    try:
        ctx = command.make_context(stage.argv[0], list(args), resilient_parsing=False)
        while hasattr(command, "get_command"):  # a group: descend into the subcommand (typer vendors click)
            rest = list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])) + ctx.args
            if not rest:
                break
            sub = command.get_command(ctx, rest[0])
            if sub is None:
                raise PipelineError(f"stage {stage.name}: {stage.argv[0]} has no command {rest[0]!r}")
            eager.update(o for p in sub.params if p.is_eager for o in p.opts)
            command, ctx = sub, sub.make_context(rest[0], rest[1:], parent=ctx)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # not a usage error (an exit, or a bug): the caller's
            raise
        raise PipelineError(f"stage {stage.name}: {shlex.join(stage.argv)}: {exc.format_message()}") from None
    return command, ctx


def program_path(name: str) -> str:
    """The stage CLI next to this interpreter (the venv's), falling back to PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def run_pipeline(pipeline: Pipeline, dry_run: bool = False, only: list[str] | None = None, echo=print) -> list[str]:
    """Run the stages in order, skipping finished ones. Returns the names of the stages that ran (or would run).

    Raises:
        PipelineError: a stage failed (its exit code and command are named), its arguments do not parse, `only`
            names no stage, or another run (or a stage of one) holds the workdir.
    """
    names = [s.name for s in pipeline.stages]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise PipelineError(f"--only {', '.join(unknown)}: no such stage in {pipeline.path}; "
                            f"stages: {', '.join(names)}")
    if pipeline.notice:
        echo(pipeline.notice)
    reads = {stage.name: validate_arguments(stage) or [] for stage in pipeline.stages}
    if dry_run:
        check_inputs(pipeline, reads)
        return _run_stages(pipeline, None, only, echo)
    lock_path = pipeline.workdir / ".pipeline" / "lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PipelineError(f"cannot create {lock_path} ({exc.strerror or exc}); check the workdir") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"another `syllabus run` is using {pipeline.workdir}{_holder(lock_path)}; wait for "
                                "it or stop it, then run again (two runs in one workdir would overwrite each "
                                "other's stages)") from None
        _note_holder(lock)
        return _run_stages(pipeline, lock, only, echo)
    finally:
        os.close(lock)  # the lock lives on in a stage process that outlives this one


def check_inputs(pipeline: Pipeline, reads: dict[str, list[str]]) -> None:
    """Refuse a recipe a stage of which reads a path that neither exists nor lies in (or holds) what an earlier
    stage makes: a dry run's check that the run would not stop at that stage for want of its data or model.

    Raises:
        PipelineError: naming every such stage and path.
    """
    made: list[Path] = []
    missing = []
    for stage in pipeline.stages:
        for text in reads.get(stage.name, []):
            path = Path(text).expanduser().absolute()
            if not path.exists() and not any(path == o or o in path.parents or path in o.parents for o in made):
                missing.append(f"stage {stage.name} reads {text}")
        made += [Path(o).expanduser().absolute() for o in stage_outputs(stage)]
    if missing:
        raise PipelineError(f"{pipeline.path}: {'; '.join(missing)}: no such file or directory, and no earlier stage "
                            "makes it. Fix the path (or --set the variable that gives it) before running")


def _alive(pid: Any) -> bool:
    try:
        if int(pid) <= 0:
            return False
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as recorded in the lock file (runner and stage pids), for the refusal message."""
    try:
        holder = json.loads(lock_path.read_text())
        runner, stage, pid = holder["runner_pid"], holder.get("stage"), holder.get("stage_pid")
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if stage and _alive(pid) and not _alive(runner):
        return f" (its `syllabus run`, pid {runner}, has stopped, but its stage {stage}, pid {pid}, still runs)"
    return f" (pid {runner}" + (f", stage {stage}, pid {pid})" if stage else ")")


def _note_holder(lock: int, **fields: Any) -> None:
    data = json.dumps({"runner_pid": os.getpid(), **fields}).encode()
    os.ftruncate(lock, 0)
    os.pwrite(lock, data, 0)


def _run_stages(pipeline: Pipeline, lock: int | None, only: list[str] | None, echo) -> list[str]:
    """Run (lock held) or list (lock None: a dry run) the stages that are not done."""
    dry_run = lock is None
    fingerprints: dict[str, str] = {}
    ran: list[str] = []
    for k, stage in enumerate(pipeline.stages, start=1):
        current = stage_fingerprint(stage, fingerprints, pipeline.workdir)  # every stage: later ones need it
        reason = why_run(pipeline, stage, current)
        fingerprints[stage.name] = _as_needed(_read_marker(pipeline.marker(stage))) if reason is None else \
            f"to run: {current['fingerprint']}"
        if only and stage.name not in only:
            continue
        head = f"[{k}/{len(pipeline.stages)}] {stage.name}"
        if reason is None:
            echo(f"{head}: done, skipped")
            continue
        ran.append(stage.name)
        because = "" if reason == "not run yet" else f" ({reason})"
        echo(f"{head}: {'would run' if dry_run else 'running'}{because}: {shlex.join(stage.argv)}")
        if dry_run:
            continue
        start = time.perf_counter()
        engine_log = pipeline.workdir / ".pipeline" / "logs" / f"{stage.name}.vllm.log"
        code = _run_stage(stage, lock, pipeline.env, engine_log)
        if code != 0:
            kept = f" vLLM's log of the stage: {engine_log}." if engine_log.exists() else ""
            raise PipelineError(
                f"stage {stage.name} failed (exit {code}): {shlex.join(stage.argv)}.{kept} Finished stages are kept; "
                "fix the cause and run the pipeline again to continue from here."
            )
        seconds = time.perf_counter() - start
        marker = pipeline.marker(stage)
        record = {**current, "seconds": round(seconds, 1), "finished_at": time.time()}
        fingerprints[stage.name] = _as_needed(record)
        try:
            atomic_write_json(marker, record)
        except OSError as exc:
            raise PipelineError(f"stage {stage.name} finished, but its marker {marker} could not be written "
                                f"({exc.strerror or exc}); free the space or fix the permissions, and run again "
                                "(the stage then runs again)") from None
        echo(f"{head}: finished in {seconds:.0f} s")
    return ran


def _stop_with_runner() -> Callable[[], None] | None:
    """A preexec_fn that has the stage get SIGTERM when this process dies, however it dies (Linux; else None)."""
    ask = parent_death_signal()
    if ask is None:
        return None
    runner_pid = os.getpid()

    def preexec() -> None:
        ask(signal.SIGTERM)
        if os.getppid() != runner_pid:  # the runner died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def engine_logging(log: Path) -> dict[str, Any]:
    """A logging config (`logging.config.dictConfig`) for vLLM's loggers: everything from INFO on to `log`, and
    only errors to the terminal.

    vLLM reads it from VLLM_LOGGING_CONFIG_PATH in every process it starts. Its warnings at start and shutdown
    ("This model does not officially support disabling chunked prefill ...", "force killing remaining process")
    are about settings Syllabus makes on purpose (core/engines/vllm_engine.py) or about its own clean-up; between
    the stage lines they read as faults. The file keeps them for whoever needs them.
    """
    line = {"format": "%(levelname)s %(asctime)s %(process)d %(name)s: %(message)s", "datefmt": "%m-%d %H:%M:%S"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": line},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log), "formatter": "line", "level": "INFO"},
            "terminal": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "line",
                         "level": "ERROR"},
        },
        "loggers": {"vllm": {"handlers": ["file", "terminal"], "level": "INFO", "propagate": False}},
    }


def _run_stage(stage: Stage, lock: int, defaults: dict[str, str], engine_log: Path) -> int:
    """Run one stage; it dies with this process and inherits the lock, so the workdir stays locked while it lives.
    Its environment is the user's, with the recipe's `env` for what the user did not set, and vLLM's log going to
    `engine_log` (errors to the terminal too) unless the user configures vLLM's logging.

    Returns:
        The stage's exit code.
    """
    argv = [program_path(stage.argv[0]), *stage.argv[1:]]
    env = {**defaults, **os.environ}
    if "VLLM_LOGGING_CONFIG_PATH" not in env and env.get("VLLM_CONFIGURE_LOGGING", "1") != "0":
        config = engine_log.with_suffix(".logging.json")
        try:
            engine_log.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(config, engine_logging(engine_log))
            env["VLLM_LOGGING_CONFIG_PATH"] = str(config)
        except OSError:  # (a full disk) the stage still runs, with vLLM's log on the terminal
            pass
    try:
        proc = subprocess.Popen(argv, env=env, pass_fds=(lock,), preexec_fn=_stop_with_runner())
    except OSError as exc:
        raise PipelineError(f"stage {stage.name}: cannot start {argv[0]} ({exc.strerror or exc})") from None
    with proc:
        _note_holder(lock, stage=stage.name, stage_pid=proc.pid)
        code = proc.wait()
    _note_holder(lock)
    return code


def stage_times(workdir: Path) -> dict[str, float]:
    """Seconds of every finished stage of the pipeline run in `workdir`, in the order they finished.

    Unreadable markers (not JSON, or without numeric times) are left out.
    """
    records = []
    for marker in (Path(workdir) / ".pipeline").glob("*.json"):
        try:
            record = json.loads(marker.read_text())
            records.append((float(record.get("finished_at", 0.0)), marker.stem, float(record.get("seconds", 0.0))))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return {name: seconds for _, name, seconds in sorted(records)}
