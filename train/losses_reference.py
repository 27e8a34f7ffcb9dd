"""The KD losses written the plain way, with autograd on full (N, V) logits: the oracle of the tests.

`syllabus.train.losses` computes the same objective chunk by chunk with closed-form gradients; the tests check it
against `loss_sums` here (value and gradient), and these divergences against float64 textbook formulas. The
benchmarks use them as the naive baseline. Each divergence is written once here (autograd) and once in
`losses.py` (closed-form gradient): the two roles, nothing more.

`kd_divergence(..., distillm_form=True)` gives DistiLLM's logged form (for kld and skl the cross-entropy
-sum p log(.), i.e. the KL plus the teacher's entropy; their other losses are already true divergences), to compare
numbers with their logs. Gradients of the two forms are identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from syllabus.core.loss_params import check_temperature, resolve_loss_params

from .losses import LOGIT_FLOOR, LossSums, Objective, _valid_rows, log_mixture

# ---------------------------------------------------------------------------------------------------------------
# Divergences of log-probabilities. log_p: teacher, log_q: student, both (N, V) fp32; each returns (N,).


def kl_divergence(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(A || B) = sum_v A (log A - log B) per row; entries with A = 0 contribute 0 (log-probs are finite here)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def forward_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """kld: KL(p || q)."""
    return kl_divergence(log_p, log_q)


def reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """rkl: KL(q || p)."""
    return kl_divergence(log_q, log_p)


def generalized_jsd(log_p: torch.Tensor, log_q: torch.Tensor, *, beta: float) -> torch.Tensor:
    """jsd: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q (GKD, TRL's generalized_jsd_loss).

    DistiLLM's `js_distance(lam)` is this with beta = 1 - lam (its default lam = 0.9 is beta = 0.1).
    """
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl_divergence(log_p, log_m) + (1 - beta) * kl_divergence(log_q, log_m)


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """tvd: 0.5 sum_v |p - q|, in [0, 1]."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def skew_forward_kl(log_p: torch.Tensor, log_q: torch.Tensor, *, skew: float) -> torch.Tensor:
    """skl: KL(p || a p + (1 - a) q), a = skew (DistiLLM; L2M-KD Eq. 5-6). skew 0 is kld."""
    return kl_divergence(log_p, log_mixture(log_p, log_q, skew))


def skew_reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor, *, skew: float) -> torch.Tensor:
    """srkl: KL(q || (1 - a) p + a q), a = skew (DistiLLM). skew 0 is rkl."""
    return kl_divergence(log_q, log_mixture(log_p, log_q, 1.0 - skew))


def bidirectional_discrepancy(log_p: torch.Tensor, log_q: torch.Tensor, *, lam: float) -> torch.Tensor:
    """bdl: KL((1 - l) p + l q || l p + (1 - l) q), DA-KD Eq. 4, l = lambda.

    Read as printed in Eq. 4 (teacher-weighted 1 - l in the first argument) and consistent with Algorithm 1,
    `D_BDL(y_T, y_S)`. l = 0.5 makes the two arguments equal: the loss is identically 0 (the paper's "gradient
    vanishing" at 0.5). l = 0 is kld and l = 1 is rkl. The paper's `tau = 0.1` is the data-mixing ratio of its
    stratified sampling, not a temperature; the temperature comes from the schedule as for every loss. Appendix A.1
    states the limits of P_m / Q_m for x = q/p -> 0 and -> inf the other way round from Sec. 3.3; the loss itself
    is unambiguous.
    """
    return kl_divergence(log_mixture(log_p, log_q, 1.0 - lam), log_mixture(log_p, log_q, lam))


_DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "kld": forward_kl, "rkl": reverse_kl, "jsd": generalized_jsd, "tvd": total_variation,
    "skl": skew_forward_kl, "srkl": skew_reverse_kl, "bdl": bidirectional_discrepancy,
}
# DistiLLM logs forward_kl and skewed_forward_kl as cross-entropies (-sum p log q): our value plus H(p).
_DISTILLM_ADDS_TEACHER_ENTROPY = ("kld", "skl")
_KWARGS = {"lambda": "lam"}  # `lambda` is a Python keyword


def _log_probs(logits: torch.Tensor, temperature: float, vocab_size: int) -> torch.Tensor:
    """(N, V') logits of any float dtype -> (N, vocab_size) fp32 log-probabilities at the temperature."""
    logits = logits[..., :vocab_size].float().clamp_min(LOGIT_FLOOR)
    return torch.log_softmax(logits / temperature, dim=-1)


def _divergence_per_token(
    name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
    params: dict[str, float], distillm_form: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kd, kd_distillm or None), each (N,) fp32 and times tau^2; parameters already validated."""
    # Padded vocabularies differ (Qwen2.5 7B: 152064 rows, 3B: 151936): compare on the shared ids only.
    vocab_size = min(student_logits.shape[-1], teacher_logits.shape[-1])
    with torch.autocast(student_logits.device.type, enabled=False):
        log_q = _log_probs(student_logits, temperature, vocab_size)
        with torch.no_grad():
            log_p = _log_probs(teacher_logits, temperature, vocab_size)
        kwargs = {_KWARGS.get(k, k): v for k, v in params.items()}
        kd = _DIVERGENCES[name](log_p, log_q, **kwargs) * temperature**2
        if not distillm_form:
            return kd, None
        with torch.no_grad():
            kd_distillm = kd.detach()
            if name in _DISTILLM_ADDS_TEACHER_ENTROPY:
                kd_distillm = kd_distillm - (log_p.exp() * log_p).sum(-1) * temperature**2
    return kd, kd_distillm


def kd_divergence(
    name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, *,
    distillm_form: bool = False, **params: float,
) -> torch.Tensor:
    """Per-token KD divergence between teacher and student at temperature tau, times tau^2.

    Args:
        name: a loss of `LOSSES` other than "sft".
        student_logits: (N, V) any float dtype; upcast to fp32.
        teacher_logits: (N, V') any float dtype, treated as a constant; both vocabularies are truncated to
            min(V, V'), the shared ids (padded rows differ between sizes of one family).
        temperature: tau > 0, applied to both.
        distillm_form: return DistiLLM's logged form instead (the cross-entropy for kld and skl).
        params: skew (skl, srkl), beta (jsd), lambda (bdl; pass as **{"lambda": l}); defaults in DEFAULT_PARAMS.

    Returns:
        (N,) fp32.

    Raises:
        ValueError: unknown loss, "sft", bad parameter or temperature.
    """
    if name == "sft":
        raise ValueError("'sft' is not a divergence: it is the cross-entropy part of the total loss")
    params = resolve_loss_params(name, params)
    check_temperature(temperature)
    kd, kd_distillm = _divergence_per_token(name, student_logits, teacher_logits, temperature, params, distillm_form)
    return kd_distillm if distillm_form else kd


def _token_sums(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor, objective: Objective,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, sft, kd) summed over the rows given: all of them are valid tokens.

    Args:
        student_logits: (n, V) any float dtype.
        teacher_logits: (n, V') or None when the objective does not use the teacher.
        targets: (n,) next-token ids.
    """
    with torch.autocast(student_logits.device.type, enabled=False):
        sft = F.cross_entropy(student_logits.float(), targets, reduction="sum")
        kd = sft.new_zeros(())
        if objective.uses_teacher:
            kd_tokens, _ = _divergence_per_token(objective.loss, student_logits, teacher_logits,
                                                 objective.temperature, objective.params, False)
            kd = kd_tokens.sum()
        loss = objective.sft_scale * sft + objective.kd_scale * kd
    return loss, sft, kd


def loss_sums(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
    valid_mask: torch.Tensor | None = None, *, objective: Objective,
) -> LossSums:
    """The loss from full logits, with plain autograd: the reference for `losses.chunked_loss_sums`.

    Args:
        student_logits: (N, V) or (B, T, V), any float dtype.
        teacher_logits: same leading shape, (..., V'), treated as constant; may be None if the objective does not
            use the teacher.
        targets: (N,) or (B, T) next-token ids; values at invalid positions are never read.
        valid_mask: bool, same shape as targets: True at response tokens (EOS target included), False at prompt
            and padding. None: every token is valid.
        objective: the loss, its parameters, temperature and kd_weight.

    Returns:
        LossSums over the valid tokens. Invalid positions get exactly zero gradient, whatever their logits hold.
    """
    if objective.uses_teacher and teacher_logits is None:
        raise ValueError(f"loss {objective.loss!r} with kd_weight {objective.kd_weight} needs teacher_logits")
    student = student_logits.reshape(-1, student_logits.shape[-1])
    teacher = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]) if objective.uses_teacher else None
    flat_targets = targets.reshape(-1)
    if valid_mask is not None:  # gather the valid rows: invalid ones never enter the math, not even as 0 * NaN
        rows = _valid_rows(valid_mask, flat_targets.numel(), student.device)
        student, flat_targets = student.index_select(0, rows), flat_targets.index_select(0, rows)
        teacher = None if teacher is None else teacher.index_select(0, rows)
    total, sft, kd = _token_sums(student, teacher, flat_targets, objective)
    return LossSums(total, sft.detach(), kd.detach(), int(flat_targets.numel()))
