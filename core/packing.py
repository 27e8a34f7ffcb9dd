"""Padding-free batches: several sequences laid end to end in one row, their `position_ids` restarting at each one.

transformers (5.19) turns restarting `position_ids` into a block-diagonal causal mask when no `attention_mask` is
given (`masking_utils.find_packed_sequence_indices`), for eager, sdpa and flex attention alike, in any number of
rows: a token never attends to another sequence, and no compute goes to padding. Flash-attention reads them only in
a single row (`modeling_flash_attention_utils._is_packed_sequence` requires batch size 1; in several rows it would
attend across samples), and then runs varlen kernels that cost each sample its own length, so with it everything is
packed into one row (`row_budget`). A model that builds its mask some other way (remote code, older architectures)
would attend across sequences, so `packing_is_exact` checks each model once, in the layout it will get, before it
is trusted with packed rows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Packed:
    """Sequences packed into `input_ids` (R, T); sequence i sits in row `rows[i]` from column `offsets[i]`.

    A row's unused tail holds `pad_id` with positions restarting at 0: a sequence of its own, never read.
    """

    input_ids: torch.Tensor  # (R, T)
    position_ids: torch.Tensor  # (R, T)
    rows: list[int]
    offsets: list[int]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()


def pack_sequences(sequences: list[list[int]], pad_id: int, max_tokens: int) -> Packed:
    """Lay sequences end to end, in the given order, in rows of at most `max_tokens` tokens (or the longest one).

    Training packs this way: a micro-batch keeps its samples and their order; only the padding goes.

    Args:
        sequences: token ids, each at least one token.
        pad_id: filler for the tails of rows shorter than the longest.
        max_tokens: row budget; a row's attention mask costs its length squared, so budgets keep it bounded.

    Returns:
        The packed rows and where each sequence went.
    """
    budget = max(max_tokens, max(len(s) for s in sequences))
    rows: list[list[int]] = []
    fill = 0
    for i, sequence in enumerate(sequences):
        if not rows or fill + len(sequence) > budget:
            rows.append([])
            fill = 0
        rows[-1].append(i)
        fill += len(sequence)
    return lay_out(sequences, rows, pad_id)


def best_fit_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group sequence indices into rows of at most `max_tokens` tokens, for passes where order does not matter
    (scoring): longest first, each into the fullest row it still fits (best-fit decreasing), so short sequences
    fill the tails long ones leave. A sequence longer than `max_tokens` gets a row of its own.

    Returns:
        The rows, fullest first, each a list of indices into `lengths`.
    """
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row), ascending: the fullest row that fits is the first >= n
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            left, row = room.pop(k)
            rows[row].append(i)
            bisect.insort(room, (left - n, row))
        else:
            rows.append([i])
            bisect.insort(room, (max(max_tokens - n, 0), len(rows) - 1))
    return sorted(rows, key=lambda row: -sum(lengths[i] for i in row))


def lay_out(sequences: list[list[int]], rows: list[list[int]], pad_id: int) -> Packed:
    """Build the packed tensors for a given assignment: `rows[r]` lists the indices of the sequences of row r, in
    order. `Packed.rows`/`offsets` are indexed like `sequences`."""
    fill = [sum(len(sequences[i]) for i in row) for row in rows]
    width = max(fill)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.empty((len(rows), width), dtype=torch.long)
    where_row, where_offset = [0] * len(sequences), [0] * len(sequences)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n = len(sequences[i])
            input_ids[r, offset : offset + n] = torch.tensor(sequences[i])
            position_ids[r, offset : offset + n] = torch.arange(n)
            where_row[i], where_offset[i] = r, offset
            offset += n
        position_ids[r, offset:] = torch.arange(width - offset)
    return Packed(input_ids, position_ids, where_row, where_offset)


def pad_sequences(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One right-padded row per sequence: (input_ids, attention_mask), the mask from lengths, never from pad ids
    (pad == eos in many tokenizers)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def scored_positions(
    sequences: list[list[int]], prompt_lens: list[int], rows: list[int], offsets: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, targets) of the response tokens, padded or packed alike: sequence i sits in row `rows[i]` from
    column `offsets[i]`, and the output at column c predicts the token at c + 1, so its response tokens are
    predicted at prompt_len - 1 .. len - 2 of the sequence."""
    out_rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for ids, p, row, offset in zip(sequences, prompt_lens, rows, offsets):
        out_rows += [row] * (len(ids) - p)
        cols += range(offset + p - 1, offset + len(ids) - 1)
        targets += ids[p:]
    return torch.tensor(out_rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), torch.tensor(
        targets, dtype=torch.long)


ONE_ROW = 2**40  # a row budget that packs everything given into one row


def attention_is_varlen(model: Any) -> bool:
    """Whether `model` runs flash-attention, whose varlen kernels cost each packed sample its own length. sdpa and
    eager attend over a packed row's whole square under a block-diagonal mask instead (correct, not free)."""
    return "flash" in str(getattr(model.config, "_attn_implementation", None) or "")


def row_budget(models: list[Any], pack_tokens: int) -> int:
    """The packed-row budget for these models: one row (`ONE_ROW`) if any runs flash-attention, which reads packed
    position ids in a single row only; else rows of `pack_tokens`, since sdpa and eager pay each row's square."""
    return ONE_ROW if any(attention_is_varlen(m) for m in models) else pack_tokens


@torch.no_grad()
def packing_is_exact(model: Any, max_tokens: int = ONE_ROW) -> bool:
    """Whether `model`'s decoder gives packed sequences the hidden states it gives them one by one (eval mode), in
    the layout a row budget of `max_tokens` gives: one row (`ONE_ROW`), or several (any budget below it).

    Scale-free, so that it holds in bf16 too: packed hidden states must be at least 20 times closer to the separate
    ones than those of the same rows run without position ids (what attending across samples gives).
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in (12, 7, 10, 9)]
    device = model.get_input_embeddings().weight.device
    packed = pack_sequences(sequences, pad_id=0, max_tokens=64 if max_tokens >= ONE_ROW else 24)  # 1 row, or 2 of 2
    ids = packed.input_ids.to(device)
    was_training = model.training
    model.eval()
    try:
        decoder = model.get_decoder()
        together = decoder(input_ids=ids, position_ids=packed.position_ids.to(device),
                           use_cache=False).last_hidden_state.float()
        crossed = decoder(input_ids=ids, use_cache=False).last_hidden_state.float()
        alone = [decoder(input_ids=torch.tensor([s], device=device), use_cache=False).last_hidden_state[0].float()
                 for s in sequences]
    finally:
        model.train(was_training)
    # a row's first sequence is the same either way: compare the others
    later = [(i, packed.rows[i], packed.offsets[i]) for i in range(len(sequences)) if packed.offsets[i] > 0]
    error, crossing = (max((x[row, offset : offset + len(sequences[i])] - alone[i]).abs().max().item()
                           for i, row, offset in later) for x in (together, crossed))
    return error <= crossing / 20
