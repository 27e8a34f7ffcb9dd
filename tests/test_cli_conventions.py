"""What every Syllabus command line does alike: `--version`, and warnings of ours as one plain line."""

from __future__ import annotations

from importlib.metadata import version

import warnings

import pytest
import typer
from typer.testing import CliRunner

from syllabus.core import precision
from syllabus.core.cli import Commands

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


def test_our_warnings_print_as_one_line_and_others_as_python_writes_them(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    precision._warn_no_bf16.cache_clear()
    app = typer.Typer(cls=Commands)

    @app.command()
    def go() -> None:
        precision.resolve_dtype("auto")  # warns from core/precision.py
        warnings.warn("from a library", UserWarning, stacklevel=1)  # this file is no Syllabus module

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["go"])
    precision._warn_no_bf16.cache_clear()
    assert result.exit_code == 0, result.output
    ours = [line for line in result.output.splitlines() if "no native bf16" in line]
    assert len(ours) == 1 and ours[0].startswith("warning: this machine has no native bf16")
    assert "precision.py" not in result.output  # no file, line number or source line of ours
    assert "warning: from a library" not in result.output  # left to Python (and here to pytest's recorder)
