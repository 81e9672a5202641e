"""Risk decides, execution acts: nothing in ``risk/`` imports ``execution/`` (the
controller is handed its flatten as a function), so the two cannot import each other."""

from __future__ import annotations

import ast
from pathlib import Path

RISK = Path(__file__).parents[2] / "titan_trio" / "risk"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_nothing_in_risk_imports_execution() -> None:
    files = sorted(RISK.glob("*.py"))
    assert files
    offenders = {
        f.name: sorted(m for m in imported_modules(f) if m.startswith("titan_trio.execution"))
        for f in files
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
