"""The student wrapped with its loss: one `forward` from token ids to loss sums, so that DDP and FSDP see every use
of the student's parameters (lm_head included) inside the wrapped module's forward."""

from __future__ import annotations

from typing import Any

import torch

from syllabus.core.logits import LogitHead, logit_head

from .data import Batch
from .losses import LossSums, Objective, chunked_loss_sums


class DistillStudent(torch.nn.Module):
    """A causal LM whose forward returns the chunked KD loss sums of a batch (no (N, V) logits are ever built)."""

    def __init__(self, model: Any, chunk_tokens: int, cached_teacher_vocab: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.cached_teacher_vocab = cached_teacher_vocab  # a top-K cache's teacher vocabulary (None: unknown)

    def forward(self, batch: Batch, objective: Objective, teacher_hidden: torch.Tensor | None,
                teacher_head: LogitHead | None) -> LossSums:
        """Loss sums over the batch's response tokens.

        Args:
            batch: padded or packed ids and the (rows, cols) of the scored positions.
            objective: the epoch's loss.
            teacher_hidden: (N, H') teacher final hidden states at the scored positions, or None when the objective
                does not use the teacher.
            teacher_head: the teacher's `LogitHead`, or None likewise; without one, a teacher the objective uses
                comes from the batch's cached top K (`batch.teacher_bins`).
        """
        hidden = self.model.get_decoder()(**batch.model_inputs()).last_hidden_state  # (R, T, H)
        head = logit_head(self.model)  # read here, inside forward, so that DDP and FSDP see the lm_head used
        teacher_kwargs = {}
        if teacher_head is None and objective.uses_teacher:
            teacher_kwargs = {"teacher_bins": batch.teacher_bins, "teacher_vocab": self.cached_teacher_vocab}
        elif teacher_head is not None:
            teacher_kwargs = {"teacher_hidden": scaled(teacher_hidden, teacher_head.scale),
                              "teacher_head": teacher_head.weight, "teacher_softcap": teacher_head.softcap,
                              "teacher_bias": scaled(teacher_head.bias, teacher_head.scale)}
        states, bias = scaled(hidden[batch.rows, batch.cols], head.scale), scaled(head.bias, head.scale)

        def sums(objective: Objective, valid: torch.Tensor | None) -> LossSums:
            return chunked_loss_sums(
                states,
                head.weight,
                batch.targets,
                valid,
                objective=objective,
                student_bias=bias,
                student_softcap=head.softcap,
                chunk_tokens=self.chunk_tokens,
                **teacher_kwargs,
            )

        if batch.generated is None:
            return sums(objective, None)
        # On-policy: a generated response is trained on the divergence alone (no SFT term: `train.on_policy`); the
        # SFT sum reported is the ground truth's
        truth, own = sums(objective, ~batch.generated), sums(objective.divergence_only(), batch.generated)
        return LossSums(truth.loss_sum + own.loss_sum, truth.sft_sum, truth.kd_sum + own.kd_sum,
                        truth.num_tokens + own.num_tokens)


def scaled(tensor: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    """A logit scale folded into what the lm_head multiplies: scale * (h W^T + b) = (scale h) W^T + scale b."""
    return tensor if tensor is None or scale == 1.0 else tensor * scale
