"""Run-directory state: exact-resume snapshots, Hugging Face checkpoints and the metrics log.

    OUT/config.json              resolved config + manifest and table fingerprints (written at start)
    OUT/metrics.jsonl            one line per optimizer step
    OUT/state/                   latest resumable snapshot: student weights, optimizer, scheduler, progress
    OUT/checkpoints/<name>/      Hugging Face format (safetensors + tokenizer + config), at stage ends and "final"

A snapshot is written to `state.tmp/` and swapped in with renames, so a crash never leaves a half-written state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from syllabus.core.io import atomic_write_json, writing

from .run import Progress, Run
from .student import DistillStudent

STATE = "state"


class StateError(ValueError):
    """A run directory's snapshot cannot be read back."""


def fingerprint_manifest(schedule_dir: Path) -> str:
    """sha256 over manifest.json and every shard, so a run records exactly which curriculum it trained on."""
    h = hashlib.sha256()
    for path in [schedule_dir / "manifest.json", *sorted(schedule_dir.glob("epoch-*.parquet"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _unwrapped(run: Run, model: Any) -> Any:
    return run.accelerator.unwrap_model(model).model


def save(run: Run, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Snapshot everything resume needs (main process writes; all processes wait)."""
    acc = run.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        from safetensors.torch import save_file

        weights = {k: v.detach().cpu().contiguous() for k, v in _unwrapped(run, model).state_dict().items()}
        # tied embeddings share storage; safetensors refuses shared tensors, so keep one copy of each
        seen: dict[int, str] = {}
        unique = {}
        for k, v in weights.items():
            ptr = v.data_ptr()
            if ptr not in seen:
                seen[ptr] = k
                unique[k] = v
        # the generators dropout draws from, so that a resumed run draws the same masks
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state_all()
        tmp = run.out / f"{STATE}.tmp"
        with writing(tmp, "training snapshot", cleanup=True):  # the last whole snapshot stays until this one is
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(unique, tmp / "student.safetensors")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng},
                       tmp / "optimizer.pt")
            atomic_write_json(tmp / "progress.json", asdict(run.progress))
            final = run.out / STATE
            old = run.out / f"{STATE}.old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def load_progress(out: Path) -> Progress | None:
    path = out / STATE / "progress.json"
    if not path.exists():
        old = out / f"{STATE}.old" / "progress.json"  # a crash between the two renames of `save`
        if not old.exists():
            return None
        os.replace(out / f"{STATE}.old", out / STATE)
    return Progress(**json.loads((out / STATE / "progress.json").read_text()))


def load_student(out: Path, student: DistillStudent) -> None:
    from safetensors.torch import load_file

    weights = load_file(out / STATE / "student.safetensors")
    missing, unexpected = student.model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed_tokens" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"resume: student snapshot does not fit the model (missing {missing}, unexpected {unexpected})")


def load_optimizer(out: Path, optimizer: Any, scheduler: Any) -> None:
    """Restore optimizer, LR schedule and random generators from a snapshot.

    The file holds tensors and plain values only, and is read with `weights_only=True`: a run directory received
    from someone else cannot run code through a planted pickle.

    Raises:
        StateError: the file is not a snapshot of plain values (tampered with, or corrupt).
    """
    path = out / STATE / "optimizer.pt"
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for foreign objects; EOFError, RuntimeError when corrupt
        raise StateError(
            f"{path}: not a snapshot of plain values ({type(exc).__name__}); it was not written by `train run` or is "
            "corrupt. Start the run over with --overwrite, or restore the directory from where it came"
        ) from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def save_checkpoint(run: Run, model: Any, name: str) -> Path:
    """A Hugging Face checkpoint (safetensors + tokenizer + config) plus what produced it."""
    acc = run.accelerator
    path = run.out / "checkpoints" / name
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        with writing(tmp, "checkpoint", cleanup=True):
            shutil.rmtree(tmp, ignore_errors=True)
            _unwrapped(run, model).save_pretrained(tmp, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "syllabus_train.json", {
                "global_step": run.progress.global_step,
                "epoch": run.progress.epoch,
                "manifest_fingerprint": run.manifest_fingerprint,
                "table_fingerprint": run.table.fingerprint,
                "method": run.schedule.method,
            })
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    acc.wait_for_everyone()
    return path


class MetricsLog:
    """Append-only metrics; on resume, lines past the restored step are dropped so steps never repeat, and so is a
    line cut short by a crash in the middle of its append."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
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
