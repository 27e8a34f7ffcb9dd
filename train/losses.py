"""Token-level distillation losses (design.md, "Losses"), as small pure functions.

p = teacher, q = student, both softened by the same temperature tau; every KD term is multiplied by tau^2.
All math is fp32 (inputs are upcast before anything is mixed: a bf16 teacher against an fp32 student made a
peer's JSD negative). Mixtures are formed in log space, log(a p + (1-a) q) = logaddexp(log a + log p,
log(1-a) + log q), so nothing takes log 0. These are true divergences (KL, not DistiLLM's cross-entropy form);
`distillm_form` gives the cross-entropy variant for comparison with their logs.

`chunked_distill_loss` is what the trainer calls: it computes logits from final hidden states chunk by chunk, under
activation checkpointing, so no more than one (chunk, V) fp32 tensor per model is alive, forward or backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

LOSSES = ("sft", "kld", "rkl", "jsd", "tvd", "skl", "srkl", "bdl")
DEFAULT_PARAMS = {"skew": 0.1, "beta": 0.5, "lambda": 0.9}


def mix_logprobs(log_p: torch.Tensor, log_q: torch.Tensor, a: float) -> torch.Tensor:
    """log(a p + (1 - a) q), exact at a = 0 and a = 1."""
    if a <= 0.0:
        return log_q
    if a >= 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(a), log_q + math.log1p(-a))


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(A || B) per row over the last dim, from log-probabilities; 0 log 0 = 0.

    Args:
        log_a, log_b: (N, V) log-probabilities.

    Returns:
        (N,) divergences.
    """
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def _kld(lp, lq, **_):
    return kl(lp, lq)


def _rkl(lp, lq, **_):
    return kl(lq, lp)


def _jsd(lp, lq, beta=0.5, **_):
    # Generalised JSD as in GKD/TRL: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.
    lm = mix_logprobs(lp, lq, beta)
    return beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)


def _tvd(lp, lq, **_):
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


def _skl(lp, lq, skew=0.1, **_):
    # DistiLLM skew KL: KL(p || a p + (1 - a) q)
    return kl(lp, mix_logprobs(lp, lq, skew))


def _srkl(lp, lq, skew=0.1, **_):
    # DistiLLM skew reverse KL: KL(q || (1 - a) p + a q)
    return kl(lq, mix_logprobs(lp, lq, 1 - skew))


def _bdl(lp, lq, **params):
    # DA-KD Eq. 4: KL((1 - l) p + l q || l p + (1 - l) q). At l = 0.5 both sides are equal: zero loss.
    lam = params.get("lambda", 0.9)
    return kl(mix_logprobs(lp, lq, 1 - lam), mix_logprobs(lp, lq, lam))


_DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "kld": _kld, "rkl": _rkl, "jsd": _jsd, "tvd": _tvd, "skl": _skl, "srkl": _srkl, "bdl": _bdl,
}


def validate(name: str, params: dict[str, float]) -> dict[str, float]:
    """Check a loss name and its parameters; return the parameters with defaults filled in.

    Raises:
        ValueError: unknown loss or parameter, or a parameter outside [0, 1].
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown loss parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_PARAMS)}")
    for key, value in params.items():
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"loss parameter {key} must be in [0, 1], got {value}")
    return {**DEFAULT_PARAMS, **{k: float(v) for k, v in params.items()}}


def kd_divergence(
    name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, **params: float
) -> torch.Tensor:
    """Per-token KD divergence, times tau^2.

    Args:
        name: one of `LOSSES` except "sft".
        student_logits: (N, V) any float dtype.
        teacher_logits: (N, V'); a larger padded teacher vocabulary is truncated to the student's V.
        temperature: tau > 0, applied to both.
        params: skew (skl, srkl), beta (jsd), lambda (bdl).

    Returns:
        (N,) fp32.
    """
    params = validate(name, params)
    if name == "sft":
        raise ValueError("sft is not a divergence; it is the cross-entropy part of the total loss")
    vocab = student_logits.shape[-1]
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits[..., :vocab].float() / temperature, dim=-1)
    return _DIVERGENCES[name](log_p, log_q, **params) * temperature**2


def distillm_form(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """DistiLLM's logged forward-KL form: the cross-entropy -sum p log q (KL plus the teacher's entropy), times tau^2."""
    vocab = student_logits.shape[-1]
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    p = torch.softmax(teacher_logits[..., :vocab].float() / temperature, dim=-1)
    return -(p * log_q).sum(-1) * temperature**2


def _chunk_losses(
    student_hidden: torch.Tensor, student_head: torch.Tensor, teacher_hidden: torch.Tensor | None,
    teacher_head: torch.Tensor | None, targets: torch.Tensor, loss: str, temperature: float, params: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sft_sum, kd_sum) of one chunk; its (chunk, V) logits die with the call."""
    student_logits = (student_hidden @ student_head.T).float()  # (chunk, V)
    sft = torch.nn.functional.cross_entropy(student_logits, targets, reduction="sum")
    if teacher_hidden is None or loss == "sft":
        return sft, student_logits.new_zeros(())
    with torch.no_grad():
        teacher_logits = (teacher_hidden @ teacher_head.T).float()  # (chunk, V')
    kd = kd_divergence(loss, student_logits, teacher_logits, temperature, **params).sum()
    return sft, kd


def chunked_distill_loss(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    targets: torch.Tensor,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.Tensor | None = None,
    loss: str = "kld",
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    **params: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed SFT cross-entropy and summed KD divergence over scored tokens, computed in token chunks.

    Only response positions are passed in (the caller gathers them), so there is no mask here: prompt and padding
    never reach the loss. The caller divides by the global token count (across accumulation and ranks).

    Args:
        student_hidden: (N, H) final hidden states at the scored positions (requires grad).
        student_head: (V, H) student output embedding.
        targets: (N,) next-token ids (the EOS target included).
        teacher_hidden: (N, H') teacher hidden states at the same positions, or None (SFT only).
        teacher_head: (V', H') teacher output embedding (V' >= V; extra padded rows are ignored).
        loss: one of `LOSSES`; "sft" skips the teacher.
        temperature: tau for the KD term.
        chunk_tokens: tokens per chunk; each chunk holds one (chunk, V) fp32 tensor per model.
        params: skew / beta / lambda.

    Returns:
        (sft_sum, kd_sum): fp32 scalars; kd_sum is 0 without a teacher. Zero scored tokens give zeros.
    """
    params = validate(loss, params)
    zero = student_hidden.new_zeros((), dtype=torch.float32)
    if targets.numel() == 0:
        return zero + 0.0 * student_hidden.sum(), zero  # keeps the graph connected for DDP
    sft_total, kd_total = zero, zero
    for start in range(0, targets.shape[0], chunk_tokens):
        end = start + chunk_tokens
        args = (student_hidden[start:end], student_head,
                None if teacher_hidden is None else teacher_hidden[start:end], teacher_head,
                targets[start:end], loss, temperature, params)
        if torch.is_grad_enabled() and student_hidden.requires_grad:
            # Recompute the chunk's logits in backward instead of keeping every chunk's (chunk, V) alive.
            sft, kd = checkpoint(_chunk_losses, *args, use_reentrant=False)
        else:
            sft, kd = _chunk_losses(*args)
        sft_total = sft_total + sft
        kd_total = kd_total + kd
    return sft_total, kd_total
