"""Calibrate the logging threshold on a few training steps of the user's own model and data."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..rounding.calibration import (
    DivergenceProbe,
    device_alternative,
    emulated_alternative,
    policy_from_divergence,
    threads_alternative,
)
from ..rounding.precision import GridSpec
from ..rounding.threshold import ThresholdPolicy
from .verifiable import VerifiableStrategy, _parse_dtype


def calibrate_threshold(
    model: L.LightningModule,
    train_dataloaders: Any = None,
    datamodule: L.LightningDataModule | None = None,
    steps: int = 10,
    against: str = "emulator",
    ulps: int = 8,
    safety: float = 16.0,
    min_tau: float = 2.0**-20,
    compute_dtype: str = "float64",
    mantissa_bits: int = 23,
    seed: int = 0,
) -> ThresholdPolicy:
    """Measure per-op divergence on ``steps`` training steps and derive a threshold policy.

    ``against`` names the other machine: ``"emulator"`` (this machine perturbed by ``ulps``),
    ``"threads:N"`` (this CPU with N threads), or a device such as ``"cuda"``. The model is
    copied; the caller's weights are untouched. Pass the result as
    ``VerifiableStrategy(threshold=policy)``; it is recorded in the run's manifest.

    Example::

        policy = calibrate_threshold(model, train_dataloaders=loader, steps=20, against="cuda")
        trainer = Trainer(strategy=VerifiableStrategy(threshold=policy))
    """
    spec = GridSpec(_parse_dtype(compute_dtype), mantissa_bits)
    if against == "emulator":
        alternative = emulated_alternative(ulps, seed + 1)
    elif against.startswith("threads:"):
        alternative = threads_alternative(int(against.split(":", 1)[1]))
    elif against.startswith(("cuda", "cpu")):
        alternative = device_alternative(torch.device(against))
    else:
        raise ValueError(
            f"calibrate_threshold(against={against!r}): use 'emulator', 'threads:N', 'cuda' or 'cpu'"
        )
    probe = DivergenceProbe(spec, alternative)
    with tempfile.TemporaryDirectory() as tmp:
        strategy = VerifiableStrategy(run_dir=Path(tmp) / "calibration", seed=seed,
                                      compute_dtype=compute_dtype, mantissa_bits=mantissa_bits)
        trainer = L.Trainer(strategy=strategy, max_steps=steps, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
        with probe:
            trainer.fit(copy.deepcopy(model), train_dataloaders=train_dataloaders,
                        datamodule=datamodule)
    return policy_from_divergence(probe, spec, safety=safety, min_tau=min_tau, method=against)
