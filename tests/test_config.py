"""Settings are read one way everywhere (YAML < key=value < options), typed against their dataclass fields, and
refused with a message naming the setting, before any model loads."""

from __future__ import annotations

from typing import Optional

import pytest
from typer.testing import CliRunner

from syllabus.core.config import ConfigError, parse_pairs, typed_value
from syllabus.curate.cli import app as curate_app
from syllabus.train.cli import app as train_app
from syllabus.train.config import TrainConfig

runner = CliRunner()


@pytest.mark.parametrize("annotation, given, expected", [
    (float, "1e-5", 1e-5),  # PyYAML reads `lr: 1e-5` as a string (YAML 1.1 wants a dot)
    (float, 3, 3.0),
    (int, 8.0, 8),
    (int, " 12 ", 12),
    (Optional[int], None, None),
    (tuple[int, ...], "10, 20", (10, 20)),
    (tuple[str, ...], ["a", "b"], ("a", "b")),
    (dict[str, float], {"beta": "0.25"}, {"beta": 0.25}),
    (bool, False, False),
])
def test_values_convert_the_way_a_person_means(annotation, given, expected):
    assert typed_value("x", annotation, given) == expected


@pytest.mark.parametrize("annotation, given", [
    (int, True), (float, False), (int, 2.5), (float, "lots"), (str, 3), (bool, "yes"), (tuple[int, ...], "1,a"),
])
def test_values_that_do_not_fit_are_refused_by_name(annotation, given):
    with pytest.raises(ConfigError, match=r"parameter x: expected"):
        typed_value("x", annotation, given)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("manifest: m\nlr: [1\n")
    with pytest.raises(ConfigError, match=r'(?s)--config .*broken.yaml: not valid YAML .*in "[^"]*broken.yaml", line 2'):
        TrainConfig.from_sources(cfg, {})
    cfg.write_bytes(b"lr: 0.1\xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text"):
        TrainConfig.from_sources(cfg, {})


def test_pairs_are_yaml_scalars_and_need_an_equals_sign():
    assert parse_pairs(["a=2", "b-c=true", "d=x y"], "--set") == {"a": 2, "b_c": True, "d": "x y"}
    with pytest.raises(ConfigError, match=r"--set: expected key=value, got 'a'"):
        parse_pairs(["a"], "--set")


def test_train_yaml_is_typed_like_the_flags(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("manifest: m\nout: o\nlr: 1e-5\neval_seeds: [10, 20]\neval_sets: dollyeval,selfinst\n")
    config = TrainConfig.from_sources(cfg, {"micro_batch_size": 4})
    assert config.lr == 1e-5 and config.eval_seeds == (10, 20) and config.eval_sets == ("dollyeval", "selfinst")
    assert config.micro_batch_size == 4
    cfg.write_text("manifest: m\nout: o\nlr: abc\n")
    with pytest.raises(ConfigError, match=r"parameter lr: expected float, got 'abc'"):
        TrainConfig.from_sources(cfg, {})
    cfg.write_text("manifest: m\nout: o\nmax_steps: true\n")
    with pytest.raises(ConfigError, match=r"parameter max_steps: expected"):
        TrainConfig.from_sources(cfg, {})


@pytest.mark.parametrize("args, message", [
    (["--loss", "jsd", "--loss-param", "beta=abc"], "parameter loss_params.beta: expected float, got 'abc'"),
    (["--loss", "jsd", "--loss-param", "beta=1.0"], "beta of 'jsd' must be in (0, 1)"),
    (["--loss", "kl"], "'kl' is not one of"),
    (["--loss-param", "skew=0.1"], "--loss-param needs --loss"),
    (["--loss-param", "skew"], "--loss-param: expected key=value"),
    (["--scheduler", "step"], "'step' is not one of"),
    (["--lora", "r=8,alpha=-8"], "alpha scales the adapters' update (alpha / r) and must be a positive number, got -8"),
    (["--lora", "r=8,alpha=nan"], "must be a positive number, got nan"),
])
def test_train_refuses_bad_settings_before_loading_anything(tmp_path, args, message):
    result = runner.invoke(train_app, ["run", "--manifest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                                       *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_score_choices_are_typed(tmp_path):
    result = runner.invoke(curate_app, ["score", "dolly_dev_1000", "--out", str(tmp_path / "t"), "--template", "x"])
    assert result.exit_code == 2 and "'x' is not one of" in " ".join(result.output.split())
    result = runner.invoke(curate_app, ["score", "dolly_dev_1000", "--out", str(tmp_path / "t"), "--ce-engine", "tgi"])
    assert result.exit_code == 2 and "'tgi' is not one of" in " ".join(result.output.split())


def test_score_options_default_to_the_config_defaults():
    """The CLI reads its defaults from ScoreConfig and GenerationParams, so the two cannot drift apart."""
    import typer

    from syllabus.core.config import field_defaults
    from syllabus.core.engines.base import GenerationParams
    from syllabus.curate.score_config import ScoreConfig

    expected = {**field_defaults(ScoreConfig), **field_defaults(GenerationParams)}
    command = typer.main.get_command(curate_app).commands["score"]
    checked = 0
    for param in command.params:
        if param.name in expected and expected[param.name] is not None:
            default = param.default.value if hasattr(param.default, "value") else param.default
            assert default == expected[param.name], param.name
            checked += 1
    assert checked >= 15


def test_one_data_file_is_one_scoring_run_however_its_path_is_spelled(tmp_path, monkeypatch):
    from syllabus.curate.score_config import ScoreConfig

    (tmp_path / "data.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    relative = ScoreConfig(data="data.jsonl", out="o", student="default", teacher="default").identity()
    absolute = ScoreConfig(data=str(tmp_path / "data.jsonl"), out="o", student="default", teacher="default").identity()
    dotted = ScoreConfig(data="./sub/../data.jsonl", out="o", student="default", teacher="default")
    (tmp_path / "sub").mkdir()
    assert relative == absolute == dotted.identity()
    assert relative["student"] == "default"  # a name, not a path: as given
