"""What every command line shares: one way to print an error and exit, fixed choices as typed enums (so `--help`
lists them and the parser refuses anything else), and `--version`."""

from __future__ import annotations

from enum import Enum
from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """Print `error: message` in red on stderr and exit with code 2 (a usage or input error, not a crash)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values`, for a Typer option whose value must be one of them."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


def value(option: Enum | None) -> str | None:
    """The plain string of a choice option (None stays None)."""
    return None if option is None else option.value


def with_version(app: typer.Typer, program: str) -> typer.Typer:
    """Give `app` a `--version` option (`curate --version`) that prints the installed Syllabus version and exits;
    it also keeps a lone subcommand a subcommand (`train run`)."""

    def show(flag: bool) -> None:
        if flag:
            from importlib.metadata import version

            typer.echo(f"{program} (syllabus) {version('syllabus')}")
            raise typer.Exit()

    @app.callback()
    def main(_version: bool = typer.Option(False, "--version", callback=show, is_eager=True,
                                           help="print the Syllabus version and exit")) -> None:
        pass

    return app
