"""What every command line shares: one way to print an error and exit, fixed choices as typed enums (so `--help`
lists them and the parser refuses anything else), `--version`, and a failed write (a full disk, a read-only or
forbidden directory) reported as one line by every command (`Commands`)."""

from __future__ import annotations

import errno
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # syllabus/
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)  # the disk's, not the code's


def fail(message: str) -> NoReturn:
    """Print `error: message` in red on stderr and exit with code 2 (a usage or input error, not a crash)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


class Commands(TyperGroup):
    """A command group whose commands report a failed write as one line and exit 2, whichever command and wherever
    it writes: a `WriteError` (already named, with the space left and what was kept) as it is, and a bare OSError of
    the disk's (full, read-only, forbidden) with the file, the space left there and what to do. Syllabus's own
    warnings print as one `warning: ...` line, without Python's file and source line."""

    def invoke(self, ctx: Any) -> Any:
        from syllabus.core.io import WriteError

        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except WriteError as exc:
            fail(str(exc))
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            fail(write_failure(exc))


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    if _ours(filename):  # written for the user: the file and source line are noise to them
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def _ours(filename: str) -> bool:
    """Whether `filename` is in one of Syllabus's subpackages (not a virtualenv an editable install keeps beside them)."""
    path = Path(filename).resolve()
    if not path.is_relative_to(PACKAGE_DIR) or path == PACKAGE_DIR:
        return False
    return (PACKAGE_DIR / path.relative_to(PACKAGE_DIR).parts[0] / "__init__.py").exists()


def write_failure(exc: OSError) -> str:
    """One line for an OSError of the disk's: the file, why, the free space there, and what to do."""
    from syllabus.core.io import free_mib

    path = Path(exc.filename) if exc.filename else None
    free = f"; {free_mib(path):,.0f} MiB free there" if path else ""
    return (f"cannot write {path or 'an output'} ({exc.strerror or exc}){free}. Free some space (or fix the "
            "permissions) and run the same command again: what was finished is kept")


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
