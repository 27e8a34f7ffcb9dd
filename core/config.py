"""One way to read settings for every command: YAML file < `key=value` pairs < explicit options, each value checked
against the type of its dataclass field, unknown names refused with the valid ones listed.

A setting is declared once, as a field of its command's config dataclass: `lr: float = setting(1e-5, "peak
learning rate")` gives it a name, a type, a default and a help text, and `core/cli.py:config_options` makes the
command-line option from that field (docs/architecture.md, "Where a new setting goes").

Pure Python (PyYAML is imported only to read), so a CLI can validate before anything heavy is imported.

Conversions are the ones a person means and nothing more: an int passes for a float, an integral float for an
int, a numeric string for a number (PyYAML reads `lr: 1e-5` as the string "1e-5": YAML 1.1 wants a dot), a list
or a comma-separated string for a tuple. A bool is never a number, and a number is never a string.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or unreadable; the message names it and where it came from."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a config field's command-line option needs beyond the field's own name, type and default."""

    help: str
    flags: tuple[str, ...] = ()  # the option's names if not --field-name: ("--out", "-o"), ("--padding-free/--padded",)
    choices: tuple[str, ...] = ()  # the values allowed (the option lists them; YAML is checked against them too)
    path: bool = False  # the value names a file or directory (a recipe's dry run checks that it exists)
    shown: str | None = None  # the default as --help prints it, where the value would not say it (None: "the table's")
    argument: bool = False  # a positional argument, not an option


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            **option: Any) -> Any:
    """A dataclass field declared with its help text (and its option's names, choices, ...: `Setting`), so that the
    command line, the YAML keys and the config share one name, one type, one default and one help text."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"setting": Setting(help=help, **option)})


def setting_of(field: dataclasses.Field) -> Setting | None:
    """The `Setting` a field was declared with (None: a field with no command-line option)."""
    return field.metadata.get("setting")


def check_choices(config: Any, error: type[ValueError] = ConfigError) -> None:
    """Refuse a field whose value is not one of its setting's choices (None passes where the field allows it).

    Raises:
        `error`: naming the field, the value and the choices.
    """
    for f in dataclasses.fields(config):
        spec = setting_of(f)
        value = getattr(config, f.name)
        if spec and spec.choices and value is not None and value not in spec.choices:
            raise error(f"{f.name} must be one of {', '.join(spec.choices)}, got {value!r}")


def _number(kind: type, value: Any) -> Any:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            raise TypeError from None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError


def _convert(annotation: Any, value: Any) -> Any:
    """`value` as `annotation`, or TypeError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value)
            except TypeError:
                pass
        raise TypeError
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise TypeError
        args = typing.get_args(annotation)
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(value_type, v) for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(_convert(item_type, v) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation in (int, float):
        return _number(annotation, value)
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise TypeError
    return value


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[:1] in ((int,), (float,)):
        return "comma-separated integers" if typing.get_args(annotation)[0] is int else "comma-separated numbers"
    if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def typed_value(name: str, annotation: Any, value: Any, error: type[ValueError] = ConfigError) -> Any:
    """`value` converted to `annotation`.

    Raises:
        `error` (ConfigError by default): naming the parameter, the expected type and the value.
    """
    if typing.get_origin(annotation) is dict and isinstance(value, Mapping):  # name the entry that is wrong
        value_type = (typing.get_args(annotation) or (Any, Any))[1]
        return {str(k): typed_value(f"{name}.{k}", value_type, v, error) for k, v in value.items()}
    try:
        return _convert(annotation, value)
    except TypeError:
        raise error(f"parameter {name}: expected {_type_name(annotation)}, got {value!r}") from None


def typed_fields(cls: type, values: Mapping[str, Any], where: str, error: type[ValueError] = ConfigError,
                 what: str = "parameter") -> dict[str, Any]:
    """Check the names and types of `values` against the fields of the dataclass `cls`.

    Args:
        cls: a dataclass.
        values: name -> value (from YAML, pairs or options).
        where: who is asking, for messages (e.g. "method dakd", "train run").
        error: the exception type to raise.
        what: what a name is called in messages ("parameter", "setting").

    Raises:
        `error`: an unknown name (the valid ones are listed) or a value of the wrong type (named).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise error(f"{where}: unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    out = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):  # a group of settings (generation:)
            out[key] = hints[key](**typed_fields(hints[key], value, f"{where}: {key}", error, what))
        else:
            out[key] = typed_value(key, hints[key], value, error)
    return out


def _grouped(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """YAML keys named as the options are (`temperature: 0.5`) moved into the group they belong to
    (`generation: {temperature: 0.5}`), which a YAML file may also spell out."""
    hints = typing.get_type_hints(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    for group in (f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])):
        members = {f.name for f in dataclasses.fields(hints[group])} - own
        moved = {key: values.pop(key) for key in list(values) if key in members}
        if moved:
            values[group] = {**(values.get(group) or {}), **moved}
    return values


def from_sources(cls: type, yaml_path: Path | None, given: Mapping[str, Any], where: str,
                 error: type[ValueError] = ConfigError) -> Any:
    """The config `cls` from a YAML file (`--config`), then the values given on the command line over it, then the
    fields' defaults for the rest: flag > YAML > default. A field that is itself a dataclass (a group of settings)
    takes a mapping, merged the same way key by key; in YAML its keys may also stand at the top (`seeds: [10]`).

    Raises:
        `error`: an unknown key, a value of the wrong type, a required setting given nowhere, or a value the
            config refuses.
    """
    values = _grouped(cls, read_yaml(yaml_path, error=error) if yaml_path is not None else {})
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(values.get(key), Mapping):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values and is_required(f)]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        where_else = "--config" if yaml_path is None else str(yaml_path)
        raise error(f"missing setting(s): {', '.join(missing)} (give {flags}, or set them in {where_else})")
    return cls(**typed_fields(cls, values, str(yaml_path or where), error, what="setting"))


def read_yaml(path: Path, option: str = "--config", error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """The mapping in a YAML file; dashes in keys become underscores (flags and keys read the same).

    Raises:
        `error`: the file is missing, is not YAML, or is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{option} {path}: no such file")
    try:
        with path.open(encoding="utf-8-sig") as stream:  # a stream, so that YAML's marks name the file
            loaded = yaml.safe_load(stream)
    except UnicodeDecodeError as exc:
        raise error(f"{option} {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise error(f"{option} {path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(f"{option} {path}: expected a mapping of name: value, got {type(loaded).__name__}")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def parse_pairs(items: Iterable[str], option: str, error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """`key=value` items as a dict; values are YAML scalars (2 -> int, true -> bool, 1e-5 -> str, checked later).

    Raises:
        `error`: an item without `=` or with an empty key, naming the option.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"{option}: expected key=value, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip().replace("-", "_")] = value
    return out


def is_required(field: dataclasses.Field) -> bool:
    """Whether a field has no default (nor default factory): a setting that must be given."""
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING  # type: ignore[misc]


def field_default(field: dataclasses.Field) -> Any:
    """A field's default, its default factory called (None for a required field)."""
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None if field.default is dataclasses.MISSING else field.default


def field_defaults(cls: type) -> dict[str, Any]:
    """Each field's default (default factories called), required fields left out."""
    return {f.name: field_default(f) for f in dataclasses.fields(cls) if not is_required(f)}
