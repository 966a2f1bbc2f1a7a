"""The package's arrows run one way: front doors -> ops -> importers/emitters -> layers
-> ir -> errors. A module may import its own floor and the floors below it, never above,
whether the import sits at the top of the file or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "surgery"

# Lowest floor first. A module's floor is its first path part under surgery/.
FLOORS = [
    {"errors", "interrupts", "lazy_torch", "untrusted"},
    {"ir", "spec", "preprocess"},
    {"math"},
    {"layers", "solver"},
    {"importers", "emitters", "probe"},
    {"ops", "edits", "verify", "report", "change"},
    {"api", "runner", "video", "outputs", "cli", "zoo", "output_folder", "precision", "__init__", "__main__"},
]


def _floor(part: str) -> int:
    for level, names in enumerate(FLOORS):
        if part in names:
            return level
    raise AssertionError(f"surgery/{part} has no floor in this test's table: add it")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found if name.split(".")[0] == "surgery" and "." in name]


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = _floor(path.relative_to(PACKAGE).parts[0].removesuffix(".py"))
    upward = [f"line {line}: {name}" for line, name in _imports(path) if _floor(name.split(".")[1]) > own]
    assert not upward, f"{path.relative_to(PACKAGE)} imports from a floor above its own: {upward}"
