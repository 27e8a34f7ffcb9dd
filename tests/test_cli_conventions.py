"""What every Syllabus command line does alike: `--version`."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from syllabus.curate.cli import app as curate
from syllabus.evaluate.cli import app as evaluate
from syllabus.pipelines.cli import app as pipelines
from syllabus.train.cli import app as train


@pytest.mark.parametrize(("app", "program"), [(curate, "curate"), (train, "train"), (evaluate, "evaluate"),
                                              (pipelines, "syllabus")])
def test_every_command_prints_the_installed_version(app, program):
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"{program} (syllabus) {version('syllabus')}\n"
    assert CliRunner().invoke(app, ["--help"]).exit_code == 0  # the option does not take over the program
