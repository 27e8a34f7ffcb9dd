"""`curate schedule` and `curate inspect` end to end: options, -p params, --config YAML, errors with exit code 2, plots."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import polars as pl
import pytest
from typer.testing import CliRunner

from syllabus.curate.cli import app
from test_schedule_support import make_frame, write

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_options_and_params_reach_the_method(tmp_path):
    table = write(tmp_path, make_frame(120))
    out = tmp_path / "spectrum"
    result = run("schedule", table.path, "--method", "spectrum", "--epochs", 6, "-p", "warmup_epochs=1", "-p", "early_share=0.2",
                 "--param", "step=linear", "--loss", "skl", "--loss-param", "skew=0.2", "--reverse", "--out", out)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["params"]["early_share"] == 0.2 and m["params"]["step"] == "linear" and m["params"]["reverse"] is True
    assert len(m["epochs"]) == 6 and all(e["loss_params"] == {"skew": 0.2} for e in m["epochs"])
    assert "method spectrum, 6 epochs" in result.output


def test_config_file_with_params_and_options_on_top(tmp_path):
    table = write(tmp_path, make_frame(120))
    config = tmp_path / "srd.yaml"
    config.write_text("method: srd\nepochs: 6\nkeep_share: 0.75\nseed: 7\nce-column: student_ce\nloss: jsd\n"
                      "loss_params: {beta: 0.4}\n")
    out = tmp_path / "srd"
    result = run("schedule", table.path, "--config", config, "-p", "keep_share=0.5", "--out", out)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["seed"] == 7 and m["params"]["keep_share"] == 0.5 and m["params"]["ce_column"] == "student_ce"
    assert m["params"]["epochs_per_stage"] == 2 and m["epochs"][0]["loss_params"] == {"beta": 0.4}
    assert "restart" in result.output
    generic = run("schedule", table.path, "--config", config, "-p", "epochs=9", "-p", "rank-ties=min", "--epochs", 3,
                  "--out", tmp_path / "generic")
    assert generic.exit_code == 0, generic.output
    params = manifest(tmp_path / "generic")["params"]
    assert params["epochs_per_stage"] == 1 and params["rank_ties"] == "min"  # config < -p < explicit options


def test_ce_reduction_from_the_command_line(tmp_path):
    table = write(tmp_path, make_frame(60))
    for method in ("srd", "spectrum", "l2m"):
        result = run("schedule", table.path, "--method", method, "-p", "ce_reduction=mean", "--out", tmp_path / method)
        assert result.exit_code == 0, result.output
        assert manifest(tmp_path / method)["params"]["ce_reduction"] == "mean"
        assert run("schedule", table.path, "--method", method, "--out", tmp_path / f"{method}-sum").exit_code == 0
        assert manifest(tmp_path / f"{method}-sum")["params"]["ce_reduction"] == "sum"  # the papers' reading
    bad = run("schedule", table.path, "--method", "srd", "-p", "ce_reduction=median", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "parameter ce_reduction must be one of sum, mean, got 'median'" in bad.output
    dakd = run("schedule", table.path, "--method", "dakd", "-p", "ce_reduction=sum", "--out", tmp_path / "y")
    assert dakd.exit_code == 2 and "unknown parameter(s) ce_reduction" in dakd.output  # DDS: reduction-invariant
    for method in ("srd", "spectrum", "l2m"):
        assert "-p ce_reduction: str = 'sum'" in run("schedule", "--help-params", method).output
    assert "ce_reduction" not in run("schedule", "--help-params", "dakd").output


def test_errors_exit_2_with_a_message_naming_the_culprit(tmp_path):
    table = write(tmp_path, make_frame(40))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("method: spectrum\nlambda_a: 0.1\n")
    cases = [
        (["--config", bad_yaml], "unknown parameter(s) lambda_a"),
        (["--method", "dakd", "-p", "la=0.1"], "method dakd: unknown parameter(s) la"),
        (["--method", "srd", "-p", "keep_share=1.5"], "parameter keep_share must be in"),
        (["--method", "curriculum"], "'curriculum' is not one of"),
        (["--method", "full", "--loss", "kl"], "'kl' is not one of"),
        (["--method", "full", "-p", "temperature=.inf"], "temperature must be a finite number > 0"),
        (["--method", "l2m", "--epochs", 6], "multiple of 4"),
        ([], "--method is required"),
        (["--method", "dakd", "--loss-param", "lambda"], "--loss-param: expected key=value"),
        (["--method", "dakd", "--loss-param", "lambda=abc"], "parameter loss_params.lambda: expected float, got 'abc'"),
        (["--config", tmp_path / "missing.yaml"], "no such file"),
        (["--method", "dakd", "-p", "low_share"], "expected key=value"),
        (["--method", "dakd", "-p", "low_share=lots"], "parameter low_share: expected float, got 'lots'"),
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


def test_inspect_schedules_and_table_with_plots(tmp_path, saved_figures):
    table = write(tmp_path, make_frame(150))
    for method, extra in (("srd", []), ("dakd", ["--epochs", 5]), ("spectrum", ["--epochs", 8, "-p", "warmup_epochs=2"])):
        assert run("schedule", table.path, "--method", method, *extra, "--out", tmp_path / method).exit_code == 0
    plots = tmp_path / "plots"
    shown = run("inspect", tmp_path / "srd", tmp_path / "dakd", tmp_path / "spectrum", "--plots", plots)
    assert shown.exit_code == 0, shown.output
    assert "method srd" in shown.output and "method dakd" in shown.output and "rescore" in shown.output
    counts, means, _ = saved_figures["curricula.png"].axes
    for line, method in zip(counts.lines, ("srd", "dakd", "spectrum")):  # samples per epoch, one line per schedule
        assert list(line.get_ydata()) == [e["num_samples"] for e in manifest(tmp_path / method)["epochs"]]
    srd_first = pl.read_parquet(tmp_path / "srd" / "epoch-000.parquet").join(table.frame, on="sample_id")
    # the epoch means are of what the schedules rank by: the CE summed over the response's tokens
    summed_ce = pl.col("student_ce") * pl.col("response_tokens")
    assert means.lines[0].get_ydata()[0] == pytest.approx(srd_first.select(summed_ce.mean()).item())
    ok = table.frame.filter((pl.col("status") == "ok") & pl.col("student_ce").is_finite().fill_null(False))
    for reduction, values, label in (("sum", ok.select(summed_ce).to_series(), "sorted student_ce summed"),
                                     ("mean", ok["student_ce"], "sorted student_ce")):
        shown = run("inspect", table.path, "--plots", plots, "--ce-reduction", reduction)
        assert shown.exit_code == 0, shown.output
        hist = saved_figures["student_ce_histogram.png"].axes[0]
        assert sum(bar.get_height() * bar.get_width() for bar in hist.patches) == pytest.approx(1.0)  # a density
        curve = [line for line in saved_figures["student_ce_spectrum.png"].axes[0].lines if line.get_label() == label]
        assert list(curve[0].get_ydata()) == pytest.approx(values.sort().to_list())  # the sorted ranking metric


def test_the_command_module_imports_no_heavy_library():
    code = ("import sys, syllabus.curate.schedules.cli; "
            "print(sorted(m for m in ('polars', 'numpy', 'torch', 'vllm', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_params_lists_every_field_with_its_paper_default():
    from syllabus.curate.schedules.spectrum import SpectrumConfig

    result = run("schedule", "--help-params", "spectrum")
    assert result.exit_code == 0, result.output
    listed = [line.split()[1].rstrip(":") for line in result.output.splitlines() if line.strip().startswith("-p ")]
    assert listed == [f.name for f in dataclasses.fields(SpectrumConfig)] + ["on_policy", "on_policy_share"]
    assert "-p early_share: float = 0.1" in result.output and "lambda_a" in result.output
    every = run("schedule", "--help-params", "all")
    assert every.exit_code == 0 and all(f"{m}: " in every.output for m in ("spectrum", "srd", "l2m", "dakd", "full"))
    assert run("schedule", "--help-params", "curriculum").exit_code == 2


def test_a_schedule_of_a_teacher_only_table_says_why_it_shows_no_student_means(tmp_path):
    from syllabus.core.table import write_table

    frame = make_frame(12).drop("student_ce", "dds", "rouge_l", "output_ce", "student_output", strict=False)
    table = write_table(frame, tmp_path / "teacher-table", {"kind": "difficulty_table", "student": None})
    result = run("schedule", table.path, "--method", "full", "--out", tmp_path / "s")
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "is a teacher-only table (scored with --student none), so it has no student scores" in said
    assert "not readable" not in said
    moved = run("schedule", write(tmp_path, make_frame(12)).path, "--method", "full", "--out", tmp_path / "s2")
    assert moved.exit_code == 0
    import shutil

    shutil.rmtree(tmp_path / "table")
    inspected = " ".join(run("inspect", tmp_path / "s2").output.split())
    assert "cannot be read (moved, deleted or damaged); the schedule itself is whole" in inspected
