"""The package's shape: no import cycle in src/, no private name imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "qwen3_retrieval"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, list[tuple[str, str | None]]]:
    """Each module's imports of the package's modules, as (module, imported name or None), at any depth."""
    modules = {module_name(path): path for path in SRC.rglob("*.py")}
    found: dict[str, list[tuple[str, str | None]]] = {}
    for name, path in modules.items():
        edges: list[tuple[str, str | None]] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(alias.name, None) for alias in node.names if alias.name.startswith(PACKAGE)]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.append((sub, None) if sub in modules else (node.module, alias.name))
        found[name] = edges
    return found


def test_no_import_cycle_in_src() -> None:
    graph = {name: sorted({module for module, _ in edges if module != name}) for name, edges in imports().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_private_name_imported_across_modules() -> None:
    crossing = [
        f"{name} imports {module}.{imported}"
        for name, edges in imports().items()
        for module, imported in edges
        if imported is not None and imported.startswith("_") and not imported.startswith("__")
    ]
    assert crossing == []
