"""Output directories: each belongs to one run and holds one kind of output. The same run resumes in it, any other
is refused, and `--overwrite` replaces it only with an output of the same kind: never a directory of other files,
nor a training run with a table.

Kinds and how a directory shows its kind:

- a run started through `claim_output` (scoring, training, evaluation): `OUT/_work/run.json`, written first, records
  the kind and the run identity;
- a difficulty table or a schedule: every entry is a file its writer makes (`TABLE_FILES`, `SCHEDULE_FILES`, and the
  temporary files of an atomic write) or a subdirectory it makes (`TABLE_DIRS`), so an unfinished one counts too. A scoring run's directory is a table.
"""

from __future__ import annotations

import json
import shutil
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .io import JSONFileError, atomic_write_json, read_json
from .schedule import SCHEDULE_FILES
from .table import TABLE_DIRS, TABLE_FILES

WORK_DIR = "_work"
RUN_FILE = "run.json"
TABLE = "difficulty table"
SCHEDULE = "schedule"
_FILES_OF = {TABLE: TABLE_FILES, SCHEDULE: SCHEDULE_FILES}
_DIRS_OF = {TABLE: TABLE_DIRS}
_OUTPUT_OF_RUN = {"scoring run": TABLE}  # what a run leaves behind, where it has another name than the run
_SHOWN = 5


class RunDirError(ValueError):
    """An output directory holds another run, or something that is not an output of the same kind."""


def claim_output(
    out: Path, identity: dict[str, Any], overwrite: bool, what: str = "scoring run", restart: bool = False
) -> Path:
    """Create or reuse OUT/_work for this run identity; refuse a directory that belongs to another run.

    Args:
        out: the output directory.
        identity: JSON-able settings that decide the output; equal identity (and kind) means "resume".
        overwrite: replace a directory that holds another run of the same kind, instead of refusing.
        what: the kind of run ("scoring run", "training run", "evaluation run"); recorded, and in messages.
        restart: with `overwrite`, replace even this same run (start over instead of resuming).

    Returns:
        OUT/_work, where finished pieces of the run are kept.

    Raises:
        RunDirError: OUT is a file; or holds another run (the differing settings are named) and `overwrite` is off;
            or holds anything but a run of this kind (named), whatever `overwrite` says. Nothing is deleted then.
    """
    identity = json.loads(json.dumps(identity, default=str))  # compare as stored (tuples become lists)
    work = out / WORK_DIR
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; give a directory for the {what}")
    if out.exists() and any(out.iterdir()):
        kind, previous = _run_record(out) or (None, None)
        if kind is None and isinstance(previous, dict) and set(previous) == set(identity):
            kind = what  # written before kinds were recorded, by a run with this kind's identity
        if previous == identity and kind == what and not (overwrite and restart):
            pass  # this run: resume it
        elif kind == what and overwrite:
            shutil.rmtree(out)
        elif kind == what:
            raise RunDirError(
                f"{out} holds a different {what} (differs in: {', '.join(differences(previous, identity))}). "
                "Use another --out, or --overwrite to replace it."
            )
        elif overwrite:
            replace_output(out, _OUTPUT_OF_RUN.get(what, what))  # refuses anything but this kind of output
        else:
            replaceable = held_output(out) == _OUTPUT_OF_RUN.get(what, what)
            raise RunDirError(f"{out} holds {describe_output(out)}, not a {what}. Use another --out"
                              + (", or --overwrite to replace it." if replaceable else "."))
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / RUN_FILE, {"kind": what, "identity": identity})
    return work


def replace_output(out: Path, kind: str) -> None:
    """Delete `out` so that a new output of `kind` takes its place (`--overwrite`), if that is what it holds.

    Args:
        out: the output directory (missing or empty: nothing to do).
        kind: the output about to be written: "difficulty table", "schedule", "training run", "evaluation run".

    Raises:
        RunDirError: `out` is a file, or holds anything but an output of `kind` (named); nothing is deleted.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"{out} is a file, not a {kind}; give a directory")
    if not any(out.iterdir()):
        return
    if held_output(out) != kind:
        raise RunDirError(
            f"--overwrite replaces only a {kind}, and {out} holds {describe_output(out)}: nothing was deleted. "
            f"Use another --out, or delete {out} yourself if it is no longer needed."
        )
    shutil.rmtree(out)


def held_output(out: Path) -> str | None:
    """The kind of Syllabus output a non-empty directory holds, or None (other files, or a run that did not record
    its kind)."""
    record = _run_record(out)
    if record is not None:
        return _OUTPUT_OF_RUN.get(record[0], record[0]) if record[0] else None
    entries = list(out.iterdir())
    for kind, patterns in _FILES_OF.items():
        patterns = (*patterns, *(f".{p}.*.tmp" for p in patterns))  # an atomic write's temporary file
        dirs = _DIRS_OF.get(kind, ())
        if all(e.name in dirs if e.is_dir() else any(fnmatch(e.name, p) for p in patterns) for e in entries):
            return kind
    return None


def describe_output(out: Path) -> str:
    """What a non-empty directory holds, for messages: "a schedule", or the names of files that are no output."""
    kind = held_output(out)
    if kind is not None:
        return f"a {kind}"
    if (out / WORK_DIR / RUN_FILE).is_file():
        return f"the output of an earlier Syllabus version ({WORK_DIR}/{RUN_FILE} does not record its kind)"
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in out.iterdir())
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"files that are not a Syllabus output ({', '.join(names[:_SHOWN])}{more})"


def _run_record(out: Path) -> tuple[str | None, dict[str, Any]] | None:
    """(kind, identity) from OUT/_work/run.json; kind None for a file written before kinds were recorded."""
    run_file = out / WORK_DIR / RUN_FILE
    if not run_file.is_file():
        return None
    try:
        record = read_json(run_file)
    except JSONFileError as err:
        raise RunDirError(f"{err}: this directory's run record is damaged, so it is neither resumed nor replaced. "
                          f"Use another --out, or delete {out} yourself if it is no longer needed.") from None
    if isinstance(record, dict) and set(record) == {"kind", "identity"}:
        return record["kind"], record["identity"]
    return None, record


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    return [key for key, _, _ in changes(a, b, prefix)]


def changes(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every value that differs between two nested dicts."""
    out: list[tuple[str, Any, Any]] = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += changes(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append((prefix + k, a.get(k), b.get(k)))
    return out
