"""Layering: components are plain Python; Prefect and the flows (wiring) never leak into them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("prefect", "flows")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names (also inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "components").rglob("*.py")),
                         ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_components_import_neither_prefect_nor_flows(path):
    bad = [f"line {line}: {module}" for line, module in _imported_modules(path)
           if module.split(".")[0] in FORBIDDEN]
    assert not bad, f"{path.relative_to(PROJECT_ROOT)} imports {bad}: move that code to flows/ or pass it in"
