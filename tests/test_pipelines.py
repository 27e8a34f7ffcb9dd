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


def write_recipe(path: Path, data: Path, model: Path, workdir: Path, max_new_tokens: int = 4, bad: bool = False) -> Path:
    score = (f"curate score {data} --out ${{workdir}}/table --student {model} --teacher {model} --gen-engine hf "
             f"--ce-engine hf --max-new-tokens {max_new_tokens} --max-seq-len 512 --quiet")
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


def test_bad_stage_arguments_are_caught_before_anything_runs(tmp_path, small_dolly, tiny_model):
    recipe = write_recipe(tmp_path / "r.yaml", small_dolly, tiny_model, tmp_path / "work", bad=True)
    with pytest.raises(PipelineError, match="stage inspect.*no-such-flag"):
        run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    assert not (tmp_path / "work" / ".pipeline").exists()


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
