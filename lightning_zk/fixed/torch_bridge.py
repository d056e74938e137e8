"""Build a :class:`FixedPointMLP` from a torch ``nn.Sequential`` and write weights back.

Kept apart so that :mod:`lightning_zk.fixed` itself never imports torch.
Supported: ``Linear`` (with bias) layers separated by single ``ReLU`` layers, no final ReLU
(the MSE or cross-entropy loss sees the last Linear's output).
"""

from __future__ import annotations

import torch
from torch import nn

from .engine import FixedPointMLP
from .format import FixedPointConfig, dequantize, fixed_constant, optimizer_constant, quantize

__all__ = [
    "UnsupportedModelError",
    "mlp_from_torch",
    "write_back",
    "check_loss_and_optimizer",
    "sgd_settings",
    "momentum_buffers",
]


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
    module: nn.Module, lr: float, config: FixedPointConfig | None = None, step: int = 0,
    momentum: float = 0.0, weight_decay: float = 0.0, optimizer: object | None = None,
    loss: str = "mse",
) -> FixedPointMLP:
    """Quantise a torch MLP (round to nearest) into the exact integer engine; with momentum,
    its buffers come from ``optimizer``'s state where torch created them (zero before);
    ``loss`` is ``"mse"`` or ``"xent"`` (softmax cross-entropy)."""
    cfg = config or FixedPointConfig()
    s = cfg.frac_bits
    lins = _linears(module)
    with torch.no_grad():
        ws = [quantize(layer.weight.detach().double().cpu().numpy(), s) for layer in lins]
        bs = [quantize(layer.bias.detach().double().cpu().numpy(), s) for layer in lins]
    mu = _constant("momentum", momentum, s)
    velocity = None
    if mu and optimizer is not None:
        bufs = momentum_buffers(optimizer, module)
        if any(b is not None for b in bufs.values()):
            if any(b is None for b in bufs.values()):
                raise UnsupportedModelError("SGD has momentum buffers for only some parameters")
            with torch.no_grad():
                q = [quantize(bufs[p].detach().double().cpu().numpy(), s)
                     for layer in lins for p in (layer.weight, layer.bias)]
            velocity = (q[0::2], q[1::2])
    return FixedPointMLP(ws, bs, fixed_constant(lr, s), cfg, step, mu,
                         _constant("weight_decay", weight_decay, s), velocity, loss=loss)


def _constant(name: str, value: float, frac_bits: int) -> int:
    try:
        return optimizer_constant(name, value, frac_bits)
    except ValueError as err:
        raise UnsupportedModelError(str(err)) from None


def momentum_buffers(optimizer: object, module: nn.Module) -> dict[nn.Parameter, torch.Tensor | None]:
    """Each Linear parameter's SGD momentum buffer (None until torch creates it at step 0)."""
    state = getattr(optimizer, "state", {})
    return {p: (state.get(p) or {}).get("momentum_buffer")
            for layer in _linears(module) for p in (layer.weight, layer.bias)}


def write_back(engine: FixedPointMLP, module: nn.Module, optimizer: object | None = None) -> None:
    """Copy the engine's dequantised weights into the torch module (its dtype and device) and,
    given the optimizer, its momentum buffers where torch holds them (a rolled-back step)."""
    lins = _linears(module)
    s = engine.config.frac_bits
    with torch.no_grad():
        for layer, w, b in zip(lins, engine.weights, engine.biases, strict=True):
            layer.weight.copy_(torch.from_numpy(dequantize(w, s)).to(layer.weight))
            layer.bias.copy_(torch.from_numpy(dequantize(b, s)).to(layer.bias))
        if optimizer is None or not engine.momentum:
            return
        bufs = momentum_buffers(optimizer, module)
        values = [v for pair in zip(engine.velocity_w, engine.velocity_b, strict=True)
                  for v in pair]
        for buf, v in zip(bufs.values(), values, strict=True):
            if buf is not None:
                buf.copy_(torch.from_numpy(dequantize(v, s)).to(buf))


def _plain_cross_entropy(loss: object) -> bool:
    return (isinstance(loss, nn.CrossEntropyLoss) and loss.reduction == "mean"
            and loss.weight is None and loss.ignore_index == -100 and loss.label_smoothing == 0)


def check_loss_and_optimizer(loss: object, optimizer: object) -> float:
    """Return the SGD learning rate; raise UnsupportedModelError naming anything unsupported.

    Supported: ``nn.MSELoss(reduction="mean")`` (or ``"mse"``), ``nn.CrossEntropyLoss()`` with
    mean reduction and no weights, ignore_index or label smoothing (or ``"xent"``), and
    ``torch.optim.SGD`` with one parameter group, optionally momentum and weight decay
    (:func:`sgd_settings`).
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
            "use torch.optim.SGD"
        )
    return sgd_settings(optimizer)[0]


def sgd_settings(optimizer: object) -> tuple[float, float, float]:
    """(lr, momentum, weight_decay) of a ``torch.optim.SGD`` fixed-point mode can prove.

    Refused, each by name: several parameter groups, Nesterov, dampening, ``maximize``, and a
    momentum or weight decay that is not representable at 2^-frac_bits (the engine's check).
    Both torch paths (single-tensor and foreach) are executed in fixed point.
    """
    if type(optimizer) is not torch.optim.SGD:
        raise UnsupportedModelError(
            f"optimizer {type(optimizer).__name__} is not supported in fixed-point mode; "
            "use torch.optim.SGD"
        )
    groups = optimizer.param_groups
    if len(groups) != 1:
        raise UnsupportedModelError(
            f"SGD with {len(groups)} parameter groups is not supported in fixed-point mode: the "
            "proof carries one public learning rate, momentum and weight decay")
    g = groups[0]
    mu, wd = float(g.get("momentum", 0) or 0), float(g.get("weight_decay", 0) or 0)
    for name, bad in (("nesterov", bool(g.get("nesterov"))),
                      ("dampening", bool(g.get("dampening", 0))),
                      ("maximize", bool(g.get("maximize")))):
        if bad:
            raise UnsupportedModelError(
                f"SGD({name}={g.get(name)!r}) is not supported in fixed-point mode: the proved "
                "update is SGD with momentum (dampening 0, no Nesterov) and weight decay")
    return float(g["lr"]), mu, wd
