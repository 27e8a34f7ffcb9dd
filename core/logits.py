"""How a causal LM turns its final hidden states into logits, read once from the model, so that scoring, training
and re-scoring compute the same logits without ever building the model's full (B, T, V) output.

transformers' causal LMs (5.x) apply, after the lm_head matmul, at most one of these (read from their forwards):

    bias                     lm_head = nn.Linear(..., bias=True)           (Phi, GPT-J, ...)
    logit_scale              logits * config.logit_scale                    (Cohere)
    logits_scaling           logits / config.logits_scaling                 (Granite)
    final_logit_softcapping  cap * tanh(logits / cap)                       (Gemma 2, Gemma 3, ...)

`LogitHead` carries all four, applied in that order. The config names do not say enough on their own (HyperCLOVA X
multiplies by `logits_scaling` where Granite divides), so `checked_logit_head` compares the head's logits with the
model's own forward on a few tokens and refuses a model whose logits it does not reproduce, as it refuses an output
embedding that is not a linear layer: such logits cannot be computed chunk by chunk from the lm_head weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .models import ModelError


class TopK(NamedTuple):
    """A model's next-token distributions at N positions reduced to their top K: what the CE pass captures
    (`core.scoring.token_scores`), what a top-K teacher cache keeps, and how the loss takes such a teacher
    (`train.losses.chunked_loss_sums(teacher_bins=...)`)."""

    ids: torch.Tensor  # (N, K) token ids, most probable first
    log_probs: torch.Tensor  # (N, K) their log-probabilities, fp32
    log_tail: torch.Tensor  # (N,) log of the probability of every other id, fp32

    def index_select(self, index: torch.Tensor) -> TopK:
        return TopK(*(t.index_select(0, index) for t in self))


@dataclass(frozen=True)
class LogitHead:
    """logits = softcap(scale * (hidden @ weight.T + bias)); softcap(x) = cap * tanh(x / cap), or x when None."""

    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None = None  # (V,)
    scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of (..., H) hidden states, as the model's own forward computes them."""
        logits = F.linear(hidden, self.weight, self.bias).float()
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logit_head(model: Any) -> LogitHead:
    """The `LogitHead` of a transformers causal LM (its current parameters: call inside a forward for DDP).

    Raises:
        ModelError: the output embedding is not a linear layer.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ModelError(
            f"{type(model).__name__}: its output embedding is a {type(head).__name__}, not a linear layer; Syllabus "
            "computes logits in chunks from the lm_head weight and supports linear heads only"
        )
    config = model.config
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        scale /= float(scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return LogitHead(head.weight, head.bias, scale, float(softcap) if softcap else None)


@torch.no_grad()
def checked_logit_head(model: Any, name: str) -> LogitHead:
    """`logit_head(model)`, after checking that it reproduces the model's own logits on a few tokens.

    Args:
        model: a transformers causal LM (its dropout is switched off for the check, then restored).
        name: the model's name, for messages.

    Raises:
        ModelError: the output embedding is not linear, or the model transforms its logits in a way `LogitHead` does
            not know.
    """
    head = logit_head(model)
    device = head.weight.device
    ids = torch.arange(1, 9, device=device)[None] % head.weight.shape[0]  # (1, 8)
    was_training = model.training
    model.eval()
    try:
        ours = head.logits(model.get_decoder()(input_ids=ids).last_hidden_state)
        theirs = model(input_ids=ids).logits.float()
    finally:
        model.train(was_training)
    if not torch.isfinite(theirs).all():  # NaN or inf weights: a damaged or diverged model, not its architecture
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        raise ModelError(
            f"{name} gives non-finite logits (NaN or inf)"
            + (f": {len(bad)} weight tensor(s) hold NaN or inf, first {bad[0]}" if bad else "")
            + ". The checkpoint is damaged or its training diverged; use an earlier checkpoint or download or save "
            "the model again"
        )
    error = (ours - theirs).abs().max().item()
    if not error <= 1e-2 * (1.0 + theirs.abs().max().item()):
        raise ModelError(
            f"{name} ({type(model).__name__}) computes its logits in a way Syllabus does not reproduce (lm_head, "
            f"bias, logit scale and soft-cap give logits off by up to {error:.3g}); token-level distillation would "
            "train on other logits than the model scores. Please report the architecture."
        )
    return head
