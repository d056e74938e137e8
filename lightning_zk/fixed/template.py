"""The provable template step as a traced graph: what the trainer's step must be, and what the
verifier checks the committed graphs against.

The zk relations prove one step shape: a Linear/ReLU MLP (optionally behind one Conv2d, ReLU,
an optional AvgPool2d, and Flatten), ``F.mse_loss(net(x), y)`` or
``F.cross_entropy(net(x), y)`` on the batch, optionally with the input scaled by a public
constant first (``net(x / 16)``, ``net(x * 0.0625)``: :mod:`.scaling`), ``torch.optim.SGD``
(momentum, weight decay). The
trainer traces the user's own step (:class:`.intercept.FixedPointTracer`) and refuses it unless
its graph equals :func:`template_graph` on a copy of the user's network. The verifier rebuilds the
same graph from a statement's public constants alone (:func:`provable_digests`) and accepts a
step only if the graph digest the trainer committed for it is one of those: so a proof speaks of
the user's ``training_step`` as traced, never of a stand-in the records do not name.

The graph is canonical: parameters and momentum buffers are named by position (``param:i``,
``momentum:i``), the batch ``batch:0``/``batch:1``, and float constants by their fixed-point
integers (what the step computes with), so it depends on the architecture, the loss, the SGD
constants on the grid and the batch shape, not on module attribute names or float spellings.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .conv import ConvSpec
from .format import FixedPointConfig
from .intercept import FixedPointTracer, graph_digest
from .scaling import InputOp, InputScale, view_of

__all__ = ["new_tracer", "template_graph", "template_network", "provable_digests",
           "FOREACH_CHOICES"]

FOREACH_CHOICES = (False, True)  # torch's two SGD paths, same arithmetic, different op lists


def new_tracer(config: FixedPointConfig, step: int, net: nn.Module, x: torch.Tensor,
               y: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> FixedPointTracer:
    """A tracer with the step's leaves: the parameters, SGD's momentum buffers where torch holds
    them (after step 0), the batch inputs and targets (quantised)."""
    tracer = FixedPointTracer(config, step=step)
    params = list(net.parameters())
    for i, param in enumerate(params):
        tracer.leaf(f"param:{i}", param)
    state = optimizer.state if optimizer is not None else {}
    for i, param in enumerate(params):
        buf = (state.get(param) or {}).get("momentum_buffer")
        if buf is not None:
            tracer.leaf(f"momentum:{i}", buf)
    tracer.leaf("batch:0", x, quantise=True)
    tracer.leaf("batch:1", y, quantise=True)
    return tracer


def template_graph(net: nn.Module, x: torch.Tensor, y: torch.Tensor, config: FixedPointConfig,
                   *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                   foreach: bool | None = None, buffers: bool = False, loss: str = "mse",
                   step: int = 0, input_ops: Sequence[InputOp] = ()) -> list[dict[str, Any]]:
    """The canonical graph of the template step on a copy of ``net`` with batch (x, y):
    ``loss(net(x), y).backward(); SGD(...).step()``, with momentum buffers already held by
    torch iff ``buffers`` (step 0 clones new buffers, later steps update them in place), and
    the ``input_ops`` in front of the network (``net(x.view(B, -1) / 16)``)."""
    net = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                          foreach=foreach)
    if buffers:  # (their values do not shape the graph)
        for p in net.parameters():
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    tracer = new_tracer(config, step, net, x, y, opt)
    loss_fn = F.cross_entropy if loss == "xent" else F.mse_loss
    literals: dict[int, Any] = {}
    for i, op in enumerate(input_ops):  # a literal in the form the graph records it (a tensor
        if isinstance(op, InputScale):  # is made outside the step, else it is an op itself)
            c = op.literal(config.frac_bits)
            literals[i] = torch.tensor(c, dtype=torch.float64) if op.form == "tensor" else c
    with tracer:
        inputs = x
        for i, op in enumerate(input_ops):
            if isinstance(op, InputScale):
                inputs = inputs * literals[i] if op.op == "mul" else inputs / literals[i]
            else:
                inputs = inputs.view(*op.sizes)
        loss_fn(net(inputs), y).backward()
        opt.step()
    outputs = list(net.parameters())
    if momentum:
        outputs += [opt.state[p]["momentum_buffer"] for p in net.parameters()]
    return tracer.graph([tracer.ref(t) for t in outputs])


def template_network(dims: Sequence[int], conv: Sequence[int] = ()) -> nn.Sequential:
    """The network a statement describes (its weights do not shape the graph): the Linear/ReLU
    MLP of widths ``dims``, or with ``conv`` = (C, H, W, F, k, stride, padding[, pool]) a first
    ``Conv2d``, ReLU[, ``AvgPool2d(pool)``] and ``Flatten`` in front of the Linear layers
    (dims[0] = C k k and dims[1] = F then describe the conv as a matmul over patches)."""
    layers: list[nn.Module] = []
    widths = list(dims)
    if conv:
        spec = ConvSpec(*conv)
        layers += [nn.Conv2d(spec.channels, spec.filters, spec.kernel, stride=spec.stride,
                             padding=spec.padding), nn.ReLU()]
        if spec.pool:
            layers.append(nn.AvgPool2d(spec.pool))
        layers.append(nn.Flatten())
        widths = [spec.filters * spec.flat_positions, *widths[2:]]
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def provable_digests(dims: Sequence[int], batch_size: int, config: FixedPointConfig, *, lr: int,
                     momentum: int = 0, weight_decay: int = 0, loss: str = "mse",
                     buffers: bool = False, conv: Sequence[int] = (),
                     input_ops: Sequence[InputOp] = ()) -> set[str]:
    """Digests of the template graphs a step with these public constants may commit (one per
    SGD path): what a verifier derives from a statement by itself. The constants are the
    fixed-point integers of the statement (a float that rounds to them gives the same graph)."""
    scale = float(1 << config.frac_bits)
    view = view_of(input_ops)
    x = (torch.zeros(batch_size, *conv[:3]) if conv else
         torch.zeros(batch_size, *view.sample) if view else torch.zeros(batch_size, dims[0]))
    y = (torch.zeros(batch_size, dtype=torch.long) if loss == "xent"
         else torch.zeros(batch_size, dims[-1]))
    with torch.random.fork_rng():  # the network's values do not shape the graph: keep the RNG
        net = template_network(dims, conv)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()  # (on the grid, as the trainer's module is)
    return {graph_digest(template_graph(net, x, y, config, lr=lr / scale,
                                        momentum=momentum / scale,
                                        weight_decay=weight_decay / scale, foreach=foreach,
                                        buffers=buffers, loss=loss, input_ops=input_ops))
            for foreach in FOREACH_CHOICES}
