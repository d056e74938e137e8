"""lightning-zk: verifiable neural-network training for PyTorch Lightning.

The public names below are imported on first use (PEP 562), so ``import lightning_zk.zk`` (a
zero-knowledge prover or verifier process) never loads torch or Lightning: the lower layers
(``rounding``, ``fixed``, ``ledger``, ``zk``) do not import Lightning, and ``zk`` not torch.
``VerifiableStrategy`` is registered under the strategy name ``"verifiable"`` as soon as
Lightning is loaded (at once if it already is, else right after ``lightning.pytorch`` is
imported), so ``Trainer(strategy="verifiable")`` works after ``import lightning_zk``.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata as _metadata
from importlib.abc import Loader, MetaPathFinder
from typing import Any

try:
    __version__ = _metadata.version("lightning-zk")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

_LAZY = {
    "CommitCallback": ".callbacks",
    "ProofCallback": ".callbacks",
    "LedgerError": ".ledger.merkle",
    "RunDirectory": ".ledger.rundir",
    "RunDirectoryError": ".ledger.rundir",
    "GridSpec": ".rounding.precision",
    "PrecisionError": ".rounding.precision",
    "ThresholdError": ".rounding.threshold",
    "ThresholdPolicy": ".rounding.threshold",
    "UnroundedValueWarning": ".rounding.taint",
    "VerifiableStrategy": ".strategies",
    "VerifiableDDPStrategy": ".strategies",
    "VerifiableShardedStrategy": ".strategies",
    "calibrate_threshold": ".strategies.calibrate",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lightning_zk' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_strategy() -> None:
    importlib.import_module(".strategies.verifiable", __name__)  # registers "verifiable"


class _WhenLightningLoads(MetaPathFinder):
    """Post-import hook: register the strategy once ``lightning.pytorch`` has been imported."""

    TARGET = "lightning.pytorch"

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(Loader):
    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _register_strategy()


if "lightning.pytorch" in sys.modules:
    _register_strategy()
elif not any(isinstance(f, _WhenLightningLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _WhenLightningLoads())
