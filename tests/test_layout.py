"""The arrows of docs/architecture.md, checked on the source (an AST walk of every project module's imports)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training", "export", "loadtest")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


MODULES = _modules()
IMPORTS = {m: _imports(p) for m, p in MODULES.items()}
GRAPH = {m: {d for d in deps if d in MODULES and d != m} for m, deps in IMPORTS.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] in (["service", "tasks"], ["training", "tasks"]) and len(parts) > 2 else None


def test_no_import_cycle() -> None:
    assert _cycles() == []


def test_service_core_imports_no_task() -> None:
    bad = {m: sorted(d for d in deps if d.startswith("service.tasks")) for m, deps in IMPORTS.items()}
    assert {m: d for m, d in bad.items() if m.startswith("service.core") and d} == {}


# The one honest crossing (../shared/design/task-rooms.md): the text classifier fine-tunes the language model's
# own class, training/tasks/generate/model.py, so a pre-trained LM's weights load into it as they are.
ALLOWED_CROSSINGS = {("training.tasks.textclf", "training.tasks.generate.model")}


def _allowed(module: str, dep: str) -> bool:
    return any(module.startswith(a) and (dep == b or dep.startswith(b + ".")) for a, b in ALLOWED_CROSSINGS)


def test_rooms_do_not_import_each_other() -> None:
    crossing = {
        m: sorted(
            d
            for d in deps
            if _room(d) and m.split(".")[0] == d.split(".")[0] and _room(d) != _room(m) and not _allowed(m, d)
        )
        for m, deps in IMPORTS.items()
        if _room(m)
    }
    assert {m: d for m, d in crossing.items() if d} == {}


def test_service_imports_neither_training_export_nor_torch() -> None:
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] in ("training", "export", "torch"))
        for m, deps in IMPORTS.items()
        if m.startswith("service")
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_no_module_over_the_line_limit() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_room_is_registered_on_both_sides() -> None:
    from training.tasks import TASKS

    serving = {p.parent.name for p in (ROOT / "service/tasks").glob("*/__init__.py")}
    training = {p.parent.name for p in (ROOT / "training/tasks").glob("*/__init__.py")}
    assert serving == training == set(TASKS)
