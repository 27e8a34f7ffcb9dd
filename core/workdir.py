"""Output directories that belong to one run: resumed by the same run, refused to any other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .io import atomic_write_json

WORK_DIR = "_work"
RUN_FILE = "run.json"


class RunDirError(ValueError):
    """An output directory holds another run."""


def claim_output(out: Path, identity: dict[str, Any], overwrite: bool, what: str = "scoring run") -> Path:
    """Create or reuse OUT/_work for this run identity; refuse a directory that belongs to another run.

    Args:
        out: the output directory.
        identity: JSON-able settings that decide the output; equal identity means "resume".
        overwrite: replace a directory that holds another run instead of refusing.
        what: the kind of run, for messages.

    Returns:
        OUT/_work, where finished pieces of the run are kept.

    Raises:
        RunDirError: OUT holds another run (the differing settings are named) and `overwrite` is off.
    """
    identity = json.loads(json.dumps(identity, default=str))  # compare as stored (tuples become lists)
    work = out / WORK_DIR
    run_file = work / RUN_FILE
    if out.exists() and any(out.iterdir()):
        previous = json.loads(run_file.read_text()) if run_file.exists() else None
        if previous != identity and not overwrite:
            if previous is None:
                raise RunDirError(f"{out} holds files that are not a {what}. Use another --out, or --overwrite.")
            diff = differences(previous, identity)
            raise RunDirError(
                f"{out} holds a different {what} (differs in: {', '.join(diff)}). "
                "Use another --out, or --overwrite to replace it."
            )
        if previous != identity:
            shutil.rmtree(out)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, identity)
    return work


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(prefix + k)
    return out
