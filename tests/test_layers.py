"""Arrows point down (STYLE.md 16): the import rules the code keeps, checked from its source.

Imports are read with ``ast`` (module level and inside functions alike), so a lazy import
does not hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every gateway module that ``path`` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from gateway import envelope`` imports the module gateway.envelope, not
            # the package's __init__; ``from gateway.x import name`` imports gateway.x.
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name.split(".")[0] == "gateway"}


FILES = [p for p in PACKAGE.rglob("*.py") if "v1" not in p.relative_to(PACKAGE).parts]
MODULES = {_module(p) for p in FILES}
GRAPH = {_module(path): _imports(path) for path in FILES}


def _imports_of(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


def test_graph_was_read() -> None:
    """A guard for the tests below: they check something only if imports were found."""
    assert "gateway.cli" in GRAPH
    assert "gateway.present" in GRAPH["gateway.cli"]
    assert any(d.startswith("gateway.handoff") for d in GRAPH["gateway.runtime.cycle"])


def test_handoff_never_imports_runtime() -> None:
    """The handoff layer announces lifecycle events through its own LifecycleRecorder;
    the runtime (above it) implements that, so no arrow runs from handoff up to runtime."""
    upward = {
        module: sorted(d for d in deps if d.startswith("gateway.runtime"))
        for module, deps in _imports_of("gateway.handoff").items()
    }
    assert not {m: d for m, d in upward.items() if d}, upward


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("gateway.demo", "gateway.cli"),
        ("gateway.present", "gateway.cli"),
        ("gateway.present", "gateway.demo"),
    ],
    ids=lambda name: name.removeprefix("gateway."),
)
def test_presentation_has_no_circle(lower: str, upper: str) -> None:
    """cli imports demo (the ``demo`` command); shared tables live in gateway.present,
    which neither cli nor demo is imported by."""
    assert not any(d == upper or d.startswith(upper + ".") for d in GRAPH[lower]), GRAPH[lower]


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    known = set(GRAPH)
    edges = {
        m: {d if d in known else d.rsplit(".", 1)[0] for d in deps} & known
        for m, deps in GRAPH.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node] - {node}:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_circles() -> None:
    """No two gateway modules import each other, directly or around a loop (a package's
    __init__ counts as the package)."""
    assert _cycles() == []
