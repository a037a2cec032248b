"""The scan package's shape: small modules, and no import of the command line (which imports it)."""

from __future__ import annotations

import ast
from pathlib import Path

import appliance.scan

PACKAGE = Path(appliance.scan.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_imports_the_command_line():
    for path in sorted(PACKAGE.glob("*.py")):
        assert not {n for n in imported_modules(path) if n == "appliance.cli" or n.startswith("appliance.cli.")}, path


def test_modules_are_small():
    for path in sorted(PACKAGE.glob("*.py")):
        assert len(path.read_text().splitlines()) < 500, path
