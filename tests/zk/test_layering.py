"""Layer rule: the zk package imports neither Lightning nor torch (nor CuPy unless usable)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys, types
pkg = types.ModuleType("lightning_zk"); pkg.__path__ = ["lightning_zk"]
sys.modules["lightning_zk"] = pkg  # skip the package root, which registers the Lightning strategy
import lightning_zk.zk
bad = sorted(m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules)
print(",".join(bad))
"""


def test_zk_does_not_import_lightning_or_torch():
    out = subprocess.run(
        [sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
