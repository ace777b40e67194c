"""plankton_data's layers point one way: cli -> shardset / audit -> ingest -> format -> errors.

Read from the source with ``ast`` (imports inside functions count too), so a new back arrow fails here
before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "plankton_data"
#: layer -> the plankton_data layers it may import (besides itself)
ALLOWED = {
    "errors": set(),
    "compat": set(),
    "format": {"errors", "compat"},
    "ingest": {"format", "errors", "compat"},
    "fixtures": {"format", "errors", "compat"},  # writes published layouts; may reuse format helpers
    "shardset": {"ingest", "format", "errors", "compat"},
    "audit": {"ingest", "format", "errors", "compat"},
    "cli": {"shardset", "audit", "ingest", "format", "errors", "compat", "fixtures"},
    "__init__": set(),
    "__main__": {"cli"},
}


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "plankton_data":  # from plankton_data import x
            found |= {a.name if _is_module(a.name) else "__init__" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= _layers_of([node.module])
        elif isinstance(node, ast.Import):
            found |= _layers_of([a.name for a in node.names])
    return found


def _is_module(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def _layers_of(modules: list[str]) -> set[str]:
    parts = [m.split(".") for m in modules]
    return {p[1] if len(p) > 1 else "__init__" for p in parts if p[0] == "plankton_data"}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_lower_layers(path):
    layer = _layer(path)
    assert layer in ALLOWED, f"new top-level module {layer}: place it in a layer of ALLOWED"
    wrong = _imported_layers(path) - ALLOWED[layer] - {layer, "__init__"}  # __init__ holds only __version__
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


def test_every_layer_has_modules():
    assert {_layer(p) for p in MODULES} >= {"format", "ingest", "shardset", "audit", "cli"}
