"""Streaming a schedule: per epoch, read that epoch's shard, shuffle it with a seeded generator, batch and collate.

Batches are made of sample ids until collation, so the data position of a run is just (epoch, step): that is what
makes resume exact without saving any data-loader state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from syllabus.core.tokens import Encoded, encode_pair


class DataError(ValueError):
    """A schedule references samples the table does not have, or a shard is unreadable."""


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T) from lengths, never from pad ids (pad == eos in SmolLM2)
    rows: torch.Tensor  # (N,) batch row of each scored position
    cols: torch.Tensor  # (N,) position whose output predicts a response token (prompt_len-1 .. len-2)
    targets: torch.Tensor  # (N,) the response token predicted there (EOS included)

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


class SampleStore:
    """Text of every sample in the table, tokenised on first use (same function as scoring)."""

    def __init__(self, frame: pl.DataFrame, tokenizer: Any, max_seq_len: int, chat_template: bool) -> None:
        self.index = {sid: i for i, sid in enumerate(frame["sample_id"].to_list())}
        self.prompts = frame["prompt"].to_list()
        self.responses = frame["response"].to_list()
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.chat_template = chat_template
        self._cache: dict[str, Encoded] = {}

    def check(self, sample_ids: list[str], where: str) -> None:
        missing = [s for s in sample_ids if s not in self.index]
        if missing:
            raise DataError(f"{where}: {len(missing)} sample_id(s) are not in the table (first: {missing[0]})")

    def encoded(self, sample_id: str) -> Encoded:
        enc = self._cache.get(sample_id)
        if enc is None:
            i = self.index[sample_id]
            # Training truncates rather than skips: the schedule decided this sample is in the epoch.
            enc = encode_pair(self.tokenizer, self.prompts[i], self.responses[i], self.max_seq_len, truncate=True,
                              chat_template=self.chat_template)
            self._cache[sample_id] = enc
        return enc


def read_shard(path: Path) -> list[str]:
    try:
        return pl.read_parquet(path, columns=["sample_id"])["sample_id"].to_list()
    except Exception as exc:
        raise DataError(f"{path}: cannot read the epoch shard ({exc})") from None


def epoch_micro_batches(
    sample_ids: list[str], seed: int, epoch: int, micro_batch_size: int, rank: int = 0, world_size: int = 1
) -> list[list[str]]:
    """Shuffle an epoch's ids with a generator seeded by (seed, epoch), cut into micro-batches, keep this rank's.

    The shard's order is the curriculum *between* epochs; within an epoch the papers shuffle (as every trainer
    does), so the order is a seeded permutation. Ranks take interleaved micro-batches.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(sample_ids))
    shuffled = [sample_ids[i] for i in order]
    batches = [shuffled[i : i + micro_batch_size] for i in range(0, len(shuffled), micro_batch_size)]
    return batches[rank::world_size]


def collate(encoded: list[Encoded], pad_id: int) -> Batch:
    lengths = [len(e.ids) for e in encoded]
    width = max(lengths)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, e in enumerate(encoded):
        ids = e.ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        p = len(e.prompt_ids)
        rows += [row] * (len(ids) - p)
        cols += range(p - 1, len(ids) - 1)
        targets += ids[p:]
    return Batch(input_ids, attention_mask, torch.tensor(rows), torch.tensor(cols), torch.tensor(targets))
