"""Padding-free batches: a packed micro-batch gives the padded one's loss and gradients, for every loss."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from syllabus.core import scoring
from syllabus.core.engines.base import ScoringRequest
from syllabus.core.logits import logit_head
from syllabus.core.loss_params import LOSSES
from syllabus.core.packing import ONE_ROW, best_fit_rows, pack_sequences, packing_is_exact, row_budget
from syllabus.core.scoring import response_nll, response_scores, scoring_forwards, scoring_pack_tokens
from syllabus.core.tokens import encode_pair
from syllabus.train.data import collate
from syllabus.train.losses import Objective
from syllabus.train.student import DistillStudent


@pytest.fixture(scope="module")
def models(tiny_model, tiny_teacher):
    student = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval().requires_grad_(False)
    return student, teacher, AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def uneven_rows(models, dolly_rows):
    """Real Dolly rows of very different lengths, and one whose response is the EOS token alone."""
    tokenizer = models[2]
    rows = [encode_pair(tokenizer, r["prompt"], r["output"], 1024) for r in dolly_rows[:40]]
    rows = sorted((r for r in rows if r.status == "ok"), key=lambda r: len(r.ids))
    eos_only = encode_pair(tokenizer, dolly_rows[0]["prompt"], "", 1024)
    assert eos_only.response_ids == [tokenizer.eos_token_id]
    return [rows[-1], rows[0], eos_only, rows[len(rows) // 2], rows[-2], rows[3]]


def loss_and_grads(student, teacher, batch, objective, bf16):
    student.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            hidden = teacher.get_decoder()(**batch.model_inputs()).last_hidden_state[batch.rows, batch.cols]
        sums = DistillStudent(student, chunk_tokens=256)(batch, objective, hidden, logit_head(teacher))
    sums.loss_sum.backward()
    return sums, {n: p.grad.clone() for n, p in student.named_parameters()}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_packed_batches_give_the_padded_loss_and_gradients(models, uneven_rows, loss, bf16):
    student, teacher, tokenizer = models
    objective = Objective(loss, temperature=2.0, kd_weight=0.0 if loss == "sft" else 0.6)
    for rows in (uneven_rows, uneven_rows[:1]):  # a micro-batch of several rows, and of one
        padded = collate(rows, tokenizer.pad_token_id)
        packed = collate(rows, tokenizer.pad_token_id, pack_tokens=700)  # several packed rows for the first
        assert packed.position_ids is not None and packed.attention_mask is None
        assert packed.input_ids.numel() < padded.input_ids.numel() or len(rows) == 1
        want, want_grads = loss_and_grads(student, teacher, padded, objective, bf16)
        got, got_grads = loss_and_grads(student, teacher, packed, objective, bf16)
        assert got.num_tokens == want.num_tokens
        rtol, atol = (2e-2, 1e-3) if bf16 else (1e-5, 1e-6)
        for a, b in zip(got[:3], want[:3]):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol * want.num_tokens)
        for name, grad in want_grads.items():
            scale = grad.abs().max().item()
            torch.testing.assert_close(got_grads[name], grad, rtol=rtol, atol=atol * max(scale, 1e-6) * 10)


def test_pack_sequences_restarts_positions_and_keeps_rows_within_budget():
    sequences = [[1] * 5, [2] * 3, [3] * 6, [4] * 2]
    packed = pack_sequences(sequences, pad_id=0, max_tokens=8)
    assert packed.rows == [0, 0, 1, 1] and packed.offsets == [0, 5, 0, 6]
    assert packed.input_ids.tolist() == [[1] * 5 + [2] * 3, [3] * 6 + [4] * 2]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1]]
    tail = pack_sequences([[1] * 5, [2] * 3], pad_id=9, max_tokens=5)
    assert tail.input_ids.tolist() == [[1] * 5, [2, 2, 2, 9, 9]]
    assert tail.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]  # the tail is a sequence of its own


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_packed_scoring_gives_the_padded_cross_entropy(models, uneven_rows, bf16):
    """The CE pass of `curate score` and of DA-KD re-scoring: every request's mean NLL, packed as padded."""
    student, _, tokenizer = models
    requests = [ScoringRequest(r.ids, len(r.prompt_ids)) for r in uneven_rows]
    requests.append(ScoringRequest(uneven_rows[0].ids[:2], 1))  # a 2-token row: one scored position
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        padded = response_nll(student.eval(), requests, batch_tokens=2048, pad_id=tokenizer.pad_token_id)
        # a row budget below the longest row and a forward budget of about two rows: several forwards
        packed = response_nll(student, requests, batch_tokens=1400, pad_id=tokenizer.pad_token_id, pack_tokens=700)
    student.train()
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(padded), rtol=2e-2 if bf16 else 1e-5, atol=0)
    forwards = list(scoring_forwards([r.ids for r in requests], [r.prompt_len for r in requests], 1400,
                                     tokenizer.pad_token_id, 700))
    assert len(forwards) > 1 and sorted(i for batch, _, _ in forwards for i in batch) == list(range(len(requests)))


def test_scoring_packs_where_asked_or_where_attention_is_varlen(models, monkeypatch):
    student, _, _ = models
    assert scoring_pack_tokens(student, None, 700) is None  # sdpa: padded by default
    assert scoring_pack_tokens(student, True, 700) == 700 and scoring_pack_tokens(student, False, 700) is None
    monkeypatch.setattr(student.config, "_attn_implementation", "flash_attention_2")
    probed = []
    monkeypatch.setattr(scoring, "packing_is_exact", lambda model, budget: probed.append(budget) or True)
    assert scoring_pack_tokens(student, None, 700) == ONE_ROW  # flash-attention: one packed row per forward
    assert probed == [ONE_ROW]  # probed in that layout
    monkeypatch.setattr(scoring, "packing_is_exact", lambda model, budget: False)  # attention would cross samples
    with pytest.warns(UserWarning, match="padded batches instead"):
        assert scoring_pack_tokens(student, True, 700) is None


def test_one_packed_row_per_forward_when_the_row_budget_covers_the_forward():
    lengths = [300, 290, 200, 210, 100, 5, 900, 40]
    forwards = list(scoring_forwards([[1] * n for n in lengths], [1] * len(lengths), 1000, 0, ONE_ROW))
    assert all(inputs["input_ids"].shape[0] == 1 for _, inputs, _ in forwards)  # batch size 1: what flash reads
    assert all(inputs["input_ids"].shape[1] <= 1000 for _, inputs, _ in forwards)
    assert sorted(i for batch, _, _ in forwards for i in batch) == list(range(len(lengths)))
    several = list(scoring_forwards([[1] * n for n in lengths], [1] * len(lengths), 1000, 0, 300))
    assert max(inputs["input_ids"].shape[0] for _, inputs, _ in several) > 1  # sdpa: several rows per forward


def test_best_fit_rows_fill_the_tails_of_long_rows_with_short_sequences():
    lengths = [300, 290, 200, 210, 100, 5, 900]
    rows = best_fit_rows(lengths, max_tokens=512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert rows[0] == [6]  # longer than the budget: alone, and the fullest row comes first
    fills = [sum(lengths[i] for i in row) for row in rows[1:]]
    assert all(fill <= 512 for fill in fills)
    # longest first, each into the fullest row with room: 210 joins 300 (212 left), not 290 (222 left); 5 goes
    # to 290 + 200 (22 left), the fullest row it fits
    assert rows == [[6], [0, 3], [1, 2, 5], [4]]


def test_row_budget_packs_one_row_for_flash_attention(models, monkeypatch):
    student, teacher, _ = models
    assert row_budget([student, teacher], 512) == 512
    monkeypatch.setattr(teacher.config, "_attn_implementation", "flash_attention_2")
    assert row_budget([student, teacher], 512) == ONE_ROW


def test_packing_is_probed_in_the_layout_it_will_get(models, monkeypatch):
    """flash-attention reads packed position ids in a batch of one row only: a model like it passes the one-row
    probe and fails the several-rows one (transformers' `_is_packed_sequence`)."""
    student, _, _ = models
    decoder = student.get_decoder()

    class OneRowOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, input_ids, position_ids=None, **kwargs):
            if input_ids.shape[0] > 1:
                position_ids = None
            return self.decoder(input_ids=input_ids, position_ids=position_ids, **kwargs)

    monkeypatch.setattr(student, "get_decoder", lambda: OneRowOnly())
    assert packing_is_exact(student, ONE_ROW)
    assert not packing_is_exact(student, 512)


def test_a_model_that_ignores_sample_boundaries_is_detected(models):
    student, _, _ = models
    assert packing_is_exact(student)
    student.config._attn_implementation = "eager"
    try:
        assert packing_is_exact(student)  # eager attention reads packed position_ids too
    finally:
        student.config._attn_implementation = "sdpa"

    class Unpacked(torch.nn.Module):  # a decoder that drops position_ids: packed samples would see each other
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.decoder(input_ids=input_ids, **kwargs)

    unpacked = Unpacked(student.get_decoder())
    original = student.get_decoder
    student.get_decoder = lambda: unpacked
    try:
        assert not packing_is_exact(student)
    finally:
        student.get_decoder = original


def test_the_ce_pass_keeps_each_tokens_top_k_from_the_same_logits(models, uneven_rows):
    """What a top-K teacher cache stores, against the model's own full distribution, request by request."""
    student, _, tokenizer = models
    requests = [ScoringRequest(r.ids, len(r.prompt_ids)) for r in uneven_rows]
    student.eval()
    try:
        nll, tops = response_scores(student, requests, batch_tokens=2048, pad_id=tokenizer.pad_token_id, topk=5)
        _, packed_tops = response_scores(student, requests, batch_tokens=1400, pad_id=tokenizer.pad_token_id,
                                         pack_tokens=700, topk=5)
        assert nll == response_nll(student, requests, 2048, tokenizer.pad_token_id)
        for request, top, packed in zip(requests, tops, packed_tops):
            with torch.no_grad():
                logits = student(input_ids=torch.tensor([request.ids])).logits[0].float()
            log_probs = torch.log_softmax(logits[request.prompt_len - 1 : len(request.ids) - 1], -1)
            want_values, want_ids = log_probs.topk(5, dim=-1)
            assert top.ids.shape == (len(request.ids) - request.prompt_len, 5) and top.ids.dtype == torch.int32
            assert torch.equal(top.ids.long(), want_ids)
            torch.testing.assert_close(top.log_probs, want_values, rtol=1e-4, atol=1e-5)
            rest = log_probs.scatter(1, want_ids, -torch.inf).logsumexp(-1)
            torch.testing.assert_close(top.log_tail, rest, rtol=1e-4, atol=1e-5)
            assert torch.equal(packed.ids, top.ids)  # the packed pass keeps the same top K
    finally:
        student.train()
