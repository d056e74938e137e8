"""Build a :class:`FixedPointMLP` from a torch ``nn.Sequential`` and write weights back.

Kept apart so that :mod:`lightning_zk.fixed` itself never imports torch.
Supported: ``Linear`` (with bias) layers separated by single ``ReLU`` layers, no final ReLU
(the MSE or cross-entropy loss sees the last Linear's output), optionally after a first
``Conv2d`` (bias, groups 1, dilation 1, square kernel, equal stride and zero padding on both
axes), its ``ReLU``, optionally ``AvgPool2d(k)`` (kernel = stride = k a power of two, no
padding, no ceil_mode, no divisor_override), and ``Flatten()``.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvSpec, pooling_refusal
from .engine import FixedPointMLP
from .format import FixedPointConfig, dequantize, fixed_constant, optimizer_constant, quantize

__all__ = [
    "UnsupportedModelError",
    "mlp_from_torch",
    "conv_spec",
    "write_back",
    "check_loss_and_optimizer",
    "sgd_settings",
    "momentum_buffers",
]


class UnsupportedModelError(ValueError):
    """The module contains a layer, loss or optimizer that fixed-point mode cannot prove."""


POOL_HINT = ("HINT: use nn.AvgPool2d(k) with k a power of two (2 or 4), stride = kernel (the "
             "default), no padding, ceil_mode=False, divisor_override=None, right after the "
             "conv's ReLU and before the Flatten")


def _pool_kernel(layer: nn.Module, index: int) -> int:
    """The kernel k of a supported average pooling layer (refusing any other pooling by name)."""
    if not isinstance(layer, nn.AvgPool2d):
        raise UnsupportedModelError(
            f"layer {index} ({type(layer).__name__}) is not supported: the only pooling "
            f"fixed-point mode proves is average pooling. {POOL_HINT}")

    why = pooling_refusal(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                          layer.divisor_override)
    if why:
        raise UnsupportedModelError(f"layer {index} (AvgPool2d) {why}. {POOL_HINT}")
    k = layer.kernel_size
    return int(k[0] if isinstance(k, (tuple, list)) else k)


def _conv_head(layers: list[nn.Module]) -> tuple[nn.Conv2d | None, int]:
    """A leading Conv2d, ReLU, [AvgPool2d,] Flatten (checked, each refusal by name) and how many
    modules."""
    if not layers or not isinstance(layers[0], nn.Conv2d):
        return None, 0
    conv = layers[0]
    why = ""
    if conv.bias is None:
        why = "has no bias; bias=True needed"
    elif conv.groups != 1:
        why = f"has groups={conv.groups}; only groups=1 is supported"
    elif any(d != 1 for d in conv.dilation):
        why = f"has dilation={conv.dilation}; only dilation=1 is supported"
    elif conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        why = f"has padding={conv.padding!r}, padding_mode={conv.padding_mode!r}; only integer " \
              "zero padding is supported"
    elif len(set(conv.stride)) != 1 or len(set(conv.padding)) != 1 or len(
            set(conv.kernel_size)) != 1:
        why = "must have a square kernel and equal stride and padding on both axes"
    if why:
        raise UnsupportedModelError(f"layer 0 (Conv2d) {why}")
    flat = 2
    if len(layers) > 2 and isinstance(layers[1], nn.ReLU) and not isinstance(layers[2], (
            nn.Flatten, nn.Linear, nn.ReLU)):
        _pool_kernel(layers[2], 2)
        flat = 3
    ok = (len(layers) > flat + 1 and isinstance(layers[1], nn.ReLU)
          and isinstance(layers[flat], nn.Flatten) and layers[flat].start_dim == 1
          and layers[flat].end_dim == -1)
    if not ok:
        raise UnsupportedModelError(
            "a Conv2d layer is supported as the first layer, followed by nn.ReLU(), optionally "
            "nn.AvgPool2d(k), then nn.Flatten() and the Linear/ReLU layers (one conv layer; "
            "further convs are not yet)")
    return conv, flat + 1


def conv_spec(module: nn.Module, input_shape: tuple[int, ...]) -> ConvSpec | None:
    """The first Conv2d's public shape for inputs of ``input_shape`` (C, H, W), or None."""
    layers = list(module.children()) if isinstance(module, nn.Sequential) else [module]
    conv, skip = _conv_head(layers)
    if conv is None:
        return None
    pool = _pool_kernel(layers[2], 2) if skip == 4 else 0
    if len(input_shape) != 3 or input_shape[0] != conv.in_channels:
        raise UnsupportedModelError(
            f"the Conv2d expects inputs (C={conv.in_channels}, H, W), the data has samples of "
            f"shape {tuple(input_shape)}")
    try:
        return ConvSpec(int(conv.in_channels), int(input_shape[1]), int(input_shape[2]),
                        int(conv.out_channels), int(conv.kernel_size[0]), int(conv.stride[0]),
                        int(conv.padding[0]), pool)
    except ValueError as err:
        where = "layer 2 (AvgPool2d)" if pool and "pooling" in str(err) else "layer 0 (Conv2d)"
        raise UnsupportedModelError(f"{where}: {err}") from None


def _linears(module: nn.Module) -> list[nn.Module]:
    """The weight layers in order: an optional first Conv2d, then the Linear layers."""
    layers = list(module.children()) if isinstance(module, nn.Sequential) else [module]
    conv, skip = _conv_head(layers)
    head: list[nn.Module] = [conv] if conv is not None else []
    layers = layers[skip:]
    if not isinstance(module, nn.Sequential) and not isinstance(module, nn.Linear):
        raise UnsupportedModelError(
            f"fixed-point mode supports nn.Sequential of Linear/ReLU, got {type(module).__name__}"
        )
    start = skip
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
                f"layer {i + start} ({type(layer).__name__}) is not supported here: fixed-point "
                "mode proves Linear(+bias) layers separated by ReLU, ending with a Linear (after "
                "an optional first Conv2d, ReLU, [AvgPool2d,] Flatten)"
            )
    if not linears:
        raise UnsupportedModelError("the model has no Linear layer")
    return head + linears


def mlp_from_torch(
    module: nn.Module, lr: float, config: FixedPointConfig | None = None, step: int = 0,
    momentum: float = 0.0, weight_decay: float = 0.0, optimizer: object | None = None,
    loss: str = "mse", input_shape: tuple[int, ...] | None = None,
) -> FixedPointMLP:
    """Quantise a torch MLP (round to nearest) into the exact integer engine; with momentum,
    its buffers come from ``optimizer``'s state where torch created them (zero before);
    ``loss`` is ``"mse"`` or ``"xent"`` (softmax cross-entropy). A network with a first Conv2d
    needs the sample ``input_shape`` (C, H, W)."""
    cfg = config or FixedPointConfig()
    s = cfg.frac_bits
    lins = _linears(module)
    conv = None
    if isinstance(lins[0], nn.Conv2d):
        if input_shape is None:
            raise UnsupportedModelError("a Conv2d network needs the input shape (C, H, W)")
        conv = conv_spec(module, tuple(input_shape))
    with torch.no_grad():
        ws = [quantize(layer.weight.detach().double().cpu().numpy(), s).reshape(
            layer.weight.shape[0], -1) for layer in lins]
        bs = [quantize(layer.bias.detach().double().cpu().numpy(), s) for layer in lins]
    mu = _constant("momentum", momentum, s)
    velocity = None
    if mu and optimizer is not None:
        bufs = momentum_buffers(optimizer, module)
        if any(b is not None for b in bufs.values()):
            if any(b is None for b in bufs.values()):
                raise UnsupportedModelError("SGD has momentum buffers for only some parameters")
            with torch.no_grad():
                q = [quantize(bufs[p].detach().double().cpu().numpy(), s).reshape(
                    p.shape[0], -1) if p.dim() > 1 else quantize(
                    bufs[p].detach().double().cpu().numpy(), s)
                     for layer in lins for p in (layer.weight, layer.bias)]
            velocity = (q[0::2], q[1::2])
    try:
        return FixedPointMLP(ws, bs, fixed_constant(lr, s), cfg, step, mu,
                             _constant("weight_decay", weight_decay, s), velocity, loss=loss,
                             conv=conv)
    except ValueError as err:
        raise UnsupportedModelError(str(err)) from None


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
            layer.weight.copy_(torch.from_numpy(dequantize(w, s)).reshape(layer.weight.shape).to(
                layer.weight))
            layer.bias.copy_(torch.from_numpy(dequantize(b, s)).to(layer.bias))
        if optimizer is None or not engine.momentum:
            return
        bufs = momentum_buffers(optimizer, module)
        values = [v for pair in zip(engine.velocity_w, engine.velocity_b, strict=True)
                  for v in pair]
        for buf, v in zip(bufs.values(), values, strict=True):
            if buf is not None:
                buf.copy_(torch.from_numpy(dequantize(v, s)).reshape(buf.shape).to(buf))


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
