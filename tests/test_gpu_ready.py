"""What a GPU user needs, checked on the CPU: the attention implementation as a setting, and gradient checkpointing.
The GPU check itself is tests/test_gpu_check.py; the `cuda` lane, tests/test_cuda.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import full_run_args, scored_table, short_rows
from syllabus.core.attention import resolve_attention
from syllabus.curate.schedules.build import build_schedule
from syllabus.train.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def table(tmp_path_factory, dolly_rows, real_tokenizer_dir):
    return scored_table(tmp_path_factory.mktemp("gpu-ready"), short_rows(dolly_rows, 12), 256, real_tokenizer_dir)


def train_args(table, tmp_path, student, teacher, out, *extra):
    return full_run_args(table, tmp_path, student, teacher, out, "--max-steps", "3", "--lr", "3e-3", "--precision",
                         "fp32", "--pack-tokens", "256", *extra)


def test_auto_attention_is_sdpa_without_flash_attention_and_flash_is_refused_where_it_cannot_run(monkeypatch):
    from syllabus.core import attention

    assert resolve_attention("auto") == "sdpa"  # this machine: no CUDA
    assert resolve_attention("eager") == "eager"
    with pytest.raises(ValueError, match="CUDA GPUs only; use sdpa"):
        resolve_attention("flash_attention_2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU without the package
    monkeypatch.setattr(attention, "flash_attention_installed", lambda: False)
    assert resolve_attention("auto") == "sdpa"
    with pytest.raises(ValueError, match="pip install flash-attn --no-build-isolation"):
        resolve_attention("flash_attention_2")
    monkeypatch.setattr(attention, "flash_attention_installed", lambda: True)
    assert resolve_attention("auto") == "flash_attention_2"
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        resolve_attention("flash")


def test_the_attention_setting_loads_both_models_with_it_and_a_non_default_one_is_part_of_the_run(
        table, tmp_path, tiny_model, tiny_teacher):
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import setup

    manifest, _ = build_schedule(table.path, "full", tmp_path / "schedule", {"epochs": 1})
    identities = {}
    for attention in ("eager", "sdpa"):
        run = setup(TrainConfig(manifest=str(manifest), out=str(tmp_path / attention), student=str(tiny_model),
                                teacher=str(tiny_teacher), precision="fp32", attention=attention))
        assert run.student.model.config._attn_implementation == attention
        assert run.teacher.config._attn_implementation == attention
        assert run.pack_tokens is not None  # packed rows stay exact under either (core/packing.py checks)
        identities[attention] = json.loads((tmp_path / attention / "config.json").read_text())["config"]
    assert identities["eager"]["attention"] == "eager"
    assert "attention" not in identities["sdpa"]  # runs from before the setting keep their identity
    for attention in ("flash_attention_2", "flex_attention"):  # neither trains on a CPU: refused before any model
        refused = runner.invoke(app, train_args(table, tmp_path, tiny_model, tiny_teacher, tmp_path / attention,
                                                "--attention", attention))
        assert refused.exit_code == 2 and "CUDA GPUs only" in refused.output
        assert not (tmp_path / attention).exists()


def test_the_transformers_engine_takes_the_attention_setting(tiny_model):
    from syllabus.core.engines.hf_engine import HFEngine
    from syllabus.curate.score import engine_options as score_options
    from syllabus.curate.score_config import ScoreConfig
    from syllabus.evaluate.config import EvalConfig
    from syllabus.evaluate.run import engine_options as eval_options

    score = ScoreConfig(data="x.jsonl", out="o", attention="eager")
    assert score_options(score, "hf")["attention"] == "eager"
    assert "attention" not in score_options(score, "vllm")  # vLLM picks its own backend
    assert score.identity()["attention"] == "eager"
    assert "attention" not in ScoreConfig(data="x.jsonl", out="o").identity()  # tables from before keep theirs
    assert eval_options(EvalConfig(model="m", out="o"), "hf")["attention"] == "sdpa"
    engine = HFEngine(str(tiny_model), dtype="float32", attention="eager")
    assert engine.model.config._attn_implementation == "eager"


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_trains_what_the_plain_run_trains(table, tmp_path, tiny_model, tiny_teacher, lora):
    """Packed rows, 3 optimizer steps: recomputing the decoder layers in the backward pass changes the memory,
    not the weights (fp32 on the CPU: equal to float rounding)."""
    extra = ["--lora", "r=4,alpha=8,dropout=0"] if lora else []
    weights = {}
    for checkpointing in (False, True):
        out = tmp_path / f"run-{checkpointing}"
        flags = ["--gradient-checkpointing"] if checkpointing else []
        result = runner.invoke(app, train_args(table, tmp_path, tiny_model, tiny_teacher, out, *extra, *flags))
        assert result.exit_code == 0, result.output
        weights[checkpointing] = load_file(out / "checkpoints" / "final" / "model.safetensors")
    base = load_file(Path(tiny_model) / "model.safetensors")
    assert any(not torch.equal(base[k], weights[True][k]) for k in base)  # it trained
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-5, atol=1e-6)
