"""On-policy generation through vLLM in the training process (`--on-policy-engine vllm`): the engine takes the
student's current weights, leaves the trainer's RNGs alone, keeps each response's budget and EOS, and trains both
on-policy modes end to end. Each training run is a subprocess: the in-process engine holds a torch.distributed group
and half a gigabyte of KV cache, neither of which should outlive its run inside pytest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from syllabus.core.engines import vllm_available
from syllabus.core.engines.base import GenerationParams, ScoringRequest
from test_train import schedule, table, train_args  # noqa: F401 (table: a fixture)

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]

EOS = 2  # SmolLM2's <|im_end|>; the helpers' tiny models use the real tokenizer


def teacher_forced_nll(model, request):
    with torch.no_grad():
        logprobs = model(torch.tensor([request.ids])).logits[0].double().log_softmax(-1)
    picked = [logprobs[t - 1, request.ids[t]].item() for t in range(request.prompt_len, len(request.ids))]
    return -sum(picked) / len(picked)


def test_the_in_process_engine_takes_the_trainers_weights_and_leaves_its_rngs(tiny_model, dolly_rows):
    from syllabus.core.engines import open_engine

    tok = AutoTokenizer.from_pretrained(tiny_model)
    requests = [ScoringRequest(ids, len(ids) // 2) for ids in (tok(r["prompt"] + r["output"]).input_ids[:40]
                                                                for r in dolly_rows[:3])]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    engine = open_engine("vllm", str(tiny_model), dtype="float32", max_model_len=256, kv_cache_tokens=4 * 256,
                         in_process=True)
    try:
        assert torch.equal(torch.rand(3), expected_draw)  # vLLM reseeds the global RNGs; the engine restores them
        before = engine.response_nll(requests)
        with torch.no_grad():  # a student a few steps into training
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        engine.load_weights(model.state_dict().items())
        after = engine.response_nll(requests)
        for request, old, new in zip(requests, before, after):
            reference = teacher_forced_nll(model, request)
            assert new == pytest.approx(reference, rel=1e-3)  # the engine now scores with the trainer's weights
            assert abs(old - reference) > 100 * abs(new - reference)
        prompts = [r.ids[: r.prompt_len] for r in requests]
        params = GenerationParams(temperature=1.0, max_new_tokens=9)
        generated = engine.generate(prompts, params, seeds=[1, 2, 3], budgets=[3, 9, 5])
        for (generation,), budget in zip(generated, [3, 9, 5]):  # each ends at its own budget, or earlier at EOS
            assert len(generation.token_ids) == budget or generation.token_ids[-1:] == [EOS]
    finally:
        engine.close()
    assert not torch.distributed.is_initialized()  # the engine's own group left with it


def run_train(args):
    result = subprocess.run([sys.executable, "-m", "syllabus.train", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_gkd_with_vllm_loads_the_students_weights_every_n_steps(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=2)
    out = tmp_path / "gkd"
    run_train(train_args(sched, out, tiny_model, tiny_teacher, "--on-policy", "gkd", "--on-policy-engine", "vllm",
                         "--on-policy-share", "1", "--on-policy-max-new-tokens", "8", "--on-policy-sync-every", "2",
                         "--max-steps", "5"))
    m = metrics(out)
    assert [r.get("weights_synced", False) for r in m] == [True, False, True, False, True]
    assert all(r["generated_tokens"] == r["tokens"] <= 4 * 8 and r["kd"] > 0 for r in m)  # 4 responses, <= 8 each


def test_distillm_with_vllm_generates_replays_and_validates(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=2)
    out = tmp_path / "distillm"
    run_train(train_args(sched, out, tiny_model, tiny_teacher, "--on-policy", "distillm", "--on-policy-engine",
                         "vllm", "--distillm-init-threshold", "1", "--distillm-capacity", "4",
                         "--distillm-valid-rows", "4", "--on-policy-max-new-tokens", "6"))
    m = metrics(out)
    assert m[0]["generate_micro_batches"] == 1 and m[0]["weights_synced"]  # fills the buffer first
    assert sum(r["replay_micro_batches"] for r in m) >= 1 and sum(r["generate_micro_batches"] for r in m) >= 2
    assert [r["step"] for r in m if "valid_ce" in r] == [3, 6]
