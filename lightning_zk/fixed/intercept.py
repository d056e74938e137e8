"""Fixed point by interception: run the user's own torch step with every ATen op in exact integers.

A :class:`FixedPointTracer` is a ``TorchDispatchMode`` (like rounded mode): under it the user's
``training_step``, autograd ``backward`` and the optimizer step run unchanged, but each ATen op
is executed in the fixed point of docs/fixed_point.md. Tensors keep their torch dtype and carry
*grid values* v = x / 2^s (exact in float32 while value_bits <= 25); each op converts its operands
to the integers x, computes the result in int64 with the one rounding rule
(:func:`.format.rescale`), checks the magnitude bound and hands back the grid value. Every op is
recorded (name, operands, shapes, constants) so that the step's graph can be compared with what
the prover proves. Nothing is replaced silently.

**Side computations.** An op outside the supported set (``argmax`` for an accuracy, ``abs`` for
a logged error, a torchmetrics update) runs natively on the grid values, and its results are
marked *unproved* with its name and the user's line; every op that reads an unproved value runs
natively too and passes the mark on (autograd's backward ops read what the forward pass saved, so
a gradient that depends on one is unproved as well). None of them is recorded: what is proved
is the graph of the ops the trained state depends on. The moment an op would write an unproved
value into a tensor of the traced step (an SGD update of a parameter, a momentum buffer), or an
unsupported op would write one, :class:`UnsupportedOpError` names the first unsupported op the
value came from and its line, before anything is written. An update of a tensor outside the step
(a metric's state, a counter: nothing the step named) is a side computation too. A metric can
therefore use any op; a loss cannot.

torch only (no Lightning): the Lightning glue is :mod:`lightning_zk.strategies.fixed`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..rounding.taint import tensors_in, user_location
from .conv import ConvSpec, avg_pool, avg_pool_backward, im2col, pooling_refusal
from .exact import exact_matmul
from .format import FixedPointConfig, check_bound, fixed_constant, rescale
from .softmax import onehot_targets, softmax_witness, xent_constant, xent_loss
from .torch_bridge import UnsupportedModelError

__all__ = ["FixedPointTracer", "UnsupportedOpError", "TracedOp", "SUPPORTED_OPS", "graph_digest"]

aten = torch.ops.aten

# ops executed natively: on grid values they only move, copy or select values (exact)
_PASSTHROUGH = {
    aten.t.default, aten.transpose.int, aten.view.default, aten._unsafe_view.default,
    aten.reshape.default, aten.expand.default, aten.permute.default, aten.squeeze.dim,
    aten.squeeze.default, aten.unsqueeze.default, aten.detach.default, aten.alias.default, aten.clone.default,
    aten._to_copy.default, aten.copy_.default, aten.ones_like.default, aten.zeros_like.default,
    aten.lift_fresh.default, aten._local_scalar_dense.default, aten.relu.default,
    aten.threshold_backward.default, aten.neg.default, aten.zero_.default,
    aten.flatten.using_ints, aten.is_same_size.default, aten.empty_like.default,
    aten.new_empty_strided.default, aten.new_empty.default, aten.new_zeros.default,
    aten.empty_strided.default, aten.empty.memory_format, aten.slice.Tensor, aten.select.int,
}
_ARITH = {
    aten.mm.default, aten.addmm.default, aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor,
    aten.mul.Scalar, aten.div.Scalar, aten.div.Tensor, aten.sum.dim_IntList, aten.sum.default,
    aten.mse_loss.default, aten.mse_loss_backward.default, aten.add_.Tensor,
    aten._foreach_add_.List, aten.mul_.Tensor, aten.mul_.Scalar, aten._foreach_add.List,
    aten._foreach_mul_.Scalar,
}
_FOREACH_UPDATES = {aten._foreach_add_.List, aten._foreach_mul_.Scalar}
_UPDATES = {aten.add_.Tensor, aten.mul_.Tensor, aten.mul_.Scalar}  # in place: a new value
# softmax cross-entropy (F.cross_entropy, nn.CrossEntropyLoss, F.nll_loss(F.log_softmax(z)))
_XENT = {
    aten._log_softmax.default, aten.nll_loss_forward.default, aten.nll_loss_backward.default,
    aten._log_softmax_backward_data.default,
}
_ARITH |= _XENT
_CONV = {aten.convolution.default, aten.convolution_backward.default}  # nn.Conv2d (im2col)
_ARITH |= _CONV
_POOL = {aten.avg_pool2d.default, aten.avg_pool2d_backward.default}  # nn.AvgPool2d after the conv
_ARITH |= _POOL
_POOL_RULE = ("average pooling is supported as nn.AvgPool2d(k) / F.avg_pool2d(x, k) with kernel "
              "= stride = k a power of two (2, 4, ...), no padding, ceil_mode=False and no "
              "divisor_override, on the first Conv2d's ReLU output before the Flatten")
_MAX_POOL = {"aten.max_pool2d_with_indices.default", "aten.max_pool2d_with_indices_backward.default",
             "aten.max_pool2d.default", "aten.adaptive_avg_pool2d.default",
             "aten._adaptive_avg_pool2d.default"}
_INPLACE = {aten.copy_.default, aten.zero_.default}
_ARITH_WRITES = {f for f in _ARITH if any(a.alias_info is not None and a.alias_info.is_write
                                          for a in f._schema.arguments)}
_SHAPE_ONLY = {  # outputs depend on the operand's shape, never its values
    aten.ones_like.default, aten.zeros_like.default, aten.empty_like.default,
    aten.new_empty_strided.default, aten.new_empty.default, aten.new_zeros.default,
    aten.is_same_size.default,
}
SUPPORTED_OPS = sorted(str(op) for op in _PASSTHROUGH | _ARITH)
_LOG_SOFTMAX_USE = (
    "the output of log_softmax feeds this op: cross-entropy with label_smoothing or probability "
    "(soft) targets, or a hand-written log-softmax loss, is not supported; use "
    "F.cross_entropy(logits, class_indices) / nn.CrossEntropyLoss() (mean, no weights)")

class UnsupportedOpError(UnsupportedModelError):
    """An ATen op of the user's step has no exact fixed-point execution (yet)."""

    def __init__(self, op: str, where: str, why: str = "") -> None:
        self.op, self.where = op, where
        super().__init__(
            f"fixed-point mode cannot execute ATen op {op} (called from {where})"
            f"{': ' + why if why else ''}. Supported ops: {', '.join(SUPPORTED_OPS)}. "
            "Nothing is replaced: change the training_step or train with mode='rounded'."
        )


@dataclass
class TracedOp:
    """One executed op: its name, operand references, output shapes and public constants."""

    op: str
    inputs: list[str]
    shapes: list[list[int]]
    consts: list[Any] = field(default_factory=list)

    def canonical(self) -> dict[str, Any]:
        return {"op": self.op, "in": self.inputs, "shapes": self.shapes, "consts": self.consts}


def graph_digest(graph: list[dict[str, Any]]) -> str:
    """SHA-256 of the canonical JSON of a traced graph (part of each committed step record)."""
    return hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Unproved:
    """Where an unproved value came from: the first unsupported op on its path."""

    seq: int  # the order of the ops marked: the earliest origin is the one to name
    op: str
    where: str
    why: str = ""  # what is supported instead, where there is something to say


def _written(func, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an op writes in place (schema ``a!``: ``add_``, ``out=``, foreach updates)."""
    written = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            written += tensors_in(args[i] if i < len(args) else kwargs.get(a.name))
    return written


def _key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), t.dtype)


class FixedPointTracer(TorchDispatchMode):
    """Executes and records one step in exact fixed point (see the module docstring).

    Register the named leaves (parameters, batch tensors) with :meth:`leaf` before the step;
    batch leaves are quantised (round to nearest), parameters must already be on the grid.
    """

    def __init__(self, config: FixedPointConfig, step: int = 0) -> None:
        super().__init__()
        self.config, self.step = config, step
        self.ops: list[TracedOp] = []
        self._refs: dict[tuple, str] = {}
        self._ints: dict[str, np.ndarray] = {}
        self._keep: list[torch.Tensor] = []  # storages stay alive: their keys stay unique
        self._quantise: set[str] = set()
        self._identity: str | None = None
        self._paused = 0
        self._logits: dict[str, np.ndarray] = {}  # log_softmax node -> the logits' integers
        self._last_logits: np.ndarray | None = None
        self._unproved: dict[tuple, _Unproved] = {}  # side computations (module docstring)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run ops natively and unrecorded: for side computations (metric logging) that never
        feed the trained state (as :meth:`RoundingMode.paused <lightning_zk.rounding.mode.RoundingMode.paused>`)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # --- leaves and values -------------------------------------------------------------------
    def leaf(self, name: str, t: torch.Tensor, quantise: bool = False) -> None:
        self._refs[_key(t)] = name
        self._keep.append(t)
        if quantise:
            self._quantise.add(name)

    def ref(self, t: torch.Tensor) -> str:
        return self._refs.get(_key(t), "")

    def ints(self, t: torch.Tensor, name: str | None = None) -> np.ndarray:
        """The integers x of a tensor's grid values (quantised for batch and constant leaves)."""
        name = self.ref(t) if name is None else name
        if name in self._ints:
            return self._ints[name]
        s = self.config.frac_bits
        v = t.detach().to("cpu", torch.float64).numpy() * float(1 << s)
        if name in self._quantise or not name:
            x = np.floor(v + 0.5).astype(np.int64)
        else:
            x = v.astype(np.int64)
            if not np.array_equal(x, v):
                raise AssertionError(f"tensor {name} is not on the 2^-{s} grid")
        check_bound(name or "constant", x, self.config.bound, self.step)
        if name in self._quantise:  # quantised once: every use sees the same integers
            self._ints[name] = x
        return x

    def value(self, x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        s = self.config.frac_bits
        arr = np.array(x, dtype=np.float64)
        arr /= float(1 << s)  # in place: a 0-d result stays an array
        return torch.from_numpy(arr).to(like.dtype).to(like.device)

    def _record(self, func, args, kwargs, out) -> None:
        inputs, consts = [], []
        if func in _SHAPE_ONLY:
            args, kwargs = (), {}
        for a in [*args, *kwargs.values()]:
            for item in (a if isinstance(a, (list, tuple)) else [a]):
                if isinstance(item, torch.Tensor):
                    r = self.ref(item)
                    if not r:  # a literal of the code is public; other tensors: shape only
                        r = "const"
                        consts.append(self.ints(item).tolist() if item.dim() == 0
                                      else {"shape": list(item.shape)})
                    inputs.append(r)
                elif isinstance(item, float):  # as the step computes with it (canonical)
                    consts.append({"fixed": fixed_constant(item, self.config.frac_bits)}
                                  if math.isfinite(item) else repr(item))
                elif isinstance(item, (int, bool)) or item is None:
                    consts.append(item)
        outs = out if isinstance(out, (list, tuple)) else [out]
        index = len(self.ops)
        shapes = []
        for j, o in enumerate(outs):
            if isinstance(o, torch.Tensor):
                name = f"n{index}" + (f".{j}" if len(outs) > 1 else "")
                shapes.append(list(o.shape))
                self._refs[_key(o)] = name
                self._keep.append(o)
        self.ops.append(TracedOp(str(func), inputs, shapes, consts))

    # --- the dispatch ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._paused or func.namespace == "profiler":  # metric logging; profiler markers
            return func(*args, **kwargs)
        origin = self._origin(args, kwargs) if self._unproved else None
        if (origin is not None or (func not in _PASSTHROUGH and func not in _ARITH)
                or (func in _ARITH_WRITES and not any(map(self.ref, _written(func, args, kwargs))))):
            return self._side(func, args, kwargs, origin)  # (or an update of a tensor outside
            # the step: a metric's state, a counter)
        recorded = args  # a view of the batch names the batch (not an anonymous constant)
        if func in _PASSTHROUGH:
            if func is aten._to_copy.default and kwargs.get("dtype") not in (
                    None, torch.float32, torch.float64):
                raise UnsupportedOpError(str(func), user_location(), "only float dtypes hold values")
            args = tuple(self._on_grid(a) for a in args)
            out = func(*args, **kwargs)
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if (isinstance(out, torch.Tensor) and func not in _INPLACE and self.ref(out)
                    and first is not None and self.ref(first)):
                return out  # a view of memory already named (detach, t(t(W))): the same node
        elif func in _ARITH:
            self._identity = None
            out = self._arith(func, args, kwargs)
            if self._identity is not None:  # an exact identity is no op of the graph
                self._refs[_key(out)] = self._identity
                self._keep.append(out)
                return out
        else:  # (unsupported ops are side computations: _side)
            raise AssertionError(f"{func} reached the fixed-point dispatch")
        if func in _POOL:  # one canonical node for every spelling of the same pooling
            recorded, kwargs = self._pool_canonical(args), {}
        self._record(func, recorded, kwargs, out)
        if func is aten._log_softmax.default:
            self._logits[f"n{len(self.ops) - 1}"] = self._last_logits
        if func in _UPDATES or func in (aten.copy_.default, aten.zero_.default):
            self._refs[_key(args[0])] = f"n{len(self.ops) - 1}"
        if func in _FOREACH_UPDATES:
            for j, p in enumerate(args[0]):
                self._refs[_key(p)] = f"n{len(self.ops) - 1}.{j}"
        return out

    # --- side computations (module docstring) -------------------------------------------------
    def _origin(self, args: tuple, kwargs: dict) -> _Unproved | None:
        """The earliest origin among the unproved tensors an op reads (None: it reads none)."""
        marks = [m for m in (self._unproved.get(_key(t)) for t in tensors_in((args, kwargs)))
                 if m is not None]
        return min(marks, key=lambda m: m.seq) if marks else None

    def _side(self, func, args: tuple, kwargs: dict, origin: _Unproved | None):
        """Run ``func`` natively on grid values, unrecorded, and mark what it wrote unproved;
        refuse (naming the origin) if it would write into a tensor of the traced step."""
        step_tensors = [t for t in _written(func, args, kwargs) if self.ref(t)]
        if origin is None:
            why = f"not supported; {_POOL_RULE}" if str(func) in _MAX_POOL else ""
            if step_tensors:  # an unsupported op that updates the step's own tensors
                raise UnsupportedOpError(str(func), user_location(), why)
            origin = _Unproved(len(self._unproved), str(func), user_location(), why)
        elif step_tensors:
            names = ", ".join(sorted({self.ref(t) for t in step_tensors}))
            raise UnsupportedOpError(
                origin.op, origin.where,
                f"{origin.why + '; ' if origin.why else ''}its result reaches the trained "
                f"computation ({func} would write it into {names}); an op outside the supported "
                "set may compute what is only logged (a metric), never the loss, a gradient or "
                "an update")
        out = func(*(self._on_grid(a) for a in args), **kwargs)
        for t in (*_written(func, args, kwargs), *tensors_in(out)):
            self._unproved[_key(t)] = origin
            self._keep.append(t)  # alive until the step ends: its key stays its own
        return out

    def _on_grid(self, a):
        """Batch leaves enter passthrough ops quantised (the view of x is x's grid values)."""
        if isinstance(a, torch.Tensor) and self.ref(a) in self._quantise:
            return self.value(self.ints(a), a)
        return a

    def _rescaled(self, raw: np.ndarray) -> np.ndarray:
        q, _ = rescale(raw, self.config.frac_bits)
        return q

    def _checked(self, x: np.ndarray, like: torch.Tensor, name: str) -> torch.Tensor:
        check_bound(name, x, self.config.bound, self.step)
        return self.value(x, like)

    def _const(self, c: float, op: str, divide: bool = False) -> int:
        """A public constant on the grid (its integer), or refuse: it could not be exact."""
        s = self.config.frac_bits
        value = 1.0 / float(c) if divide else float(c)
        k = fixed_constant(value, s)
        if k / float(1 << s) != value:
            raise UnsupportedOpError(op, user_location(), f"constant {c} is not exact at 2^-{s}")
        return k

    def _arith(self, func, args, kwargs):
        s, name = self.config.frac_bits, str(func)
        if func in _XENT:
            return self._xent(func, args, kwargs)
        if func in _CONV:
            return self._conv(func, args)
        if func in _POOL:
            return self._pool(func, args, kwargs)
        for a in [*args, *kwargs.values()]:
            for item in (a if isinstance(a, (list, tuple)) else [a]):
                if isinstance(item, torch.Tensor) and self.ref(item) in self._logits:
                    raise UnsupportedOpError(name, user_location(), _LOG_SOFTMAX_USE)
        if func is aten.mm.default:
            a, b = args
            return self._checked(self._rescaled(exact_matmul(self.ints(a), self.ints(b))), a, name)
        if func is aten.addmm.default:
            bias, a, b = args
            if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
                raise UnsupportedOpError(name, user_location(), "beta/alpha other than 1")
            raw = exact_matmul(self.ints(a), self.ints(b)) + (np.broadcast_to(self.ints(bias), (
                a.shape[0], b.shape[1])) << s)
            return self._checked(self._rescaled(raw), a, name)
        if func in (aten.add.Tensor, aten.sub.Tensor):
            a, b = args
            alpha = kwargs.get("alpha", 1)
            like = a if isinstance(a, torch.Tensor) and a.dim() >= b.dim() else b
            xb = self.ints(b) if alpha == 1 else self._scaled_by(b, alpha, name)
            x = self.ints(a) + xb if func is aten.add.Tensor else self.ints(a) - xb
            return self._checked(x, like, name)
        if func in (aten.mul_.Tensor, aten.mul_.Scalar):
            return self._scale_in_place(args[0], args[1], name)
        if func is aten._foreach_mul_.Scalar:  # SGD(foreach=True)'s momentum
            for x in args[0]:
                self._scale_in_place(x, args[1], name)
            return None
        if func is aten._foreach_add.List:  # SGD(foreach=True)'s weight decay
            alpha = kwargs.get("alpha", 1)
            return [self._checked(self.ints(a) + (self.ints(b) if alpha == 1 else
                                                  self._scaled_by(b, alpha, name)), a, name)
                    for a, b in zip(args[0], args[1], strict=True)]
        if func in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Scalar, aten.div.Tensor):
            return self._scale(func, *args, **kwargs)
        if func in (aten.sum.dim_IntList, aten.sum.default):
            t = args[0]
            dims = args[1] if len(args) > 1 else None
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            x = self.ints(t)
            x = x.sum() if dims is None else x.sum(axis=tuple(dims), keepdims=keep)
            return self._checked(np.asarray(x, dtype=np.int64), t, name)
        if func is aten.mse_loss.default:
            a, b = args[:2]
            if (args[2] if len(args) > 2 else 1) != 1:
                raise UnsupportedOpError(name, user_location(), "only reduction='mean'")
            d = self.ints(a) - self.ints(b)
            loss = self._rescaled(np.asarray((d * d).sum(), dtype=np.int64)) // d.size
            return self._checked(np.asarray(loss, dtype=np.int64), a.new_empty(()), name)
        if func is aten.mse_loss_backward.default:
            go, a, b = args[:3]
            if (args[3] if len(args) > 3 else 1) != 1:
                raise UnsupportedOpError(name, user_location(), "only reduction='mean'")
            d = self.ints(a) - self.ints(b)
            c = fixed_constant(2.0 / d.size, s)  # mse_constant(B, k) of the engine
            g = self._rescaled(c * d)
            g = self._rescaled(g * self.ints(go))  # the seed 1.0 = 2^s leaves g unchanged
            return self._checked(g, a, name)
        if func is aten.add_.Tensor:
            p, g = args
            return self._sgd(p, g, kwargs.get("alpha", 1), name)
        if func is aten._foreach_add_.List:
            alpha = kwargs.get("alpha", 1)
            for p, g in zip(args[0], args[1], strict=True):
                self._sgd(p, g, alpha, name)
            return None
        raise UnsupportedOpError(name, user_location())

    def _scale(self, func, a, b, **kwargs):
        """Products: tensor by tensor (rescaled), or by a public constant exact on the grid."""
        name, s = str(func), self.config.frac_bits
        if kwargs.get("rounding_mode") is not None:
            raise UnsupportedOpError(name, user_location(), "rounding_mode")
        divide = func in (aten.div.Scalar, aten.div.Tensor)
        if isinstance(b, torch.Tensor) and self.ref(b) and not divide:
            if isinstance(a, torch.Tensor) and self.ref(a):
                return self._checked(self._rescaled(self.ints(a) * self.ints(b)), a, name)
        if isinstance(b, torch.Tensor):
            if self.ref(b) or b.numel() != 1:
                if not isinstance(a, torch.Tensor) or self.ref(a) or a.numel() != 1:
                    raise UnsupportedOpError(name, user_location(), "division by a tensor")
                a, b = b, a  # constant * tensor
            b = b.item()
        k = self._const(b, name, divide)
        if k == 1 << s and self.ref(a):  # x * 1 is x (e.g. Lightning's loss / accumulate=1)
            self._identity = self.ref(a)
        return self._checked(self._rescaled(self.ints(a) * k), a, name)

    def _scaled_by(self, b: torch.Tensor, alpha: float, name: str) -> np.ndarray:
        """rescale(round(alpha 2^s) b): a tensor times an optimizer constant (``add(p,
        alpha=weight_decay)`` of SGD), the constant rounded as the learning rate is."""
        if isinstance(alpha, torch.Tensor) or not isinstance(alpha, (int, float)):
            raise UnsupportedOpError(name, user_location(), "a tensor alpha")
        return self._rescaled(fixed_constant(float(alpha), self.config.frac_bits) * self.ints(b))

    def _scale_in_place(self, x: torch.Tensor, c: Any, name: str) -> torch.Tensor:
        """x *= c as rescale(round(c 2^s) x) (SGD's momentum ``buf.mul_(momentum)``; the
        constant rounded as the learning rate is)."""
        if isinstance(c, torch.Tensor):
            if self.ref(c) or c.numel() != 1:
                raise UnsupportedOpError(name, user_location(), "in-place product with a tensor")
            c = c.item()
        new = self._scaled_by(x, c, name)
        check_bound(name, new, self.config.bound, self.step)
        with torch.no_grad():
            x.copy_(self.value(new, x))
        return x

    # --- Conv2d as a matmul over patches -----------------------------------------------------
    def _conv_spec(self, name: str, x: torch.Tensor, w: torch.Tensor, stride, padding,
                   dilation, transposed, output_padding, groups) -> ConvSpec:
        """The public shape of a supported Conv2d call; anything else refused by name."""
        why = ""
        if x.dim() != 4 or w.dim() != 4:
            why = "only 2-D convolutions (nn.Conv2d) on (B, C, H, W) inputs"
        elif transposed or any(output_padding):
            why = "transposed convolutions"
        elif groups != 1:
            why = f"groups={groups} (only groups=1)"
        elif any(d != 1 for d in dilation):
            why = f"dilation={list(dilation)} (only dilation=1)"
        elif len(set(stride)) != 1 or len(set(padding)) != 1 or w.shape[2] != w.shape[3]:
            why = "only square kernels with equal stride and zero padding on both axes"
        if why:
            raise UnsupportedOpError(name, user_location(), why)
        b, c, h, wd = x.shape
        try:
            return ConvSpec(int(c), int(h), int(wd), int(w.shape[0]), int(w.shape[2]),
                            int(stride[0]), int(padding[0]))
        except ValueError as err:
            raise UnsupportedOpError(name, user_location(), str(err)) from err

    def _conv(self, func, args):
        """nn.Conv2d forward and backward with the engine's semantics (:mod:`.conv`): Z =
        rescale(im2col(x) Wmat^T + 2^s b), grad_W = rescale(GZ^T im2col(x)), grad_b = sum GZ
        over (b, oh, ow). The input gradient (a conv after another layer) is refused."""
        name, s = str(func), self.config.frac_bits
        if func is aten.convolution.default:
            x, w, bias = args[:3]
            spec = self._conv_spec(name, x, w, *args[3:9])
            if bias is None:
                raise UnsupportedOpError(name, user_location(), "Conv2d without bias (bias=True "
                                         "needed)")
            pa = im2col(self.ints(x), spec)
            wmat = self.ints(w).reshape(spec.filters, -1)
            raw = exact_matmul(pa, wmat.T) + (self.ints(bias)[None, :] << s)
            z = self._rescaled(raw).reshape(x.shape[0], spec.out_height, spec.out_width, -1)
            return self._checked(np.ascontiguousarray(z.transpose(0, 3, 1, 2)), x, name)
        go, x, w = args[:3]
        spec = self._conv_spec(name, x, w, *args[4:10])
        mask = args[10]
        if mask[0]:
            raise UnsupportedOpError(name, user_location(), "the input gradient of a Conv2d: "
                                     "only a first Conv2d layer (on the batch input) is supported")
        gz = self.ints(go).transpose(0, 2, 3, 1).reshape(-1, spec.filters)
        gw = self._rescaled(exact_matmul(gz.T, im2col(self.ints(x), spec)))
        gw_t = self._checked(gw.reshape(w.shape), w, name) if mask[1] else None
        gb_t = self._checked(gz.sum(axis=0), w, name) if mask[2] else None
        return None, gw_t, gb_t

    # --- average pooling (after the first conv) -----------------------------------------------
    @staticmethod
    def _pool_args(func, args, kwargs) -> tuple[Any, ...]:
        """(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override) of an
        avg_pool2d(_backward) call, torch's defaults filled in."""
        rest = list(args[2:] if func is aten.avg_pool2d_backward.default else args[1:])
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override")
        defaults = ([], [], [0, 0], False, True, None)
        vals = [rest[i] if i < len(rest) else kwargs.get(n, d)
                for i, (n, d) in enumerate(zip(names, defaults, strict=True))]
        return tuple(vals)

    def _pool_spec(self, name: str, x: torch.Tensor, func, args, kwargs) -> tuple[int, int]:
        """(kernel k, frac_bits) of a supported average pooling of x (B, F, H', W'), or refuse
        naming what is not supported."""
        kernel, stride, padding, ceil_mode, _, divisor = self._pool_args(func, args, kwargs)
        k = int(kernel[0])
        if x.dim() != 4:
            why = "only 2-D pooling of (B, C, H, W) tensors"
        else:
            why = pooling_refusal(kernel, stride, padding, ceil_mode, divisor)
        if not why and (x.shape[2] % k or x.shape[3] % k):
            why = f"a {x.shape[2]}x{x.shape[3]} input is not a whole number of {k}x{k} windows"
        if not why and k * k > 1 << self.config.frac_bits:
            why = f"k^2 = {k * k} > 2^frac_bits"
        if why:
            raise UnsupportedOpError(name, user_location(), f"{why}; {_POOL_RULE}")
        return k, self.config.frac_bits

    def _pool_canonical(self, args) -> tuple[Any, ...]:
        """The recorded operands: tensors, then (kernel, stride = kernel, padding 0, ceil_mode
        False, count_include_pad True (no padding: no difference), divisor None)."""
        tensors = [a for a in args[:2] if isinstance(a, torch.Tensor)]
        k = int(args[len(tensors)][0])
        return (*tensors, [k, k], [k, k], [0, 0], False, True, None)

    def _pool(self, func, args, kwargs):
        """avg_pool2d: PL = rescale(c sum_window A), c = 2^s / k^2 (:func:`.conv.avg_pool`);
        avg_pool2d_backward: rescale(c g) copied to the window (:func:`.conv.avg_pool_backward`)."""
        name = str(func)
        x = args[1] if func is aten.avg_pool2d_backward.default else args[0]
        k, s = self._pool_spec(name, x, func, args, kwargs)
        b, f, h, w = x.shape
        spec = ConvSpec(1, h, w, f, 1, 1, 0, k)  # (only its output grid and pooling matter)
        if func is aten.avg_pool2d.default:
            rows = self.ints(x).transpose(0, 2, 3, 1).reshape(-1, f)
            q, _ = avg_pool(rows, spec, s)
            q = q.reshape(b, h // k, w // k, f).transpose(0, 3, 1, 2)
            return self._checked(np.ascontiguousarray(q), x, name)
        g = self.ints(args[0]).transpose(0, 2, 3, 1).reshape(-1, f)
        q, _ = avg_pool_backward(g, spec, s)
        q = q.reshape(b, h, w, f).transpose(0, 3, 1, 2)
        return self._checked(np.ascontiguousarray(q), x, name)

    # --- softmax cross-entropy ---------------------------------------------------------------
    def _labels(self, target: torch.Tensor, classes: int, name: str) -> np.ndarray:
        """Yhot = 2^s onehot of integer class targets; anything else is refused by name."""
        if target.is_floating_point() or target.dim() != 1:
            raise UnsupportedOpError(name, user_location(), "cross-entropy needs 1-D integer "
                                     "class targets (probability targets are not supported)")
        try:
            return onehot_targets(target.detach().cpu().numpy(), classes, self.config.frac_bits)
        except ValueError as err:
            raise UnsupportedOpError(name, user_location(), str(err)) from err

    def _nll_args(self, name: str, ls: torch.Tensor, weight, reduction, ignore_index) -> None:
        if self.ref(ls) not in self._logits or ls.dim() != 2:
            raise UnsupportedOpError(name, user_location(), "nll_loss is supported on the 2-D "
                                     "output of log_softmax only (i.e. F.cross_entropy)")
        if weight is not None:
            raise UnsupportedOpError(name, user_location(), "class weights (weight=...)")
        if reduction != 1:
            raise UnsupportedOpError(name, user_location(), "only reduction='mean'")
        if ignore_index != -100:
            raise UnsupportedOpError(name, user_location(), f"ignore_index={ignore_index}")

    def _xent(self, func, args, kwargs):
        """The four ATen ops of F.cross_entropy, with the engine's semantics: the logits' softmax
        P in fixed point (:func:`.softmax.softmax_witness`), the seed gradient -rescale(c g)
        (c = round(2^s / B)) at the targets, and grad_Z = gO - rescale(P rowsum(gO)) = the
        engine's rescale(c (P - Yhot)) for gO = -c onehot. The log-softmax values and the loss
        are float64 from the fixed logits: they are logged, never feed the weights."""
        name, s, cfg = str(func), self.config.frac_bits, self.config
        if func is aten._log_softmax.default:
            z, dim = args[0], args[1]
            if z.dim() != 2 or dim not in (1, -1):
                raise UnsupportedOpError(name, user_location(), "log_softmax over dim 1 of 2-D "
                                         "logits only")
            self._last_logits = self.ints(z)
            v = self._last_logits.astype(np.float64) / float(1 << s)
            top = v.max(axis=1, keepdims=True)
            ls = v - top - np.log(np.exp(v - top).sum(axis=1, keepdims=True))
            return self.value(np.floor(ls * float(1 << s) + 0.5).astype(np.int64), z)
        if func is aten.nll_loss_forward.default:
            ls, target, weight, reduction, ignore_index = args[:5]
            self._nll_args(name, ls, weight, reduction, ignore_index)
            yhot = self._labels(target, ls.shape[1], name)
            loss = np.floor(xent_loss(self._logits[self.ref(ls)], yhot, s) * float(1 << s) + 0.5)
            loss = np.asarray(loss, dtype=np.int64)
            count = np.asarray(ls.shape[0] << s, dtype=np.int64)  # total_weight B, not a value
            like = ls.new_empty(())
            return self.value(loss, like), self.value(count, like)
        if func is aten.nll_loss_backward.default:
            go, ls, target, weight, reduction, ignore_index = args[:6]
            self._nll_args(name, ls, weight, reduction, ignore_index)
            yhot = self._labels(target, ls.shape[1], name)
            c = xent_constant(ls.shape[0], s)
            seed = self._rescaled(np.asarray(c * self.ints(go), dtype=np.int64))
            return self._checked(-(yhot >> s) * seed, ls, name)
        go, out, dim = args[:3]
        if self.ref(out) not in self._logits or dim not in (1, -1):
            raise UnsupportedOpError(name, user_location(), "log_softmax backward of another "
                                     "op's output")
        p = softmax_witness(self._logits[self.ref(out)], s, cfg.value_bits)["P"]
        g = self.ints(go)
        return self._checked(g + self._rescaled(-p * g.sum(axis=1, keepdims=True)), go, name)

    def _sgd(self, p: torch.Tensor, g: torch.Tensor, alpha: float, name: str) -> torch.Tensor:
        """p += alpha g as the engine's SGD update: p - rescale(lr g) with lr = -alpha on grid."""
        lr = fixed_constant(-float(alpha), self.config.frac_bits)
        new = self.ints(p) - self._rescaled(lr * self.ints(g))
        check_bound(name, new, self.config.bound, self.step)
        with torch.no_grad():
            p.copy_(self.value(new, p))
        return p

    # --- the recorded graph ------------------------------------------------------------------
    def graph(self, outputs: list[str]) -> list[dict[str, Any]]:
        """The canonical op list: the ops the named outputs depend on, renumbered in order
        (framework bookkeeping that feeds no output, e.g. logging the loss, drops out)."""
        produced = {f"n{i}": i for i in range(len(self.ops))}

        def node(r: str) -> int | None:
            """The op that produced reference r (``n5``, or ``n5.1``: output 1 of an op, or
            tensor 1 an in-place foreach op updated, which has no outputs of its own)."""
            return produced.get(r.partition(".")[0])

        need, todo = set(), [node(o) for o in outputs if node(o) is not None]
        while todo:
            i = todo.pop()
            if i in need:
                continue
            need.add(i)
            todo += [node(r) for r in self.ops[i].inputs if node(r) is not None]
        order = sorted(need)
        renum = {f"n{i}": f"n{k}" for k, i in enumerate(order)}

        def rename(r: str) -> str:
            head, _, tail = r.partition(".")
            return renum[head] + ("." + tail if tail else "") if head in renum else r

        graph = []
        for i in order:
            d = self.ops[i].canonical()
            d["in"] = [rename(r) for r in d["in"]]
            graph.append(d)
        return graph
