"""What the trainer does differently on many processes (`torchrun`, `accelerate launch`), in one place.

Every rank runs the whole loop on its share of each step (`data.step_groups`); files are written by the main
process only, and a failure there is raised on every rank, so that no rank waits forever at a barrier for a main
process that has died. On one process each helper is the plain single-process operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

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


def split_map(acc: Any, items: list[Any], work: Callable[[list[Any]], list[T]]) -> list[T]:
    """`work` over `items` split across ranks (rank r takes every num_processes-th item from the r-th), gathered on
    every rank in the items' order."""
    world, rank = acc.num_processes, acc.process_index
    if world == 1:
        return work(items)
    from accelerate.utils import gather_object

    mine = work(items[rank::world])
    gathered = gather_object(list(mine))  # rank 0's results, then rank 1's, ...
    positions = [i for r in range(world) for i in range(r, len(items), world)]
    out: list[Any] = [None] * len(items)
    for position, value in zip(positions, gathered):
        out[position] = value
    return out
