"""The schedule contract: what `curate schedule` writes and `train run` reads (docs/architecture.md, "Contracts").

    SCHEDULE/
      epoch-000.parquet ...   column sample_id, the epoch's samples in training order
      manifest.json           method, parameters, table fingerprint, seed, one record per epoch; written last

One epoch record type, `EpochPlan`, is declared here and nowhere else: the schedule methods build it, the manifest
stores it, the trainer reads it back. It checks itself when it is built, with the trainer's own loss rules, so a
value the trainer would refuse (a temperature of inf, a jsd beta of 1) is refused by the first command that sees it,
and reading a manifest fills in nothing: a missing or unknown key is an error naming the file and the epoch.

Pure Python (no torch, no polars), so the schedule CLI and the trainer's setup share it at no import cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .io import JSONFileError, read_json
from .loss_params import check_kd_weight, check_temperature, resolve_loss_params
from .on_policy import check_on_policy

SCHEMA_VERSION = 1
KIND = "syllabus.schedule"
MANIFEST_FILE = "manifest.json"
SHARD_GLOB = "epoch-*.parquet"
SCHEDULE_FILES = (MANIFEST_FILE, SHARD_GLOB)  # every name `curate schedule` puts in a schedule directory


class ScheduleError(ValueError):
    """A schedule cannot be built or read: bad parameters, no usable rows, a taken directory, a malformed manifest."""


def shard_name(index: int) -> str:
    """The shard file of epoch `index` (0-based)."""
    return f"epoch-{index:03d}.parquet"


def _number(x: float) -> float:
    # 12 decimals: ladders like 0.3 + (0.1 - 0.3) / 2 print as 0.2, not 0.19999999999999998.
    return round(float(x), 12)


@dataclass(frozen=True)
class EpochPlan:
    """How to train on one epoch's samples.

    Attributes:
        stage: curriculum stage (0-based); stage ends get checkpoints (and evaluation, if asked).
        temperature: tau > 0 of the KD term (the KD term is multiplied by tau^2).
        kd_weight: w in [0, 1]; loss = (1 - w) * sft + w * kd.
        loss: one of `loss_params.LOSSES`.
        loss_params: every parameter of `loss` (its defaults resolved by the method), so that a schedule means the
            same thing whatever defaults a later trainer has.
        restart_optimizer: start a new optimizer and LR schedule at this epoch (SRD, L2M-KD stages).
        rescore: recompute DDS with the current student before this epoch (DA-KD dynamic mode).
        on_policy: "off", or the on-policy rule of the epoch (`core.on_policy.MODES`: gkd trains a share of each
            step's samples on responses the student generates, `train/on_policy.py`).
        on_policy_share: the share of each optimizer step's samples that is generated (0 when off).

    Raises:
        ScheduleError: a value the trainer would refuse (named, with the rule).
    """

    stage: int
    temperature: float
    kd_weight: float
    loss: str
    loss_params: Mapping[str, float]
    restart_optimizer: bool = False
    rescore: bool = False
    on_policy: str = "off"
    on_policy_share: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.stage, bool) or not isinstance(self.stage, int) or self.stage < 0:
            raise ScheduleError(f"stage must be an integer >= 0, got {self.stage!r}")
        try:  # the trainer's own rules (syllabus.core.loss_params)
            check_temperature(self.temperature)
            check_kd_weight(self.kd_weight)
            check_on_policy(self.on_policy, self.on_policy_share)
            resolved = resolve_loss_params(self.loss, dict(self.loss_params))
        except ValueError as err:
            raise ScheduleError(str(err)) from None
        missing = sorted(set(resolved) - set(self.loss_params))
        if missing:
            raise ScheduleError(f"loss {self.loss!r} needs its parameter(s) {', '.join(missing)} stated")
        for name in ("restart_optimizer", "rescore"):
            if not isinstance(getattr(self, name), bool):
                raise ScheduleError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def record(self, index: int, num_samples: int) -> dict[str, Any]:
        """The manifest entry of epoch `index` (0-based; "epoch" in the file is 1-based, for people)."""
        return {
            "epoch": index + 1,
            "shard": shard_name(index),
            "num_samples": num_samples,
            "stage": self.stage,
            "temperature": _number(self.temperature),
            "kd_weight": _number(self.kd_weight),
            "loss": self.loss,
            "loss_params": {k: _number(v) for k, v in sorted(self.loss_params.items())},
            "restart_optimizer": self.restart_optimizer,
            "rescore": self.rescore,
            # an off-policy epoch's record has no on-policy keys: schedules from before on-policy training read the
            # same, and their bytes (so their fingerprints) do not change
            **({"on_policy": self.on_policy, "on_policy_share": _number(self.on_policy_share)}
               if self.on_policy != "off" else {}),
        }


_PLAN_KEYS = tuple(f.name for f in fields(EpochPlan))
_OPTIONAL_KEYS = ("on_policy", "on_policy_share")  # written only for an on-policy epoch (both or neither)
_RECORD_KEYS = ("epoch", "shard", "num_samples", *(k for k in _PLAN_KEYS if k not in _OPTIONAL_KEYS))


@dataclass(frozen=True)
class ScheduledEpoch:
    """One epoch as the trainer reads it: where its samples are, how many, and its plan."""

    index: int  # 0-based
    shard: Path
    num_samples: int
    plan: EpochPlan


@dataclass(frozen=True)
class Schedule:
    """A complete schedule directory, read and checked."""

    path: Path
    method: str
    params: dict[str, Any]
    seed: int
    table_path: str
    table_fingerprint: str
    manifest: dict[str, Any]  # the file as written (recorded with every training run)
    epochs: tuple[ScheduledEpoch, ...]

    @property
    def rescores(self) -> bool:
        """Whether any epoch re-scores the table with the student being trained (DA-KD's dynamic mode)."""
        return any(epoch.plan.rescore for epoch in self.epochs)

    def stage_ends(self) -> set[int]:
        """Epoch indices after which a stage ends (the last epoch of each stage, and the last epoch)."""
        ends = {e.index for e, nxt in zip(self.epochs, self.epochs[1:]) if nxt.plan.stage != e.plan.stage}
        return ends | {self.epochs[-1].index}


def _epoch(schedule_dir: Path, index: int, record: Any, where: str) -> ScheduledEpoch:
    if not isinstance(record, dict):
        raise ScheduleError(f"{where}: epoch {index + 1} is not a mapping")
    missing = [k for k in _RECORD_KEYS if k not in record]
    if any(k in record for k in _OPTIONAL_KEYS):
        missing += [k for k in _OPTIONAL_KEYS if k not in record]
    unknown = sorted(set(record) - set(_RECORD_KEYS) - set(_OPTIONAL_KEYS))
    if missing or unknown:
        problem = "lacks " + ", ".join(missing) if missing else "has unknown key(s) " + ", ".join(unknown)
        raise ScheduleError(f"{where}: epoch {index + 1} {problem}; rebuild the schedule with `curate schedule`")
    if record["epoch"] != index + 1 or record["shard"] != shard_name(index):
        raise ScheduleError(f"{where}: record {index + 1} names epoch {record['epoch']} ({record['shard']})")
    try:
        plan = EpochPlan(**{k: record[k] for k in _PLAN_KEYS if k in record})
    except (ScheduleError, TypeError) as err:
        raise ScheduleError(f"{where}: epoch {index + 1}: {err}") from None
    num_samples = record["num_samples"]
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ScheduleError(f"{where}: epoch {index + 1}: num_samples must be an integer >= 1, got {num_samples!r}")
    return ScheduledEpoch(index, schedule_dir / shard_name(index), num_samples, plan)


def read_schedule(path: str | Path, check_shards: bool = True) -> Schedule:
    """Read and check a schedule directory written by `curate schedule`.

    Args:
        path: the schedule directory.
        check_shards: also require every epoch's shard file.

    Raises:
        ScheduleError: no manifest (not a schedule, or an unfinished one), malformed JSON, a missing or unknown
            key, a value out of range, or a missing shard; the message names the file and the epoch.
    """
    directory = Path(path)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ScheduleError(f"{directory}: no {MANIFEST_FILE}; pass a directory written by `curate schedule`")
    where = str(manifest_path)
    try:
        manifest = read_json(manifest_path)
    except JSONFileError as err:
        raise ScheduleError(f"{err}; the file is damaged: build the schedule again with the `curate schedule` command "
                            "that wrote it, adding --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ScheduleError(f"{where}: not a Syllabus schedule manifest (kind {KIND!r} expected)")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ScheduleError(f"{where}: schema_version {manifest.get('schema_version')!r}; this Syllabus reads "
                            f"{SCHEMA_VERSION}: rebuild the schedule with `curate schedule`")
    try:
        table = manifest["table"]
        records = manifest["epochs"]
        head = (str(manifest["method"]), dict(manifest["params"]), int(manifest["seed"]), str(table["path"]),
                str(table["fingerprint"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ScheduleError(f"{where}: malformed manifest ({type(err).__name__}: {err})") from None
    if not isinstance(records, list) or not records:
        raise ScheduleError(f"{where}: the schedule has no epochs")
    epochs = tuple(_epoch(directory, i, r, where) for i, r in enumerate(records))
    if check_shards:
        for e in epochs:
            if not e.shard.is_file():
                raise ScheduleError(f"{where}: epoch {e.index + 1} names {e.shard.name}, which is missing")
    return Schedule(directory, *head, manifest, epochs)


def epoch_order(sample_ids: list[str], seed: int, epoch: int) -> list[str]:
    """An epoch's samples in the order training takes them: the shard's order is the curriculum *between* epochs;
    within an epoch the papers shuffle (as every trainer does), with a generator seeded by (seed, epoch), the same
    whatever the number of processes or the trainer (`train run`, or another through `core.curriculum`)."""
    import numpy as np

    return [sample_ids[i] for i in np.random.default_rng([seed, epoch]).permutation(len(sample_ids))]


def fingerprint_manifest(schedule_dir: Path) -> str:
    """sha256 over manifest.json and every shard, so a run records exactly which curriculum it trained on."""
    h = hashlib.sha256()
    for path in [schedule_dir / "manifest.json", *sorted(schedule_dir.glob("epoch-*.parquet"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
