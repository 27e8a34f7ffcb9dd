"""A setting is declared once, as a field of its command's config, and the command line is made from it: one name,
one type, one default and one help text. Every stage command reads flag > `--config` YAML > the field's default."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

import pytest
import typer
from typer.testing import CliRunner

from syllabus.core.cli import config_options
from syllabus.core.config import setting_of
from syllabus.curate.cli import app as curate_app
from syllabus.curate.score_config import ScoreConfig
from syllabus.evaluate.cli import app as evaluate_app
from syllabus.evaluate.config import EvalConfig, JudgeConfig
from syllabus.pipelines.cli import app as pipelines_app
from syllabus.train.cli import app as train_app
from syllabus.train.config import TrainConfig

runner = CliRunner()
PROGRAMS = {"curate": curate_app, "train": train_app, "evaluate": evaluate_app, "syllabus": pipelines_app}
CONFIGS = {("curate", "score"): ScoreConfig, ("train", "run"): TrainConfig, ("evaluate", "run"): EvalConfig,
           ("evaluate", "judge"): JudgeConfig}
# Fields with no option: YAML only, each for a reason (say it here when you add one).
YAML_ONLY = {
    "enforce_eager",  # a vLLM debugging switch; None lets the engine decide
    "no_repeat_ngram_size",  # GenerationParams: scoring samples without it; EvalProtocol has its own option
}
# Commands without a config dataclass whose options share a name with a config field: declared by hand, on purpose.
BY_HAND = {
    ("curate", "merge"): {"out", "overwrite"},
    ("curate", "schedule"): {"table", "out", "seed", "loss", "overwrite"},  # method parameters: from their configs
    ("curate", "models", "prepare"): {"keep_every"},
    ("evaluate", "compare"): {"out"},
}


def commands(group: Any, path: tuple[str, ...]):
    """(path, click command) of every command under a click group."""
    for name, command in getattr(group, "commands", {}).items():
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = [item for program, app in PROGRAMS.items() for item in commands(typer.main.get_command(app), (program,))]


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    """Every field of a config, those of its groups (GenerationParams, EvalProtocol) flattened in."""
    out = {}
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        out.update(config_fields(hint) if dataclasses.is_dataclass(hint) else {field.name: field})
    return out


EVERY_FIELD = {name for config in CONFIGS.values() for name in config_fields(config)}


@pytest.mark.parametrize("where, config", CONFIGS.items(), ids=[" ".join(where) for where in CONFIGS])
def test_every_setting_has_one_option_made_from_its_field(where, config):
    command = dict(ALL)[where]
    fields = config_fields(config)
    made = set(command.callback.__config_options__)
    for param in command.params:
        if param.name in fields:  # the option was made from the field: its help and its default are the field's
            assert param.name in made, f"{' '.join(where)} --{param.name} is declared by hand"
            assert param.help.startswith(setting_of(fields[param.name]).help)
    without = {name for name, field in fields.items() if setting_of(field) is None}
    assert without <= YAML_ONLY, f"fields declared without setting(...): {sorted(without - YAML_ONLY)}"
    assert made == set(fields) - without


@pytest.mark.parametrize("where, command", ALL, ids=[" ".join(path) for path, _ in ALL])
def test_no_command_declares_a_config_field_by_hand(where, command):
    made = set(getattr(command.callback, "__config_options__", ()))
    by_hand = {p.name for p in command.params} - made
    assert by_hand & EVERY_FIELD <= BY_HAND.get(where, set()), (
        f"{' '.join(where)} declares {sorted(by_hand & EVERY_FIELD - BY_HAND.get(where, set()))} by hand: make the "
        "option from its config field with core/cli.py:config_options (docs/architecture.md)")


def test_a_command_that_declares_a_field_again_is_refused_when_it_is_made():
    def run(given: dict, lr: Optional[float] = typer.Option(None)) -> None:
        pass

    with pytest.raises(TypeError, match="lr declared by hand and by the config"):
        config_options(TrainConfig)(run)


@pytest.mark.parametrize("where", [path for path, _ in ALL], ids=" ".join)
def test_help_is_whole_at_80_columns_and_prints_brackets_as_written(where):
    result = runner.invoke(PROGRAMS[where[0]], [*where[1:], "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.output.splitlines()), result.output
    assert "…" not in result.output and "<bool>" not in result.output
    if where in CONFIGS:
        assert "[default: " in result.output
        for field in config_fields(CONFIGS[where]).values():
            spec = setting_of(field)
            if spec and "[" in spec.help:
                assert spec.help.split("[")[1].split("]")[0] in " ".join(result.output.split())


def test_train_help_names_the_real_defaults():
    text = " ".join(runner.invoke(train_app, ["run", "--help"], terminal_width=80).output.split())
    for shown in ("peak learning rate [default: 1e-05]", "[default: cosine]", "[default: 8]", "[default: auto]",
                  "pip install 'syllabus[lora]'", "--fsdp / --no-fsdp"):
        assert shown in text
    assert "--grad-accum <int> micro-batches per optimizer step" in text


# flag > YAML > default, through each command's real parsing: (command, its required arguments, the library call
# that receives the config).
STAGES = {
    "train": (train_app, ["run", "--manifest", "m", "--out", "o"], "syllabus.train.loop.train"),
    "score": (curate_app, ["score", "--out", "o"], "syllabus.curate.score.score"),
    "evaluate": (evaluate_app, ["run", "--model", "m", "--out", "o"], "syllabus.evaluate.run.evaluate"),
}


def resolved(monkeypatch, tmp_path, stage: str, yaml_text: str | None, *flags: str) -> Any:
    """The config a stage command hands its library function, given a `--config` YAML and flags."""
    app, args, target = STAGES[stage]
    seen = []

    def capture(config, *args, **kwargs):
        seen.append(config)
        raise ValueError("captured")

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(f"{module}.{name}", capture)
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        flags = ("--config", str(tmp_path / "c.yaml"), *flags)
    result = runner.invoke(app, [*args, *flags])
    assert seen and "captured" in result.output, result.output
    return seen[0]


def value(config: Any, name: str) -> Any:
    """A setting of a config, looked up in its groups too (`generation.temperature`, `protocol.seeds`)."""
    for group in ("generation", "protocol"):
        inner = getattr(config, group, None)
        if inner is not None and name in {f.name for f in dataclasses.fields(inner)}:
            return getattr(inner, name)
    return getattr(config, name)


BOOLS = [(stage, name) for stage, config in (("train", TrainConfig), ("score", ScoreConfig), ("evaluate", EvalConfig))
         for name, field in config_fields(config).items()
         if setting_of(field) and typing.get_type_hints(config).get(name) in (bool, Optional[bool])]


@pytest.mark.parametrize("stage, name", BOOLS, ids=[f"{s}-{n}" for s, n in BOOLS])
def test_every_boolean_flag_wins_over_the_yaml_and_the_yaml_over_the_default(monkeypatch, tmp_path, stage, name):
    config = {"train": TrainConfig, "score": ScoreConfig, "evaluate": EvalConfig}[stage]
    field = config_fields(config)[name]
    default = bool(field.default)  # padding_free=None in scoring: packed where it is free, else padded (off)
    where = {"train": ("train", "run"), "score": ("curate", "score"), "evaluate": ("evaluate", "run")}[stage]
    command = dict(ALL)[where]
    param = next(p for p in command.params if p.name == name)
    on, off = param.opts[0], param.secondary_opts[0]
    yaml_says = not default
    assert value(resolved(monkeypatch, tmp_path, stage, f"{name}: {str(yaml_says).lower()}\n"), name) is yaml_says
    flag = off if yaml_says else on  # the flag says the opposite of the YAML, and wins
    assert value(resolved(monkeypatch, tmp_path, stage, f"{name}: {str(yaml_says).lower()}\n", flag), name) is default
    assert value(resolved(monkeypatch, tmp_path, stage, None), name) == field.default


@pytest.mark.parametrize("stage, name, yaml_text, flags, from_yaml, from_flag, default", [
    ("train", "micro_batch_size", "micro_batch_size: 4\n", ["--micro-batch-size", "2"], 4, 2, 8),  # int
    ("train", "lr", "lr: 1e-4\n", ["--lr", "3e-4"], 1e-4, 3e-4, 1e-5),  # float (YAML 1.1 reads 1e-4 as text)
    ("train", "student", "student: a\n", ["--student", "b"], "a", "b", "default-student"),  # text
    ("train", "scheduler", "scheduler: linear\n", ["--scheduler", "constant"], "linear", "constant", "cosine"),
    ("train", "table", "table: t1\n", ["--table", "t2"], "t1", "t2", None),  # a path, optional
    ("train", "max_steps", "max_steps: 3\n", ["--max-steps", "5"], 3, 5, None),  # optional int
    ("train", "eval_seeds", "eval_seeds: [1, 2]\n", ["--eval-seeds", "3,4"], (1, 2), (3, 4), (10,)),  # tuple
    ("train", "loss_params", "loss: jsd\nloss_params: {beta: 0.25}\n", ["--loss-param", "beta=0.75"],
     {"beta": 0.25}, {"beta": 0.75}, {}),  # a mapping of key=value pairs
    ("score", "temperature", "generation: {temperature: 0.5, top_p: 0.9}\n", ["--temperature", "0.7"], 0.5, 0.7,
     0.01),  # a group's field, merged key by key (top_p stays the YAML's)
    ("score", "data", "data: a.jsonl\n", ["b.jsonl"], "a.jsonl", "b.jsonl", "dolly_dev_1000"),  # an argument
    ("evaluate", "sets", "sets: [dollyeval]\n", ["--sets", "selfinst,sni"], ("dollyeval",), ("selfinst", "sni"),
     EvalConfig(model="m", out="o").sets),
    ("evaluate", "seeds", "protocol: {seeds: [1]}\n", ["--seeds", "2,3"], (1,), (2, 3), (10, 20, 30, 40, 50)),
    ("evaluate", "max_new_tokens", "max_new_tokens: 32\n", ["--max-new-tokens", "16"], 32, 16, 256),  # as the option
])
def test_one_option_of_each_type_flag_over_yaml_over_default(monkeypatch, tmp_path, stage, name, yaml_text, flags,
                                                              from_yaml, from_flag, default):
    assert value(resolved(monkeypatch, tmp_path, stage, yaml_text), name) == from_yaml
    flagged = resolved(monkeypatch, tmp_path, stage, yaml_text, *flags)
    assert value(flagged, name) == from_flag
    if name == "temperature":
        assert flagged.generation.top_p == 0.9
    assert value(resolved(monkeypatch, tmp_path, stage, None), name) == default


def test_a_yaml_key_that_is_no_setting_is_refused_with_the_valid_ones(monkeypatch, tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-4\nlearning_rate: 3\n")
    result = runner.invoke(train_app, ["run", "--manifest", "m", "--out", "o", "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2 and "unknown setting(s) learning_rate; valid:" in result.output
    (tmp_path / "s.yaml").write_text("generation: {temprature: 0.5}\n")
    result = runner.invoke(curate_app, ["score", "--out", str(tmp_path / "t"), "--config", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2 and "generation: unknown setting(s) temprature" in result.output, result.output


def test_required_settings_come_from_the_flags_or_the_yaml(monkeypatch, tmp_path):
    result = runner.invoke(train_app, ["run", "--out", "o"])
    assert result.exit_code == 2 and "missing setting(s): manifest (give --manifest, or set them in --config)" in \
        " ".join(result.output.split())
    seen = []
    monkeypatch.setattr("syllabus.evaluate.run.evaluate", lambda config, progress: seen.append(config) or {})
    monkeypatch.setattr("syllabus.evaluate.run.markdown_summary", lambda summary: "")
    (tmp_path / "c.yaml").write_text("model: default-student\nout: somewhere\n")
    result = runner.invoke(evaluate_app, ["run", "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    assert (seen[0].model, seen[0].out) == ("default-student", "somewhere")


def test_the_default_models_have_one_name_and_the_old_one_is_the_same_run():
    """default-teacher / default-student in every command; `default` (by the option's role) still names them, and a
    table scored under either name is the same run, so a re-run under the new name resumes it."""
    from syllabus.core.models import DEFAULT_STUDENT, DEFAULT_TEACHER, _resolve

    assert ScoreConfig(out="o").student == TrainConfig(manifest="m", out="o").student == DEFAULT_STUDENT
    assert ScoreConfig(out="o").teacher == TrainConfig(manifest="m", out="o").teacher == DEFAULT_TEACHER
    old = ScoreConfig(out="o", student="default", teacher="default").identity()
    assert old == ScoreConfig(out="o").identity() and old["teacher"] == "default"
    assert ScoreConfig(out="o", student=DEFAULT_TEACHER).identity()["student"] == DEFAULT_TEACHER  # not the student's
    for role, name in (("student", DEFAULT_STUDENT), ("teacher", DEFAULT_TEACHER)):
        try:
            same = _resolve("default", role, 2).path == _resolve(name, "student", 2).path
        except ValueError:  # the default pair is not prepared on this machine: the names still resolve alike
            continue
        assert same
    for where in CONFIGS:
        text = " ".join(runner.invoke(PROGRAMS[where[0]], [*where[1:], "--help"], terminal_width=80).output.split())
        assert "default-" in text
