"""Output directories: each belongs to one run and holds one kind of output. The same run resumes in it, any other
is refused, and `--overwrite` replaces only what a Syllabus command of the same kind wrote there: never a file or
folder of yours (it refuses, naming them, and deletes nothing), nor a training run with a table.

Kinds and how a directory shows its kind:

- a run started through `claim_output` (scoring, training, evaluation): `OUT/_work/run.json`, written first, records
  the kind and the run identity;
- a difficulty table or a schedule: its metadata.json or a part, its manifest.json or a shard (so an unfinished one
  counts too). A scoring run's directory is a table.

What `--overwrite` deletes is only what that kind is made of (`NAMES_OF`: `TABLE_FILES`, `TABLE_DIRS`,
`SCHEDULE_FILES`; the `names` a run passes), and only when nothing else is there.

A claimed directory is also locked for the life of the process that claimed it (an flock on `OUT/_work/lock`): a
second process is refused, naming the holder's pid, and the lock of a killed process is released by the kernel, so
a stale lock is never in the way.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .io import JSONFileError, atomic_write_json, read_json
from .schedule import MANIFEST_FILE, SCHEDULE_FILES, SHARD_GLOB
from .table import METADATA_FILE, PART_GLOB, TABLE_DIRS, TABLE_FILES

WORK_DIR = "_work"
RUN_FILE = "run.json"
LOCK_FILE = "lock"
TABLE = "difficulty table"
SCHEDULE = "schedule"
# The top-level names each kind of output is made of (glob patterns; files or folders), besides WORK_DIR
NAMES_OF = {TABLE: (*TABLE_FILES, *TABLE_DIRS), SCHEDULE: SCHEDULE_FILES}
_KEYS_OF = {TABLE: (METADATA_FILE, PART_GLOB), SCHEDULE: (MANIFEST_FILE, SHARD_GLOB)}  # what shows the kind
_OUTPUT_OF_RUN = {"scoring run": TABLE}  # what a run leaves behind, where it has another name than the run
_SHOWN = 5
_HELD: dict[Path, int] = {}  # directory -> the descriptor of its lock, for the directories this process claimed


class RunDirError(ValueError):
    """An output directory holds another run, or something that is not an output of the same kind, or is in use."""


def claim_output(
    out: Path, identity: dict[str, Any], overwrite: bool, what: str = "scoring run", restart: bool = False,
    names: tuple[str, ...] | None = None,
) -> Path:
    """Lock OUT for this process and create or reuse OUT/_work for this run identity; refuse a directory that
    belongs to another run, or that another live process is writing.

    Args:
        out: the output directory.
        identity: JSON-able settings that decide the output; equal identity (and kind) means "resume".
        overwrite: replace a directory that holds another run of the same kind, instead of refusing.
        what: the kind of run ("scoring run", "training run", "evaluation run"); recorded, and in messages.
        restart: with `overwrite`, replace even this same run (start over instead of resuming).
        names: the top-level names (glob patterns) the run writes into OUT besides `_work`: all that `--overwrite`
            may delete. Default: those of the run's output kind (a scoring run's: a table's).

    Returns:
        OUT/_work, where finished pieces of the run are kept.

    Raises:
        RunDirError: OUT is a file; or another live process holds it (its pid named); or it holds another run (the
            differing settings are named) and `overwrite` is off; or holds anything but a run of this kind, or
            files the run does not write (named), whatever `overwrite` says. Nothing is deleted then.
    """
    identity = json.loads(json.dumps(identity, default=str))  # compare as stored (tuples become lists)
    names = names if names is not None else NAMES_OF.get(_OUTPUT_OF_RUN.get(what, what), ())
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; give a directory for the {what}")
    _claim_decision(out, identity, overwrite, what, restart, names)  # refusals first: nothing is created for them
    lock_output(out, what)
    if _claim_decision(out, identity, overwrite, what, restart, names) == "replace":  # again, now that it is ours
        _delete_own(out, names)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / RUN_FILE, {"kind": what, "identity": identity})
    return work


def _claim_decision(out: Path, identity: dict[str, Any], overwrite: bool, what: str, restart: bool,
                    names: tuple[str, ...]) -> str:
    """"new", "resume" or "replace" for `claim_output`, or the refusal (raised)."""
    if not out.exists() or not any(e.name != WORK_DIR or _holds_more_than_lock(e) for e in out.iterdir()):
        return "new"
    kind, previous = _run_record(out) or (None, None)
    if kind is None and isinstance(previous, dict) and set(previous) == set(identity):
        kind = what  # written before kinds were recorded, by a run with this kind's identity
    if previous == identity and kind == what and not (overwrite and restart):
        return "resume"
    if kind == what and overwrite:
        _refuse_foreign(out, names, what)
        return "replace"
    if kind == what:
        raise RunDirError(
            f"{out} holds a different {what} (differs in: {', '.join(differences(previous, identity))}). "
            "Use another --out, or --overwrite to replace it."
        )
    output = _OUTPUT_OF_RUN.get(what, what)
    if overwrite:
        _refuse_other_kind(out, output)
        _refuse_foreign(out, names, output)
        return "replace"
    replaceable = held_output(out) == output
    raise RunDirError(f"{out} holds {describe_output(out)}, not a {what}. Use another --out"
                      + (", or --overwrite to replace it." if replaceable else "."))


def replace_output(out: Path, kind: str) -> None:
    """Delete what an earlier output of `kind` wrote in `out`, so that a new one takes its place (`--overwrite`).

    Args:
        out: the output directory (missing or empty: nothing to do).
        kind: the output about to be written: "difficulty table" or "schedule".

    Raises:
        RunDirError: `out` is a file, or holds anything but an output of `kind`, or files that such an output is
            not made of (named); nothing is deleted then.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"{out} is a file, not a {kind}; give a directory")
    if not any(out.iterdir()):
        return
    _refuse_other_kind(out, kind)
    _refuse_foreign(out, NAMES_OF.get(kind, ()), kind)
    _delete_own(out, NAMES_OF.get(kind, ()))


def _refuse_other_kind(out: Path, kind: str) -> None:
    if held_output(out) != kind:
        raise RunDirError(
            f"--overwrite replaces only a {kind}, and {out} holds {describe_output(out)}: nothing was deleted. "
            f"Use another --out, or delete {out} yourself if it is no longer needed."
        )


def _refuse_foreign(out: Path, names: tuple[str, ...], kind: str) -> None:
    foreign = foreign_entries(out, names)
    if foreign:
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        raise RunDirError(
            f"--overwrite deletes only what a {kind} is made of, and {out} also holds {', '.join(foreign[:_SHOWN])}"
            f"{more}: nothing was deleted. Move those elsewhere, or use another --out."
        )


def _matches(name: str, names: tuple[str, ...]) -> bool:
    patterns = (WORK_DIR, *names, *(f".{p}.*.tmp" for p in names))  # and an atomic write's temporary file
    return any(fnmatch(name, p) for p in patterns)


def foreign_entries(out: Path, names: tuple[str, ...]) -> list[str]:
    """The entries of `out` that are none of `names` (nor `_work`, nor an atomic write's temporary file), sorted,
    folders with a trailing /."""
    return sorted(e.name + ("/" if e.is_dir() else "") for e in out.iterdir() if not _matches(e.name, names))


def _delete_own(out: Path, names: tuple[str, ...]) -> None:
    """Delete the entries of `out` that `names` covers, and `_work` but for the lock this process holds on it."""
    for entry in out.iterdir():
        if entry.name == WORK_DIR and entry.is_dir():
            for sub in entry.iterdir():
                if sub.name != LOCK_FILE:
                    _remove(sub)
        elif _matches(entry.name, names):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _holds_more_than_lock(work: Path) -> bool:
    return not work.is_dir() or any(e.name != LOCK_FILE for e in work.iterdir())


def lock_output(out: Path, what: str) -> None:
    """Hold OUT/_work/lock (an flock) until this process ends or calls `release_output`; re-entrant in a process.

    Raises:
        RunDirError: another live process holds it (its pid, host and start time named), or it cannot be created.
    """
    key = out.resolve()
    if key in _HELD:
        return
    path = out / WORK_DIR / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    except OSError as exc:
        raise RunDirError(f"cannot create the lock {path} ({exc.strerror or exc}); check --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise RunDirError(f"{out} is in use by another process{holder}: two runs in one directory would write over "
                          f"each other's files. Wait for it to finish or stop it, or use another --out.") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "kind": what, "started_at": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _HELD[key] = fd


def release_output(out: Path) -> None:
    """Release the lock this process holds on OUT (a no-op if it holds none)."""
    fd = _HELD.pop(out.resolve(), None)
    if fd is not None:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started_at"]))
        return f" (a {record['kind']}, pid {record['pid']} on {record['host']}, since {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def held_output(out: Path) -> str | None:
    """The kind of Syllabus output a non-empty directory holds, or None (no output's files, or a run that did not
    record its kind). A table shows by its metadata or a part, a schedule by its manifest or a shard."""
    record = _run_record(out)
    if record is not None:
        return _OUTPUT_OF_RUN.get(record[0], record[0]) if record[0] else None
    entries = [e.name for e in out.iterdir() if e.is_file()]
    for kind, keys in _KEYS_OF.items():
        if any(fnmatch(e, key) for e in entries for key in keys):
            return kind  # (with files of others beside it, perhaps: `_refuse_foreign` names them)
    return None


def describe_output(out: Path) -> str:
    """What a non-empty directory holds, for messages: "a schedule", or the names of files that are no output."""
    kind = held_output(out)
    if kind is not None:
        return f"a {kind}"
    if (out / WORK_DIR / RUN_FILE).is_file():
        return f"the output of an earlier Syllabus version ({WORK_DIR}/{RUN_FILE} does not record its kind)"
    names = foreign_entries(out, ())
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
