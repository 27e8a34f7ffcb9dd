"""Scoring arithmetic against direct computations: CE, DDS, ROUGE-L, output CE."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from syllabus.core.engines.base import GenerationParams, ScoringRequest
from syllabus.core.engines.hf_engine import HFEngine
from syllabus.core.rouge import rouge_l
from syllabus.core.scoring import length_batches
from syllabus.core.tokens import encode_pair


def direct_nll(model, ids: list[int], prompt_len: int) -> float:
    """Float64 reference: one sequence, no padding, no chunking."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logprobs = logits.log_softmax(-1)
    targets = ids[prompt_len:]
    return -sum(logprobs[t - 1, tok].item() for t, tok in zip(range(prompt_len, len(ids)), targets)) / len(targets)


@pytest.fixture(scope="module")
def requests_(tiny_model, dolly_rows):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = []
    for row in dolly_rows[:10]:
        enc = encode_pair(tok, row["prompt"], row["output"], max_seq_len=384, truncate=True)
        out.append(ScoringRequest(enc.ids, len(enc.prompt_ids)))
    return out


def test_hf_engine_ce_equals_direct_computation(tiny_model, requests_):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    expected = [direct_nll(reference, r.ids, r.prompt_len) for r in requests_]
    # fp32 engine, small batches so that padding and chunking both happen
    got = HFEngine(str(tiny_model), dtype="float32", batch_tokens=1024).response_nll(requests_)
    assert got == pytest.approx(expected, rel=1e-4)
    got_bf16 = HFEngine(str(tiny_model), dtype="bfloat16").response_nll(requests_)
    assert got_bf16 == pytest.approx(expected, rel=0.05)  # bf16 tolerance


def test_length_batches_respect_the_token_budget():
    lengths = [5, 100, 40, 41, 7, 99, 3]
    batches = length_batches(lengths, batch_tokens=120)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 120 or len(b) == 1


def test_generation_logprobs_are_raw_and_match_a_forward_pass(tiny_model, requests_):
    """output_ce comes from generation log-probs; they must be temperature-1 log-probs of the generated tokens."""
    engine = HFEngine(str(tiny_model), dtype="float32")
    prompts = [r.ids[: r.prompt_len] for r in requests_[:3]]
    gens = engine.generate(prompts, GenerationParams(temperature=0.7, max_new_tokens=6, seed=3), seeds=[3, 4, 5])
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for prompt, (gen,) in zip(prompts, gens):
        assert 1 <= len(gen.token_ids) <= 6 and len(gen.logprobs) == len(gen.token_ids)
        expected = direct_nll(reference, prompt + gen.token_ids, len(prompt))
        assert -sum(gen.logprobs) / len(gen.logprobs) == pytest.approx(expected, rel=1e-3)


def test_dds_is_student_over_teacher_and_null_unless_teacher_positive():
    from syllabus.curate.score import with_dds

    frame = pl.DataFrame({"student_ce": [2.0, 1.0, 3.0, None, 0.5], "teacher_ce": [1.0, 0.0, -1.0, 2.0, 4.0]})
    assert with_dds(frame)["dds"].to_list() == [2.0, None, None, None, 0.125]


@pytest.mark.parametrize(
    "prediction, references",
    [
        ("The cat sat on the mat.", ["A cat was sitting on the mat."]),
        ("running quickly", ["He runs quick", "nothing alike"]),
        ("", ["anything"]),
        ("Completely different words", ["The quick brown fox", "jumps over dogs", "different words completely"]),
    ],
)
def test_rouge_l_matches_rouge_score_max_over_references(prediction, references):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)
    assert rouge_l(prediction, references) == pytest.approx(expected)
    assert 0.0 <= rouge_l(prediction, references) <= 1.0


def test_rouge_l_uses_the_stemmer():
    assert rouge_l("cats running", "cat run") == pytest.approx(1.0)
    assert math.isclose(rouge_l("x", []), 0.0)


def test_encode_pair_keeps_eos_and_flags_or_truncates_long_rows(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    enc = encode_pair(tok, "Question: " + "word " * 50, "An answer " * 40, max_seq_len=64)
    assert enc.status == "too_long" and enc.response_ids[-1] == tok.eos_token_id
    cut = encode_pair(tok, "Question: " + "word " * 50, "An answer " * 40, max_seq_len=64, truncate=True)
    assert cut.status == "ok" and cut.truncated and len(cut.ids) == 64
    assert len(cut.prompt_ids) <= 32
    short = encode_pair(tok, "Hi", "Hello", max_seq_len=64)
    assert short.status == "ok" and not short.truncated and short.response_ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("prompt_words, response_words", [(10, 200), (200, 10), (200, 200), (0, 500)])
def test_truncation_keeps_the_instruction_and_cuts_the_response_first(tiny_model, prompt_words, response_words):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt, response = "Summarise: " + "word " * prompt_words, "An answer " * response_words
    full_prompt = tok(prompt).input_ids
    full_response = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    cut = encode_pair(tok, prompt, response, max_seq_len=64, truncate=True)
    assert cut.status == "ok" and cut.truncated and len(cut.ids) == 64
    # the prompt keeps what the response leaves, never less than the whole prompt or half the budget
    assert len(cut.prompt_ids) == min(len(full_prompt), max(64 - len(full_response), 32))
    assert cut.prompt_ids == full_prompt[: len(cut.prompt_ids)]
    assert cut.response_ids == full_response[: len(cut.response_ids)]


def test_an_engine_slot_reuses_its_engine_and_closes_it_before_another_starts(tiny_model, tiny_teacher, monkeypatch):
    """The slot a backend owns: the same model and settings get the open engine (one start), another model closes
    it first (one model in memory), and closing the slot closes the engine."""
    from syllabus.core.backends import LocalBackend

    closed = []
    monkeypatch.setattr(HFEngine, "close", lambda self: closed.append(self))
    with LocalBackend() as backend:
        first = backend.engines.get("hf", str(tiny_model), dtype="float32")
        assert backend.engines.get("hf", str(tiny_model), dtype="float32") is first and not closed
        other = backend.engines.get("hf", str(tiny_teacher), dtype="float32")
        assert other is not first and closed == [first]
        assert list(backend.map_parts(lambda rows, engines: engines.get("hf", str(tiny_teacher), dtype="float32"),
                                      iter([(0, pl.DataFrame())]))) == [(0, other)]  # the workers get this slot
    assert closed == [first, other]  # the backend closed what it held
