"""Fused-looking ops computed as a fixed sequence of single IEEE operations.

``lerp``, ``addcmul``, ``addcdiv``, ``add``/``sub`` with ``alpha ≠ 1`` and ``mse_loss_backward``
are elementwise: their only hardware dependence is how a device contracts the products and sums
(FMA on GPUs, vectorised ``fmadd`` on CPUs) or orders the factors. Computed instead as separate
torch ops, each one correctly rounded in the compute dtype, the float64 result is the same on every
IEEE-754 device, so it is rounded to the grid with τ = 0 and never needs a log entry.

That matters more than it looks. Optimizer updates mix values of the committed grid with decimal
constants: Adam's ``exp_avg.lerp_(grad, 0.1)`` is exactly ``(9·a + b)/10`` in units of the inputs'
grid, which is an integer — so a grid value or an exact *midpoint* — for one element in ten. Such
exact ties are what the FMA or non-FMA last bit decides, so the op logged about 5 % of its elements
(99.7 % of an Adam autoencoder's log). ``mse_loss_backward`` (``2/N·(x − y)·g``) is exact in float64
for inputs on the float32 grid and ties half the time its difference needs 25 bits. Decomposed,
those ties are resolved by round-to-nearest-even identically everywhere.

Each decomposition mirrors the formula of PyTorch's own kernel (same branches and factor order), so
results differ from the fused kernel by at most a compute-dtype ulp before rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_Row = Callable[[dict[str, Any]], torch.Tensor]


def _lerp(a: dict[str, Any]) -> torch.Tensor:
    start, end, weight = a["self"], a["end"], a["weight"]
    diff = end - start
    if isinstance(weight, torch.Tensor):
        low = start + weight * diff
        high = end - diff * (1 - weight)
        return torch.where(weight.abs() < 0.5, low, high)
    weight = float(weight)
    if abs(weight) < 0.5:
        return start + diff * weight
    return end - diff * (1.0 - weight)


def _addc(div: bool) -> _Row:
    def row(a: dict[str, Any]) -> torch.Tensor:
        t1, t2 = a["tensor1"], a["tensor2"]
        term = t1 / t2 if div else t1 * t2
        value = a.get("value", 1)
        if value != 1:
            term = term * value
        return a["self"] + term

    return row


def _add(sign: int) -> _Row:
    def row(a: dict[str, Any]) -> torch.Tensor:
        other, alpha = a["other"], a.get("alpha", 1)
        term = other * alpha if alpha != 1 else other
        return a["self"] + term if sign > 0 else a["self"] - term

    return row


def _mse_loss_backward(a: dict[str, Any]) -> torch.Tensor:
    x = a["self"]
    norm = 2.0 / x.numel() if a["reduction"] == 1 else 2.0  # Reduction::Mean
    return ((x - a["target"]) * norm) * a["grad_output"]


_ROWS: dict[str, _Row] = {
    "lerp": _lerp,
    "addcmul": _addc(div=False),
    "addcdiv": _addc(div=True),
    "add": _add(+1),
    "sub": _add(-1),
    "mse_loss_backward": _mse_loss_backward,
}
# Per-element scalar arguments of the _foreach_ overloads, by schema name, and the names the
# single-tensor formulas use for the _foreach_ arguments.
_SCALAR_LISTS = ("scalars", "weight")
_RENAMED = {"scalars": "value", "tensors1": "end", "weights": "weight"}


def _bind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    return _binder(func)(args, kwargs)


def _binder(func: torch._ops.OpOverload) -> Callable[[tuple, dict], dict[str, Any]]:
    """Maps a call's arguments to the schema's names (defaults filled in), with the schema read
    once per overload instead of once per call."""
    names = tuple(a.name for a in func._schema.arguments)
    defaults = {a.name: a.default_value for a in func._schema.arguments if a.has_default_value()}

    def bind(args: tuple, kwargs: dict) -> dict[str, Any]:
        bound = dict(zip(names, args, strict=False))  # the positional arguments
        for name in names[len(args):]:
            if name in kwargs:
                bound[name] = kwargs[name]
            elif name in defaults:
                bound[name] = defaults[name]
        return bound

    return bind


def _tensors(bound: dict[str, Any]):
    for value in bound.values():
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


class Decomposition:
    """Computes one op overload as single IEEE operations (see the module doc)."""

    def __init__(self, func: torch._ops.OpOverload, row: _Row, foreach: bool, inplace: bool) -> None:
        self.func, self.row, self.foreach, self.inplace = func, row, foreach, inplace
        self.bind = _binder(func)

    def applies(self, args: tuple, kwargs: dict, dtype: torch.dtype) -> bool:
        """Only for tensors of the compute dtype: other dtypes keep the op as it is."""
        return self.applies_to(self.bind(args, kwargs), dtype)

    @staticmethod
    def applies_to(bound: dict[str, Any], dtype: torch.dtype) -> bool:
        """:meth:`applies` on arguments already bound (:attr:`bind`)."""
        return all(t.dtype == dtype for t in _tensors(bound) if t.is_floating_point())

    def __call__(self, args: tuple, kwargs: dict):
        return self.call(self.bind(args, kwargs))

    def call(self, bound: dict[str, Any]):
        """The op on arguments already bound (:attr:`bind`)."""
        if not self.foreach:
            result = self.row(bound)
            if self.inplace:
                return bound["self"].copy_(result)
            return result
        outs = []
        for i in range(len(bound["self"])):
            outs.append(self.row(_element(bound, i)))
        if self.inplace:
            for target, result in zip(bound["self"], outs, strict=True):
                target.copy_(result)
            return None
        return outs


def _element(bound: dict[str, Any], i: int) -> dict[str, Any]:
    """The arguments of element ``i`` of a _foreach_ call."""
    row: dict[str, Any] = {}
    for name, value in bound.items():
        if isinstance(value, (list, tuple)):
            row[name] = value[i]
        elif name in _SCALAR_LISTS and isinstance(value, torch.Tensor) and value.dim() == 1:
            row[name] = value[i].item()
        else:
            row[name] = value
    for old, new in _RENAMED.items():
        if old in row:
            row[new] = row.pop(old)
    return row


def decomposition(func: torch._ops.OpOverload) -> Decomposition | None:
    """The IEEE decomposition of ``func``, or ``None`` (out= overloads keep the fused kernel)."""
    schema = func._schema
    name = schema.name.split("::")[-1]
    inplace = name.endswith("_") and not name.endswith("__")
    base = name[:-1] if inplace else name
    foreach = base.startswith("_foreach_")
    if foreach:
        base = base[len("_foreach_"):]
    row = _ROWS.get(base)
    if row is None or any(a.name == "out" for a in schema.arguments) or schema.overload_name.endswith("out"):
        return None
    if foreach and base in ("add", "sub") and schema.overload_name != "List":
        return None  # _foreach_add.Scalar etc. have no alpha: already IEEE
    if base in ("add", "sub") and not any(a.name == "alpha" for a in schema.arguments):
        return None
    return Decomposition(func, row, foreach, inplace)
