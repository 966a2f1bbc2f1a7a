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
    {"errors", "interrupts", "lazy_torch", "untrusted", "tolerances", "protos"},
    {"ir", "spec", "preprocess"},
    {"math"},
    {"layers", "solver"},
    {"importers", "emitters", "probe"},
    {"ops", "edits", "verify", "report", "change"},
    {"api", "runner", "plans", "video", "outputs", "cli", "zoo", "output_folder", "precision", "__init__", "__main__"},
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


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _edges() -> list[tuple[str, str]]:
    """Module -> module it imports (anywhere in the file: top, functions, TYPE_CHECKING);
    ``from package import submodule`` points at the submodule, not the package."""
    modules = {_module(path) for path in MODULES}
    edges = []
    for path in MODULES:
        own = _module(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in modules] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            edges += [(own, target) for target in targets if target in modules and target != own]
    return edges


def test_no_import_circles() -> None:
    """No module imports, even inside a function or for type checking only, a module that
    imports it back (directly or round a longer circle)."""
    import networkx as nx

    circles = list(nx.simple_cycles(nx.DiGraph(_edges())))
    assert not circles, f"import circles: {circles}"
