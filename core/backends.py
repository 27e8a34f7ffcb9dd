"""Where engine work runs: in this process (`local`), or on the replicas of a Ray cluster (`ray`).

The work comes in parts (a scoring pass's parts, an evaluation's (set, seed) jobs), each a frame of rows that a
picklable worker turns into a frame of results (`curate.passes.PassWorker`, `evaluate.run.EvalWorker`). A backend
maps the worker over the parts still to do and yields each finished part as it comes; the caller writes every part
the moment it arrives, so a run stopped at any point, or a part that failed, costs only the parts not yet written,
and the re-run computes those alone.

The Ray backend makes the parts a Ray Dataset (one row per part) and maps it with `map_batches` over a pool of
actors, each holding one engine (vLLM, with tensor parallelism inside it, or transformers): the same engine classes,
settings and part boundaries as the local backend, so both write the same files. `ray.data.llm` is not used: its
processors return generated text, while the scoring passes need prompt log-probs with each position's top K,
per-request sampling seeds and the n-gram logits processor of the existing engines.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import polars as pl

from syllabus.core.engines import EngineSlot

Worker = Callable[[pl.DataFrame, EngineSlot], pl.DataFrame]  # picklable: sent to every replica; takes its engine
# from the slot of the process it runs in


class BackendError(ValueError):
    """The backend cannot run: Ray missing, or a cluster without the GPUs asked for."""


@dataclass(frozen=True)
class PartFailure:
    """A part whose computation raised: which part, its first sample ids, and the error."""

    part: int
    sample_ids: list[str]
    error: str

    def describe(self) -> str:
        shown = ", ".join(self.sample_ids[:3]) + (f" and {len(self.sample_ids) - 3} more" if len(self.sample_ids) > 3
                                                   else "")
        return f"part {self.part} (samples {shown}): {self.error}"


class _Closing:
    """A backend is a context manager: `with open_backend(...) as backend:` closes its engines, on failure too."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalBackend(_Closing):
    """The parts in order, in this process, with the engine this backend holds (kept across parts and passes of
    the same model; closed with the backend); an error stops the pass at once (finished parts are on disk)."""

    name = "local"

    def __init__(self) -> None:
        self.engines = EngineSlot()

    def map_parts(self, worker: Worker, parts: Iterator[tuple[int, pl.DataFrame]]
                  ) -> Iterator[tuple[int, pl.DataFrame | PartFailure]]:
        for k, rows in parts:
            yield k, worker(rows, self.engines)

    def close(self) -> None:
        self.engines.close()


class RayBackend(_Closing):
    """The parts on `replicas` Ray actors, each with its own engine; parts arrive in the order they finish.

    Args:
        address: the cluster to join (`ray start --head` prints it; "auto" finds the local one); None: join the
            cluster this process already started (`ray.init`), else start a local one.
        replicas: engines to run; None: one per `tensor_parallel_size` GPUs of the cluster, or one on a cluster
            without GPUs.
        tensor_parallel_size: GPUs per replica (vLLM tensor parallelism inside the replica).
    """

    name = "ray"

    def __init__(self, address: str | None, replicas: int | None, tensor_parallel_size: int) -> None:
        try:
            import ray
        except ImportError:
            raise BackendError("--backend ray needs Ray: pip install 'syllabus[ray]'") from None
        if not ray.is_initialized():
            check_reachable(address)
            ray.init(address=address, log_to_driver=False)
        import ray.data

        for handler in logging.getLogger("ray.data").handlers:  # its INFO lines stay in the session's ray-data.log
            if type(handler).__name__ != "SessionFileHandler":
                handler.setLevel(logging.WARNING)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            fit = gpus // tensor_parallel_size
            if fit < 1:
                raise BackendError(f"--tensor-parallel-size {tensor_parallel_size}: the Ray cluster has {gpus} GPU(s)")
            self.replicas = replicas or fit
            self.per_replica = {"num_gpus": tensor_parallel_size, "num_cpus": 1}
        else:
            self.replicas = replicas or 1
            self.per_replica = {"num_cpus": max(1, cpus // self.replicas)}

    def map_parts(self, worker: Worker, parts: Iterator[tuple[int, pl.DataFrame]]
                  ) -> Iterator[tuple[int, pl.DataFrame | PartFailure]]:
        import ray

        items = [{"part": k, "rows": _to_ipc(rows)} for k, rows in parts]
        if not items:
            return
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _Replica, fn_constructor_args=(worker,), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self.replicas, len(items))), **self.per_replica)
        for out in dataset.iter_rows():
            k = int(out["part"])
            if out["error"]:
                yield k, PartFailure(k, list(out["sample_ids"]), out["error"])
            else:
                yield k, pl.read_ipc(io.BytesIO(out["frame"]))

    def close(self) -> None:
        """The replicas end with the dataset (their engines with them); the cluster stays up for the next pass."""


class _Replica:
    """A Ray actor: one engine, kept across the parts it is given; a part that raises becomes a failure record
    (naming its samples) and the replica goes on with the next part."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.engines = EngineSlot()  # this actor's; it lives as long as the actor

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        k, rows = int(batch["part"][0]), pl.read_ipc(io.BytesIO(batch["rows"][0]))
        try:
            return {"part": [k], "frame": [_to_ipc(self.worker(rows, self.engines))], "error": [""], "sample_ids": [[]]}
        except Exception as exc:  # reported by the driver with the part's samples; other parts go on
            return {"part": [k], "frame": [b""], "error": [f"{type(exc).__name__}: {exc}"],
                    "sample_ids": [rows["sample_id"].to_list()]}


def _to_ipc(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return buffer.getvalue()


RAY_CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str | None, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse a Ray address whose host:port takes no connection within `timeout_s`: `ray.init` would retry for
    minutes (seen here: still retrying after 5) and then end in a ConnectionError traceback.

    Args:
        address: `host:port` or `ray://host:port`; None and "auto" (a local cluster, found by Ray) are not checked.

    Raises:
        BackendError: naming the address, the error and how long it waited.
    """
    import socket
    import time

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"--ray-address {address!r}: expected host:port (the address `ray start --head` prints), "
                           "ray://host:port for a Ray client, or auto")
    start = time.monotonic()
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        waited = time.monotonic() - start
        raise BackendError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}, after "
                           f"{waited:.1f} s). Start one with `ray start --head` and pass the address it prints, or "
                           "run without --backend ray") from None


def open_backend(name: str, address: str | None = None, replicas: int | None = None,
                 tensor_parallel_size: int = 1) -> LocalBackend | RayBackend:
    """The backend `name` names (one of `engines.BACKENDS`, checked by the caller's config)."""
    return RayBackend(address, replicas, tensor_parallel_size) if name == "ray" else LocalBackend()
