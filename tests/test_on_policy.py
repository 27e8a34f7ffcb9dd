"""On-policy distillation (`train run --on-policy gkd`): the share drawn, the student's own responses (EOS a target,
the prompt masked), the teacher's signal on them, GKD's loss, the refusals, and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from syllabus.core.logits import logit_head
from syllabus.core.tokens import Encoded
from syllabus.train.data import collate
from syllabus.train.loop import teacher_states
from syllabus.train.on_policy import (AdaptiveThreshold, ReplayBuffer, generated_samples, generation_seed,
                                      sample_responses, with_response)
from test_train import PREEMPT, app, metrics, runner, schedule, table  # noqa: F401 (table: a fixture)
from test_train import train_args as any_engine_args

EOS = 2  # SmolLM2's <|im_end|> is 2; the helpers' tiny models use the real tokenizer


def train_args(*args):
    """`test_train.train_args` with the transformers engine, whose sampling is bit-reproducible: the tests here hold
    exact equalities (vLLM's engine, auto's choice where it is installed, is tested in test_on_policy_vllm.py)."""
    return [*any_engine_args(*args), "--on-policy-engine", "transformers"]


def weights(out):
    return load_file(out / "checkpoints" / "final" / "model.safetensors")


def test_each_step_draws_exactly_its_share_the_same_on_every_run():
    step = [[f"s{i}" for i in range(k, k + 4)] for k in range(0, 12, 4)]  # 3 micro-batches of 4
    drawn = generated_samples(step, 0.5, seed=0, epoch=1, step_index=2)
    assert len(drawn) == 6 and drawn <= {s for micro in step for s in micro}
    assert drawn == generated_samples(step, 0.5, seed=0, epoch=1, step_index=2)  # a resumed run draws the same
    assert len({frozenset(generated_samples(step, 0.5, 0, 1, k)) for k in range(8)}) > 1  # steps differ
    assert generated_samples(step, 0.0, 0, 1, 2) == set() and len(generated_samples(step, 1.0, 0, 1, 2)) == 12
    assert len(generated_samples(step, 0.3, 0, 0, 0)) == round(0.3 * 12)
    assert generation_seed(0, 1, 2, 0) != generation_seed(0, 1, 2, 1)


def test_a_response_ends_after_its_first_eos_which_it_keeps(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()
    prompts = [[1, 400, 500, 600], [1, 700]]
    free = sample_responses(model, prompts, [12, 12], eos_id=-1, pad_id=0, seed=7)
    assert model.training  # it samples in eval mode, then goes back to training
    assert [len(r) for r in free] == [12, 12]  # no EOS: the budget ends them
    stop = free[0][3]  # a token the student samples: made its EOS, the same draw stops there
    cut = sample_responses(model, prompts, [12, 5], eos_id=stop, pad_id=0, seed=7)
    assert cut[0] == free[0][: free[0].index(stop) + 1] and cut[0][-1] == stop
    assert len(cut[1]) <= 5 and cut[1] == free[1][: len(cut[1])]


def test_rng_outside_generation_is_untouched(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    sample_responses(model, [[1, 400]], [4], eos_id=-1, pad_id=0, seed=11)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("pack_tokens", [None, 512], ids=["padded", "packed"])
def test_generated_tokens_are_the_targets_and_the_teacher_sees_that_sequence(tiny_teacher, pack_tokens):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval()
    truth = Encoded([1, 400, 500], [610, 620, EOS], "ok")
    other = Encoded([1, 700], [710, EOS], "ok")
    own = with_response(truth, [901, 902, 903, EOS], EOS)
    assert not own.truncated and with_response(truth, [901, 902], EOS).truncated
    batch = collate([own, other], pad_id=0, pack_tokens=pack_tokens, generated=[True, False])
    assert batch.targets.tolist() == [901, 902, 903, EOS, 710, EOS]  # the prompt is never a target; EOS is
    assert batch.generated.tolist() == [True] * 4 + [False] * 2
    states = teacher_states(teacher, batch, contextlib.nullcontext)
    got = logit_head(teacher).logits(states[:4]).log_softmax(-1)
    with torch.no_grad():
        direct = teacher(torch.tensor([own.ids])).logits[0, len(own.prompt_ids) - 1: -1].float().log_softmax(-1)
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_share_0_trains_exactly_the_off_policy_run(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=2)
    off = runner.invoke(app, train_args(sched, tmp_path / "off", tiny_model, tiny_teacher, "--loss", "jsd",
                                        "--loss-param", "beta=0.1", "--kd-weight", "1"))
    assert off.exit_code == 0, off.output
    on = runner.invoke(app, train_args(sched, tmp_path / "on", tiny_model, tiny_teacher, "--on-policy", "gkd",
                                       "--on-policy-share", "0"))
    assert on.exit_code == 0, on.output
    a, b = weights(tmp_path / "off"), weights(tmp_path / "on")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(r["loss_name"] == "jsd" and r["kd_weight"] == 1.0 for r in metrics(tmp_path / "on"))


@pytest.mark.slow
def test_share_1_trains_on_generated_tokens_only(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--on-policy", "gkd",
                                           "--on-policy-share", "1", "--on-policy-max-new-tokens", "8"))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    assert len(m) == 3 and all(r["generated_tokens"] == r["tokens"] for r in m)  # every response is the student's
    assert all(r["tokens"] <= 4 * 8 for r in m)  # 4 samples of at most 8 generated tokens, no prompt token
    assert all(r["ce"] == 0.0 and r["kd"] > 0 and r["generation_seconds"] > 0 for r in m)
    off = runner.invoke(app, train_args(sched, tmp_path / "gkd-half", tiny_model, tiny_teacher, "--on-policy", "gkd",
                                        "--on-policy-max-new-tokens", "8"))
    assert off.exit_code == 0, off.output
    half = metrics(tmp_path / "gkd-half")
    assert all(0 < r["generated_tokens"] < r["tokens"] for r in half)  # 2 of each step's 4 samples


def test_on_policy_refusals_say_what_to_do(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=1)
    result = runner.invoke(app, train_args(sched, tmp_path / "b", tiny_model, tiny_teacher, "--on-policy", "gkd",
                                           "--loss", "sft"))
    assert result.exit_code == 2 and "no ground truth" in result.output and "--loss jsd" in result.output
    result = runner.invoke(app, train_args(sched, tmp_path / "c", tiny_model, tiny_teacher, "--on-policy-share", "0.3"))
    assert result.exit_code == 2 and "--on-policy-share needs --on-policy gkd" in result.output


def test_on_policy_refuses_a_cached_teacher_and_fsdp(table, tmp_path):
    from syllabus.core.schedule import read_schedule
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import TrainError, _setup_on_policy, epoch_objective

    sched = read_schedule(schedule(table, tmp_path, "full", epochs=2))
    config = TrainConfig(manifest=str(sched.path), out=str(tmp_path / "o"), on_policy="gkd")
    objectives = tuple(epoch_objective(e, config) for e in sched.epochs)
    with pytest.raises(TrainError, match="epoch 1 trains on-policy .2 epoch.*--teacher cached.*give --teacher a model"):
        _setup_on_policy(config, sched, objectives, cache=object(), sharded=False)
    with pytest.raises(TrainError, match="FSDP-sharded student cannot generate yet: train on-policy with DDP"):
        _setup_on_policy(config, sched, objectives, cache=None, sharded=True)
    assert [rule.share for rule in _setup_on_policy(config, sched, objectives, None, False)] == [0.5, 0.5]


def killed_and_resumed(tmp_path, sched, student, teacher, extra):
    """Train `extra` uninterrupted into ref/, and again into killed/ with a SIGKILL as step 5 is logged (after the
    step-4 snapshot), then --resume it; returns (ref, killed, the snapshot the resume started from)."""
    assert runner.invoke(app, train_args(sched, tmp_path / "ref", student, teacher, *extra)).exit_code == 0
    out = tmp_path / "killed"
    args = train_args(sched, out, student, teacher, *extra)
    killed = subprocess.run([sys.executable, PREEMPT, "train-step", "5", "syllabus.train", *args],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    saved = json.loads((out / "state" / "progress.json").read_text())
    resumed = subprocess.run([sys.executable, "-m", "syllabus.train", *args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    return tmp_path / "ref", out, saved


@pytest.mark.slow
def test_resume_after_sigkill_during_an_on_policy_epoch_is_exact(table, tmp_path, real_tokenizer_dir, tiny_teacher):
    from helpers import tiny_llama

    student = tiny_llama(real_tokenizer_dir, tmp_path / "dropout-student", seed=3, dropout=0.1)
    sched = schedule(table, tmp_path, "full", epochs=2)
    extra = ("--save-every-steps", "2", "--on-policy", "gkd", "--on-policy-max-new-tokens", "12")
    ref, out, saved = killed_and_resumed(tmp_path, sched, student, tiny_teacher, extra)
    assert saved["global_step"] == 4  # mid-epoch 2
    a, b = weights(ref), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_lora_student_samples_with_its_adapters(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "lora"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--lora", "r=4", "--on-policy", "gkd",
                                           "--on-policy-share", "1", "--on-policy-max-new-tokens", "4",
                                           "--max-steps", "2"))
    assert result.exit_code == 0, result.output
    assert [r["generated_tokens"] == r["tokens"] for r in metrics(out)] == [True, True]


@pytest.mark.slow
def test_the_schedules_on_policy_epochs_train_on_policy_unless_overridden(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=2, on_policy="gkd", on_policy_share=0.25)
    out = tmp_path / "manifest"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--on-policy-max-new-tokens", "6",
                                           "--max-steps", "2"))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    assert all(0 < r["generated_tokens"] <= 6 and r["loss_name"] == "jsd" for r in m)  # 1 of each step's 4
    off = tmp_path / "off"
    result = runner.invoke(app, train_args(sched, off, tiny_model, tiny_teacher, "--on-policy", "off", "--max-steps", "2"))
    assert result.exit_code == 0, result.output
    assert all("generated_tokens" not in r and r["loss_name"] == "jsd" for r in metrics(off))


def test_distillms_threshold_grows_by_a_tenth_when_the_validation_loss_worsens_by_loss_eps():
    rule = AdaptiveThreshold()
    grew = [rule.observe(loss) for loss in (2.0, 2.05, 2.1, 1.5, 2.19, 2.2, 2.31, 9.0)]
    # reference 2.0 -> 2.1 (grows) -> 2.2 (grows: 2.19 was not enough) -> 2.31 (grows) -> 9.0 (grows)
    assert grew == [False, False, True, False, False, True, True, True]
    assert rule.value == pytest.approx(0.4) and rule.reference == 9.0
    capped = AdaptiveThreshold(value=0.95, reference=1.0)
    assert capped.observe(1.2) and capped.value == 1.0 and capped.observe(1.4) and capped.value == 1.0
    assert AdaptiveThreshold(**rule.state()) == rule


def test_distillms_draw_generates_replays_or_keeps_the_ground_truth():
    rule = AdaptiveThreshold(value=0.6)
    # halfway through training fresh outputs take 0.6 x 0.5 = 0.3 of the draws, replays up to 0.6
    assert [rule.choose(r, 0.5, buffered=1000, capacity=1000) for r in (0.1, 0.29, 0.31, 0.59, 0.61, 0.99)] == [
        "generate", "generate", "replay", "replay", "truth", "truth"]
    assert rule.choose(0.5, 0.5, buffered=10, capacity=1000) == "generate"  # a buffer not yet full is filled
    assert AdaptiveThreshold().choose(0.0, 0.0, 0, 1000) == "truth"  # threshold 0: DistiLLM starts off-policy


def test_the_replay_buffer_is_bounded_draws_from_its_generator_and_resumes():
    buffer = ReplayBuffer(capacity=3)
    buffer.push([("a", [1], [5, 2]), ("b", [1], [6, 2])])
    buffer.push([("c", [1], [7]), ("d", [1], [8, 2])])
    assert len(buffer) == 3 and [item[0] for item in buffer.items] == ["b", "c", "d"]  # the oldest left
    again = ReplayBuffer.from_state(json.loads(json.dumps(buffer.state())))  # through the snapshot's JSON
    assert list(again.items) == list(buffer.items) and again.capacity == 3
    assert buffer.draw(2, random.Random(4)) == again.draw(2, random.Random(4))
    assert len(set(item[0] for item in buffer.draw(3, random.Random(1)))) == 3 and len(buffer.draw(9, random.Random(1))) == 3
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ReplayBuffer(0)


DISTILLM = ("--on-policy", "distillm", "--on-policy-max-new-tokens", "6", "--distillm-valid-rows", "4")


@pytest.mark.slow
def test_distillm_fills_its_buffer_then_replays_and_validates_at_epoch_ends(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=2)
    out = tmp_path / "distillm"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, *DISTILLM,
                                           "--distillm-init-threshold", "1", "--distillm-capacity", "4"))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    assert all(r["loss_name"] == "skl" and r["threshold"] == 1.0 for r in m)  # DistiLLM's skew KL, kd_weight 1
    assert all(r["generate_micro_batches"] + r["replay_micro_batches"] + r["truth_micro_batches"] == 1 for r in m)
    assert m[0]["generate_micro_batches"] == 1  # the empty buffer is filled first: 4 outputs, its capacity
    assert sum(r["replay_micro_batches"] for r in m) >= 1 and all(r["generated_tokens"] == r["tokens"] for r in m)
    assert [i for i, r in enumerate(m) if "valid_ce" in r] == [2, 5]  # each epoch's last step
    state = json.loads((out / "state" / "progress.json").read_text())["distillm"]
    assert len(state["buffer"]["items"]) == 4 and state["threshold"]["value"] == 1.0


def test_distillms_threshold_follows_the_validation_loss_in_training(table, tmp_path, tiny_model, tiny_teacher,
                                                                     monkeypatch):
    from syllabus.train import loop

    losses = iter([2.0, 2.05, 2.2, 2.25, 2.4, 2.4, 2.4])  # before step 1, then after each step
    monkeypatch.setattr(loop, "validation_loss", lambda run, model, requests: next(losses))
    sched = schedule(table, tmp_path, "full", epochs=2)
    out = tmp_path / "rising"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, *DISTILLM,
                                           "--distillm-valid-every", "1", "--max-steps", "4"))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    assert [r["valid_ce"] for r in m] == [2.05, 2.2, 2.25, 2.4]
    assert [r["threshold"] for r in m] == [0.0, 0.0, 0.1, 0.1]  # each step's draw saw the threshold before it
    assert json.loads((out / "state" / "progress.json").read_text())["distillm"]["threshold"]["value"] == 0.2
    assert m[0]["truth_micro_batches"] == 1 and "generated_tokens" not in m[0]  # threshold 0: the ground truth


@pytest.mark.slow
def test_resume_after_sigkill_during_a_distillm_epoch_is_exact(table, tmp_path, real_tokenizer_dir, tiny_teacher):
    from helpers import tiny_llama

    student = tiny_llama(real_tokenizer_dir, tmp_path / "dropout-student", seed=3, dropout=0.1)
    sched = schedule(table, tmp_path, "full", epochs=2)
    extra = ("--save-every-steps", "2", *DISTILLM, "--distillm-init-threshold", "0.7", "--distillm-capacity", "6")
    ref, out, saved = killed_and_resumed(tmp_path, sched, student, tiny_teacher, extra)
    assert saved["global_step"] == 4 and saved["distillm"]["buffer"]["items"]  # mid-epoch 2, outputs buffered
    a, b = weights(ref), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["replay_micro_batches"] for r in metrics(out)] == [r["replay_micro_batches"] for r in metrics(ref)]


def test_distillm_refusals_say_what_to_do(table, tmp_path, tiny_model, tiny_teacher):
    from syllabus.core.schedule import read_schedule
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import TrainError, _setup_on_policy, epoch_objective

    sched = schedule(table, tmp_path, "full", epochs=1)
    result = runner.invoke(app, train_args(sched, tmp_path / "a", tiny_model, tiny_teacher, "--on-policy", "distillm",
                                           "--on-policy-share", "0.5"))
    assert result.exit_code == 2 and "distillm draws its own share" in result.output
    config = TrainConfig(manifest=str(sched), out=str(tmp_path / "o"), on_policy="distillm")
    plan = read_schedule(sched)
    objectives = tuple(epoch_objective(e, config) for e in plan.epochs)
    assert _setup_on_policy(config, plan, objectives, None, False, processes=2)[0].mode == "distillm"  # on many
    bad = TrainConfig(manifest=str(sched), out=str(tmp_path / "o"), on_policy="distillm",
                      distillm_valid_set=str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(TrainError, match="--distillm-valid-set"):
        _setup_on_policy(bad, plan, objectives, None, False)


def test_the_engine_auto_picks_and_the_refusals_of_vllm(table, tmp_path):
    from syllabus.core.engines import vllm_available
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import TrainError, generation_engine

    sched = schedule(table, tmp_path, "full", epochs=1)
    auto = TrainConfig(manifest=str(sched), out=str(tmp_path / "o"), on_policy="gkd")
    assert generation_engine(auto, 1) == ("vllm" if vllm_available() else "transformers")
    assert generation_engine(auto, 2) == "transformers"  # what vLLM cannot do yet, auto leaves to transformers
    lora = TrainConfig(manifest=str(sched), out=str(tmp_path / "o"), on_policy="gkd", lora="r=4")
    assert generation_engine(lora, 1) == "transformers"
    missing = "" if vllm_available() else "vLLM is not installed"  # the first reason, on a machine without it
    asked = dataclasses.replace(lora, on_policy_engine="vllm")
    with pytest.raises(TrainError, match=f"--on-policy-engine vllm cannot run here: .*{missing or '--lora'}.*use "
                                         "--on-policy-engine transformers"):
        generation_engine(asked, 1)
    with pytest.raises(TrainError, match=missing or "each of the 2 processes would start an engine"):
        generation_engine(dataclasses.replace(auto, on_policy_engine="vllm"), 2)
