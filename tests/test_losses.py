"""KD losses against independent float64 implementations, identities, masking, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from syllabus.train.losses import LOSSES, chunked_distill_loss, distillm_form, kd_divergence

DIVERGENCES = [n for n in LOSSES if n != "sft"]


def reference(name: str, s: np.ndarray, t: np.ndarray, tau: float, skew=0.1, beta=0.5, lam=0.9) -> np.ndarray:
    """Plain float64 numpy: probabilities, then the textbook formulas."""
    def softmax(x):
        x = x / tau
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)
        return terms.sum(-1)

    p, q = softmax(t.astype(np.float64)), softmax(s.astype(np.float64))
    out = {
        "kld": lambda: kl(p, q),
        "rkl": lambda: kl(q, p),
        "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
        "tvd": lambda: 0.5 * np.abs(p - q).sum(-1),
        "skl": lambda: kl(p, skew * p + (1 - skew) * q),
        "srkl": lambda: kl(q, (1 - skew) * p + skew * q),
        "bdl": lambda: kl((1 - lam) * p + lam * q, lam * p + (1 - lam) * q),
    }[name]()
    return out * tau**2


def logits(n=6, v=50, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("scale", [1.0, 8.0, 80.0])  # 80: probabilities within 1e-30 of 0 and 1
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_each_loss_matches_float64_reference(name, scale, tau):
    s, t = logits(scale=scale)
    params = {"skew": 0.1, "beta": 0.5, "lambda": 0.9}
    got = kd_divergence(name, s, t, tau, **{k: v for k, v in params.items()})
    expected = reference(name, s.numpy(), t.numpy(), tau, params["skew"], params["beta"], params["lambda"])
    finite = np.isfinite(expected)
    assert np.allclose(got.numpy()[finite], expected[finite], rtol=1e-4, atol=1e-5)
    s.requires_grad_(True)
    kd_divergence(name, s, t, tau).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_identities():
    s, t = logits(scale=4.0, seed=1)
    assert torch.allclose(kd_divergence("skl", s, t, skew=0.0), kd_divergence("kld", s, t))
    assert torch.allclose(kd_divergence("srkl", s, t, skew=0.0), kd_divergence("rkl", s, t))
    assert torch.allclose(kd_divergence("jsd", s, t, beta=0.5), kd_divergence("jsd", t, s, beta=0.5), atol=1e-6)
    assert kd_divergence("jsd", s, s).abs().max() < 1e-6
    assert kd_divergence("bdl", s, t, **{"lambda": 0.5}).abs().max() < 1e-6
    assert kd_divergence("bdl", s, s).abs().max() < 1e-6
    tvd = kd_divergence("tvd", s, t)
    assert (tvd >= 0).all() and (tvd <= 1).all()
    for name in DIVERGENCES:
        assert (kd_divergence(name, s, t) >= -1e-6).all(), name


def test_temperature_scales_by_tau_squared():
    s, t = logits(seed=2)
    soft = kd_divergence("kld", s / 2, t / 2, temperature=1.0)
    assert torch.allclose(kd_divergence("kld", s, t, temperature=2.0), 4 * soft, rtol=1e-5)


def test_bf16_teacher_is_upcast_before_mixing():
    s, t = logits(scale=20.0, seed=3)
    assert (kd_divergence("jsd", s, t.bfloat16()) >= 0).all()


def test_padded_teacher_vocabulary_is_truncated():
    s, t = logits(v=50, seed=4)
    padded = torch.cat([t, torch.full((t.shape[0], 14), -1e4)], dim=1)
    assert torch.allclose(kd_divergence("kld", s, padded), kd_divergence("kld", s, t), atol=1e-6)


def test_distillm_form_is_kl_plus_teacher_entropy():
    s, t = logits(seed=5)
    p = torch.softmax(t, -1)
    entropy = -(p * p.log()).sum(-1)
    assert torch.allclose(distillm_form(s, t), kd_divergence("kld", s, t) + entropy, atol=1e-5)


def test_bad_names_and_params_are_clear():
    s, t = logits()
    with pytest.raises(ValueError, match="unknown loss 'kl'.*kld"):
        kd_divergence("kl", s, t)
    with pytest.raises(ValueError, match="skew must be in"):
        kd_divergence("skl", s, t, skew=1.5)
    with pytest.raises(ValueError, match="unknown loss parameter"):
        kd_divergence("skl", s, t, alpha=0.1)


def plain_loss(hidden, head, targets, t_hidden, t_head, name, tau):
    logits_s = hidden @ head.T
    sft = torch.nn.functional.cross_entropy(logits_s, targets, reduction="sum")
    kd = kd_divergence(name, logits_s, t_hidden @ t_head.T, tau).sum() if name != "sft" else torch.zeros(())
    return sft, kd


@pytest.mark.parametrize("name", ["kld", "srkl", "bdl", "sft"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_plain_in_value_and_gradient(name, chunk):
    g = torch.Generator().manual_seed(7)
    n, h, v = 37, 16, 90
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    head = torch.randn(v, h, generator=g, requires_grad=True)
    t_hidden, t_head = torch.randn(n, h, generator=g), torch.randn(v + 6, h, generator=g)  # padded teacher vocab
    targets = torch.randint(0, v, (n,), generator=g)
    sft, kd = chunked_distill_loss(hidden, head, targets, t_hidden, t_head, loss=name, temperature=2.0, chunk_tokens=chunk)
    (sft + 3 * kd).backward()
    grads = hidden.grad.clone(), head.grad.clone()
    hidden.grad = head.grad = None
    ref_sft, ref_kd = plain_loss(hidden, head, targets, t_hidden, t_head[:v], name, 2.0)
    (ref_sft + 3 * ref_kd).backward()
    assert torch.allclose(sft, ref_sft, rtol=1e-5) and torch.allclose(kd, ref_kd, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-4, atol=1e-5)  # fp32 summation order differs
    assert torch.allclose(grads[1], head.grad, rtol=1e-4, atol=1e-5)


def test_positions_outside_the_scored_set_change_nothing():
    """The trainer gathers response positions before the loss; what is not gathered cannot matter."""
    g = torch.Generator().manual_seed(8)
    hidden = torch.randn(10, 8, generator=g)
    head, t_head = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    t_hidden = torch.randn(10, 8, generator=g)
    targets = torch.randint(0, 20, (10,), generator=g)
    keep = torch.tensor([0, 2, 3, 7])
    a = chunked_distill_loss(hidden[keep], head, targets[keep], t_hidden[keep], t_head, loss="kld")
    hidden2 = hidden.clone()
    hidden2[[1, 4, 5]] = 1e4  # garbage at unscored positions
    b = chunked_distill_loss(hidden2[keep], head, targets[keep], t_hidden[keep], t_head, loss="kld")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_zero_scored_tokens_give_zero_without_nan():
    hidden = torch.randn(0, 8, requires_grad=True)
    sft, kd = chunked_distill_loss(hidden, torch.randn(20, 8), torch.zeros(0, dtype=torch.long),
                                   torch.randn(0, 8), torch.randn(20, 8))
    assert sft.item() == 0.0 and kd.item() == 0.0
    sft.backward()
    assert torch.isfinite(hidden.grad).all()
