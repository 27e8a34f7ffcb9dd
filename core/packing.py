"""Padding-free batches: several sequences laid end to end in one row, their `position_ids` restarting at each one.

transformers (5.x) turns restarting `position_ids` into a block-diagonal causal mask when no `attention_mask` is
given (`masking_utils.find_packed_sequence_indices`), for eager, sdpa and flex attention alike, and flash-attention
runs varlen kernels from them: a token never attends to another sequence, and no compute goes to padding. A model
that builds its mask some other way (remote code, older architectures) would attend across sequences, so
`packing_is_exact` checks each model once on a few tokens before it is trusted with packed rows.
"""

from __future__ import annotations

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

    Args:
        sequences: token ids, each at least one token.
        pad_id: filler for the tails of rows shorter than the longest.
        max_tokens: row budget; a row's attention mask costs its length squared, so budgets keep it bounded.

    Returns:
        The packed rows and where each sequence went.
    """
    budget = max(max_tokens, max(len(s) for s in sequences))
    rows, offsets, fill = [], [], []
    for sequence in sequences:
        if not fill or fill[-1] + len(sequence) > budget:
            fill.append(0)
        rows.append(len(fill) - 1)
        offsets.append(fill[-1])
        fill[-1] += len(sequence)
    width = max(fill)
    input_ids = torch.full((len(fill), width), pad_id, dtype=torch.long)
    position_ids = torch.empty((len(fill), width), dtype=torch.long)
    for sequence, row, offset in zip(sequences, rows, offsets):
        input_ids[row, offset : offset + len(sequence)] = torch.tensor(sequence)
        position_ids[row, offset : offset + len(sequence)] = torch.arange(len(sequence))
    for row, used in enumerate(fill):
        position_ids[row, used:] = torch.arange(width - used)
    return Packed(input_ids, position_ids, rows, offsets)


@torch.no_grad()
def packing_is_exact(model: Any) -> bool:
    """Whether `model`'s decoder gives packed sequences the hidden states it gives them one by one (eval mode).

    Scale-free, so that it holds in bf16 too: packed hidden states must be at least 20 times closer to the separate
    ones than those of the same tokens run as one sequence (what attending across samples gives).
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in (12, 7, 16)]
    device = model.get_input_embeddings().weight.device
    packed = pack_sequences(sequences, pad_id=0, max_tokens=64)
    ids = packed.input_ids.to(device)
    was_training = model.training
    model.eval()
    try:
        decoder = model.get_decoder()
        together = decoder(input_ids=ids, position_ids=packed.position_ids.to(device),
                           use_cache=False).last_hidden_state[0].float()
        crossed = decoder(input_ids=ids, use_cache=False).last_hidden_state[0].float()
        alone = torch.cat([decoder(input_ids=torch.tensor([s], device=device), use_cache=False)
                           .last_hidden_state[0].float() for s in sequences])
    finally:
        model.train(was_training)
    first = len(sequences[0])  # the first sequence is the same either way: compare the others
    error, crossing = ((x[first:] - alone[first:]).abs().max().item() for x in (together, crossed))
    return error <= crossing / 20
