"""The pipeline runner: recipes validate and dry-run; stages skip when done, rerun when edited or when their inputs
change, stop on failure; a killed run keeps its workdir locked while its stage lives; bad recipes get clear errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syllabus.pipelines import runner as pipeline_runner
from syllabus.pipelines.cli import app
from syllabus.pipelines.runner import PipelineError, load_pipeline, run_pipeline

RECIPES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))
runner = CliRunner()

FAKE_STAGE = """#!{python}
# A stand-in stage program: logs each call; `--out PATH` (or `--out=PATH`) writes PATH; `wait FILE` waits for FILE
# (20 s at most); `linger FILE` waits too, ignoring SIGTERM (a stage that takes its time to stop); `vllmlog` logs
# through vLLM's own logger, as an engine does.
import json, os, resource, signal, sys, time

hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # a test may limit the runner's writes, not the stage's
with open(os.environ["FAKE_STAGE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid(), "offline": os.environ.get("HF_HUB_OFFLINE")}})
              + "\\n")
outs = [a.partition("=")[2] for a in sys.argv if a.startswith("--out=")]
outs += [sys.argv[sys.argv.index("--out") + 1]] if "--out" in sys.argv else []
for path in outs:
    with open(path, "w") as out:
        out.write(str(time.time()))
if sys.argv[1:2] == ["vllmlog"]:
    from syllabus.core.engines.vllm_engine import _configure_logging
    from vllm.logger import init_logger

    _configure_logging()  # what VLLMEngine does before it starts vLLM's engine
    engine = init_logger("vllm.fake_engine")
    engine.warning("a warning for the log file")
    engine.error("an error for the terminal")
if sys.argv[1:2] == ["linger"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1:2] in (["wait"], ["linger"]):
    deadline = time.monotonic() + 20
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.05)
"""
# `syllabus run RECIPE` in a process of its own, accepting `fakestage` as a stage program.
RUN_WITH_FAKE_STAGE = """
import sys
from syllabus.pipelines import runner
from syllabus.pipelines.cli import app
runner.PROGRAMS += ("fakestage",)
runner.validate_arguments = lambda stage: None
app(["run", sys.argv[1]])
"""


@pytest.fixture
def fake_stage(tmp_path, monkeypatch):
    """Put `fakestage` on PATH and let recipes run it; returns a function giving its calls so far."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fakestage"
    script.write_text(FAKE_STAGE.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_STAGE_LOG", str(log))
    monkeypatch.setattr(pipeline_runner, "PROGRAMS", (*pipeline_runner.PROGRAMS, "fakestage"))
    monkeypatch.setattr(pipeline_runner, "validate_arguments", lambda stage: None)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def fake_recipe(path: Path, workdir: Path, stages: list[dict]) -> Path:
    path.write_text(json.dumps({"name": "fake", "workdir": str(workdir), "stages": stages}))  # JSON is YAML
    return path


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def paper_data(recipe: Path, tmp_path: Path) -> dict[str, str]:
    """`--set data=...` to a file that exists, for a recipe whose data is a file of the user's (the paper recipes)."""
    if "data/dolly/train.jsonl" not in recipe.read_text():
        return {}
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "Say hi.", "output": "Hi."}\n')
    return {"data": str(data)}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_shipped_recipe_validates_and_dry_runs(recipe, tmp_path):
    pipeline = load_pipeline(recipe, {"workdir_root": str(tmp_path), **paper_data(recipe, tmp_path)})
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


def test_the_loss_ablation_runs_its_teacher_once(tmp_path):
    """Scoring keeps the teacher's top K; every training reads that cache instead of loading the teacher."""
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "loss-ablation.yaml"
    pipeline = load_pipeline(recipe, {"workdir_root": str(tmp_path), "teacher": "/models/the-teacher"})
    uses_teacher = [s for s in pipeline.stages if "/models/the-teacher" in s.argv]
    assert [s.name for s in uses_teacher] == ["score"] and "--teacher-topk" in uses_teacher[0].argv
    trains = [s for s in pipeline.stages if s.argv[:2] == ("train", "run")]
    assert len(trains) == 8 and all(s.argv[s.argv.index("--teacher") + 1] == "cached" for s in trains)


def write_recipe(path: Path, data: Path, model: Path, workdir: Path, max_new_tokens: int = 4,
                 bad: bool = False) -> Path:
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
    rows = [{"step": k, "tokens": 100, "tokens_per_second": 50.0, "loss": 3.0 - k, "ce": 5.0 - k, "loss_name": "skl",
             "kd_weight": 0.7} for k in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "tok')  # killed
    (tmp_path / ".pipeline").mkdir()
    for name, seconds, at in (("train-srd", 4.0, 2.0), ("score", 10.0, 1.0)):
        (tmp_path / ".pipeline" / f"{name}.json").write_text(json.dumps({"seconds": seconds, "finished_at": at}))
    (tmp_path / ".pipeline" / "broken.json").write_text('{"seconds": 1')  # damaged: left out, never a traceback
    text = write_report(tmp_path, "T").read_text()
    assert "| srd | 21.5 |" in text
    # steps, tokens, seconds (200 tokens at 50/s), the ground truth's CE (comparable), the run's own loss (named)
    assert "| srd | 2 | 200 | 4 | 3.000 | 1.000 (skl, kd_weight 0.7) |" in text
    assert "losses do not compare across runs" in text
    assert "trained for 2 optimizer steps at most" in text and "it does not rank the methods" in text
    assert "metrics.jsonl: 1 unreadable line(s) left out" in text and "broken" not in text
    result = runner.invoke(app, ["report", "--workdir", str(tmp_path / "typo")])
    assert result.exit_code == 2 and "typo is not a directory" in result.output and not (tmp_path / "typo").exists()
    assert text.index("| score | 10 |") < text.index("| train-srd | 4 |") and "| total | 14 |" in text


def test_the_report_draws_each_runs_curves_and_its_score_against_training_compute(tmp_path, saved_figures):
    from syllabus.pipelines.report import write_report

    for name, lrs in (("srd", [1e-4, 5e-5, 1e-4]), ("full", [1e-4, 9e-5, 8e-5])):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        rows = [{"step": k + 1, "tokens": 100 * (k + 1), "tokens_per_second": 50.0, "loss": 3.0 - k, "kd": 2.0 - k,
                 "ce": 4.0 - k, "lr": lr, "temperature": 2.0 - 0.5 * k} for k, lr in enumerate(lrs)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = tmp_path / "eval" / "srd"
    evaluation.mkdir(parents=True)  # evaluates srd's final checkpoint; full was not evaluated
    (evaluation / "summary.json").write_text(json.dumps({"model": {"path": str(tmp_path / "runs" / "srd" / "checkpoints"
                                                                             / "final")},
                                                         "results": {"average": 21.5}}))
    text = write_report(tmp_path, "T").read_text()
    assert "![curves](training/curves.png)" in text and "![score-vs-compute](training/score-vs-compute.png)" in text
    curves = saved_figures["curves.png"]
    panels = {ax.get_ylabel(): ax for ax in curves.axes}
    assert set(panels) == {"loss", "KD term", "SFT term (CE of the ground truth)", "learning rate", "temperature"}
    lr = {line.get_label(): list(line.get_ydata()) for line in panels["learning rate"].get_lines()}
    assert lr == {"srd": [1e-4, 5e-5, 1e-4], "full": [1e-4, 9e-5, 8e-5]}  # SRD's restart shows
    by_tokens, by_time = saved_figures["score-vs-compute.png"].axes
    assert [tuple(c.get_offsets()[0]) for c in by_tokens.collections] == [(600.0, 21.5)]  # srd only: 100+200+300
    assert [tuple(c.get_offsets()[0]) for c in by_time.collections] == [(12.0, 21.5)]  # 600 tokens at 50/s


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


@pytest.mark.parametrize("name, matrix", [("../../x", None), ("a/b", None), (".hidden", None), ("", None),
                                          ("train-${m}", {"m": ["srd", "../../x"]})])
def test_a_stage_name_that_is_not_an_identifier_is_refused(tmp_path, name, matrix):
    """A stage name names its marker file: `../../x` would have written WORKDIR/../x.json."""
    stage = {"name": name, "cmd": "curate inspect t", **({"matrix": matrix} if matrix else {})}
    recipe = fake_recipe(tmp_path / "r.yaml", tmp_path / "work", [stage])
    with pytest.raises(PipelineError, match=rf"{recipe}: stage 1: stage name '.*' is not an identifier"):
        load_pipeline(recipe)


def test_a_matrix_value_must_be_a_list(tmp_path):
    """A string would be iterated by character (`srd` gave stages train-s, train-r, train-d)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nstages:\n  - name: train-${m}\n    matrix: {m: srd}\n    cmd: curate inspect ${m}\n")
    with pytest.raises(PipelineError, match=r"stage 1: matrix m: expected a list, got 'srd'; write \[srd\]"):
        load_pipeline(recipe)
    recipe.write_text("name: x\nstages:\n  - name: train-${m}\n    matrix: {m: [srd]}\n    cmd: curate inspect ${m}\n")
    assert [s.name for s in load_pipeline(recipe).stages] == ["train-srd"]


def test_a_finished_stage_runs_again_when_its_inputs_or_syllabus_change(tmp_path, fake_stage, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a"}\n')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    recipe = fake_recipe(tmp_path / "r.yaml", tmp_path / "work", [
        {"name": "score", "cmd": f"fakestage {data} --student {model} --out {tmp_path / 'table.txt'}"},
        {"name": "schedule", "cmd": "fakestage ${workdir}/table", "needs": ["score"]},
        {"name": "other", "cmd": "fakestage other"},
    ])

    def run() -> tuple[list[str], str]:
        said: list[str] = []
        return run_pipeline(load_pipeline(recipe), echo=said.append), "\n".join(said)

    assert run()[0] == ["score", "schedule", "other"]
    assert run()[0] == []  # its own --out (here outside the workdir) is not an input of the stage
    data.write_text('{"prompt": "b"}\n')  # same command, new data: the stage and what needs it run again
    ran, said = run()
    assert ran == ["score", "schedule"] and f"score: running (input changed: {data})" in said
    (model / "config.json").write_text('{"layers": 2}')  # a file inside a directory argument
    assert run()[0] == ["score", "schedule"]
    monkeypatch.setattr(pipeline_runner, "syllabus_version", lambda: "99.0")
    ran, said = run()
    assert ran == ["score", "schedule", "other"] and "Syllabus changed" in said
    assert len(fake_stage()) == 10


def test_a_corrupt_marker_means_not_done_and_says_so(tmp_path, fake_stage):
    workdir = tmp_path / "work"
    recipe = fake_recipe(tmp_path / "r.yaml", workdir, [{"name": "a", "cmd": "fakestage a"}])
    run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    marker = workdir / ".pipeline" / "a.json"
    marker.write_text(marker.read_text()[:20])  # what a crash in the middle of a plain write leaves
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert f"its marker {marker} is unreadable" in result.output and "so it runs again" in result.output
    assert len(fake_stage()) == 2 and json.loads(marker.read_text())["fingerprint"]


def test_a_marker_write_that_fails_midway_keeps_the_previous_marker(tmp_path, fake_stage):
    """The runner's files may hold 256 bytes (RLIMIT_FSIZE): the marker write fails after its first 256 bytes."""
    import resource

    workdir = tmp_path / "work"
    recipe = fake_recipe(tmp_path / "r.yaml", workdir, [{"name": "a", "cmd": "fakestage " + "a" * 300}])
    run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    marker = workdir / ".pipeline" / "a.json"
    before = json.loads(marker.read_text())
    fake_recipe(recipe, workdir, [{"name": "a", "cmd": "fakestage " + "b" * 300}])  # edited: it runs again
    limited = subprocess.run(
        [sys.executable, "-c", RUN_WITH_FAKE_STAGE, str(recipe)], capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (256, resource.RLIM_INFINITY)))
    assert len(fake_stage()) == 2  # the stage itself ran and finished
    assert json.loads(marker.read_text()) == before  # not a truncated marker
    assert limited.returncode == 2 and f"its marker {marker} could not be written" in limited.stderr
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == ["a"]  # and not taken as done


def start_and_kill_a_run(recipe: Path, fake_stage) -> tuple[int, int]:
    """Start `syllabus run RECIPE` in its own process, SIGKILL it once its stage runs; returns both pids."""
    run = subprocess.Popen([sys.executable, "-c", RUN_WITH_FAKE_STAGE, str(recipe)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: fake_stage(), "the stage to start")
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    return run.pid, fake_stage()[0]["pid"]


def exited(pid: int) -> bool:
    """The process is gone or a zombie (an orphan whose reaper has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def lock_free(workdir: Path) -> bool:
    import fcntl

    with open(workdir / ".pipeline" / "lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stage's death signal is Linux's prctl")
def test_a_killed_run_stops_its_stage(tmp_path, fake_stage):
    """kill -9 of `syllabus run` used to leave its stage running, and to let a second run start it again beside it."""
    workdir, release = tmp_path / "work", tmp_path / "release"
    recipe = fake_recipe(tmp_path / "r.yaml", workdir, [{"name": "slow", "cmd": f"fakestage wait {release}"}])
    try:
        _, stage_pid = start_and_kill_a_run(recipe, fake_stage)
        wait_for(lambda: exited(stage_pid), "the stage to die with its runner", timeout_s=10)
    finally:
        release.touch()  # lets a surviving stage (the bug) finish
    assert lock_free(workdir)
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == ["slow"]  # its marker was never written


def test_the_workdir_stays_locked_while_a_stage_of_a_killed_run_lives(tmp_path, fake_stage):
    """A stage that outlives its killed runner (here: it ignores SIGTERM) keeps the workdir locked until it exits."""
    workdir, release = tmp_path / "work", tmp_path / "release"
    recipe = fake_recipe(tmp_path / "r.yaml", workdir, [{"name": "slow", "cmd": f"fakestage linger {release}"}])
    try:
        run_pid, stage_pid = start_and_kill_a_run(recipe, fake_stage)
        with pytest.raises(PipelineError, match=rf"another `syllabus run` is using {workdir} \(its `syllabus run`, "
                                                rf"pid {run_pid}, has stopped, but its stage slow, pid {stage_pid}"):
            run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
        assert len(fake_stage()) == 1  # not started beside itself
    finally:
        release.touch()
    wait_for(lambda: lock_free(workdir), "the stage to exit and release the lock")
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == ["slow"]


def test_stages_see_the_users_environment_and_the_recipes_env_where_the_user_set_nothing(tmp_path, fake_stage,
                                                                                          monkeypatch):
    runs = [("0", {"HF_HUB_OFFLINE": "1"}), (None, {"HF_HUB_OFFLINE": "1"}), (None, {})]
    for k, (users, recipes) in enumerate(runs):
        if users is None:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        else:
            monkeypatch.setenv("HF_HUB_OFFLINE", users)
        recipe = tmp_path / f"r{k}.yaml"
        recipe.write_text(json.dumps({"name": "fake", "workdir": str(tmp_path / f"work{k}"), "env": recipes,
                                      "stages": [{"name": "a", "cmd": "fakestage a"}]}))
        run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    # the user's value wins; the recipe's fills in; nothing is set for the stage (a paper recipe reaches its hub)
    assert [call["offline"] for call in fake_stage()] == ["0", "1", None]


STAGE = "\n  - name: a\n    cmd: curate inspect t"


@pytest.mark.parametrize("text, args, expected", [
    pytest.param("name: x\nstages:\n  - name: a\n    cmd: [curate\n", [], r"r\.yaml, line 5, column 1: not valid YAML",
                 id="yaml-syntax"),
    pytest.param("name: x\nvars: [a]\nstages:" + STAGE, [], "`vars` is a mapping", id="vars-not-a-mapping"),
    pytest.param("name: x\nvars: {data: }\nstages:" + STAGE, [], "vars: data: expected a single value",
                 id="variable-without-value"),
    pytest.param("name: x\nstages: {a: 1}", [], "`stages` is a non-empty list", id="stages-not-a-list"),
    pytest.param("name: x\nstages:" + STAGE + " 'unclosed", [], "stage 1: cmd: cannot split the command",
                 id="unclosed-quote"),
    pytest.param("name: x\nstages:" + STAGE + " ${ workdir}", [], r"has a malformed \$\{\.\.\.\}",
                 id="malformed-variable"),
    pytest.param("name: x\nstages:" + STAGE + "\n  - name: b\n    cmd: curate inspect t\n    needs: a", [],
                 r"stage 2: needs: expected a list, got 'a'; write \[a\]", id="needs-not-a-list"),
    pytest.param("name: x\nvars: {data: d}\nstages:" + STAGE, ["--set", "date=e"],
                 "--set date: the recipe has no such variable", id="set-unknown-variable"),
    pytest.param("name: x\nstages:" + STAGE, ["--set", "workdir=e"], "--set workdir: the recipe has no such variable",
                 id="set-workdir"),
    pytest.param("name: x\nstages:" + STAGE, ["--only", "b"], "--only b: no such stage", id="only-unknown-stage"),
    pytest.param("name: x\nstages:" + STAGE + " ${m}\n    matrix: {m: [u, v]}", ["--set", "m=w"],
                 "--set m: the recipe has no such variable", id="set-matrix-variable"),
])
def test_a_careless_recipe_or_command_line_gets_a_clear_error(tmp_path, text, args, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    result = runner.invoke(app, ["run", str(recipe), "--dry-run", *args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output  # not a traceback
    assert f"error: {recipe}" in result.output or "error: --only" in result.output, result.output
    assert re.search(expected, result.output), result.output


@pytest.mark.parametrize("name", ["PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "PATH"])
def test_a_recipe_may_not_set_a_variable_that_loads_code(tmp_path, fake_stage, name):
    """A received recipe's env: could point a stage's Python (or its loader) at code of the author's choosing."""
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(f"open({str(tmp_path / 'code-ran')!r}, 'w').close()\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"name": "fake", "workdir": str(tmp_path / "work"),
                                  "env": {"HF_HUB_OFFLINE": "1", name: str(planted)},
                                  "stages": [{"name": "a", "cmd": "fakestage a"}]}))
    with pytest.raises(PipelineError, match=f"env: {name}: a recipe may set only HF_HUB_OFFLINE"):
        run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    assert fake_stage() == [] and not (tmp_path / "code-ran").exists()


def test_a_stage_whose_output_was_deleted_runs_again_and_so_does_what_needs_it(tmp_path, fake_stage):
    work = tmp_path / "work"
    recipe = fake_recipe(tmp_path / "r.yaml", work, [
        {"name": "a", "cmd": f"fakestage a --out {work}/a.out"},  # no `outputs:` declared: its --out counts
        {"name": "b", "needs": ["a"], "cmd": f"fakestage b --out {work}/b.out"},
        {"name": "c", "cmd": f"fakestage c --out={work}/c.out"},
    ])
    work.mkdir()
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == ["a", "b", "c"]
    assert run_pipeline(load_pipeline(recipe), echo=lambda *_: None) == []
    (work / "a.out").unlink()
    said: list[str] = []
    assert run_pipeline(load_pipeline(recipe), echo=said.append) == ["a", "b"]
    assert any(f"its output {work}/a.out is missing" in line for line in said), said
    assert any("b: running (a stage it needs ran again)" in line for line in said), said
    (work / "c.out").unlink()
    assert run_pipeline(load_pipeline(recipe), dry_run=True, echo=lambda *_: None) == ["c"]


def test_a_stage_that_would_only_print_its_help_is_refused_before_any_stage_runs(tmp_path):
    for flag in ("--help", "--help-params srd"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(json.dumps({"name": "x", "workdir": str(tmp_path / "work"), "stages": [
            {"name": "a", "cmd": "curate inspect t"},
            {"name": "b", "cmd": f"curate schedule t --method srd --out o {flag}"}]}))
        with pytest.raises(PipelineError, match=f"stage b: .*: {flag.split()[0]} would print and end the stage"):
            run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
        assert not (tmp_path / "work" / ".pipeline" / "a.json").exists()


def test_a_dry_run_names_what_a_stage_reads_that_nothing_makes(tmp_path):
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "srd.yaml"
    pipeline = load_pipeline(recipe, {"workdir_root": str(tmp_path), "data": str(tmp_path / "missing.jsonl"),
                                      "teacher": str(tmp_path / "no-teacher")})
    with pytest.raises(PipelineError) as refused:
        run_pipeline(pipeline, dry_run=True, echo=lambda *_: None)
    message = str(refused.value)
    assert f"stage score reads {tmp_path / 'missing.jsonl'}" in message and str(tmp_path / "no-teacher") in message
    assert "no earlier stage makes it" in message and "schedule" not in message  # later stages read what score makes
    pipeline = load_pipeline(recipe, {"workdir_root": str(tmp_path), **paper_data(recipe, tmp_path)})
    assert run_pipeline(pipeline, dry_run=True, echo=lambda *_: None)  # the data exists, the models are hub ids


def test_vllms_log_goes_to_the_stages_log_file_and_only_its_errors_to_the_terminal(tmp_path, fake_stage, capfd):
    pytest.importorskip("vllm")
    recipe = fake_recipe(tmp_path / "r.yaml", tmp_path / "work", [{"name": "a", "cmd": "fakestage vllmlog"}])
    run_pipeline(load_pipeline(recipe), echo=lambda *_: None)
    terminal = capfd.readouterr().err
    assert "an error for the terminal" in terminal and "a warning for the log file" not in terminal
    log = (tmp_path / "work" / ".pipeline" / "logs" / "a.vllm.log").read_text()
    assert "WARNING" in log and "vllm.fake_engine: a warning for the log file" in log and "an error" in log
