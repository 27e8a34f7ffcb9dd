"""The metrics log of a training run: OUT/metrics.jsonl, one line per optimizer step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only metrics; on resume, lines past the restored step are dropped so steps never repeat, and so is a
    line cut short by a crash in the middle of its append."""

    def __init__(self, path: Path, resume_step: int, main_process: bool = True) -> None:
        self.path = path
        if main_process and path.exists():
            kept = [line for line in path.read_text(errors="replace").splitlines()
                    if (record := _record(line)) is not None and record["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any], main_process: bool) -> None:
        if main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _record(line: str) -> dict[str, Any] | None:
    """A metrics line as a record, or None for a line that is not one (cut short by a crash)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None
