"""The precision plugin VerifiableStrategy installs: model and inputs in the compute dtype."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from lightning.fabric.plugins.precision.utils import _convert_fp_tensor, _DtypeContextManager
from lightning.pytorch.plugins.precision import DoublePrecision, Precision
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn


class VerifiablePrecision(Precision):
    """Holds the module, its inputs and new tensors in the compute dtype (float64 by default).

    Values stay on the committed grid because the strategy rounds every hardware-dependent result;
    this plugin only fixes the dtype they are computed in.
    """

    def __init__(self, compute_dtype: torch.dtype) -> None:
        self.compute_dtype = compute_dtype
        self.precision = "64-true" if compute_dtype == torch.float64 else "32-true"  # type: ignore[assignment]

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.compute_dtype)

    def tensor_init_context(self) -> AbstractContextManager:
        return _DtypeContextManager(self.compute_dtype)

    def module_init_context(self) -> AbstractContextManager:
        return self.tensor_init_context()

    @contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        with self.tensor_init_context():
            yield

    def convert_input(self, data: Any) -> Any:
        return apply_to_collection(
            data, function=_convert_fp_tensor, dtype=torch.Tensor, dst_type=self.compute_dtype
        )


def check_user_precision(plugin: Precision, compute_dtype: torch.dtype) -> None:
    """Reject a Trainer ``precision=`` that contradicts the strategy's controlled precision."""
    if isinstance(plugin, VerifiablePrecision):
        return
    if type(plugin) is Precision:  # "32-true", Lightning's default: the committed precision
        return
    if type(plugin) is DoublePrecision and compute_dtype == torch.float64:
        return
    flag = getattr(plugin, "precision", type(plugin).__name__)
    raise ValueError(
        f"`Trainer(precision={flag!r})` conflicts with VerifiableStrategy, which controls the "
        f"precision itself (compute_dtype={str(compute_dtype).removeprefix('torch.')}, rounded to "
        "the committed float32 grid). Mixed or reduced precision would make results depend on the "
        "hardware. HINT: drop the `precision` argument (or use '32-true'), and choose "
        "VerifiableStrategy(compute_dtype=..., mantissa_bits=...) instead."
    )


def check_trainer_settings(trainer, mode: str) -> None:
    """Reject Trainer settings whose effect a replay could not reproduce (raised at ``fit``)."""
    seconds = getattr(trainer, "_val_check_time_interval", None)
    if seconds is not None:
        raise ValueError(
            f"`Trainer(val_check_interval=<{seconds:g} s>)` validates by wall-clock time, so where validation runs (and what it steers, e.g. ReduceLROnPlateau) differs "
            "from run to run and cannot be replayed. HINT: use an int (every N training batches) or "
            "a float (a fraction of an epoch)."
        )
    if mode == "fixed" and trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"`Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})` is not supported "
            "in fixed-point mode: each committed step is one exact SGD step on one batch. HINT: "
            "raise the batch size instead."
        )


def committed_precision(checkpoint: dict[str, Any], spec) -> dict[str, Any]:
    """A Lightning checkpoint with its model and optimizer tensors in the committed dtype.

    Their values lie on the committed grid, so float32 holds them exactly: the file is half the
    size of a float64 one and loads back into the compute dtype unchanged (resuming casts back).
    """
    if spec.compute_dtype == spec.committed_dtype:
        return checkpoint

    def narrow(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(spec.committed_dtype) if value.dtype == spec.compute_dtype else value
        if isinstance(value, dict):
            return {k: narrow(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(narrow(v) for v in value)
        return value

    return {k: narrow(v) if k in ("state_dict", "optimizer_states") else v for k, v in checkpoint.items()}
