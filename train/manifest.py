"""Reading a schedule directory (written by `curate schedule`) for training."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ManifestError(ValueError):
    """A schedule directory is missing, malformed, or does not match the table it is used with."""


@dataclass(frozen=True)
class EpochPlan:
    index: int  # 0-based
    shard: Path
    num_samples: int
    stage: int
    temperature: float
    kd_weight: float
    loss: str
    loss_params: dict[str, Any]
    restart_optimizer: bool
    rescore: bool


@dataclass(frozen=True)
class Schedule:
    path: Path
    method: str
    table_path: str | None
    table_fingerprint: str
    seed: int
    raw: dict[str, Any]
    epochs: tuple[EpochPlan, ...]

    def stage_ends(self) -> set[int]:
        """Epoch indices after which a stage ends (the last epoch of each stage, and the last epoch)."""
        ends = {e.index for e, nxt in zip(self.epochs, self.epochs[1:]) if nxt.stage != e.stage}
        return ends | {self.epochs[-1].index}


def read_schedule(path: str | Path) -> Schedule:
    p = Path(path)
    manifest_path = p / "manifest.json"
    if not manifest_path.exists():
        raise ManifestError(f"{p}: no manifest.json; pass a directory written by `curate schedule`")
    raw = json.loads(manifest_path.read_text())
    try:
        table = raw.get("table") or {}
        epochs = tuple(
            EpochPlan(
                index=i,
                shard=p / e["shard"],
                num_samples=int(e["num_samples"]),
                stage=int(e.get("stage", 0)),
                temperature=float(e.get("temperature", 1.0)),
                kd_weight=float(e["kd_weight"]),
                loss=str(e["loss"]),
                loss_params=dict(e.get("loss_params") or {}),
                restart_optimizer=bool(e.get("restart_optimizer", False)),
                rescore=bool(e.get("rescore", False)),
            )
            for i, e in enumerate(raw["epochs"])
        )
        schedule = Schedule(p, raw["method"], table.get("path"), table["fingerprint"], int(raw.get("seed", 0)), raw, epochs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{manifest_path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    if not epochs:
        raise ManifestError(f"{manifest_path}: the schedule has no epochs")
    for e in epochs:
        if not e.shard.exists():
            raise ManifestError(f"{manifest_path}: epoch {e.index} names {e.shard.name}, which is missing")
    return schedule
