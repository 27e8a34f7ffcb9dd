"""The pipeline runner: recipes validate and dry-run; stages skip when done, rerun when edited, stop on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syllabus.pipelines.cli import app
from syllabus.pipelines.runner import PipelineError, load_pipeline, run_pipeline

RECIPES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))
runner = CliRunner()


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_shipped_recipe_validates_and_dry_runs(recipe, tmp_path):
    pipeline = load_pipeline(recipe, {"workdir_root": str(tmp_path)})
    ran = run_pipeline(pipeline, dry_run=True, echo=lambda *_: None)  # parses every stage with its own CLI
    assert ran == [s.name for s in pipeline.stages]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_schedule_stage_of_a_shipped_recipe_builds(recipe, tmp_path):
    """A dry run parses options but not a method's -p parameters: build each schedule stage on a synthetic table."""
    from syllabus.curate.cli import app as curate_app
    from test_schedule_support import make_frame, write

    table = write(tmp_path, make_frame(200))
    stages = [s for s in load_pipeline(recipe, {"workdir_root": str(tmp_path)}).stages
              if s.argv[:2] == ("curate", "schedule")]
    assert stages, f"{recipe.name} has no schedule stage"
    for stage in stages:
        argv = list(stage.argv[1:])
        argv[1] = str(table.path)  # the table the recipe would have scored
        result = runner.invoke(curate_app, argv)
        assert result.exit_code == 0, f"{stage.name}: {result.output}"


def write_recipe(path: Path, data: Path, model: Path, workdir: Path, max_new_tokens: int = 4, bad: bool = False) -> Path:
    score = (f"curate score {data} --out ${{workdir}}/table --student {model} --teacher {model} --gen-engine hf "
             f"--ce-engine hf --max-new-tokens {max_new_tokens} --max-seq-len 512 --quiet --overwrite")
    inspect = "curate inspect ${workdir}/table" + (" --no-such-flag" if bad else "")
    path.write_text(json.dumps({  # JSON is YAML
        "name": "tiny", "workdir": str(workdir),
        "stages": [
            {"name": "score", "cmd": score, "outputs": ["${workdir}/table/metadata.json"]},
            {"name": "inspect", "cmd": inspect, "needs": ["score"]},
            {"name": "teacher-only", "cmd": f"curate score {data} --out ${{workdir}}/teacher --student none "
                                             f"--teacher {model} --ce-engine hf --max-seq-len 512 --quiet"},
        ],
    }))
    return path


@pytest.mark.slow
def test_stages_skip_when_done_and_rerun_when_edited(tmp_path, small_dolly, tiny_model):
    workdir = tmp_path / "work"
    recipe = write_recipe(tmp_path / "r.yaml", small_dolly, tiny_model, workdir)
    first = run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    assert first == ["score", "inspect", "teacher-only"]
    assert (workdir / "table" / "metadata.json").exists() and (workdir / ".pipeline" / "score.json").exists()
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == []
    # editing the score stage reruns it and what needs it, not the independent stage
    write_recipe(recipe, small_dolly, tiny_model, workdir, max_new_tokens=5)
    plan = run_pipeline(load_pipeline(recipe), dry_run=True, echo=lambda *_: None)
    assert plan == ["score", "inspect"]
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == ["score", "inspect"]
    metadata = json.loads((workdir / "table" / "metadata.json").read_text())
    assert metadata["generation"]["max_new_tokens"] == 5  # the edited stage replaced its output


def test_demo_trains_every_method_and_the_baseline_from_one_table():
    demo = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml")
    trained = {s.name.removeprefix("train-") for s in demo.stages if s.name.startswith("train-")}
    assert trained == {"full", "spectrum", "srd", "l2m", "dakd"}
    schedules = [s for s in demo.stages if s.argv[:2] == ("curate", "schedule") and "heal" not in s.name]
    assert {s.argv[2] for s in schedules} == {str(demo.workdir / "table")}  # one difficulty table for all
    compare = next(s for s in demo.stages if s.name == "compare")
    assert {f"eval-{m}" for m in trained} <= set(compare.needs)


def test_report_collects_results_training_and_stage_timings(tmp_path):
    from syllabus.pipelines.report import write_report

    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "compare.md").write_text("| model | dollyeval |\n|---|---|\n| srd | 21.5 |\n")
    run = tmp_path / "runs" / "srd"
    run.mkdir(parents=True)
    rows = [{"step": k, "tokens": 100, "tokens_per_second": 50.0, "loss": 3.0 - k} for k in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / ".pipeline").mkdir()
    for name, seconds, at in (("train-srd", 4.0, 2.0), ("score", 10.0, 1.0)):
        (tmp_path / ".pipeline" / f"{name}.json").write_text(json.dumps({"seconds": seconds, "finished_at": at}))
    text = write_report(tmp_path, "T").read_text()
    assert "| srd | 21.5 |" in text
    assert "| srd | 2 | 200 | 4 | 1.000 |" in text  # steps, tokens, seconds (200 tokens at 50/s), last loss
    assert text.index("| score | 10 |") < text.index("| train-srd | 4 |") and "| total | 14 |" in text


def test_bad_stage_arguments_are_caught_before_anything_runs(tmp_path, small_dolly, tiny_model):
    recipe = write_recipe(tmp_path / "r.yaml", small_dolly, tiny_model, tmp_path / "work", bad=True)
    with pytest.raises(PipelineError, match="stage inspect.*no-such-flag"):
        run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    assert not (tmp_path / "work" / ".pipeline").exists()


@pytest.mark.slow
def test_a_failing_stage_stops_the_run_and_keeps_finished_stages(tmp_path, small_dolly, tiny_model):
    workdir = tmp_path / "work"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"name": "fails", "workdir": str(workdir), "stages": [
        {"name": "ok", "cmd": f"curate score {small_dolly} --out ${{workdir}}/t --student none --teacher {tiny_model} "
                              "--ce-engine hf --max-seq-len 512 --quiet"},
        {"name": "broken", "cmd": "curate inspect ${workdir}/does-not-exist", "needs": ["ok"]},
    ]}))
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "stage broken failed" in result.output
    assert (workdir / ".pipeline" / "ok.json").exists() and not (workdir / ".pipeline" / "broken.json").exists()


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path, small_dolly, tiny_model):
    import fcntl

    workdir = tmp_path / "work"
    recipe = write_recipe(tmp_path / "r.yaml", small_dolly, tiny_model, workdir)
    (workdir / ".pipeline").mkdir(parents=True)
    with open(workdir / ".pipeline" / "lock", "w") as held:  # as a running `syllabus run` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PipelineError, match="another `syllabus run` is using"):
            run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    assert not (workdir / "table").exists()


def test_recipe_errors_name_the_problem(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nstages:\n  - name: a\n    cmd: curate inspect ${nope}\n")
    with pytest.raises(PipelineError, match=r"unknown variable \$\{nope\}"):
        load_pipeline(recipe)
    recipe.write_text("name: x\nstages:\n  - name: a\n    cmd: rm -rf /\n")
    with pytest.raises(PipelineError, match="must start with one of"):
        load_pipeline(recipe)
    recipe.write_text("name: x\nstages:\n  - name: a\n    cmd: curate inspect t\n    needs: [b]\n")
    with pytest.raises(PipelineError, match="needs 'b', which is not an earlier stage"):
        load_pipeline(recipe)
    recipe.write_text("name: x\nstagez: []\n")
    with pytest.raises(PipelineError, match="unknown key"):
        load_pipeline(recipe)
