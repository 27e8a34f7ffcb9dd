"""`train`: distil a student on a schedule written by `curate schedule`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from syllabus.core.cli import config_options, fail, new_app

from .config import TrainConfig

app = new_app("Syllabus trainer: white-box KD over curriculum schedules.", "train")


@app.command()
@config_options(TrainConfig)
def run(
    given: dict[str, Any],
    config: Optional[Path] = typer.Option(None, help="YAML with any of these settings by name (lr: 1e-4, "
                                          "micro_batch_size: 4); the options given here win"),
) -> None:
    """Train the student on the schedule's epochs, with the manifest's loss, temperature and kd_weight per epoch."""
    from syllabus.core.config import ConfigError
    from syllabus.core.io import WriteError
    from syllabus.core.models import ModelError
    from syllabus.core.schedule import ScheduleError
    from syllabus.core.table import TableError

    from .data import DataError
    from .distributed import MainProcessError

    try:
        cfg = TrainConfig.from_sources(config, given)
        from .loop import train

        final = train(cfg)
    except (ConfigError, ScheduleError, TableError, ModelError, DataError, ValueError, MainProcessError) as exc:
        # under torchrun every rank checks the same inputs and refuses alike, and a MainProcessError repeats the
        # main process's failure: rank 0 says it once, the others only exit
        if int(os.environ.get("RANK", "0")) != 0:
            raise typer.Exit(code=2) from None
        fail(str(exc))
    except WriteError as exc:  # the main process writes; a rank's own write failure is its own to report
        fail(str(exc) if int(os.environ.get("RANK", "0")) == 0 else f"rank {os.environ['RANK']}: {exc}")
    typer.echo(f"final checkpoint: {final}")
