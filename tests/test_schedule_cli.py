"""`curate schedule` and `curate inspect` end to end: flags, --config YAML, errors with exit code 2, plots."""

from __future__ import annotations

import json
import subprocess
import sys

from test_schedule_support import make_frame, write
from typer.testing import CliRunner

from syllabus.curate.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_flags_reach_the_method(tmp_path):
    table = write(tmp_path, make_frame(120))
    out = tmp_path / "spectrum"
    result = run("schedule", table.path, "--method", "spectrum", "--epochs", 6, "--warmup-epochs", 1, "--la", 0.2,
                 "--step", "linear", "--loss", "skl", "--loss-param", "skew=0.2", "--reverse", "--out", out)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["params"]["la"] == 0.2 and m["params"]["step"] == "linear" and m["params"]["reverse"] is True
    assert len(m["epochs"]) == 6 and all(e["loss_params"] == {"skew": 0.2} for e in m["epochs"])
    assert "method spectrum, 6 epochs" in result.output


def test_config_file_with_flags_on_top(tmp_path):
    table = write(tmp_path, make_frame(120))
    config = tmp_path / "srd.yaml"
    config.write_text("method: srd\nepochs: 6\nkeep: 0.75\nseed: 7\nce-column: student_ce\nloss: jsd\n"
                      "loss_params: {beta: 0.4}\n")
    out = tmp_path / "srd"
    result = run("schedule", table.path, "--config", config, "--keep", 0.5, "--out", out)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["seed"] == 7 and m["params"]["keep"] == 0.5 and m["params"]["ce_column"] == "student_ce"
    assert m["params"]["epochs_per_stage"] == 2 and m["epochs"][0]["loss_params"] == {"beta": 0.4}
    assert "restart" in result.output
    generic = run("schedule", table.path, "--config", config, "-p", "keep=0.6", "-p", "rank-ties=min", "--keep", 0.5,
                  "--out", tmp_path / "generic")
    assert generic.exit_code == 0, generic.output
    params = manifest(tmp_path / "generic")["params"]
    assert params["keep"] == 0.5 and params["rank_ties"] == "min"  # config < -p < explicit flags


def test_errors_exit_2_with_a_message_naming_the_culprit(tmp_path):
    table = write(tmp_path, make_frame(40))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("method: spectrum\nlambda_a: 0.1\n")
    cases = [
        (["--config", bad_yaml], "unknown parameter(s) lambda_a"),
        (["--method", "dakd", "--la", 0.1], "method dakd: unknown parameter(s) la"),
        (["--method", "srd", "--keep", 1.5], "parameter keep must be in"),
        (["--method", "l2m", "--epochs", 6], "multiple of 4"),
        ([], "--method is required"),
        (["--method", "dakd", "--loss-param", "lambda"], "expected key=number"),
        (["--config", tmp_path / "missing.yaml"], "no such file"),
        (["--method", "dakd", "-p", "tau"], "expected key=value"),
        (["--method", "dakd", "-p", "tau=lots"], "parameter tau: expected float, got 'lots'"),
    ]
    for args, message in cases:
        result = run("schedule", table.path, *args, "--out", tmp_path / "x")
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    no_table = run("schedule", tmp_path / "nowhere", "--method", "full", "--out", tmp_path / "y")
    assert no_table.exit_code == 2 and "no such table directory" in no_table.output
    assert run("schedule", table.path, "--method", "full", "--out", tmp_path / "z").exit_code == 0
    taken = run("schedule", table.path, "--method", "full", "--epochs", 2, "--out", tmp_path / "z")
    assert taken.exit_code == 2 and "holds another schedule" in taken.output and str(tmp_path / "z") in taken.output


def test_inspect_schedules_and_table_with_plots(tmp_path):
    table = write(tmp_path, make_frame(150))
    for method, extra in (("srd", []), ("dakd", ["--epochs", 5]), ("spectrum", ["--epochs", 8, "--warmup-epochs", 2])):
        assert run("schedule", table.path, "--method", method, *extra, "--out", tmp_path / method).exit_code == 0
    plots = tmp_path / "plots"
    shown = run("inspect", tmp_path / "srd", tmp_path / "dakd", tmp_path / "spectrum", "--plots", plots)
    assert shown.exit_code == 0, shown.output
    assert "method srd" in shown.output and "method dakd" in shown.output and "rescore" in shown.output
    assert (plots / "curricula.png").stat().st_size > 20_000
    shown = run("inspect", table.path, "--plots", plots)
    assert shown.exit_code == 0, shown.output
    assert (plots / "student_ce_histogram.png").stat().st_size > 10_000
    assert (plots / "student_ce_spectrum.png").stat().st_size > 10_000


def test_the_command_module_imports_no_heavy_library():
    code = ("import sys, syllabus.curate.schedules.cli; "
            "print(sorted(m for m in ('polars', 'numpy', 'torch', 'vllm', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
