"""The package's shape, kept true by a test: data walks one way, so no module imports another that (directly or not)
imports it — type-only imports included — and only the kopf wiring knows the Reconciler."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "mtls_operator"


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        graph[path.stem] = found
    return graph


def test_no_import_cycles() -> None:
    graph = _imports()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            assert state.get(other) != "open", " -> ".join([*trail, module, other])
            if other not in state:
                visit(other, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_only_the_kopf_wiring_knows_the_reconciler() -> None:
    users = sorted(m for m, imported in _imports().items() if "reconciler" in imported)
    assert users == ["handlers"]
