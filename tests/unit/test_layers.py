"""The layering rule, read from the source with ``ast`` (nothing is imported).

spank_plugin (the node's C core and its build) -> faas_runtime (agent, executor, wire
protocol) -> coscheduler (daemon, database, CLIs), and slurm_faas (the users' Python API)
on faas_runtime beside coscheduler: an import only runs down this list,
never up it, and the modules of coscheduler import each other without a cycle. Imports
inside functions count as much as those at the top of a module.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("spank_plugin", "faas_runtime", "coscheduler", "slurm_faas")
# What each package may not import: the layers above it. slurm_faas, the users' import,
# stands on faas_runtime beside coscheduler: neither imports the other.
FORBIDDEN = {"spank_plugin": ("faas_runtime", "coscheduler", "slurm_faas"),
             "faas_runtime": ("coscheduler", "slurm_faas"), "coscheduler": ("slurm_faas",),
             "slurm_faas": ("coscheduler", "spank_plugin")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import statement of the module, at any depth.
    ``from X import y`` names the module X.y when that is a module of ``known``, else X."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.module, node.level)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


def _resolve(name: str, is_package: bool, module: Optional[str], level: int) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".")
    here = parts if is_package else parts[:-1]
    base = here[:len(here) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _graph(package: str) -> dict[str, dict[str, int]]:
    """Module -> {module of the same package it imports: first line}."""
    known = _modules(package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(name, path, known):
            # ``import a.b.c`` names a module: the longest known prefix of it.
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                edges.setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and modules
    that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_up_the_layers(package):
    known = _modules(package)
    bad = [f"{path.relative_to(ROOT)}:{line} imports {target}"
           for name, path in known.items()
           for target, line in _imports(name, path, known)
           if target.split(".")[0] in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_in_coscheduler():
    graph = _graph("coscheduler")
    assert "coscheduler.daemon" in graph and graph["coscheduler.daemon"], "the import graph came out empty"
    cycles = _cycles(graph)
    detail = ["; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in comp for b in comp if b in graph[a])
              for comp in cycles]
    assert not cycles, "\n".join(detail)


def test_the_checker_sees_function_level_imports_and_cycles():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _resolve("coscheduler.db.queue", False, "models", 1) == "coscheduler.db.models"
    assert _resolve("coscheduler.db", True, "models", 1) == "coscheduler.db.models"
    assert _resolve("coscheduler.cli.admin.db", False, None, 3) == "coscheduler"
    graph = _graph("coscheduler")
    # cli/admin/db.py imports coscheduler.daemon inside a function.
    assert "coscheduler.daemon" in graph["coscheduler.cli.admin.db"]
