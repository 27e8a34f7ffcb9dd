"""What the trainer does differently on many processes (`torchrun`, `accelerate launch`), in one place.

Every rank runs the whole loop on its share of each step (`data.step_groups`); files are written by the main
process only, and a failure there is raised on every rank, so that no rank waits forever at a barrier for a main
process that has died. On one process each helper is the plain single-process operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from syllabus.core.logits import LogitHead

T = TypeVar("T")


class MainProcessError(RuntimeError):
    """Raised on the other ranks when the main process failed at a step they all wait on."""


def on_main(acc: Any, work: Callable[[], T]) -> T | None:
    """Run `work` on the main process while the others wait; its error is raised on every rank.

    Returns:
        what `work` returned, on the main process; None on the others.
    """
    acc.wait_for_everyone()
    if acc.num_processes == 1:
        return work()
    from accelerate.utils import broadcast_object_list

    result, failure = None, [None]
    if acc.is_main_process:
        try:
            result = work()
        except BaseException as exc:
            failure = [f"{type(exc).__name__}: {exc}"]
            broadcast_object_list(failure)
            raise
    broadcast_object_list(failure)
    if failure[0] is not None:
        raise MainProcessError(f"the main process failed, so this rank stops too: {failure[0]}")
    return result


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's generators (dropout): `seed` itself on rank 0, so a one-process run draws what it
    always drew, and a distinct value per other rank, so ranks do not draw the same masks."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def gather_everywhere(acc: Any, mine: list[T]) -> list[T]:
    """Every rank's list, concatenated in rank order, on every rank (this rank's own list on one process)."""
    if acc.num_processes == 1:
        return list(mine)
    from accelerate.utils import gather_object

    return gather_object(list(mine))


def split_map(acc: Any, items: list[Any], work: Callable[[list[Any]], list[T]]) -> list[T]:
    """`work` over `items` split across ranks (rank r takes every num_processes-th item from the r-th), gathered on
    every rank in the items' order."""
    world, rank = acc.num_processes, acc.process_index
    if world == 1:
        return work(items)
    gathered = gather_everywhere(acc, work(items[rank::world]))  # rank 0's results, then rank 1's, ...
    positions = [i for r in range(world) for i in range(r, len(items), world)]
    out: list[Any] = [None] * len(items)
    for position, value in zip(positions, gathered):
        out[position] = value
    return out


# --- FSDP (`train run --fsdp`, or an accelerate FSDP config) ----------------------------------------------------------
#
# The student is sharded with torch's FSDP2 (`fully_shard`): each decoder layer is a unit, and the `DistillStudent`
# around the model is the root unit, holding the embeddings, the final norm and the lm_head, which its forward reads
# (so they are gathered there). Every forward and backward is then a collective: the ranks must run as many of them,
# which the loop and DA-KD re-scoring see to with passes at weight 0 (`lockstep_passes`, `pad_forwards`). The frozen
# teacher's decoder is sharded the same way (`shard_teacher`); its head stays whole on every rank.


def shard_student(student: torch.nn.Module, acc: Any) -> torch.nn.Module:
    """`student` (a `DistillStudent`, loaded on the CPU) sharded over all ranks with FSDP2, each rank's shards on its
    device: `fully_shard` moves a unit at a time, so the device never holds the whole model.

    Raises:
        ValueError: the model does not name its decoder layers (`_no_split_modules`), which are the units.
    """
    _shard(student.model, student, acc)
    return student


def shard_teacher(teacher: Any, head: LogitHead, acc: Any) -> LogitHead:
    """Shard the frozen teacher (loaded on the CPU) over all ranks as `shard_student` does the student: its layers,
    then its decoder as the root (the embeddings and the final norm). Returns its head, whole on this rank's device:
    the loss reads the head outside the decoder's forward. A head tied to the embeddings gets its own copy first,
    since the embeddings are sharded.

    Raises:
        ValueError: as `shard_student`.
    """
    whole = LogitHead(head.weight.detach().to(acc.device, copy=True),
                      None if head.bias is None else head.bias.detach().to(acc.device, copy=True),
                      head.scale, head.softcap)
    _shard(teacher, teacher.get_decoder(), acc, reshard_root=True)  # no backward follows to need it gathered
    teacher.get_output_embeddings().weight = torch.nn.Parameter(whole.weight, requires_grad=False)  # one copy kept
    return whole


def _shard(model: Any, root: torch.nn.Module, acc: Any, reshard_root: bool | None = None) -> None:
    """FSDP2 over all ranks: each of `model`'s decoder layers a unit, then `root` (its embeddings, norm, head),
    which FSDP keeps gathered between forward and backward unless `reshard_root`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise ValueError(f"{type(model).__name__} does not name its decoder layers (_no_split_modules), which FSDP "
                         "would shard one by one: train with DDP (without --fsdp)")
    mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_root)


def lockstep_passes(step: list[Any], mine: list[Any], world: int, sharded: bool) -> tuple[list[Any], list[float]]:
    """This rank's micro-batches of a step and their weights, padded with weight-0 passes where the ranks must meet.

    Under DDP gradients meet once per step, so a rank needs one pass at least (an empty share runs the step's first
    micro-batch at weight 0). Under FSDP every pass is a collective, so each rank runs as many as the fullest rank
    (rank 0, which takes every world-th micro-batch from the first).
    """
    passes = len(step[::world]) if sharded else max(1, len(mine))
    return mine + step[: passes - len(mine)], [1.0] * len(mine) + [0.0] * (passes - len(mine))


def most_over_ranks(acc: Any, count: int) -> int:
    """The largest `count` of any rank (a collective: agree on it before the collectives it counts)."""
    import torch.distributed as dist

    most = torch.tensor(count, device=acc.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def pad_forwards(acc: Any, backbone: Any, count: int, pad_id: int) -> None:
    """Run `count` one-token forwards of `backbone`, to meet the sharded layers' all-gathers of busier ranks."""
    ids = torch.tensor([[pad_id]], device=acc.device)
    for _ in range(count):
        backbone(input_ids=ids, use_cache=False)
