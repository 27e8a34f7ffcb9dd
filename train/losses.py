"""Token-level distillation losses for training (docs/methods.md, "Losses"): the chunked loss with closed-form
gradients. `syllabus.train.losses_reference` holds the same losses written with plain autograd: the tests' oracle.

p = teacher, q = student, both softened by the same temperature tau; every KD term is multiplied by tau^2. Only
response tokens count: the caller passes a validity mask built from lengths (never by matching pad ids, which may
equal the EOS id whose target must be kept). The loss returns SUMS over valid tokens and the token count, so the
trainer can divide by the global count across gradient accumulation and ranks; `LossSums.mean` is the local mean.

Numerics. All divergence math is fp32 with autocast disabled; both models' logits are upcast before anything is
mixed (a bf16 teacher against an fp32 student made a peer's JSD negative). Mixtures are formed in log space,
log(a p + (1-a) q) = logaddexp(log a + log p, log(1-a) + log q), exact at a = 0 and a = 1, so nothing takes log 0.
These are true divergences (DistiLLM logs kld and skl as cross-entropies; `losses_reference.kd_divergence` gives
that form for comparison with their logs).

Memory. Full-vocabulary fp32 logits for teacher and student are the first OOM in every peer. `chunked_loss_sums`
takes final hidden states and the lm_head weights and computes logits one chunk of tokens at a time: the (N, V)
logits never exist. Each chunk's gradient with respect to its logits is computed in the forward, in closed form
(checked against autograd by the tests), and pushed through the lm_head at once, the fused-linear scheme of
Liger-Kernel: no (chunk, V) tensor outlives its chunk and, unlike activation checkpointing, nothing is recomputed
in backward. The price: the gradient is that of the one objective `(1 - kd_weight) * sft + kd_weight * kd`, so the
`Objective` is an argument and only `loss_sum` carries a gradient (`sft_sum` and `kd_sum` are detached, for logs).

Precision. The lm_head matmuls follow the ambient autocast (bf16 under `accelerator.autocast()`: about 9x faster on
this CPU than fp32); the softmax, the divergences and all accumulators are fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from syllabus.core.logits import TopK
from syllabus.core.loss_params import check_kd_weight, check_temperature, resolve_loss_params

# -inf logits (a masked vocabulary) make 0 * log 0 and log-space mixtures of two -inf produce NaN gradients. A finite
# floor gives the same probabilities (exp underflows to exactly 0) and finite gradients, even at temperature 0.01.
LOGIT_FLOOR = -1e30


class LossSums(NamedTuple):
    """Sums over valid tokens; divide by the global token count (across accumulation steps and ranks).

    loss_sum: (1 - kd_weight) * sft_sum + kd_weight * kd_sum (sft_sum alone for the loss "sft"), fp32 scalar; the
        only one that carries a gradient.
    sft_sum: summed cross-entropy of the targets under q at temperature 1 (detached).
    kd_sum: summed divergence times tau^2 (detached); 0 when kd_weight is 0 or the loss is "sft".
    num_tokens: number of valid tokens in this call.
    """

    loss_sum: torch.Tensor
    sft_sum: torch.Tensor
    kd_sum: torch.Tensor
    num_tokens: int

    def mean(self) -> torch.Tensor:
        """loss_sum over this call's tokens (0 when there are none); use a global count for accumulation or DDP."""
        return self.loss_sum / max(1, self.num_tokens)


@dataclass(frozen=True)
class Objective:
    """One epoch's loss, checked once when built: `(1 - kd_weight) * sft + kd_weight * tau^2 * D(p, q)`.

    Attributes:
        loss: one of `syllabus.core.loss_params.LOSSES`; "sft" trains on the cross-entropy alone, whatever
            kd_weight says, and never runs the teacher.
        temperature: tau > 0 of the KD term (the SFT term is at temperature 1).
        kd_weight: w in [0, 1], as the schedule (or a --kd-weight override) gives it.
        params: the loss's parameters (skew, beta, lambda); missing ones take their defaults.

    Raises:
        ValueError: an unknown loss, a parameter it does not take or out of range, a bad temperature or kd_weight.
    """

    loss: str
    temperature: float
    kd_weight: float
    params: dict[str, float] = field(default_factory=dict)
    sft_scale: float = field(init=False)  # the weights the gradient uses (1 and 0 for the loss "sft")
    kd_scale: float = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: fill the derived fields once
        set_(self, "params", resolve_loss_params(self.loss, self.params))
        set_(self, "temperature", check_temperature(self.temperature))
        set_(self, "kd_weight", check_kd_weight(self.kd_weight))
        plain_sft = self.loss == "sft"  # a kd_weight left at 1 must not silence the loss
        set_(self, "sft_scale", 1.0 if plain_sft else 1.0 - self.kd_weight)
        set_(self, "kd_scale", 0.0 if plain_sft else self.kd_weight)

    @property
    def uses_teacher(self) -> bool:
        return self.kd_scale > 0

    def divergence_only(self) -> Objective:
        """This loss at kd_weight 1: the divergence without the SFT term (a response the student generated)."""
        return self if self.kd_weight == 1.0 else Objective(self.loss, self.temperature, 1.0, self.params)

    def divergence_grad(self, log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This loss's per-token divergence (N,) and q * dD/dq (N, V), with its parameters by keyword."""
        kwargs = {_KWARGS.get(k, k): v for k, v in self.params.items()}
        return _DIVERGENCE_GRADS[self.loss](log_p, log_q, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Closed-form divergences and gradients. Each returns the per-token divergence (N,) and q * dD/dq (N, V), from
# which the gradient with respect to the student's logits s (q = softmax(s / tau)) is, for the tau^2-scaled term,
#     d(tau^2 D)/ds = tau * (q dD/dq - q * sum_v q dD/dq).
# Products such as q p / m are formed in log space; every one is bounded by a probability, so nothing overflows. Tests
# check these against autograd through `losses_reference`, for every loss and the edge parameters.


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w p + (1 - w) q) computed in log space; returns log_q at w = 0 and log_p at w = 1 exactly."""
    if weight_p == 0.0:
        return log_q
    if weight_p == 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))



def _kl_(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """kl_divergence with in-place temporaries: for the chunked path, where nothing is recorded by autograd."""
    return (log_a - log_b).mul_(log_a.exp()).sum(-1)


def _forward_kl_grad(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = log_p.exp()
    return (log_p - log_q).mul_(p).sum(-1), p.neg_()  # dD/dq = -p / q


def _reverse_kl_grad(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = log_q.exp()
    q_grad = (log_q - log_p).mul_(q)
    return q_grad.sum(-1), q_grad.add_(q)  # dD/dq = log q - log p + 1


def _jsd_grad(log_p: torch.Tensor, log_q: torch.Tensor, *, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_m = log_mixture(log_p, log_q, beta)
    q_term = (log_q - log_m).mul_(log_q.exp())
    value = beta * _kl_(log_p, log_m) + (1 - beta) * q_term.sum(-1)
    return value, q_term.mul_(1 - beta)  # dD/dq = (1 - beta)(log q - log m): the p/m and q/m terms cancel


def _tvd_grad(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = log_q.exp()
    diff = log_p.exp().sub_(q)
    return 0.5 * diff.abs().sum(-1), diff.sign_().mul_(q).mul_(-0.5)  # dD/dq = -sign(p - q) / 2


def _skew_forward_kl_grad(log_p: torch.Tensor, log_q: torch.Tensor, *, skew: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_m = log_mixture(log_p, log_q, skew)
    # dD/dq = -(1 - a) p / m, and q p / m <= p / (1 - a)
    return _kl_(log_p, log_m), (log_p + log_q).sub_(log_m).exp_().mul_(-(1 - skew))


def _skew_reverse_kl_grad(log_p: torch.Tensor, log_q: torch.Tensor, *, skew: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_m = log_mixture(log_p, log_q, 1 - skew)
    log_ratio = log_q - log_m
    q = log_q.exp()
    value = (log_ratio * q).sum(-1)
    # dD/dq = log q - log m + 1 - a q / m, and a q^2 / m <= q
    q_grad = (log_ratio + 1).mul_(q)
    if skew > 0:
        q_grad -= log_ratio.add_(log_q).exp_().mul_(skew)
    return value, q_grad


def _bdl_grad(log_p: torch.Tensor, log_q: torch.Tensor, *, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_a = log_mixture(log_p, log_q, 1 - lam)  # A = (1 - l) p + l q
    log_ratio = log_a - log_mixture(log_p, log_q, lam)  # log A/B, B = l p + (1 - l) q
    value = (log_a.exp() * log_ratio).sum(-1)  # not exp_: at l = 0 or 1, log_a is log_p or log_q itself
    # dD/dq = l (log A/B + 1) - (1 - l) A/B: DA-KD's C(x). (1 - l) q A/B <= A
    q_grad = (log_ratio + 1).mul_(log_q.exp()).mul_(lam)
    if lam < 1:
        q_grad -= log_ratio.add_(log_q).exp_().mul_(1 - lam)
    return value, q_grad


_DIVERGENCE_GRADS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "kld": _forward_kl_grad, "rkl": _reverse_kl_grad, "jsd": _jsd_grad, "tvd": _tvd_grad,
    "skl": _skew_forward_kl_grad, "srkl": _skew_reverse_kl_grad, "bdl": _bdl_grad,
}
_KWARGS = {"lambda": "lam"}  # `lambda` (DA-KD's symbol, the manifest's key) is a Python keyword


# ---------------------------------------------------------------------------------------------------------------
# K+1 bins: a teacher known only by its top-K ids and log-probs and the mass outside them (a top-K cache). The
# divergence is taken between the two distributions coarsened to those bins: the teacher's K ids, then one tail bin
# for every other id. Exact for that coarsened pair; how close it comes to the full-vocabulary divergence, and how
# the teacher's bins are softened at a temperature other than the cache's, are the cache's to measure.


def student_bins(log_q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log q over the K+1 bins: (c, V) log-probs and the teacher's (c, K) top ids -> (c, K+1), the tail last.

    The tail is a log-sum-exp over the other ids (not log(1 - sum q_k), which loses every digit when the top K hold
    nearly all the mass).
    """
    tail = log_q.scatter(1, ids, LOGIT_FLOOR).logsumexp(-1, keepdim=True)
    return torch.cat([log_q.gather(1, ids), tail], dim=1)


def vocab_grad(bin_grad: torch.Tensor, log_q: torch.Tensor, log_q_bins: torch.Tensor,
               ids: torch.Tensor) -> torch.Tensor:
    """q * dD/dq over the vocabulary (c, V) from q * dD/dq over the bins (c, K+1), what `divergence_grad` returns.

    log q_T = log sum_{j in tail} q_j, so an id of the tail gets the tail bin's gradient in proportion to its share
    of the tail (q_j / q_T) and an id of the top K gets its own bin's; the softmax step of the full-vocabulary path
    then applies unchanged (their sum over the vocabulary equals the sum over the bins).
    """
    grad = (log_q - log_q_bins[:, -1:]).exp_().mul_(bin_grad[:, -1:])
    return grad.scatter_(1, ids, bin_grad[:, :-1])


def soften_bins(log_probs: torch.Tensor, log_tail: torch.Tensor, tau: float, vocab: int) -> torch.Tensor:
    """The teacher's K+1 bins at temperature tau, as fp32 log-probs (c, K+1), the tail last.

    The top K soften exactly (p_k^(1/tau)); the tail's softened mass is taken as if its probability were spread
    evenly over its vocab - K ids, (vocab - K)^(1 - 1/tau) p_T^(1/tau): the closer of the two closed forms measured
    (docs/methods.md, "K+1 bins"), exact at tau = 1.
    """
    alpha = 1.0 / tau
    log_tail = log_tail.float().clamp_min(LOGIT_FLOOR)  # an empty tail (K = V) is -inf: 0 log 0 would be NaN
    tail = log_tail * alpha + (1.0 - alpha) * math.log(max(vocab - log_probs.shape[-1], 1))
    return torch.log_softmax(torch.cat([log_probs.float() * alpha, tail[:, None]], dim=1), dim=-1)


def _capped_logits(hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None,
                   softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 logits softcap(hidden @ head.T + bias) and, with a soft-cap, its derivative 1 - tanh^2 (c, V)."""
    logits = F.linear(hidden, head, bias).float()
    if not softcap:
        return logits.clamp_min_(LOGIT_FLOOR), None
    tanh = logits.div_(softcap).tanh_()
    return tanh * softcap, tanh.square_().neg_().add_(1.0)


def _chunk_sums_and_grad(
    hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None, softcap: float | None,
    teacher_hidden: torch.Tensor | None, teacher_head: torch.Tensor | None, teacher_bias: torch.Tensor | None,
    teacher_softcap: float | None, targets: torch.Tensor, objective: Objective, needs_grad: bool,
    teacher_bins: TopK | None = None, teacher_vocab: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: its sums (loss, sft, kd) and the gradient of its loss sum for the student's pre-cap logits.

    Args:
        hidden, teacher_hidden: (c, H) and (c, H') in the dtype of their head (teacher_hidden None when the
            objective does not use the teacher).
        head, bias, teacher_head, teacher_bias: (V, H), (V,), (V', H'), (V',); biases may be None.
        softcap, teacher_softcap: final-logit soft-caps (logits = cap * tanh(z / cap)), or None.
        targets: (c,) next-token ids.
        teacher_bins: the teacher as its top K (a cache) in place of teacher_hidden and teacher_head: the divergence
            is then taken over K+1 bins (`student_bins`, `soften_bins`, `vocab_grad`).
        teacher_vocab: with teacher_bins, the teacher's vocabulary size: the bins cover the student's first
            min(V, teacher_vocab) ids, as the live path takes min(V, V') (None: all V).

    Returns:
        (3,) fp32 sums and the (c, V) fp32 gradient with respect to `hidden @ head.T + bias` (None unless
        needs_grad). The logits live only in here, and in-place updates keep few (c, V) tensors alive at once: on
        CPU, fresh pages cost more than the arithmetic.
    """
    tau, sft_weight, kd_weight = objective.temperature, objective.sft_scale, objective.kd_scale
    logits, cap_grad = _capped_logits(hidden, head, bias, softcap)  # (c, V)
    log_q1 = torch.log_softmax(logits, dim=-1)  # temperature 1 for the SFT term
    sft = -log_q1.gather(1, targets[:, None]).sum()
    grad = None
    if needs_grad:  # d sft / ds = softmax(s) - onehot(target)
        grad = log_q1.exp_().mul_(sft_weight)
        grad[torch.arange(targets.numel(), device=targets.device), targets] -= sft_weight
    del log_q1
    kd = sft.new_zeros(())
    if objective.uses_teacher:
        if teacher_bins is not None:  # the teacher as its top K: the divergence over K+1 bins
            # a student's padded rows (more embedding rows than the teacher's, the Qwen2.5 case) are no bin of the
            # teacher's: left out of the tail, as the live path leaves them out of its softmax
            vocab = min(logits.shape[-1], teacher_vocab or logits.shape[-1])
            log_q = torch.log_softmax(logits[:, :vocab].div_(tau), dim=-1)
            del logits
            log_q_bins = student_bins(log_q, teacher_bins.ids)
            log_p = soften_bins(teacher_bins.log_probs, teacher_bins.log_tail, tau, vocab)
            kd_tokens, bin_grad = objective.divergence_grad(log_p, log_q_bins)
            q_grad = vocab_grad(bin_grad, log_q, log_q_bins, teacher_bins.ids) if needs_grad else None
        else:
            teacher_logits, _ = _capped_logits(teacher_hidden, teacher_head, teacher_bias, teacher_softcap)  # (c, V')
            vocab = min(logits.shape[-1], teacher_logits.shape[-1])
            log_q = torch.log_softmax(logits[:, :vocab].div_(tau), dim=-1)
            del logits
            log_p = torch.log_softmax(teacher_logits[:, :vocab].div_(tau), dim=-1)
            del teacher_logits
            kd_tokens, q_grad = objective.divergence_grad(log_p, log_q)
        kd = kd_tokens.sum() * tau**2
        del log_p
        if needs_grad:
            q = log_q.exp_()
            q_grad.addcmul_(q, q_grad.sum(-1, keepdim=True), value=-1.0)
            grad[:, :vocab].add_(q_grad, alpha=kd_weight * tau)
    if grad is not None and cap_grad is not None:
        grad.mul_(cap_grad)  # chain rule through the soft-cap
    loss = sft_weight * sft + kd_weight * kd
    return torch.stack([loss, sft, kd]), grad


# ---------------------------------------------------------------------------------------------------------------
# Chunked loss from hidden states


def _matmul_dtype(tensor: torch.Tensor) -> torch.dtype:
    """bf16 (or whatever the ambient autocast says) for the lm_head matmuls under autocast, else the weight's."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


class _ChunkedLoss(torch.autograd.Function):
    """Forward: loss sums chunk by chunk, and the gradient of the loss sum for the student's inputs.

    Backward only scales the stored gradients: no logits are recomputed and no (chunk, V) tensor outlives its
    chunk. Non-tensor settings travel in `objective`, `chunk_tokens` and `grad_enabled`.
    """

    @staticmethod
    def forward(ctx, student_hidden, student_head, student_bias, teacher_hidden, teacher_head, teacher_bias,
                targets, rows, objective, softcaps, chunk_tokens, grad_enabled, teacher_bins, teacher_vocab):
        # needs_input_grad ignores torch.no_grad(), under which forward always runs: hence grad_enabled.
        needs_hidden, needs_head, needs_bias = (grad_enabled and needs for needs in ctx.needs_input_grad[:3])
        needs_grad = needs_hidden or needs_head or needs_bias
        ctx.input_dtypes = (student_hidden.dtype, student_head.dtype,
                            None if student_bias is None else student_bias.dtype)
        # Cast the weights once for the matmuls (bf16 under autocast); all the rest is fp32, autocast or not.
        dtype = _matmul_dtype(student_head)
        head, bias = student_head.to(dtype), None if student_bias is None else student_bias.to(dtype)
        live_teacher = objective.uses_teacher and teacher_bins is None
        if live_teacher:
            teacher_dtype = _matmul_dtype(teacher_head)
            teacher_head = teacher_head.to(teacher_dtype)
            teacher_bias = None if teacher_bias is None else teacher_bias.to(teacher_dtype)
        # Gradients of the valid rows, in order; scattered into (N, H) once at the end (index_add_ is slow on CPU).
        grad_rows = student_hidden.new_empty((rows.numel(), student_hidden.shape[-1]), dtype=torch.float32) \
            if needs_hidden else None  # (n, H)
        grad_head = torch.zeros_like(student_head, dtype=torch.float32) if needs_head else None  # (V, H)
        grad_bias = torch.zeros_like(student_bias, dtype=torch.float32) if needs_bias else None  # (V,)
        totals = torch.zeros(3, dtype=torch.float32, device=student_hidden.device)  # loss, sft, kd
        with torch.autocast(student_hidden.device.type, enabled=False):
            for start in range(0, rows.numel(), chunk_tokens):
                index = rows[start:start + chunk_tokens]
                hidden = student_hidden.index_select(0, index).to(dtype)  # (c, H)
                teacher_chunk = bins_chunk = None
                if live_teacher:
                    teacher_chunk = teacher_hidden.index_select(0, index).to(teacher_head.dtype)  # (c, H')
                elif objective.uses_teacher:
                    bins_chunk = teacher_bins.index_select(index)
                sums, grad_logits = _chunk_sums_and_grad(hidden, head, bias, softcaps[0], teacher_chunk, teacher_head,
                                                         teacher_bias, softcaps[1], targets.index_select(0, index),
                                                         objective, needs_grad, bins_chunk, teacher_vocab)
                totals += sums
                if not needs_grad:
                    continue
                grad_logits = grad_logits.to(dtype)  # what autograd through a bf16 matmul would see
                if needs_hidden:
                    grad_rows[start:start + chunk_tokens] = grad_logits @ head
                if needs_head:
                    grad_head += (grad_logits.T @ hidden).float()
                if needs_bias:
                    grad_bias += grad_logits.float().sum(0)
                del grad_logits
        grad_hidden = None
        if needs_hidden:
            grad_hidden = torch.zeros_like(student_hidden, dtype=torch.float32).index_copy_(0, rows, grad_rows)
        ctx.save_for_backward(grad_hidden, grad_head, grad_bias)
        loss_sum, sft_sum, kd_sum = (total.clone() for total in totals.unbind())
        ctx.mark_non_differentiable(sft_sum, kd_sum)
        return loss_sum, sft_sum, kd_sum

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        grads = tuple(None if g is None else (g * grad_loss).to(dtype)
                      for g, dtype in zip(ctx.saved_tensors, ctx.input_dtypes))
        return (*grads, None, None, None, None, None, None, None, None, None, None, None)


def _valid_rows(valid_mask: torch.Tensor | None, num_rows: int, device: torch.device) -> torch.Tensor:
    """(n,) indices of the valid rows of a flattened (N,) mask; all rows without a mask."""
    if valid_mask is None:
        return torch.arange(num_rows, device=device)
    if valid_mask.dtype != torch.bool or valid_mask.numel() != num_rows:
        raise ValueError(f"valid_mask must be a bool tensor with one entry per token ({num_rows}), "
                         f"got {valid_mask.dtype} with {valid_mask.numel()} entries")
    return valid_mask.reshape(-1).nonzero().squeeze(1)


def chunked_loss_sums(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    targets: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    *,
    objective: Objective,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    chunk_tokens: int = 1024,
    teacher_bins: TopK | None = None,
    teacher_vocab: int | None = None,
) -> LossSums:
    """SFT + KD loss sums from final hidden states, computing logits `chunk_tokens` tokens at a time.

    Equal in value and gradient to `losses_reference.loss_sums` on the full logits `hidden @ head.T + bias` (up to
    fp32 summation order), with memory O(chunk_tokens * V) instead of O(N * V). With a soft-cap (Gemma 2), the
    logits are `cap * tanh((hidden @ head.T + bias) / cap)`; a logit scale (Cohere, Granite) is the caller's to fold
    into the hidden states and bias (`core.logits.LogitHead`), where autograd carries it.

    Args:
        student_hidden: (N, H) or (B, T, H) student final hidden states (after the final norm).
        student_head: (V, H) student lm_head (output embedding) weight; tied embeddings are fine.
        targets: (N,) or (B, T) next-token ids; values at invalid positions are never read.
        valid_mask: bool, shaped like targets: True at response tokens (EOS target included). None: all valid.
        objective: the loss, its parameters, temperature and kd_weight (built once per epoch).
        teacher_hidden: (N, H') or (B, T, H') teacher hidden states at the same positions; a constant (no grad).
        teacher_head: (V', H') teacher lm_head; V' may differ from V by padding: KD uses the first min(V, V') ids.
        student_bias, teacher_bias: optional (V,) and (V',) lm_head biases.
        student_softcap, teacher_softcap: final-logit soft-caps, or None.
        chunk_tokens: tokens per chunk (>= 1); peak memory grows linearly with it.
        teacher_bins: the teacher as its top K at the N positions, at temperature 1 (`core.logits.TopK`, what the CE
            pass captures), in place of teacher_hidden and teacher_head: each divergence is then taken over K+1 bins
            (docs/methods.md, "K+1 bins").
        teacher_vocab: the cached teacher's vocabulary size (its lm_head rows): the bins then cover the student's
            first min(V, teacher_vocab) ids, as a live teacher's KD takes min(V, V'); None: all V.

    Returns:
        LossSums; only loss_sum has a gradient. Zero valid tokens give zeros (and zero gradients), never NaN.

    Raises:
        ValueError: a bad chunk size, shapes that do not match, or a teacher missing where the objective needs one.
    """
    if objective.uses_teacher and teacher_bins is None and (teacher_hidden is None or teacher_head is None):
        raise ValueError(f"loss {objective.loss!r} with kd_weight {objective.kd_weight} needs teacher_hidden and "
                         "teacher_head (or teacher_bins); pass them, or use kd_weight 0 / loss 'sft' to train "
                         "without a teacher")
    if not (isinstance(chunk_tokens, int) and chunk_tokens >= 1):
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    if hidden.shape[0] != flat_targets.shape[0] or student_head.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"shapes do not match: student_hidden {tuple(student_hidden.shape)}, targets "
                         f"{tuple(targets.shape)}, student_head {tuple(student_head.shape)}")
    teacher = None
    if objective.uses_teacher and teacher_bins is not None:
        if teacher_bins.ids.shape[0] != hidden.shape[0]:
            raise ValueError(f"teacher_bins hold {teacher_bins.ids.shape[0]} positions, student_hidden "
                             f"{hidden.shape[0]}")
        shared = min(student_head.shape[0], teacher_vocab or student_head.shape[0])
        if teacher_bins.ids.numel() and int(teacher_bins.ids.max()) >= shared:
            raise ValueError(f"teacher_bins name token id {int(teacher_bins.ids.max())}, past the vocabulary of "
                             f"{shared} the student and the teacher share")
    elif objective.uses_teacher:
        teacher = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
        if teacher.shape[0] != hidden.shape[0]:
            raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} does not match student_hidden "
                             f"{tuple(student_hidden.shape)}")
    rows = _valid_rows(valid_mask, hidden.shape[0], hidden.device)
    teacher_head = None if teacher is None else teacher_head.detach()
    teacher_bias = None if teacher is None or teacher_bias is None else teacher_bias.detach()
    loss_sum, sft_sum, kd_sum = _ChunkedLoss.apply(
        hidden, student_head, student_bias, teacher, teacher_head, teacher_bias, flat_targets, rows, objective,
        (student_softcap, teacher_softcap), chunk_tokens, torch.is_grad_enabled(),
        None if teacher_bins is None else TopK(teacher_bins.ids.long(), *(t.detach() for t in teacher_bins[1:])),
        teacher_vocab)
    return LossSums(loss_sum, sft_sum, kd_sum, int(rows.numel()))
