"""K+1-bin divergences (a teacher known by its top-K log-probs and tail mass): value and gradient against autograd
through the same divergence on the coarsened distributions, in float64."""

from __future__ import annotations

import pytest
import torch

from syllabus.core.logits import TopK
from syllabus.core.loss_params import LOSSES
from syllabus.train.losses import Objective, chunked_loss_sums, soften_bins, student_bins, vocab_grad
from syllabus.train.losses_reference import _DIVERGENCES, _KWARGS


def coarsened(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The reference binning, written the plain way: top-K log-probs, then log(sum of the rest's probabilities)."""
    probs = log_probs.exp()
    rest = probs.sum(-1) - probs.gather(1, ids).sum(-1)
    return torch.cat([log_probs.gather(1, ids), rest.log()[:, None]], dim=1)


@pytest.mark.parametrize("loss", [name for name in LOSSES if name != "sft"])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_binned_divergence_and_gradient_equal_autograd_on_the_coarsened_distributions(loss, k):
    generator = torch.Generator().manual_seed(k)
    tokens, vocab, tau = 6, 40, 1.5
    teacher = torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * 3
    logits = torch.randn(tokens, vocab, generator=generator, dtype=torch.float64, requires_grad=True)
    ids = teacher.topk(k, dim=-1).indices
    log_p_bins = coarsened(torch.log_softmax(teacher / tau, -1), ids)
    objective = Objective(loss, temperature=tau, kd_weight=1.0)
    kwargs = {_KWARGS.get(key, key): v for key, v in objective.params.items()}

    want = _DIVERGENCES[loss](log_p_bins, coarsened(torch.log_softmax(logits / tau, -1), ids), **kwargs)
    (want_grad,) = torch.autograd.grad(want.sum(), logits)

    log_q = torch.log_softmax(logits.detach() / tau, -1)
    log_q_bins = student_bins(log_q, ids)
    value, bin_grad = objective.divergence_grad(log_p_bins, log_q_bins)
    grad = vocab_grad(bin_grad, log_q, log_q_bins, ids)
    grad = (grad - log_q.exp() * grad.sum(-1, keepdim=True)) / tau  # the softmax step, as the chunked loss takes it
    torch.testing.assert_close(value, want.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-7, atol=1e-10)


def test_the_student_tail_keeps_its_digits_when_the_top_ids_hold_nearly_everything():
    logits = torch.full((1, 1000), -40.0, dtype=torch.float32)
    logits[0, :3] = torch.tensor([30.0, 29.0, 28.0])
    log_q = torch.log_softmax(logits, -1)
    bins = student_bins(log_q, torch.tensor([[0, 1, 2]]))
    want = torch.logsumexp(log_q[0, 3:].double(), 0)  # about -70: 1 - sum(top 3) is 0 in fp32
    assert torch.isfinite(bins[0, -1]) and abs(bins[0, -1].item() - want.item()) < 1e-3


@pytest.mark.parametrize("loss", [name for name in LOSSES if name != "sft"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_the_chunked_loss_takes_a_teacher_as_its_top_k(loss, tau):
    """chunked_loss_sums(teacher_bins=...) against autograd on float64 full logits coarsened to the same bins."""
    generator = torch.Generator().manual_seed(7)
    tokens, hidden_size, vocab, k, kd_weight = 11, 8, 50, 6, 0.7
    hidden = torch.randn(tokens, hidden_size, generator=generator, dtype=torch.float64)
    head = torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    teacher = torch.log_softmax(torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * 2, -1)
    ids = teacher.topk(k, dim=-1).indices
    # int32 ids, as the CE pass captures them (`core.scoring.token_scores`)
    bins = TopK(ids.to(torch.int32), teacher.gather(1, ids).float(), coarsened(teacher, ids)[:, -1].float())
    objective = Objective(loss, temperature=tau, kd_weight=kd_weight)
    kwargs = {_KWARGS.get(key, key): v for key, v in objective.params.items()}

    x, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
    logits = x @ w.T
    sft = -torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum()
    log_p = soften_bins(bins.log_probs.double(), bins.log_tail.double(), tau, vocab).double()
    kd = _DIVERGENCES[loss](log_p, coarsened(torch.log_softmax(logits / tau, -1), ids), **kwargs).sum() * tau**2
    want = (1 - kd_weight) * sft + kd_weight * kd
    want.backward()

    x32, w32 = hidden.float().requires_grad_(), head.float().requires_grad_()
    got = chunked_loss_sums(x32, w32, targets, objective=objective, teacher_bins=bins, chunk_tokens=4)
    got.loss_sum.backward()
    torch.testing.assert_close(got.loss_sum.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.kd_sum.double(), kd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x32.grad.double(), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w32.grad.double(), w.grad, rtol=1e-4, atol=1e-5)


def test_softened_bins_spread_the_tail_evenly_and_are_exact_at_temperature_one():
    log_probs, log_tail = torch.tensor([[-0.5, -1.5]]), torch.tensor([-2.0])
    at_one = soften_bins(log_probs, log_tail, 1.0, vocab=12)
    total = torch.cat([log_probs, log_tail[:, None]], 1).logsumexp(-1, keepdim=True)
    torch.testing.assert_close(at_one, torch.cat([log_probs, log_tail[:, None]], 1) - total)
    at_two = soften_bins(log_probs, log_tail, 2.0, vocab=12).exp()
    even = 10 * (torch.tensor(-2.0).exp() / 10) ** 0.5  # the tail's mass spread over its 10 ids, each softened
    want = torch.tensor([(-0.25), (-0.75)]).exp()
    torch.testing.assert_close(at_two[0], torch.cat([want, even[None]]) / (want.sum() + even))


@pytest.mark.parametrize("loss", [name for name in LOSSES if name != "sft"])
def test_a_cache_of_the_whole_vocabulary_is_the_live_teacher(loss):
    """K = V leaves the tail empty (log 0 = -inf): the loss stays finite and equals the full-vocabulary loss."""
    generator = torch.Generator().manual_seed(3)
    tokens, hidden_size, vocab = 5, 8, 30
    hidden, head = torch.randn(tokens, hidden_size, generator=generator), torch.randn(vocab, hidden_size, generator=generator)
    teacher_hidden = torch.randn(tokens, hidden_size, generator=generator)
    teacher_head = torch.randn(vocab, hidden_size, generator=generator)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    log_p = torch.log_softmax(teacher_hidden @ teacher_head.T, -1)
    values, ids = log_p.topk(vocab, dim=-1)
    bins = TopK(ids.to(torch.int32), values, torch.full((tokens,), -torch.inf))
    objective = Objective(loss, temperature=1.0, kd_weight=1.0)
    got = chunked_loss_sums(hidden, head, targets, objective=objective, teacher_bins=bins)
    want = chunked_loss_sums(hidden, head, targets, objective=objective, teacher_hidden=teacher_hidden,
                             teacher_head=teacher_head)
    assert torch.isfinite(got.loss_sum)
    torch.testing.assert_close(got.loss_sum, want.loss_sum, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["kld", "rkl", "jsd", "bdl"])
def test_a_padded_student_takes_the_cached_teacher_over_the_vocabulary_they_share(loss):
    """A student with more output rows than the teacher (Qwen2.5: one tokenizer, padded embeddings) learns from the
    teacher's cache what it learns from the live teacher: its padded rows are no part of the KD term's tail bin."""
    generator = torch.Generator().manual_seed(5)
    tokens, hidden_size, shared, padding = 6, 8, 30, 10
    hidden = torch.randn(tokens, hidden_size, generator=generator)
    head = torch.randn(shared + padding, hidden_size, generator=generator)
    head[shared:] *= 4.0  # padded rows with large logits: counted in the tail, they dominate it
    teacher_hidden = torch.randn(tokens, hidden_size, generator=generator)
    teacher_head = torch.randn(shared, hidden_size, generator=generator)
    targets = torch.randint(0, shared, (tokens,), generator=generator)
    values, ids = torch.log_softmax(teacher_hidden @ teacher_head.T, -1).topk(shared, dim=-1)  # K = V': exact
    bins = TopK(ids.to(torch.int32), values, torch.full((tokens,), -torch.inf))
    objective = Objective(loss, temperature=1.0, kd_weight=1.0)

    def kd_and_grads(**teacher):
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        sums = chunked_loss_sums(h, w, targets, objective=objective, **teacher)
        sums.loss_sum.backward()
        return sums.kd_sum, h.grad, w.grad

    live = kd_and_grads(teacher_hidden=teacher_hidden, teacher_head=teacher_head)
    cached = kd_and_grads(teacher_bins=bins, teacher_vocab=shared)
    for got, want in zip(cached, live):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    unaware = kd_and_grads(teacher_bins=bins)  # the padded rows in the tail: another loss
    assert not torch.allclose(unaware[0], live[0], rtol=1e-2)
    with pytest.raises(ValueError, match="past the vocabulary of 20 the student and the teacher share"):
        chunked_loss_sums(hidden, head, targets, objective=objective, teacher_bins=bins, teacher_vocab=20)
