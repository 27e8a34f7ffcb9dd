"""Hugging Face checkpoints of a training run, and the best one by stage-end evaluation:

    OUT/checkpoints/<name>/      safetensors + tokenizer + config + model card, at stage ends ("stage-K") and "final"
    OUT/checkpoints/best/        a copy of the stage checkpoint with the best average ROUGE-L (with --eval-sets)
    OUT/checkpoints/best.json    which one that is, and its score

Each directory is written beside its place and swapped in whole (`core/io.py:swap_directory`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from syllabus.core.cards import KNOWN_LICENSES, write_model_card
from syllabus.core.io import atomic_write_json, recover_directory, swap_directory, writing
from syllabus.core.models import merge_lora

from .distributed import on_main
from .run import Progress, Run, unwrapped


def full_weights(run: Run, model: Any) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the student's whole state dict under the Hugging Face model's names, gathered from every rank's
    shard into the main process's CPU memory (a collective: every rank calls it; the others get an empty dict).
    None when the student is not sharded: `save_pretrained` reads the model itself."""
    if not run.sharded:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # one entry per parameter, as `_unique_tensors` keeps: the gathered copies of tied weights no longer share storage
    names: dict[int, list[str]] = {}
    for name, param in model.model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    tied = {name for group in names.values() for name in group[1:]}
    return {key: v for k, v in state.items() if (key := k.removeprefix("model.")) not in tied}


def save_checkpoint(run: Run, progress: Progress, model: Any, name: str) -> Path:
    """A Hugging Face checkpoint (safetensors + tokenizer + config) plus what produced it (written by the main
    process; every rank returns its path)."""
    path = run.out / "checkpoints" / name
    weights = full_weights(run, model)  # under FSDP, gathered onto the main process by every rank

    def write() -> None:
        tmp = path.with_name(path.name + ".tmp")
        with writing(tmp, "checkpoint", cleanup=True):
            shutil.rmtree(tmp, ignore_errors=True)
            student = unwrapped(run, model)
            if run.config.lora:  # the adapter, and the merged model beside it, which every reader takes as is
                student.save_pretrained(tmp / "adapter", safe_serialization=True)
                # merged into a fresh base load: merging the training model in place and back would leave rounding
                merge_lora(tmp / "adapter", torch.float32).save_pretrained(tmp, safe_serialization=True)
            else:
                student.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp)
            write_model_card(tmp, card_facts(run, progress.global_step), shown_as=path)  # names where it ends up
            atomic_write_json(tmp / "syllabus_train.json", {
                "global_step": progress.global_step,
                "epoch": progress.epoch,
                "manifest_fingerprint": run.manifest_fingerprint,
                "table_fingerprint": run.table.fingerprint,
                "method": run.schedule.method,
            })
            swap_directory(tmp, path)

    on_main(run.accelerator, write)
    return path


def card_facts(run: Run, global_step: int) -> dict[str, Any]:
    """What a checkpoint's model card says made it (`core.cards.model_card`)."""
    identity = json.loads((run.out / "config.json").read_text())
    source = (run.table.metadata.get("dataset") or {}).get("source")
    return {"student": identity["student"], "teacher": identity["teacher"], "method": run.schedule.method,
            "epochs": run.schedule.manifest.get("epochs", []), "config": run.config.as_dict(),
            "global_step": global_step,
            "table": {"path": str(run.table.path), "fingerprint": run.table.fingerprint, "source": source,
                      "license": KNOWN_LICENSES.get(source)}}


def keep_best(run: Run, checkpoint: Path, stage: int, average: float) -> bool:
    """Make `checkpoint` the run's best when its evaluation beats the best so far (the papers keep the best
    checkpoint by ROUGE-L): copied beside `best/` and swapped in whole, then recorded in best.json. Returns whether
    it became the best."""
    best_dir, best_file = run.out / "checkpoints" / "best", run.out / "checkpoints" / "best.json"
    recover_directory(best_dir, "config.json")  # a crash between the renames of an earlier swap
    best = json.loads(best_file.read_text()) if best_file.exists() and best_dir.exists() else None
    if best is not None and average <= best["average"]:
        return False
    tmp = best_dir.with_name("best.tmp")
    with writing(tmp, "best checkpoint", cleanup=True):
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp)
        swap_directory(tmp, best_dir)
    atomic_write_json(best_file, {"checkpoint": checkpoint.name, "stage": stage, "average": average})
    return True
