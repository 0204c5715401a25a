"""The package's layout: every module imports, and no freshd modules import each other in a cycle.

The import graph is read from the source (the AST of every module under daemon/ and connectors/),
not from what happens to be imported at run time: an import inside a function, or under
`if TYPE_CHECKING:`, counts like one at the top, so a lazy import that only hides a cycle is
found.  A module importing a package it is part of (`from freshd import __version__` in
freshd.app) is not a cycle: the package is already being imported when the module runs.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = {"freshd": ROOT / "daemon", "freshd.connectors": ROOT / "connectors"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the package (packages by their __init__)."""
    found: dict[str, Path] = {}
    for package, folder in TREES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if name.startswith("freshd.connectors") and package == "freshd":
                continue  # daemon/ has no connectors folder; guard against one appearing
            found[name] = path
    return found


MODULES = _modules()


def _resolve(importer: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The freshd modules an import statement loads (a submodule if it is one, else its package)."""
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "freshd" or alias.name.startswith("freshd."):
                targets.add(alias.name)
        return {t for t in targets if t in MODULES}
    if node.level:  # relative: from the importer's package
        is_package = MODULES[importer].name == "__init__.py"
        base = importer.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    if module != "freshd" and not module.startswith("freshd."):
        return set()
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        targets.add(sub if sub in MODULES else module)
    return {t for t in targets if t in MODULES}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _resolve(name, node)
        # importing a package one is part of is not a cycle: it is already being imported
        graph[name] = {t for t in edges if t != name and not name.startswith(f"{t}.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One cycle through the component, written a -> b -> a, for the failure message."""
    members = set(component)
    start = component[0]
    trail, seen = [start], {start}
    while True:
        here = trail[-1]
        nxt = sorted(t for t in graph[here] if t in members)
        back = [t for t in nxt if t == start]
        if back and len(trail) > 1:
            return " -> ".join([*trail, start])
        fresh = [t for t in nxt if t not in seen]
        if not fresh:
            return " -> ".join([*trail, "..."])
        trail.append(fresh[0])
        seen.add(fresh[0])


def test_no_import_cycles_among_freshd_modules() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(f"  {_path(graph, c)}  (among {', '.join(c)})" for c in found)


def test_the_cycle_finder_sees_function_level_and_type_checking_imports() -> None:
    graph = {"freshd.a": {"freshd.b"}, "freshd.b": {"freshd.c"}, "freshd.c": {"freshd.a"}, "freshd.d": {"freshd.a"}}
    assert cycles(graph) == [["freshd.a", "freshd.b", "freshd.c"]]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from freshd.app import Daemon\n"
        "def f():\n    from freshd.config import load_config\n    import freshd.metrics\n"
        "from freshd import logs, __version__\n"
    )
    edges: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            edges |= _resolve("freshd.sync", node)
    assert edges == {"freshd.app", "freshd.config", "freshd.metrics", "freshd.logs", "freshd"}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if "simulator" not in n.rsplit(".", 1)[-1]))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_no_module_is_over_500_lines() -> None:
    """A module past 500 lines holds more than one concern (issue 16): split it where the concerns part."""
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}, long
