"""A damaged model (a truncated or garbled model.safetensors) is named, with what to do, by every command that loads
one, and never reaches the user as a SafetensorError traceback."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from syllabus.curate.cli import app as curate_app
from syllabus.evaluate.cli import app as evaluate_app
from syllabus.train.cli import app as train_app

runner = CliRunner()


def damage(model, tmp_path, how):
    broken = tmp_path / f"broken-{how}"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if how == "truncated" else data[:8] + b"\x00garbled" + data[16:])
    return broken


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_every_command_names_a_damaged_model_file(tmp_path, tiny_model, small_dolly, how):
    from syllabus.curate.schedules.build import build_schedule
    from test_schedule_support import make_frame, write

    broken = damage(tiny_model, tmp_path, how)
    schedule, _ = build_schedule(write(tmp_path, make_frame(8)).path, "full", tmp_path / "schedule", {})
    commands = [
        (curate_app, ["score", str(small_dolly), "--out", str(tmp_path / "table"), "--student", str(broken),
                      "--teacher", str(tiny_model), "--gen-engine", "hf", "--ce-engine", "hf", "--quiet"]),
        (train_app, ["run", "--manifest", str(schedule), "--out", str(tmp_path / "run"),
                     "--student", str(broken), "--teacher", str(tiny_model)]),
        (evaluate_app, ["run", "--model", str(broken), "--out", str(tmp_path / "eval"), "--sets", "dollyeval",
                        "--limit", "2", "--engine", "hf", "--quiet"]),
    ]
    for app, args in commands:
        result = runner.invoke(app, args)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args[0], said)
        assert f"{broken / 'model.safetensors'} is damaged" in said and "Download or save the model again" in said
        assert "Traceback" not in result.output
