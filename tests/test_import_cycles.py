"""No import cycles: the import graph of appliance/ and webui/, read with ast (every import, the lazy ones inside
functions included; importing a.b.c's parent packages is not counted as an edge)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("appliance", "webui")
# The layers below the app: engines, model servers, GPU checks, model-directory facts. A cycle that touches one of
# them fails at once; the others are listed by the test's message (cli <-> watch <-> webui is being taken apart).
LAYERS = ("appliance.ocr", "appliance.servers", "appliance.gpu", "appliance.model_dir", "appliance.offline")


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    def known(name: str) -> str | None:  # the module itself, or the nearest package above it that is ours
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                # `from package import submodule` is an edge to the submodule; `from module import name` to the module
                edges.update(known(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
                             for alias in node.names)
        graph[name] = edges - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while component[-1:] != [v]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports_and_cycles():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]
    modules = module_files()
    graph = import_graph(modules)
    assert "appliance.ocr.engines.cpu" in graph["appliance.ocr.engines.select"]  # imported inside open_engine
    assert "appliance.gpu.detect" in graph["appliance.ocr.engines.select"]


def test_no_cycle_touches_the_engine_server_and_gpu_layers():
    found = cycles(import_graph(module_files()))
    touching = [c for c in found if any(m == layer or m.startswith(layer + ".") for m in c for layer in LAYERS)]
    assert not touching, f"import cycles: {touching} (all cycles: {found})"
