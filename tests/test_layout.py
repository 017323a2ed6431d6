"""The package's shape: dependencies point one way and modules stay small enough to read.

Layers, bottom to top: the shared base (settings, facts, errors, ...) -> models -> storage ->
memory -> sleep -> experiments and chat -> tasks -> flows -> cli. Every import statement in the
package (lazy ones inside functions too) is checked against that order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sleepwake"
LAYERS = {
    "models": 1, "storage": 2, "memory": 3, "status": 3, "sleep": 4, "experiments": 5, "chat": 5, "serve": 5,
    "tasks": 6, "flows": 7, "cli": 8,
}  # everything else (config, settings, facts, errors, faults, progress, factpool, relations, ...) is 0
MAX_LINES = 300


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 and parts[0] == "sleepwake" else -1


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("sleepwake")}


def test_no_module_imports_a_layer_above_its_own():
    upward = [(name, target) for name, path in modules().items() for target in imports(path)
              if layer(target) > layer(name)]
    assert upward == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_under_the_size_a_reader_holds_in_their_head(name):
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_prefect_and_mlx_stay_in_their_layers():
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if "import prefect" in text or "from prefect" in text:
            assert layer(name) >= LAYERS["tasks"] or name.startswith("sleepwake.cli"), name
        if "import mlx" in text or "from mlx" in text:
            assert name.startswith("sleepwake.models.mlx_"), name
