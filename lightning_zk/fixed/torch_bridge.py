"""Build a :class:`FixedPointMLP` from a torch ``nn.Sequential`` and write weights back.

Kept apart so that :mod:`lightning_zk.fixed` itself never imports torch.
Supported: ``Linear`` (with bias) layers separated by single ``ReLU`` layers, no final ReLU
(the MSE or cross-entropy loss sees the last Linear's output).
"""

from __future__ import annotations

import torch
from torch import nn

from .engine import FixedPointMLP
from .format import FixedPointConfig, dequantize, fixed_constant, quantize

__all__ = ["UnsupportedModelError", "mlp_from_torch", "write_back", "check_loss_and_optimizer"]


class UnsupportedModelError(ValueError):
    """The module contains a layer, loss or optimizer that fixed-point mode cannot prove."""


def _linears(module: nn.Module) -> list[nn.Linear]:
    layers = list(module.children()) if isinstance(module, nn.Sequential) else [module]
    if not isinstance(module, nn.Sequential) and not isinstance(module, nn.Linear):
        raise UnsupportedModelError(
            f"fixed-point mode supports nn.Sequential of Linear/ReLU, got {type(module).__name__}"
        )
    linears: list[nn.Linear] = []
    expect_linear = True
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear) and expect_linear:
            if layer.bias is None:
                raise UnsupportedModelError(f"layer {i} (Linear) has no bias; bias=True needed")
            linears.append(layer)
            expect_linear = False
        elif isinstance(layer, nn.ReLU) and not expect_linear and i < len(layers) - 1:
            expect_linear = True
        else:
            raise UnsupportedModelError(
                f"layer {i} ({type(layer).__name__}) is not supported here: fixed-point mode "
                "proves Linear(+bias) layers separated by ReLU, ending with a Linear"
            )
    if not linears:
        raise UnsupportedModelError("the model has no Linear layer")
    return linears


def mlp_from_torch(
    module: nn.Module, lr: float, config: FixedPointConfig | None = None, step: int = 0
) -> FixedPointMLP:
    """Quantise a torch MLP (round to nearest) into the exact integer engine."""
    cfg = config or FixedPointConfig()
    s = cfg.frac_bits
    lins = _linears(module)
    with torch.no_grad():
        ws = [quantize(layer.weight.detach().double().cpu().numpy(), s) for layer in lins]
        bs = [quantize(layer.bias.detach().double().cpu().numpy(), s) for layer in lins]
    return FixedPointMLP(ws, bs, fixed_constant(lr, s), cfg, step)


def write_back(engine: FixedPointMLP, module: nn.Module) -> None:
    """Copy the engine's dequantised weights into the torch module (its dtype and device)."""
    lins = _linears(module)
    s = engine.config.frac_bits
    with torch.no_grad():
        for layer, w, b in zip(lins, engine.weights, engine.biases, strict=True):
            layer.weight.copy_(torch.from_numpy(dequantize(w, s)).to(layer.weight))
            layer.bias.copy_(torch.from_numpy(dequantize(b, s)).to(layer.bias))


def _plain_cross_entropy(loss: object) -> bool:
    return (isinstance(loss, nn.CrossEntropyLoss) and loss.reduction == "mean"
            and loss.weight is None and loss.ignore_index == -100 and loss.label_smoothing == 0)


def check_loss_and_optimizer(loss: object, optimizer: object) -> float:
    """Return the SGD learning rate; raise UnsupportedModelError naming anything unsupported.

    Supported: ``nn.MSELoss(reduction="mean")`` (or ``"mse"``), ``nn.CrossEntropyLoss()`` with
    mean reduction and no weights, ignore_index or label smoothing (or ``"xent"``), and plain
    ``torch.optim.SGD`` (one parameter group, no momentum, weight decay or Nesterov).
    """
    mse = loss == "mse" or (isinstance(loss, nn.MSELoss) and loss.reduction == "mean")
    if not (mse or loss == "xent" or _plain_cross_entropy(loss)):
        name = loss if isinstance(loss, str) else type(loss).__name__
        raise UnsupportedModelError(
            f"loss {name!r} is not supported in fixed-point mode; use nn.MSELoss(reduction='mean') "
            "or nn.CrossEntropyLoss() (mean, no weight, ignore_index or label_smoothing)"
        )
    if type(optimizer) is not torch.optim.SGD:
        raise UnsupportedModelError(
            f"optimizer {type(optimizer).__name__} is not supported in fixed-point mode; "
            "use torch.optim.SGD without momentum"
        )
    groups = optimizer.param_groups
    g = groups[0]
    if len(groups) != 1 or g.get("momentum", 0) or g.get("weight_decay", 0) or g.get("nesterov"):
        raise UnsupportedModelError(
            "SGD with momentum, weight decay, Nesterov or several parameter groups is not "
            "supported in fixed-point mode"
        )
    return float(g["lr"])
