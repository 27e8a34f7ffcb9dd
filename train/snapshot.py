"""Exact-resume snapshots of a training run:

    OUT/state/                   the latest snapshot: student weights, optimizer, scheduler, progress, and each
                                 rank's random generators (rng-<rank>.pt); under FSDP the student and the
                                 optimizer are in sharded/ instead, each rank's shard as it holds it
                                 (torch.distributed.checkpoint), never gathered on one process

A snapshot is written to `state.tmp/` and swapped in with renames, so a crash never leaves a half-written state.
On many processes the main process writes everything but the generators (and FSDP shards), which each rank writes
for itself.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from syllabus.core.io import atomic_write_json, recover_directory, swap_directory, writing

from .distributed import on_main
from .run import STATE, Progress, Run, unwrapped


class StateError(ValueError):
    """A run directory's snapshot cannot be read back."""


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


def save(run: Run, progress: Progress, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Snapshot everything resume needs: each rank its generators, then the main process the rest, swapped in whole.

    Raises (on every rank):
        OSError: the snapshot cannot be written (the last whole one stays); MainProcessError on the other ranks.
    """
    acc = run.accelerator
    tmp = run.out / f"{STATE}.tmp"

    def start() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def finish() -> None:
        from safetensors.torch import save_file

        with writing(tmp, "training snapshot", cleanup=True):  # the last whole snapshot stays until this one is
            if run.sharded:  # the shards are in tmp/sharded already
                torch.save({"scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            else:
                save_file(_unique_tensors(unwrapped(run, model).state_dict()), tmp / "student.safetensors")
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           tmp / "optimizer.pt")
            progress.num_processes = acc.num_processes
            progress.fsdp = run.sharded
            atomic_write_json(tmp / "progress.json", asdict(progress))
            swap_directory(tmp, run.out / STATE)

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

    on_main(acc, lambda: recover_directory(out / STATE, "progress.json"))  # a crash between `save`'s renames
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
        load_student(run.out, unwrapped(run, model))
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
