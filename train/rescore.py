"""DA-KD dynamic mode: before an epoch marked `rescore`, recompute DDS with the current student and reselect.

The paper (Algorithm 1) recomputes each sample's difficulty with the student being trained; the teacher's CE does
not change, so it comes from the table. Selection reuses the schedule's own code (`select_epoch`), so a static and
a dynamic DA-KD epoch differ only in the DDS values they select from.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import torch

from syllabus.core.engines.base import ScoringRequest
from syllabus.core.packing import attention_is_varlen
from syllabus.core.scoring import default_batch_tokens, response_nll, scoring_forwards
from syllabus.core.table import Table, with_dds
from syllabus.curate.schedules import dakd

from .distributed import most_over_ranks, on_main, pad_forwards, rank_seed, split_map
from .run import Run


def check_rescore_params(params: dict[str, Any]) -> None:
    """Fail at setup, not mid-run, when a schedule asks for re-scoring but its manifest lacks DA-KD's selection.

    Raises:
        ScheduleError: see `dakd.selection_params`.
    """
    dakd.selection_params(params)


def rescore_pool(table: Table) -> pl.DataFrame:
    """The rows DA-KD selects from: exactly the rows `curate schedule` found usable (status ok, a finite dds, so a
    finite student CE and a teacher CE > 0), with their teacher CE.

    Raises:
        ScheduleError: the table has no dds column or no usable row.
    """
    usable = dakd.selection_pool(table.frame, str(table.path))
    return usable.join(table.frame.select("sample_id", "teacher_ce"), on="sample_id").select("sample_id", "teacher_ce")


def rescore_epoch(run: Run, epoch: int, model: Any) -> list[str]:
    """Student CE of the whole pool under the current weights -> dds -> the sample ids of epoch `epoch` (0-based).

    On many processes each rank scores its share of the pool and every rank selects from all of it, alike."""
    pool = rescore_pool(run.table)
    ids = pool["sample_id"].to_list()
    requests = []
    for sid in ids:
        enc = run.store.encoded(sid)
        requests.append(ScoringRequest(enc.ids, len(enc.prompt_ids)))
    student = run.accelerator.unwrap_model(model).model
    # Packed where the training batches are and attention is varlen; padded, length-sorted batches elsewhere,
    # faster on CPU (`core.scoring.scoring_pack_tokens`). run.pack_tokens is None with --padded or non-exact packing.
    pack_tokens = run.pack_tokens if run.pack_tokens is not None and attention_is_varlen(student) else None
    was_training = student.training
    student.eval()
    batch_tokens = run.config.rescore_batch_tokens or default_batch_tokens()
    pad_id = run.tokenizer.pad_token_id
    padding = [0]  # one-token forwards this rank ran to meet the others (FSDP)

    def score(part: list[ScoringRequest]) -> list[float]:
        if run.sharded:  # each forward gathers the layers' shards: every rank runs as many as the busiest
            mine = sum(1 for _ in scoring_forwards([r.ids for r in part], [r.prompt_len for r in part], batch_tokens,
                                                   pad_id, pack_tokens))
            padding[0] = most_over_ranks(run.accelerator, mine) - mine
        with run.accelerator.autocast():
            scored = list(response_nll(student, part, batch_tokens, pad_id, pack_tokens))
            with torch.inference_mode():
                pad_forwards(run.accelerator, student.get_decoder(), padding[0], pad_id)
        return scored

    if run.sharded:  # the embeddings and head are the root unit's, gathered in its forward, which scoring skips
        model.unshard()
    student_ce = split_map(run.accelerator, requests, score)  # each rank scores its share; all get every CE
    if run.sharded:
        model.reshard()
    student.train(was_training)
    scored = with_dds(pool.with_columns(student_ce=pl.Series(student_ce)))  # the pool's teacher_ce are all > 0
    params = run.schedule.params
    selected = dakd.select_epoch(scored.select("sample_id", "dds"), epoch=epoch,
                                 num_epochs=len(run.schedule.epochs), seed=run.schedule.seed, **dakd.selection_params(params))
    record = {"epoch": epoch, "pool": len(ids), "mean_student_ce": sum(student_ce) / len(student_ce),
              "mean_dds": scored["dds"].mean(), "selected": len(selected)}
    if run.sharded:  # over all ranks
        acc = run.accelerator
        record["padding_forwards"] = int(acc.reduce(torch.tensor(padding[0], device=acc.device), reduction="sum"))

    def log() -> None:
        with (run.out / "rescore.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    on_main(run.accelerator, log)
    # keep later randomness independent of re-scoring
    torch.manual_seed(rank_seed(run.config.seed + epoch, run.accelerator.process_index))
    return selected
