"""`curate schedule --help-params`: each method's parameters, read from its config dataclass (names, types, paper
defaults and the comment beside each field), so the help cannot drift from the code."""

from __future__ import annotations

import dataclasses
import inspect
import re

from syllabus.core.config import field_defaults

from .methods import METHODS, load_method

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def field_notes(cls: type) -> dict[str, str]:
    """The comment on each field's line in the class source (empty where there is none)."""
    notes: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_LINE.match(line)
        if match and match.group(1) not in notes:
            notes[match.group(1)] = (match.group(2) or "").strip()
    return notes


def describe(name: str) -> str:
    """The parameters of method `name`: `key: type = default  note`, one per line, under the method's summary."""
    config = load_method(name).config
    notes = field_notes(config)
    defaults = field_defaults(config)
    doc = (inspect.getdoc(config) or "").splitlines()[0]
    lines = [f"{name}: {METHODS[name][3]}", f"  {doc}" if doc else ""]
    heads = {f.name: f"{f.name}: {_type(f)} = " + (repr(defaults[f.name]) if f.name in defaults else "(required)")
             for f in dataclasses.fields(config)}
    width = max(map(len, heads.values()))
    for field_name, head in heads.items():
        lines.append(f"  -p {head:<{width}}  {notes.get(field_name, '')}".rstrip())
    lines += [f"  -p {head:<{width}}  {note}" for head, note in ON_POLICY_HELP]
    return "\n".join(line for line in lines if line)


# Every method's on-policy parameters (build.on_policy_base), listed under each.
ON_POLICY_HELP = (
    ("on_policy: str = 'off'", "gkd (a share of each step the student's own) or distillm (docs/methods.md)"),
    ("on_policy_share: float = 0.5", "the share of each step's samples generated (GKD's lambda), with gkd"),
)


def _type(field: dataclasses.Field) -> str:
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
