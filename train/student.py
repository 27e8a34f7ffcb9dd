"""The student wrapped with its loss: one `forward` from token ids to loss sums, so that DDP and FSDP see every use
of the student's parameters (lm_head included) inside the wrapped module's forward."""

from __future__ import annotations

from typing import Any

import torch

from .data import Batch
from .losses import LossSums, Objective, chunked_loss_sums


class DistillStudent(torch.nn.Module):
    """A causal LM whose forward returns the chunked KD loss sums of a batch (no (N, V) logits are ever built)."""

    def __init__(self, model: Any, chunk_tokens: int) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(self, batch: Batch, objective: Objective, teacher_hidden: torch.Tensor | None,
                teacher_head: torch.Tensor | None) -> LossSums:
        """Loss sums over the batch's response tokens.

        Args:
            batch: right-padded ids and the (rows, cols) of the scored positions.
            objective: the epoch's loss.
            teacher_hidden: (N, H') teacher final hidden states at the scored positions, or None when the objective
                does not use the teacher.
            teacher_head: (V', H') teacher lm_head weight, or None likewise.
        """
        hidden = self.model.get_decoder()(input_ids=batch.input_ids,
                                          attention_mask=batch.attention_mask).last_hidden_state  # (B, T, H)
        return chunked_loss_sums(
            hidden[batch.rows, batch.cols],
            self.model.get_output_embeddings().weight,
            batch.targets,
            objective=objective,
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            chunk_tokens=self.chunk_tokens,
        )
