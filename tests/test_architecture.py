"""The layers of docs/architecture.md hold: `core` imports no stage, stages import `core` and the contracts, never
each other's internals, and no two modules import each other, directly or around a loop (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "curate", "train", "evaluate", "pipelines")
# What each layer may import besides itself and `core`. The cross-stage edges are contracts, named one by one:
# DA-KD's selection (the trainer's dynamic mode re-selects with the schedule's own code) and the evaluate stage's
# library entry point (stage-end evaluation). pipelines reaches the stage CLIs through their console scripts.
ALLOWED = {
    "core": set(),
    "curate": set(),
    "evaluate": set(),
    "train": {"syllabus.curate.schedules.dakd", "syllabus.evaluate.run", "syllabus.evaluate.protocol",
              "syllabus.evaluate.sets"},
    "pipelines": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return "syllabus." + ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every syllabus module `path` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("syllabus.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("syllabus."):
                continue
            # `from pkg import module` names a module; `from module import name` names the module
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate) else target)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): {m for m in imports_of(p) if m != module_name(p)} for p in files}


def layer(module: str) -> str:
    return module.split(".")[1]


def test_each_layer_imports_only_core_itself_and_named_contracts():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if layer(target) not in ("core", layer(module)) and target not in ALLOWED[layer(module)]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports across layers: " + ", ".join(sorted(wrong))


def test_core_imports_no_stage():
    assert all(layer(t) == "core" for m, ts in graph().items() if layer(m) == "core" for t in ts)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if target not in edges:
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The rules above are only as good as `imports_of`: it must find a lazy, relative import."""
    probe = ROOT / "train" / "loop.py"
    found = imports_of(probe)
    assert "syllabus.train.snapshot" in found  # `from . import snapshot`
    assert "syllabus.evaluate.run" in found  # imported inside evaluate_stage
    assert "syllabus.core.schedule" in found


def test_stages_reach_engines_only_through_their_contracts():
    """An engine is opened by `core.engines` (`EngineSlot`, `open_engine`) and spoken to through `core.engines.base`;
    a stage that imports an engine module reaches into its internals (the trainer once took the transformers
    engine's scoring pass: it lives in `core.scoring`, shared)."""
    contracts = {"syllabus.core.engines", "syllabus.core.engines.base"}
    wrong = [f"{module} -> {target}" for module, targets in graph().items() if layer(module) != "core"
             for target in targets if target.startswith("syllabus.core.engines") and target not in contracts]
    assert not wrong, "stages importing an engine's module: " + ", ".join(sorted(wrong))
