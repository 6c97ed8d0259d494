"""The package's shape: no import cycles among apoda's modules (function-level imports
included), so e.g. building a model never reaches back into the training loop, and layers that
only point down (`LAYER_RULES`): what a package may never reach through its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import apoda

SRC = Path(apoda.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


LAYER_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (package or module, what it must never reach, the only modules it may reach them through)
    ("apoda.checkpoints", ("apoda.models", "apoda.methods", "apoda.engine", "apoda.runs"), ()),
    ("apoda.models", ("apoda.engine",), ()),
    ("apoda.methods", ("apoda.engine",), ()),
    ("apoda.engine", ("apoda.cli",), ()),
    # the loop imports no report module: its default finish hooks draw the report
    ("apoda.engine", ("apoda.report",), ("apoda.run_outputs",)),
)
"""Layers that only point down: checkpoint files are a leaf below models and methods, models
and methods never depend on the training loop, and the loop never on the command line."""


LAYERS: tuple[tuple[str, ...], ...] = (
    ("apoda", "apoda.errors", "apoda.registry", "apoda.configs", "apoda.torch_files",
     "apoda.run_lock", "apoda.distributed"),
    ("apoda.config", "apoda.checkpoints"),
    ("apoda.runs",),
    ("apoda.data", "apoda.losses"),
    ("apoda.models", "apoda.attacks", "apoda.mixing"),
    ("apoda.methods",),
    ("apoda.engine", "apoda.evaluation", "apoda.report", "apoda.run_outputs", "apoda.inference",
     "apoda.export", "apoda.prediction", "apoda.selection"),
    ("apoda.pretrain", "apoda.demo", "apoda.suites", "apoda.suite_pool", "apoda.cli",
     "apoda.__main__"),
)  # fmt: skip
"""apoda's layers, bottom first (docs/architecture.md draws them): a module may import its own
layer and the ones below, never one above."""


def _layer(module: str) -> int:
    """The layer of a module: that of the longest package or module prefix listed."""
    found = [
        (len(name), level)
        for level, names in enumerate(LAYERS)
        for name in names
        if module == name or (name != "apoda" and module.startswith(f"{name}."))
    ]
    assert found, f"{module} is in no layer of LAYERS: add it there and to docs/architecture.md"
    return max(found)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a module from a higher layer than its own."""
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(source)
    )


def test_every_import_points_down_the_layers() -> None:
    graph = _import_graph()
    assert upward_imports(graph) == []
    # the config is a leaf: it asks the registries for names and imports no implementation
    assert graph["apoda.config"] <= {"apoda.errors", "apoda.registry", "apoda.configs"}
    assert graph["apoda.registry"] <= {"apoda.errors"}


def test_the_layer_check_finds_an_upward_import() -> None:
    assert upward_imports({"apoda.config": {"apoda.models.segmenter"}}) == [
        ("apoda.config", "apoda.models.segmenter")
    ]
    assert upward_imports({"apoda.models.build": {"apoda.config"}}) == []


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _violations(
    graph: dict[str, set[str]], source: str, forbidden: tuple[str, ...], through: tuple[str, ...]
) -> list[list[str]]:
    """Import chains from `source` (a module or package) into `forbidden` that pass through
    none of the modules in `through` (breadth first: one shortest chain per module reached)."""
    starts = [m for m in graph if _within(m, source)]
    chains = {m: [m] for m in starts}
    queue = list(starts)
    found = []
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt in chains or any(_within(nxt, t) for t in through):
                continue
            chains[nxt] = [*chains[node], nxt]
            if any(_within(nxt, f) for f in forbidden):
                found.append(chains[nxt])
            else:
                queue.append(nxt)
    return found


def test_layers_only_point_down() -> None:
    graph = _import_graph()
    assert "apoda.engine.checkpoint" not in graph  # checkpoints have one home: apoda.checkpoints
    for source, forbidden, through in LAYER_RULES:
        assert any(_within(m, source) for m in graph), source  # a rule names real modules
        assert all(any(_within(m, f) for m in graph) for f in forbidden), forbidden
        assert _violations(graph, source, forbidden, through) == [], (source, forbidden)


def test_the_layer_check_finds_an_indirect_import() -> None:
    graph = {"a.x": {"b"}, "b": {"c.y"}, "c.y": set(), "d": {"c.y"}}
    assert _violations(graph, "a", ("c",), ()) == [["a.x", "b", "c.y"]]
    assert _violations(graph, "a", ("c",), ("b",)) == []
    assert _violations(graph, "b", ("a",), ()) == []


def test_the_import_graph_has_no_cycles() -> None:
    graph = _import_graph()
    assert "apoda.engine.trainer" in graph["apoda.pretrain"]  # the graph sees real imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
