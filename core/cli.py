"""What every command line shares: its options made from the fields of its config dataclass (`config_options`),
one way to print an error and exit, fixed choices as typed enums (so `--help` lists them and the parser refuses
anything else), `--version`, plain help that prints brackets as written (`new_app`), and a failed write (a full
disk, a read-only or forbidden directory) reported as one line by every command (`Commands`)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Collection
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from typer.core import TyperGroup

from syllabus.core.config import field_default, is_required, parse_pairs, setting_of

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


def new_app(help: str, program: str) -> typer.Typer:
    """A command group as every Syllabus program has it: plain help (no Rich markup, which would eat `[default: x]`
    and `pip install 'syllabus[ray]'`), a failed write as one line, `--version`."""
    return with_version(typer.Typer(cls=Commands, help=help, no_args_is_help=True, pretty_exceptions_enable=False,
                                    add_completion=False, rich_markup_mode=None), program)


GIVEN = ("COMMANDLINE", "ENVIRONMENT")  # where a value counts as given (click's ParameterSource names)


def config_options(*configs: type, skip: Collection[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of its config dataclass(es), made from the field: its name (or the
    `Setting`'s flags), its type, its default (printed by --help), its help text and its choices. A field that is a
    dataclass itself (a group such as GenerationParams) gives one option per field of its own.

    The command's first parameter receives the settings that were given on the command line, as {field: value}
    (a group's as a nested mapping); settings not given are left out, so that `--config` YAML and then the field's
    default decide them (flag > YAML > default, `core/config.py:from_sources`). Fields without a `Setting`, and
    those in `skip`, get no option (YAML only).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command).parameters.values())[1:]
        hints = typing.get_type_hints(command)
        options: list[inspect.Parameter] = []
        flags: dict[str, str] = {}  # option parameter -> its name on the command line, for messages
        groups: dict[str, str | None] = {}  # option parameter -> the group field it belongs to (None: top level)
        for cls in configs:
            for group, field, hint in _fields(cls, skip):
                option = _option(field, hint)
                options.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                 annotation=_option_type(field, hint)))
                groups[field.name] = group
                flags[field.name] = (option.param_decls or (field.name,))[0].split("/")[0]
        names = [p.name for p in own]
        clash = sorted(set(names) & set(groups))
        if clash:
            raise TypeError(f"{command.__name__}: {', '.join(clash)} declared by hand and by the config")
        context = next((p.name for p in own if hints.get(p.name) is typer.Context), None)
        extra = [] if context else [inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY,
                                                      annotation=typer.Context)]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            ctx = kwargs[context] if context else kwargs.pop("_ctx")
            given: dict[str, Any] = {}
            for name, group in groups.items():
                value = kwargs.pop(name)
                source = ctx.get_parameter_source(name)
                if source is None or source.name not in GIVEN:
                    continue
                target = given if group is None else given.setdefault(group, {})
                try:
                    target[name] = _plain(value, flags[name])
                except ValueError as exc:  # key=value pairs without the `=`
                    fail(str(exc))
            return command(given, **kwargs)

        parameters = [*own, *options, *extra]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        run.__config_options__ = tuple(groups)  # type: ignore[attr-defined]  (tests/test_settings.py reads it)
        del run.__wrapped__  # typer reads the signature above, not the command's
        return run

    return decorate


def _fields(cls: type, skip: Collection[str], group: str | None = None):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _fields(hints[field.name], skip, field.name)
        elif setting_of(field) is not None:
            yield group, field, hints[field.name]


def _bare(hint: Any) -> Any:
    """`T` of `T | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return options[0] if len(options) == 1 else hint
    return hint


def _option_type(field: dataclasses.Field, hint: Any) -> Any:
    spec, bare = setting_of(field), _bare(hint)
    if spec.choices:
        kind: Any = choices(field.name.title().replace("_", ""), spec.choices)
    elif typing.get_origin(bare) is dict:
        return list[str]  # repeatable key=value
    elif typing.get_origin(bare) is tuple or bare is str:
        kind = Path if spec.path else str  # a tuple as comma-separated text, typed by the config
    else:
        kind = bare
    return Optional[kind]


def _option(field: dataclasses.Field, hint: Any) -> Any:
    spec, bare, default = setting_of(field), _bare(hint), field_default(field)
    flags = spec.flags or (f"--{field.name.replace('_', '-')}" + (f"/--no-{field.name.replace('_', '-')}"
                                                                   if bare is bool else ""),)
    help_text = spec.help + ("  [required: here or in --config]" if is_required(field) else _shown(spec, default))
    if isinstance(default, tuple):
        default = ",".join(map(str, default)) or None
    if typing.get_origin(bare) is dict:
        return typer.Option([], *flags, help=help_text, show_default=False, metavar="KEY=VALUE")
    metavar = "A,B,..." if typing.get_origin(bare) is tuple else None
    if spec.argument:
        return typer.Argument(default, help=help_text, show_default=False, metavar=metavar)
    return typer.Option(default, *flags, help=help_text, show_default=False, metavar=metavar)


def _shown(spec: Any, default: Any) -> str:
    """The default as help prints it (written here, not by click, which puts its own parentheses around text)."""
    if spec.shown is not None:
        text = spec.shown
    elif isinstance(default, bool):
        text = "on" if default else "off"
    elif default is None or (isinstance(default, (dict, tuple)) and not default):
        return ""
    elif isinstance(default, tuple):
        text = ", ".join(map(str, default))
    else:
        text = str(default)
    return f"  [default: {text}]"


def _plain(value: Any, flag: str) -> Any:
    """An option's value as the config takes it: a choice's text, a path's text, `key=value` pairs as a mapping."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return parse_pairs(value, flag)
    return value
