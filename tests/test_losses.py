"""KD losses: independent float64 references, identities, masking, chunked == plain, validation."""

from __future__ import annotations

import pytest
import torch

from syllabus.core.loss_params import DEFAULT_PARAMS, LOSSES, resolve_loss_params
from syllabus.core.schedule import EpochPlan, ScheduleError
from syllabus.train.losses import Objective, chunked_loss_sums
from syllabus.train.losses_reference import kd_divergence, loss_sums

DIVERGENCES = [name for name in LOSSES if name != "sft"]
# One non-default setting per parameterised loss, besides the defaults.
OTHER_PARAMS = {"jsd": {"beta": 0.2}, "skl": {"skew": 0.35}, "srkl": {"skew": 0.35}, "bdl": {"lambda": 0.7}}


def reference_divergence(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
                         skew: float = 0.1, beta: float = 0.5, lam: float = 0.9) -> torch.Tensor:
    """Textbook formulas on float64 probabilities, mixtures formed as probabilities: independent of the code."""
    s, t = student_logits.double() / tau, teacher_logits.double() / tau
    log_q, log_p = s - s.logsumexp(-1, keepdim=True), t - t.logsumexp(-1, keepdim=True)
    q, p = log_q.exp(), log_p.exp()

    def log(x):  # log 0 only ever meets a zero weight below
        return torch.log(torch.where(x > 0, x, torch.ones_like(x)))

    def kl(a, log_a, log_b):
        return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)

    def mix(w):
        return w * p + (1 - w) * q

    if name == "kld":
        value = kl(p, log_p, log_q)
    elif name == "rkl":
        value = kl(q, log_q, log_p)
    elif name == "jsd":
        m = mix(beta)
        value = beta * kl(p, log_p, log(m)) + (1 - beta) * kl(q, log_q, log(m))
    elif name == "tvd":
        value = 0.5 * (p - q).abs().sum(-1)
    elif name == "skl":
        value = kl(p, log_p, log(mix(skew)))
    elif name == "srkl":
        value = kl(q, log_q, log(mix(1 - skew)))
    elif name == "bdl":
        a, b = mix(1 - lam), mix(lam)
        value = kl(a, log(a), log(b))
    return value * tau**2


def plain_loss(student_logits, teacher_logits, targets, valid_mask=None, *, loss, temperature, kd_weight, **params):
    """The reference loss (autograd on full logits) with the objective's settings as keywords."""
    return loss_sums(student_logits, teacher_logits, targets, valid_mask,
                     objective=Objective(loss, temperature, kd_weight, params))


def chunked_loss(student_hidden, student_head, targets, valid_mask=None, *, loss, temperature, kd_weight,
            chunk_tokens=1024, teacher_hidden=None, teacher_head=None, student_bias=None, teacher_bias=None,
            **params):
    """The training loss (chunked, closed-form gradients) with the objective's settings as keywords."""
    return chunked_loss_sums(student_hidden, student_head, targets, valid_mask,
                             objective=Objective(loss, temperature, kd_weight, params), chunk_tokens=chunk_tokens,
                             teacher_hidden=teacher_hidden, teacher_head=teacher_head, student_bias=student_bias,
                             teacher_bias=teacher_bias)


def reference_kwargs(params: dict) -> dict:
    return {{"lambda": "lam"}.get(k, k): v for k, v in params.items()}


def random_logits(n=6, v=50, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


# --------------------------------------------------------------------------------------------------------------
# Values and gradients against float64


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("scale", [1.0, 8.0, 80.0])  # 80: probabilities within 1e-100 of 0 and 1
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_each_divergence_matches_float64_reference(name, scale, tau):
    s, t = random_logits(scale=scale, seed=int(scale))
    for params in ({}, OTHER_PARAMS.get(name, {})):
        got = kd_divergence(name, s, t, tau, **params)
        expected = reference_divergence(name, s, t, tau, **reference_kwargs(params))
        assert got.dtype == torch.float32 and got.shape == (6,)
        torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5 * tau**2)


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("scale", [1.0, 8.0, 100.0])
def test_gradients_match_float64_reference_and_stay_finite(name, scale):
    s, t = random_logits(scale=scale, seed=3)
    s32, s64 = s.clone().requires_grad_(True), s.double().requires_grad_(True)
    kd_divergence(name, s32, t, 2.0, **OTHER_PARAMS.get(name, {})).sum().backward()
    reference_divergence(name, s64, t.double(), 2.0, **reference_kwargs(OTHER_PARAMS.get(name, {}))).sum().backward()
    assert torch.isfinite(s32.grad).all()
    # fp32 underflows where float64 keeps probabilities of 1e-6 and less: an absolute tolerance scaled to the logits
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-5 * scale)


# --------------------------------------------------------------------------------------------------------------
# Identities


def test_skews_of_zero_are_the_plain_kls_and_of_one_are_zero():
    s, t = random_logits(scale=4.0, seed=1)
    assert torch.equal(kd_divergence("skl", s, t, skew=0.0), kd_divergence("kld", s, t))
    assert torch.equal(kd_divergence("srkl", s, t, skew=0.0), kd_divergence("rkl", s, t))
    assert torch.equal(kd_divergence("skl", s, t, skew=1.0), torch.zeros(6))
    assert torch.equal(kd_divergence("srkl", s, t, skew=1.0), torch.zeros(6))


def test_jsd_is_symmetric_at_half_and_zero_for_equal_inputs():
    s, t = random_logits(scale=4.0, seed=2)
    torch.testing.assert_close(kd_divergence("jsd", s, t, beta=0.5), kd_divergence("jsd", t, s, beta=0.5))
    assert kd_divergence("jsd", s, s).abs().max() < 1e-6
    assert kd_divergence("jsd", s, s, beta=0.2).abs().max() < 1e-6


def test_bdl_is_zero_at_half_and_for_equal_inputs_and_the_kls_at_the_ends():
    s, t = random_logits(scale=4.0, seed=3)
    assert torch.equal(kd_divergence("bdl", s, t, **{"lambda": 0.5}), torch.zeros(6))
    assert kd_divergence("bdl", s, s).abs().max() < 1e-6
    assert torch.equal(kd_divergence("bdl", s, t, **{"lambda": 0.0}), kd_divergence("kld", s, t))
    assert torch.equal(kd_divergence("bdl", s, t, **{"lambda": 1.0}), kd_divergence("rkl", s, t))


@pytest.mark.parametrize("scale", [0.1, 4.0, 100.0])
def test_tvd_is_in_zero_one_and_every_divergence_is_nonnegative(scale):
    s, t = random_logits(scale=scale, seed=4)
    tvd = kd_divergence("tvd", s, t)
    assert (tvd >= 0).all() and (tvd <= 1).all()
    for name in DIVERGENCES:
        assert (kd_divergence(name, s, t) >= -1e-6).all(), name


@pytest.mark.parametrize("name", DIVERGENCES)
def test_kd_term_is_multiplied_by_tau_squared(name):
    s, t = random_logits(seed=5)
    torch.testing.assert_close(kd_divergence(name, s, t, temperature=2.5),
                               2.5**2 * kd_divergence(name, s / 2.5, t / 2.5, temperature=1.0))


def test_bf16_teacher_is_upcast_before_mixing():
    s, t = random_logits(scale=20.0, seed=6)
    t16 = t.bfloat16()
    jsd = kd_divergence("jsd", s, t16)
    assert (jsd >= 0).all()
    torch.testing.assert_close(jsd, kd_divergence("jsd", s, t16.float()))


def test_padded_vocabularies_are_truncated_to_the_shared_ids():
    s, t = random_logits(v=50, seed=7)
    junk = torch.randn(6, 14) * 5
    expected = kd_divergence("kld", s, t)
    torch.testing.assert_close(kd_divergence("kld", s, torch.cat([t, junk], 1)), expected)  # bigger teacher
    torch.testing.assert_close(kd_divergence("kld", torch.cat([s, junk], 1), t), expected)  # bigger student


@pytest.mark.parametrize("name", DIVERGENCES)
def test_minus_infinity_logits_give_finite_values_and_gradients(name):
    s, t = random_logits(v=50, seed=8)
    masked = torch.full((6, 5), float("-inf"))  # a vocabulary masked in both models
    s_inf = torch.cat([s, masked], 1).requires_grad_(True)
    value = kd_divergence(name, s_inf, torch.cat([t, masked], 1))
    value.sum().backward()
    torch.testing.assert_close(value, kd_divergence(name, s, t))
    assert torch.isfinite(s_inf.grad).all()


def test_distillm_form_is_their_cross_entropy_for_forward_kls_and_the_divergence_otherwise():
    s, t = random_logits(seed=9)
    tau = 2.0
    p, log_q = torch.softmax(t / tau, -1), torch.log_softmax(s / tau, -1)
    mixed = 0.1 * p + 0.9 * log_q.exp()  # DistiLLM's skewed_forward_kl, lam = 0.1
    torch.testing.assert_close(kd_divergence("kld", s, t, tau, distillm_form=True), -(p * log_q).sum(-1) * tau**2)
    torch.testing.assert_close(kd_divergence("skl", s, t, tau, distillm_form=True),
                               -(p * mixed.log()).sum(-1) * tau**2)
    for name in ("rkl", "jsd", "tvd", "srkl", "bdl"):
        assert torch.equal(kd_divergence(name, s, t, tau, distillm_form=True), kd_divergence(name, s, t, tau))


# --------------------------------------------------------------------------------------------------------------
# Loss sums: masks, normalisation, zero tokens


def masked_batch(seed=10, n=12, v=30):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g) * 3
    targets = torch.randint(0, v, (n,), generator=g)
    mask = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    return s, t, targets, mask


@pytest.mark.parametrize("name", LOSSES)
def test_masked_positions_change_neither_value_nor_gradient(name):
    s, t, targets, mask = masked_batch()
    settings = dict(loss=name, temperature=2.0, kd_weight=0.6)
    a = s.clone().requires_grad_(True)
    first = plain_loss(a, t, targets, mask, **settings)
    first.loss_sum.backward()
    garbage_s, garbage_t, garbage_targets = s.clone(), t.clone(), targets.clone()
    garbage_s[~mask] = float("nan")
    garbage_t[~mask] = float("inf")
    garbage_targets[~mask] = -100  # never read, not even as an ignore_index
    b = garbage_s.requires_grad_(True)
    second = plain_loss(b, garbage_t, garbage_targets, mask, **settings)
    second.loss_sum.backward()
    assert torch.equal(first.loss_sum, second.loss_sum) and first.num_tokens == second.num_tokens == 7
    assert torch.equal(a.grad, b.grad) and torch.equal(b.grad[~mask], torch.zeros_like(b.grad[~mask]))


def test_sums_over_micro_batches_divided_by_the_global_count_give_the_global_mean():
    s, t, targets, mask = masked_batch()
    settings = dict(loss="kld", temperature=1.5, kd_weight=0.5)
    whole = plain_loss(s, t, targets, mask, **settings)
    parts = (slice(0, 5), slice(5, None))
    halves = [plain_loss(s[part], t[part], targets[part], mask[part], **settings) for part in parts]
    global_count = sum(h.num_tokens for h in halves)
    torch.testing.assert_close(sum(h.loss_sum for h in halves) / global_count, whole.mean())
    assert whole.num_tokens == global_count == 7


def test_loss_is_the_weighted_sum_of_its_parts_with_sft_at_temperature_one():
    s, t, targets, _ = masked_batch()
    out = plain_loss(s, t, targets, loss="skl", temperature=2.0, kd_weight=0.3, skew=0.2)
    torch.testing.assert_close(out.sft_sum, torch.nn.functional.cross_entropy(s, targets, reduction="sum"))
    torch.testing.assert_close(out.kd_sum, kd_divergence("skl", s, t, 2.0, skew=0.2).sum())
    torch.testing.assert_close(out.loss_sum, 0.7 * out.sft_sum + 0.3 * out.kd_sum)
    assert not out.sft_sum.requires_grad and not out.kd_sum.requires_grad


@pytest.mark.parametrize("kd_weight", [0.0, 0.5, 1.0])
def test_the_sft_loss_trains_on_cross_entropy_whatever_kd_weight_says(kd_weight):
    s, _, targets, mask = masked_batch()
    out = plain_loss(s, None, targets, mask, loss="sft", temperature=2.0, kd_weight=kd_weight)
    hidden, head = torch.randn(12, 8), torch.randn(30, 8)
    chunked = chunked_loss(hidden, head, targets, mask, loss="sft", temperature=2.0, kd_weight=kd_weight)
    assert out.loss_sum.item() == out.sft_sum.item() > 0 and out.kd_sum.item() == 0.0
    torch.testing.assert_close(chunked.loss_sum, chunked.sft_sum)


def test_zero_valid_tokens_give_zeros_without_nan():
    s, t, targets, mask = masked_batch()
    none = torch.zeros_like(mask)
    s.requires_grad_(True)
    out = plain_loss(s, t, targets, none, loss="bdl", temperature=2.0, kd_weight=0.5)
    out.loss_sum.backward()
    assert out.num_tokens == 0 and out.mean().item() == 0.0
    assert all(x.item() == 0.0 for x in (out.loss_sum, out.sft_sum, out.kd_sum))
    assert kd_divergence("kld", s[:0], t[:0], distillm_form=True).shape == (0,)
    assert torch.equal(s.grad, torch.zeros_like(s))

    hidden, head = torch.randn(12, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    for valid, rows in ((none, 12), (None, 0)):
        out = chunked_loss(hidden[:rows], head, targets[:rows], None if valid is None else valid[:rows],
                                teacher_hidden=torch.randn(rows, 8), teacher_head=torch.randn(30, 8), loss="kld",
                                temperature=1.0, kd_weight=0.5)
        out.loss_sum.backward()
        assert out.num_tokens == 0 and out.loss_sum.item() == 0.0 and out.mean().item() == 0.0
        assert torch.equal(head.grad, torch.zeros_like(head)) and torch.isfinite(hidden.grad).all()


# --------------------------------------------------------------------------------------------------------------
# Chunked == plain


def hidden_batch(n=37, h=16, v=90, teacher_extra=6, seed=11, bias=True):
    g = torch.Generator().manual_seed(seed)
    student = {
        "hidden": torch.randn(n, h, generator=g, requires_grad=True),
        "head": (torch.randn(v, h, generator=g) * 0.7).requires_grad_(True),
        "bias": (torch.randn(v, generator=g)).requires_grad_(True) if bias else None,
    }
    teacher = {"hidden": torch.randn(n, h, generator=g), "head": torch.randn(v + teacher_extra, h, generator=g),
               "bias": torch.randn(v + teacher_extra, generator=g)}
    targets = torch.randint(0, v, (n,), generator=g)
    mask = torch.rand(n, generator=g) > 0.25
    return student, teacher, targets, mask


def student_grads(student):
    grads = [None if x is None else x.grad.clone() for x in student.values()]
    for x in student.values():
        if x is not None:
            x.grad = None
    return grads


def plain_from_hidden(student, teacher, targets, mask, **settings):
    logits = torch.nn.functional.linear(student["hidden"], student["head"], student["bias"])
    teacher_logits = torch.nn.functional.linear(teacher["hidden"], teacher["head"], teacher["bias"])
    return plain_loss(logits, teacher_logits, targets, mask, **settings)


def chunked_from_hidden(student, teacher, targets, mask, **settings):
    return chunked_loss(student["hidden"], student["head"], targets, mask, student_bias=student["bias"],
                             teacher_hidden=teacher["hidden"], teacher_head=teacher["head"],
                             teacher_bias=teacher["bias"], **settings)


def assert_chunked_equals_plain(student, teacher, targets, mask, grad_atol=1e-5, **settings):
    chunked = chunked_from_hidden(student, teacher, targets, mask, **settings)
    chunked.loss_sum.backward()
    got = student_grads(student)
    settings.pop("chunk_tokens")
    plain = plain_from_hidden(student, teacher, targets, mask, **settings)
    plain.loss_sum.backward()
    expected = student_grads(student)
    assert chunked.num_tokens == plain.num_tokens
    for a, b in zip(chunked[:3], plain[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for a, b in zip(got, expected):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=grad_atol)  # fp32 summation order differs


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])  # 16 does not divide 37; 64 is more than all tokens
def test_chunked_equals_plain_in_value_and_gradient(name, chunk):
    student, teacher, targets, mask = hidden_batch()
    assert_chunked_equals_plain(student, teacher, targets, mask, loss=name, temperature=2.0, kd_weight=0.7,
                                chunk_tokens=chunk)


@pytest.mark.parametrize("name, params", [
    ("skl", {"skew": 0.0}), ("skl", {"skew": 1.0}), ("srkl", {"skew": 0.0}), ("srkl", {"skew": 1.0}),
    ("bdl", {"lambda": 0.0}), ("bdl", {"lambda": 0.5}), ("bdl", {"lambda": 1.0}), ("jsd", {"beta": 0.05}),
])
def test_chunked_equals_plain_at_edge_parameters(name, params):
    student, teacher, targets, mask = hidden_batch(seed=12)
    assert_chunked_equals_plain(student, teacher, targets, mask, loss=name, temperature=0.7, kd_weight=0.5,
                                chunk_tokens=8, **params)


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_chunked_equals_plain_at_the_ends_of_kd_weight_and_with_a_bigger_student_vocabulary(kd_weight):
    student, teacher, targets, mask = hidden_batch(teacher_extra=-7, seed=13, bias=False)  # student V > teacher V'
    assert_chunked_equals_plain(student, teacher, targets, mask, loss="rkl", temperature=1.0, kd_weight=kd_weight,
                                chunk_tokens=10)


def test_chunked_with_extreme_logits_matches_plain():
    student, teacher, targets, mask = hidden_batch(seed=14)
    with torch.no_grad():
        student["head"].mul_(30)
        teacher["head"].mul_(30)
    for name in ("kld", "bdl", "srkl"):
        # gradients of order 100 here: the same relative agreement as elsewhere
        assert_chunked_equals_plain(student, teacher, targets, mask, loss=name, temperature=1.0, kd_weight=1.0,
                                    chunk_tokens=9, grad_atol=1e-4)


def test_chunked_masked_positions_change_nothing_and_batch_shapes_work():
    student, teacher, targets, mask = hidden_batch(n=36, seed=15)
    settings = dict(loss="jsd", temperature=2.0, kd_weight=0.5, chunk_tokens=7)
    flat = chunked_from_hidden(student, teacher, targets, mask, **settings)
    flat.loss_sum.backward()
    expected = student_grads(student)
    with torch.no_grad():
        student["hidden"][~mask] = float("nan")
        teacher["hidden"][~mask] = float("inf")
    garbage_targets = targets.masked_fill(~mask, -100)
    batched = chunked_loss(
        student["hidden"].view(4, 9, 16), student["head"], garbage_targets.view(4, 9), mask.view(4, 9),
        student_bias=student["bias"], teacher_hidden=teacher["hidden"].view(4, 9, 16), teacher_head=teacher["head"],
        teacher_bias=teacher["bias"], **settings)
    batched.loss_sum.backward()
    assert torch.equal(flat.loss_sum, batched.loss_sum)
    for a, b in zip(student_grads(student), expected):
        assert torch.equal(a, b)


def test_chunked_without_gradients_and_under_no_grad():
    student, teacher, targets, mask = hidden_batch(seed=16)
    settings = dict(loss="tvd", temperature=1.0, kd_weight=0.4, chunk_tokens=6)
    expected = chunked_from_hidden(student, teacher, targets, mask, **settings)
    with torch.no_grad():
        got = chunked_from_hidden(student, teacher, targets, mask, **settings)
    assert torch.equal(got.loss_sum, expected.loss_sum) and not got.loss_sum.requires_grad
    frozen_body = chunked_loss(student["hidden"].detach(), student["head"], targets, mask,
                                    teacher_hidden=teacher["hidden"], teacher_head=teacher["head"], **settings)
    frozen_body.loss_sum.backward()
    assert student["head"].grad is not None and student["hidden"].grad is None


def test_chunked_follows_bf16_autocast_for_the_matmuls_and_keeps_fp32_sums():
    student, teacher, targets, mask = hidden_batch(seed=17, bias=False)
    settings = dict(loss="bdl", temperature=2.0, kd_weight=0.7)
    teacher = {k: None if v is None else v.bfloat16() for k, v in teacher.items()}  # a bf16 teacher, as in train run
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = chunked_from_hidden(student, teacher, targets, mask, chunk_tokens=8, **settings)
        plain = plain_from_hidden(student, teacher, targets, mask, **settings)
    chunked.loss_sum.backward()
    got = student_grads(student)
    plain.loss_sum.backward()
    expected = student_grads(student)
    assert chunked.loss_sum.dtype == torch.float32 and got[0].dtype == torch.float32
    torch.testing.assert_close(chunked.loss_sum, plain.loss_sum, rtol=1e-3, atol=1e-3)
    for a, b in zip(got[:2], expected[:2]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)  # bf16 matmul outputs round per chunk


# --------------------------------------------------------------------------------------------------------------
# Validation


def test_defaults_and_parameter_resolution():
    assert resolve_loss_params("bdl") == {"lambda": 0.9} and resolve_loss_params("skl", {"skew": 0}) == {"skew": 0.0}
    assert resolve_loss_params("kld", {}) == {} and set(DEFAULT_PARAMS) == set(LOSSES)


@pytest.mark.parametrize("loss, params, temperature, kd_weight, accepted", [
    ("bdl", {"lambda": 0.9}, 1.0, 1.0, True),
    ("jsd", {"beta": 0.5}, 2.0, 0.0, True),
    ("jsd", {"beta": 1.0}, 1.0, 1.0, False),
    ("skl", {"skew": 1.5}, 1.0, 1.0, False),
    ("kld", {}, float("inf"), 1.0, False),
    ("kld", {}, 0.0, 1.0, False),
    ("kld", {}, 1.0, 1.5, False),
    ("kl", {}, 1.0, 1.0, False),
])
def test_the_schedule_writes_only_what_the_trainer_accepts(loss, params, temperature, kd_weight, accepted):
    """One rule, two places that must apply it: the manifest's epoch record and the trainer's objective."""
    def schedule_accepts():
        try:
            EpochPlan(stage=0, temperature=temperature, kd_weight=kd_weight, loss=loss, loss_params=params)
        except ScheduleError:
            return False
        return True

    def trainer_accepts():
        try:
            Objective(loss, temperature, kd_weight, params)
        except ValueError:
            return False
        return True

    assert schedule_accepts() is trainer_accepts() is accepted


@pytest.mark.parametrize("call, message", [
    (lambda s, t: kd_divergence("kl", s, t),
     r"unknown loss 'kl'; valid losses: sft, kld, rkl, jsd, tvd, skl, srkl, bdl"),
    (lambda s, t: kd_divergence("skl", s, t, skew=1.5), r"skew of 'skl' must be in \[0, 1\], got 1.5"),
    (lambda s, t: kd_divergence("srkl", s, t, skew=-0.1), r"skew of 'srkl' must be in \[0, 1\]"),
    (lambda s, t: kd_divergence("bdl", s, t, **{"lambda": 2}), r"lambda of 'bdl' must be in \[0, 1\]"),
    (lambda s, t: kd_divergence("jsd", s, t, beta=0.0), r"beta of 'jsd' must be in \(0, 1\).*use kld or rkl"),
    (lambda s, t: kd_divergence("skl", s, t, alpha=0.1), r"loss 'skl' does not take parameter\(s\) alpha.*skew"),
    (lambda s, t: kd_divergence("kld", s, t, skew=0.1), r"loss 'kld' does not take parameter\(s\) skew.*takes none"),
    (lambda s, t: kd_divergence("skl", s, t, skew="a"), r"skew of 'skl' must be a finite number"),
    (lambda s, t: kd_divergence("sft", s, t), r"'sft' is not a divergence"),
    (lambda s, t: kd_divergence("kld", s, t, temperature=0.0), r"temperature must be a finite number > 0"),
    (lambda s, t: plain_loss(s, t, t[:, 0].long(), loss="kld", temperature=1.0, kd_weight=1.5),
     r"kd_weight must be in \[0, 1\]"),
    (lambda s, t: plain_loss(s, None, t[:, 0].long(), loss="kld", temperature=1.0, kd_weight=0.5),
     r"needs teacher_logits"),
    (lambda s, t: plain_loss(s, t, t[:, 0].long(), torch.ones(6), loss="kld", temperature=1.0, kd_weight=0.5),
     r"valid_mask must be a bool tensor"),
    (lambda s, t: chunked_loss(s[:, :8], s[:, :8], t[:, 0].long(), loss="kld", temperature=1.0,
                                    kd_weight=0.5), r"needs teacher_hidden and teacher_head"),
    (lambda s, t: chunked_loss(s[:, :8], s[:, :8], t[:, 0].long(), loss="sft", temperature=1.0, kd_weight=0.0,
                                    chunk_tokens=0), r"chunk_tokens must be an integer >= 1"),
])
def test_bad_names_and_parameters_fail_clearly(call, message):
    s, t = random_logits()
    with pytest.raises(ValueError, match=message):
        call(s, t.abs())
