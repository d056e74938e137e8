"""DESIGN.md §2: the lower layers never import Lightning (nor higher layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_zk"
LOWER = ["rounding", "fixed", "ledger", "zk"]
HIGHER = {"strategies", "callbacks", "audit", "testing", "cli"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level
            names.add(prefix + (node.module or ""))
    return names


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_do_not_import_lightning(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            root = name.lstrip(".").split(".")[0]
            assert root not in ("lightning", "pytorch_lightning"), f"{path} imports {name}"
            if name.startswith(".."):
                assert root not in HIGHER, f"{path} imports higher layer {name}"


def test_zk_does_not_import_torch():
    for path in sorted((PACKAGE / "zk").rglob("*.py")):
        for name in _imports(path):
            assert name.split(".")[0] != "torch", f"{path} imports {name}"


def _run(code: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout


def test_a_zk_process_loads_neither_torch_nor_lightning():
    out = _run("import sys, lightning_zk.zk.training, lightning_zk.fixed.engine\n"
               "print('torch' in sys.modules, 'lightning' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_the_strategy_name_is_registered_whatever_the_import_order():
    for first, second in (("lightning_zk", "lightning"), ("lightning", "lightning_zk")):
        out = _run(f"import {first}, {second}\n"
                   "from lightning.pytorch.strategies import StrategyRegistry\n"
                   "print('verifiable' in StrategyRegistry)")
        assert out.strip() == "True", (first, second)
