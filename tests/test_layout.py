"""The shape of the tree: no import cycles, and the runtime (what the image runs) never needs the image builder.

Imports are read from the source (ast), function-level ones included: a lazy import that closes a cycle is still a
cycle, it only fails later.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("appliance", "webui", "imagebuilder")
RUNTIME = ("appliance", "webui")  # copied into the image's app layer
BUILDER = "imagebuilder"
# The one runtime module allowed to reach the builder: the CLI's `build`/`boot-test` commands, lazily, with a clear
# error in the image where the builder is absent.
BUILDER_ENTRY = "appliance.cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES if (REPO / pkg).is_dir() for p in (REPO / pkg).rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_reads_relative_and_lazy_imports(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from p.c import thing\n")
    known = {"p", "p.a", "p.b", "p.c"}
    assert imports("p.a", pkg / "a.py", known) == {"p.b", "p.c"}


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_runtime_never_imports_the_builder():
    graph = import_graph()
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.split(".")[0] in RUNTIME and name != BUILDER_ENTRY
        for target in targets
        if target.split(".")[0] == BUILDER
    )
    assert offenders == []


def test_the_cli_imports_the_builder_only_inside_its_host_commands():
    """At module level the CLI must import in the image, where imagebuilder is absent."""
    tree = ast.parse((REPO / "appliance" / "cli.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [name for name in names if name.split(".")[0] == BUILDER]
    assert BUILDER in import_graph()[BUILDER_ENTRY] or any(
        t.startswith(BUILDER) for t in import_graph()[BUILDER_ENTRY]
    ), "the CLI's build command reaches the builder"
