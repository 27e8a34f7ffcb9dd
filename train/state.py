"""Run-directory state: exact-resume snapshots, Hugging Face checkpoints and the metrics log.

    OUT/config.json              resolved config + manifest and table fingerprints (written at start)
    OUT/metrics.jsonl            one line per optimizer step
    OUT/state/                   latest resumable snapshot: student weights, optimizer, scheduler, progress, and
                                 each rank's random generators (rng-<rank>.pt); under FSDP the student and the
                                 optimizer are in sharded/ instead, each rank's shard as it holds it
                                 (torch.distributed.checkpoint), never gathered on one process
    OUT/checkpoints/<name>/      Hugging Face format (safetensors + tokenizer + config), at stage ends and "final"

A snapshot is written to `state.tmp/` and swapped in with renames, so a crash never leaves a half-written state.
On many processes the main process writes everything but the generators (and FSDP shards), which each rank writes
for itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from syllabus.core.cards import KNOWN_LICENSES, write_model_card
from syllabus.core.io import atomic_write_json, writing
from syllabus.core.models import merge_lora

from .distributed import on_main
from .run import Progress, Run

STATE = "state"
# Every top-level name a training run writes in its directory (besides _work): all that --overwrite may delete
RUN_NAMES = ("config.json", "metrics.jsonl", "rescore.jsonl", "checkpoints", "eval", "trackers",
             STATE, f"{STATE}.tmp", f"{STATE}.old")


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


SHARDED = "sharded"  # the FSDP snapshot's directory in state/


def _sharded_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The student's and optimizer's state as this rank holds them (shards of DTensors), keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    return {"student": weights, "optimizer": optim}


class _PlainMetadata(pickle.Unpickler):
    """torch.distributed.checkpoint writes its metadata file as a pickle: read it admitting only the classes DCP
    writes there, so that a sharded snapshot received from someone else cannot run code (its tensor files are read
    with `weights_only=True` by DCP itself)."""

    SAFE = {("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
            ("collections", "OrderedDict"), ("torch", "Size")}

    def find_class(self, module: str, name: str) -> Any:
        if not (module.startswith("torch.distributed.checkpoint.") or (module, name) in self.SAFE
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            raise pickle.UnpicklingError(f"{module}.{name} is not among what a checkpoint's metadata holds")
        return super().find_class(module, name)


def _sharded_reader(path: Path) -> Any:
    """DCP's file-system reader, reading the metadata through `_PlainMetadata`.

    Raises (from `dcp.load`, on every rank):
        StateError: the metadata holds something else than DCP writes (tampered with, or corrupt).
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class PlainMetadataReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:  # FileSystemReader's own, but the unpickler
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                try:
                    metadata = _PlainMetadata(f).load()
                except Exception as exc:  # UnpicklingError for foreign objects; EOFError and others when corrupt
                    raise StateError(f"{path}: the sharded snapshot's metadata is not what train run writes "
                                     f"({exc}); start the run over with --overwrite") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return PlainMetadataReader(path)


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


def save(run: Run, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Snapshot everything resume needs: each rank its generators, then the main process the rest, swapped in whole.

    Raises (on every rank):
        OSError: the snapshot cannot be written (the last whole one stays); MainProcessError on the other ranks.
    """
    acc = run.accelerator
    tmp, final, old = run.out / f"{STATE}.tmp", run.out / STATE, run.out / f"{STATE}.old"

    def start() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def finish() -> None:
        from safetensors.torch import save_file

        with writing(tmp, "training snapshot", cleanup=True):  # the last whole snapshot stays until this one is
            if run.sharded:  # the shards are in tmp/sharded already
                torch.save({"scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            else:
                save_file(_unique_tensors(_unwrapped(run, model).state_dict()), tmp / "student.safetensors")
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           tmp / "optimizer.pt")
            run.progress.num_processes = acc.num_processes
            run.progress.fsdp = run.sharded
            atomic_write_json(tmp / "progress.json", asdict(run.progress))
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)

    on_main(acc, start)
    # the generators dropout draws from, so that a resumed run draws the same masks on every rank
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    with writing(tmp, "training snapshot", cleanup=False):
        torch.save(rng, tmp / f"rng-{acc.process_index}.pt")
        if run.sharded:  # every rank writes its shards (a collective)
            import torch.distributed.checkpoint as dcp

            dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp / SHARDED)
    on_main(acc, finish)


def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict on the CPU with one entry per storage: tied embeddings share theirs, and safetensors refuses
    shared tensors."""
    seen: set[int] = set()
    unique = {}
    for k, v in state.items():
        if v.data_ptr() not in seen:  # before the copy to the CPU, which would give tied weights two storages
            seen.add(v.data_ptr())
            unique[k] = v.detach().cpu().contiguous()
    return unique


def load_progress(run: Run) -> Progress | None:
    """Where the run directory's snapshot stands, or None when it has none.

    Raises:
        StateError: the snapshot was taken on another number of processes: a position within an epoch counts
            steps of micro_batch_size x grad_accum x processes samples, so it means another place in the data.
    """
    out, acc = run.out, run.accelerator

    def recover() -> None:
        old = out / f"{STATE}.old"  # a crash between the two renames of `save`
        if not (out / STATE / "progress.json").exists() and (old / "progress.json").exists():
            os.replace(old, out / STATE)

    on_main(acc, recover)
    path = out / STATE / "progress.json"
    if not path.exists():
        return None
    progress = Progress(**json.loads(path.read_text()))
    if progress.num_processes != acc.num_processes:
        raise StateError(
            f"{out} was snapshotted at step {progress.global_step} on {progress.num_processes} process(es) and is "
            f"resumed on {acc.num_processes}: its position in the epoch would mean other samples. Resume it with "
            f"--nproc_per_node {progress.num_processes} (torchrun) or --num_processes {progress.num_processes} "
            "(accelerate launch)"
        )
    if progress.fsdp != run.sharded:
        raise StateError(
            f"{out} was snapshotted {'with' if progress.fsdp else 'without'} FSDP and is resumed "
            f"{'with' if run.sharded else 'without'} it: its student and optimizer are stored "
            f"{'in shards' if progress.fsdp else 'whole'}. Resume it {'with' if progress.fsdp else 'without'} --fsdp"
        )
    return progress


def restore(run: Run, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Put the snapshot's student weights, optimizer, LR schedule and this rank's generators back (on every rank,
    once the student is placed or sharded and the optimizer built)."""
    if run.sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = _sharded_state(model, optimizer)
        try:
            dcp.load(state, storage_reader=_sharded_reader(run.out / STATE / SHARDED))  # into this rank's shards
        except CheckpointException as exc:  # DCP gathers every rank's failure: say the first, not its tracebacks
            first = next(iter(exc.failures.values()))[0]
            raise first if isinstance(first, StateError) else StateError(
                f"{run.out / STATE / SHARDED}: the sharded snapshot cannot be read back ({first}); start the run "
                "over with --overwrite") from None
        set_state_dict(model, optimizer, model_state_dict=state["student"], optim_state_dict=state["optimizer"])
    else:
        load_student(run.out, _unwrapped(run, model))
    load_optimizer(run.out, None if run.sharded else optimizer, scheduler, run.accelerator.process_index)


def load_student(out: Path, model: Any) -> None:
    from safetensors.torch import load_file

    weights = load_file(out / STATE / "student.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed_tokens" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"resume: student snapshot does not fit the model (missing {missing}, unexpected {unexpected})")


def load_optimizer(out: Path, optimizer: Any | None, scheduler: Any, rank: int = 0) -> None:
    """Restore optimizer (None: restored from shards), LR schedule and this rank's random generators from a snapshot.

    The file holds tensors and plain values only, and is read with `weights_only=True`: a run directory received
    from someone else cannot run code through a planted pickle.

    Raises:
        StateError: the file is not a snapshot of plain values (tampered with, or corrupt).
    """
    saved = _plain_values(out / STATE / "optimizer.pt")
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng = _plain_values(out / STATE / f"rng-{rank}.pt")
    torch.set_rng_state(rng["torch_rng"])
    if "cuda_rng" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda_rng"])


def _plain_values(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for foreign objects; EOFError, RuntimeError when corrupt
        raise StateError(
            f"{path}: not a snapshot of plain values ({type(exc).__name__}); it was not written by `train run` or is "
            "corrupt. Start the run over with --overwrite, or restore the directory from where it came"
        ) from None


def save_checkpoint(run: Run, model: Any, name: str) -> Path:
    """A Hugging Face checkpoint (safetensors + tokenizer + config) plus what produced it (written by the main
    process; every rank returns its path)."""
    path = run.out / "checkpoints" / name
    weights = full_weights(run, model)  # under FSDP, gathered onto the main process by every rank

    def write() -> None:
        tmp = path.with_name(path.name + ".tmp")
        with writing(tmp, "checkpoint", cleanup=True):
            shutil.rmtree(tmp, ignore_errors=True)
            student = _unwrapped(run, model)
            if run.config.lora:  # the adapter, and the merged model beside it, which every reader takes as is
                student.save_pretrained(tmp / "adapter", safe_serialization=True)
                # merged into a fresh base load: merging the training model in place and back would leave rounding
                merge_lora(tmp / "adapter", torch.float32).save_pretrained(tmp, safe_serialization=True)
            else:
                student.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp)
            write_model_card(tmp, card_facts(run), shown_as=path)  # the card names where it ends up
            atomic_write_json(tmp / "syllabus_train.json", {
                "global_step": run.progress.global_step,
                "epoch": run.progress.epoch,
                "manifest_fingerprint": run.manifest_fingerprint,
                "table_fingerprint": run.table.fingerprint,
                "method": run.schedule.method,
            })
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)

    on_main(run.accelerator, write)
    return path


def card_facts(run: Run) -> dict[str, Any]:
    """What a checkpoint's model card says made it (`core.cards.model_card`)."""
    identity = json.loads((run.out / "config.json").read_text())
    source = (run.table.metadata.get("dataset") or {}).get("source")
    return {"student": identity["student"], "teacher": identity["teacher"], "method": run.schedule.method,
            "epochs": run.schedule.manifest.get("epochs", []), "config": run.config.as_dict(),
            "global_step": run.progress.global_step,
            "table": {"path": str(run.table.path), "fingerprint": run.table.fingerprint, "source": source,
                      "license": KNOWN_LICENSES.get(source)}}


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
