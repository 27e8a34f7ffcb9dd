"""Streaming a schedule: per epoch, read that epoch's shard, shuffle it with a seeded generator, batch and collate.

Batches are made of sample ids until collation, so the data position of a run is just (epoch, step): that is what
makes resume exact without saving any data-loader state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch

from syllabus.core.logits import TopK
from syllabus.core.packing import pack_sequences, pad_sequences, scored_positions
from syllabus.core.schedule import epoch_order
from syllabus.core.table import Table
from syllabus.core.tokens import Encoded, encode_pair
from syllabus.core.topk_cache import TopKCache


class DataError(ValueError):
    """A schedule references samples the table does not have, or a shard is unreadable."""


@dataclass
class Batch:
    """A micro-batch as the models take it: padded rows with an attention mask, or packed rows with position ids."""

    input_ids: torch.Tensor  # (R, T): one sample per row, right-padded; or samples end to end (packed)
    attention_mask: torch.Tensor | None  # (R, T) from lengths, never from pad ids (pad == eos); None when packed
    position_ids: torch.Tensor | None  # (R, T) restarting at each packed sample; None when padded
    rows: torch.Tensor  # (N,) batch row of each scored position
    cols: torch.Tensor  # (N,) position whose output predicts a response token (prompt_len-1 .. len-2 of its sample)
    targets: torch.Tensor  # (N,) the response token predicted there (EOS included)
    teacher_bins: TopK | None = None  # (N, K) the teacher's cached top K at those positions (`--teacher cached`)
    generated: torch.Tensor | None = None  # (N,) bool: the position is in a response the student generated
    # (on-policy: trained on the divergence alone, `train.on_policy`); None: every response is the ground truth

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of a decoder forward. No KV cache: transformers reads packed position_ids as sample
        boundaries only without one (and a cache is wasted memory in training anyway)."""
        if self.position_ids is not None:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "use_cache": False}

    def to(self, device: Any) -> Batch:
        moved = (None if t is None else t.to(device) for t in (
            self.input_ids, self.attention_mask, self.position_ids, self.rows, self.cols, self.targets))
        bins = None if self.teacher_bins is None else TopK(*(t.to(device) for t in self.teacher_bins))
        return Batch(*moved, teacher_bins=bins, generated=None if self.generated is None else self.generated.to(device))


@dataclass(frozen=True)
class LengthLimit:
    """How long a training row may be, and what happens past it: exactly what `curate score` did to the table."""

    max_seq_len: int
    truncate: bool  # the table was scored with --truncate: over-long rows are cut the same way here


def length_limit(table: Table, max_seq_len: int | None, sample_ids: Iterable[str]) -> LengthLimit:
    """The table's scoring limit (or a smaller one that every row of the run fits), and its truncation rule.

    Training and DA-KD re-scoring tokenise each row as scoring did, so that a row's student CE, teacher CE and
    training tokens are over the same tokens: a row the table scored is never cut shorter when trained on.

    Args:
        table: the difficulty table (its metadata's `config` holds the scoring `max_seq_len` and `truncate`).
        max_seq_len: the run's `--max-seq-len`, or None for the table's.
        sample_ids: every row the run may train on or re-score.

    Raises:
        DataError: the table does not record its limit and none is given, or some rows are longer than the limit
            asked for (how many, the first, and what to do).
    """
    scored = table.metadata.get("config") or {}
    scored_limit, truncate = scored.get("max_seq_len"), bool(scored.get("truncate", False))
    limit = max_seq_len or scored_limit
    if limit is None:
        raise DataError(f"{table.path}: the table does not record the length limit it was scored with (made by hand?); "
                        "pass --max-seq-len")
    frame = table.frame
    if (scored_limit is None or limit < scored_limit) and {"prompt_tokens", "response_tokens"} <= set(frame.columns):
        wanted = pl.DataFrame({"sample_id": list(set(sample_ids))}, schema={"sample_id": pl.String})
        lengths = frame.join(wanted, on="sample_id").select(
            "sample_id", length=pl.col("prompt_tokens") + pl.col("response_tokens"))
        too_long = lengths.filter(pl.col("length") > limit).sort("length", descending=True)
        if too_long.height:
            first = too_long.row(0, named=True)
            raise DataError(
                f"--max-seq-len {limit}: {too_long.height} row(s) of this run are longer (the longest, "
                f"{first['sample_id']}, has {first['length']} tokens); the table was scored with a limit of "
                f"{scored_limit}. Cutting them here would train on other tokens than were scored: drop --max-seq-len, "
                f"or score the data with `curate score --max-seq-len {limit}` and rebuild the schedule"
            )
    return LengthLimit(limit, truncate)


class SampleStore:
    """Text of every sample in the table, tokenised on first use with the function and limit scoring used.

    When the table holds token counts, every encoding is checked against them: a tokenizer, template or limit that
    differs from the table's would otherwise train on other tokens than were scored.
    """

    def __init__(self, frame: pl.DataFrame, tokenizer: Any, limit: LengthLimit, chat_template: bool) -> None:
        self.index = {sid: i for i, sid in enumerate(frame["sample_id"].to_list())}
        self.prompts = frame["prompt"].to_list()
        self.responses = frame["response"].to_list()
        counted = {"prompt_tokens", "response_tokens"} <= set(frame.columns)
        self.counts = None  # (prompt_tokens, response_tokens) per row, as scored
        if counted:
            self.counts = list(zip(frame["prompt_tokens"].to_list(), frame["response_tokens"].to_list()))
        self.tokenizer = tokenizer
        self.limit = limit
        self.chat_template = chat_template
        self._cache: dict[str, Encoded] = {}

    def check(self, sample_ids: list[str], where: str) -> None:
        missing = [s for s in sample_ids if s not in self.index]
        if missing:
            raise DataError(f"{where}: {len(missing)} sample_id(s) are not in the table (first: {missing[0]})")

    def encoded(self, sample_id: str) -> Encoded:
        """The row's tokens, as scoring made them.

        Raises:
            DataError: the row does not fit the limit (and the table was not scored with --truncate), or its token
                counts differ from the table's.
        """
        enc = self._cache.get(sample_id)
        if enc is None:
            i = self.index[sample_id]
            enc = encode_pair(self.tokenizer, self.prompts[i], self.responses[i], self.limit.max_seq_len,
                              truncate=self.limit.truncate, chat_template=self.chat_template)
            if enc.status != "ok":
                raise DataError(
                    f"sample {sample_id}: {len(enc.ids)} tokens do not fit --max-seq-len {self.limit.max_seq_len}; "
                    "raise it, or rebuild the schedule from a table scored at it"
                )
            scored = self.counts[i] if self.counts is not None else None
            if scored is not None and None not in scored and scored != (len(enc.prompt_ids), len(enc.response_ids)):
                raise DataError(
                    f"sample {sample_id}: the table scored {scored[0]} prompt + {scored[1]} response tokens, training "
                    f"tokenises it to {len(enc.prompt_ids)} + {len(enc.response_ids)}: the tokenizer, template or "
                    "length limit differs from the one the table was scored with"
                )
            self._cache[sample_id] = enc
        return enc


def read_shard(path: Path) -> list[str]:
    try:
        return pl.read_parquet(path, columns=["sample_id"])["sample_id"].to_list()
    except Exception as exc:
        raise DataError(f"{path}: cannot read the epoch shard ({exc})") from None


def epoch_micro_batches(sample_ids: list[str], seed: int, epoch: int, micro_batch_size: int) -> list[list[str]]:
    """An epoch's ids in training order (`core.schedule.epoch_order`: a permutation seeded by (seed, epoch)), cut
    into micro-batches."""
    shuffled = epoch_order(sample_ids, seed, epoch)
    return [shuffled[i : i + micro_batch_size] for i in range(0, len(shuffled), micro_batch_size)]


def step_groups(micro: list[list[str]], grad_accum: int, rank: int = 0,
                world_size: int = 1) -> list[tuple[list[list[str]], list[list[str]]]]:
    """An epoch's optimizer steps, each as the global list of its micro-batches, and this rank's share of each.

    Step s takes the next `grad_accum * world_size` micro-batches and rank r every `world_size`-th of them from the
    r-th, so a step trains on the same samples whatever the split: 2 processes at grad_accum 1 take the steps 1
    process takes at grad_accum 2. Every sample of the epoch is seen once, by one rank. In an epoch's last step a
    rank may get no micro-batch (its share is empty): the loop then runs it on the step's first micro-batch at
    weight 0, so that its gradients still meet the others'.

    Returns:
        one (step's micro-batches, this rank's micro-batches) pair per optimizer step.
    """
    per_step = grad_accum * world_size
    steps = [micro[i : i + per_step] for i in range(0, len(micro), per_step)]
    return [(step, step[rank::world_size]) for step in steps]


def collate(encoded: list[Encoded], pad_id: int, pack_tokens: int | None = None,
            generated: list[bool] | None = None) -> Batch:
    """A micro-batch of samples: packed (padding-free) when `pack_tokens` is given, else one padded row each.

    Args:
        encoded: the samples, in the micro-batch's order.
        pad_id: filler id (padding, or the tail of a packed row).
        pack_tokens: the token budget of a packed row (`core.packing.pack_sequences`); None: padded rows.
        generated: per sample, whether its response is the student's own (on-policy); None or all False: none is.
    """
    sequences, prompt_lens = [e.ids for e in encoded], [len(e.prompt_ids) for e in encoded]
    if pack_tokens is not None:
        packed = pack_sequences(sequences, pad_id, pack_tokens)
        batch = Batch(packed.input_ids, None, packed.position_ids,
                      *scored_positions(sequences, prompt_lens, packed.rows, packed.offsets))
    else:
        input_ids, attention_mask = pad_sequences(sequences, pad_id)
        n = len(sequences)
        batch = Batch(input_ids, attention_mask, None,
                      *scored_positions(sequences, prompt_lens, list(range(n)), [0] * n))
    if generated is not None and any(generated):  # scored positions run sample by sample, in this order
        counts = torch.tensor([len(e.response_ids) for e in encoded])
        batch.generated = torch.repeat_interleave(torch.tensor(generated, dtype=torch.bool), counts)
    return batch


def cached_bins(cache: TopKCache, sample_ids: list[str], encoded: list[Encoded]) -> TopK:
    """The teacher's cached top K at a micro-batch's scored positions: sample by sample, as `collate` orders them.

    Raises:
        DataError: a sample whose cached tokens are not its response tokens (the cache was built from other rows).
    """
    bins = cache.bins(sample_ids)
    for sid, enc, top in zip(sample_ids, encoded, bins):
        if top.log_tail.numel() != len(enc.response_ids):
            raise DataError(f"sample {sid}: the teacher cache {cache.path} holds {top.log_tail.numel()} response "
                            f"tokens, training tokenises {len(enc.response_ids)}: the cache was built from other rows")
    return TopK(*(torch.cat(parts) for parts in zip(*bins)))
