"""The "auto" number format: bf16 where the machine computes it natively, fp32 where torch would emulate it."""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import pytest
import torch

from syllabus.core import precision


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine does or does not compute bf16 natively (the probe, not torch, is replaced)."""
    def pretend(native: bool) -> None:
        monkeypatch.setattr(precision, "native_bf16", lambda: native)
        precision._warn_no_bf16.cache_clear()  # the warning is once per process: let each test see its own
    yield pretend
    precision._warn_no_bf16.cache_clear()


def test_auto_is_fp32_without_native_bf16_and_says_so_once(machine):
    machine(False)
    with pytest.warns(UserWarning, match="no native bf16") as seen:
        assert precision.resolve_dtype("auto") == "float32"
        assert precision.resolve_precision("auto") == "fp32"
    assert len(seen) == 1  # one warning for the process, not one per engine or per setting


def test_auto_is_bf16_where_native_and_an_explicit_choice_always_wins(machine):
    machine(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        assert precision.resolve_dtype("auto") == "bfloat16" and precision.resolve_precision("auto") == "bf16"
        machine(False)
        assert precision.resolve_dtype("bfloat16") == "bfloat16" and precision.resolve_precision("bf16") == "bf16"
        assert precision.resolve_dtype("float16") == "float16"


def test_unknown_formats_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown dtype 'bf16'; choose one of auto, bfloat16"):
        precision.resolve_dtype("bf16")
    with pytest.raises(ValueError, match="unknown precision 'bfloat16'; choose one of auto, bf16, fp32"):
        precision.resolve_precision("bfloat16")


@pytest.mark.skipif(torch.cuda.is_available() or platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
                    reason="reads the x86 CPU flags of a Linux CPU-only machine")
def test_the_probe_reads_this_cpus_bf16_instructions():
    flags = precision._cpu_features()
    assert "sse2" in flags  # the flags were read at all
    precision.native_bf16.cache_clear()
    assert precision.native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_commands_resolve_auto_before_they_record_it(machine, monkeypatch, tmp_path):
    """The configs keep "auto"; each command resolves it where it starts, so its outputs record the real format."""
    from syllabus.curate import score as score_mod
    from syllabus.curate.score_config import ScoreConfig
    from syllabus.evaluate import run as eval_mod
    from syllabus.evaluate.run import EvalConfig
    from syllabus.train.config import TrainConfig

    assert ScoreConfig(data="d.jsonl", out="o").dtype == "auto" == EvalConfig(model="m", out="o").dtype
    assert TrainConfig(manifest="m.json", out="o").precision == "auto"
    machine(False)
    seen = []

    def spy(config, progress):
        seen.append(config.dtype)
        return {}  # stop before any model loads

    monkeypatch.setattr(score_mod, "_score", spy)
    monkeypatch.setattr(eval_mod, "_evaluate", spy)
    with pytest.warns(UserWarning, match="no native bf16"):
        score_mod.score(ScoreConfig(data="d.jsonl", out=str(tmp_path / "table")))
        eval_mod.evaluate(EvalConfig(model="m", out=str(tmp_path / "eval")))
    assert seen == ["float32", "float32"]
