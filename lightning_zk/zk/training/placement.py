"""Placing committed tensors and public tables onto a sumcheck's variables.

A sumcheck over N variables sees each factor as a table of 2^N entries. A committed tensor is
*placed*: each of its variables is either free (mapped to a distinct sumcheck variable; the
table is broadcast over the sumcheck variables it does not use) or bound to a constant (a
verifier challenge or a code bit), which folds it away. The same placement applied to the
commitment's evaluation mask mu (over the commitment's column variables) gives the round-1
mask table, so the sumcheck's final value is exactly the masked opening P^(z) (see
:mod:`lightning_zk.zk.pcs`); this requires the commitment's first variable to be free and
mapped to sumcheck variable 0, which :func:`place` checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import array_module
from ..errors import ParameterError
from ..extension import Fp2, e_add, e_from_base, e_scale, e_sub
from ..multilinear import evaluate

__all__ = ["Free", "Var", "place", "place_mask", "opening_point", "small_mle"]


@dataclass(frozen=True)
class Free:
    """The variable is sumcheck variable ``index``."""

    index: int


Var = Free | Fp2 | int  # free, or bound to a challenge (Fp2) or a code bit (0/1)


def _fold_axis(a: Any, axis: int, c: Fp2) -> Any:
    xp = array_module(a)
    lo = xp.take(a, 0, axis=axis)
    hi = xp.take(a, 1, axis=axis)
    if c == 0:
        return lo
    if c == 1:
        return hi
    return e_add(lo, e_scale(e_sub(hi, lo), c))


def place(data: Any, assign: Sequence[Var], num_vars: int) -> Any:
    """Table of 2^num_vars entries of the tensor ``data`` (2^len(assign) entries) under
    ``assign``: (2, 2^num_vars) for extension data, or base data bound to a challenge; base
    data whose bound variables are all code bits stays a base (2^num_vars,) table."""
    xp = array_module(data)
    m = len(assign)
    a = xp.asarray(data, dtype=xp.uint64)
    bits = all(isinstance(v, Free) or Fp2.lift(v) in (0, 1) for v in assign)
    if a.ndim == 1 and not bits:
        a = e_from_base(a)  # a challenge folds it into the extension
    lead = a.shape[:-1]  # () for a base table, (2,) for an extension table
    if a.ndim not in (1, 2) or lead not in ((), (2,)) or a.shape[-1] != 1 << m:
        raise ParameterError(f"place: data shape {a.shape} does not fit {m} variables")
    off = len(lead)
    a = a.reshape(lead + (2,) * m + (1,))  # trailing axis: never fold down to NumPy scalars
    free: list[int] = []
    # fold bound variables from the last to the first so axis numbers stay valid
    for j in range(m - 1, -1, -1):
        v = assign[j]
        if isinstance(v, Free):
            free.append(v.index)
        else:
            a = _fold_axis(a, off + j, Fp2.lift(v))
    free.reverse()
    if len(set(free)) != len(free) or any(not 0 <= i < num_vars for i in free):
        raise ParameterError(f"place: free variables {free} invalid for {num_vars} variables")
    order = sorted(range(len(free)), key=lambda i: free[i])
    a = xp.transpose(a, (*range(off), *[off + i for i in order], off + len(free)))
    shape = list(lead) + [1] * num_vars
    for i in free:
        shape[off + i] = 2
    a = a.reshape(shape)
    a = xp.broadcast_to(a, lead + (2,) * num_vars)
    return xp.ascontiguousarray(a.reshape(lead + (1 << num_vars,)))


def place_mask(mu: Any, col_assign: Sequence[Var], num_vars: int) -> Any:
    """Round-1 mask M(y_2..y_N) from mu over the commitment's column variables."""
    if any(isinstance(v, Free) and v.index == 0 for v in col_assign):
        raise ParameterError("place_mask: sumcheck variable 0 must be a row variable")
    full = place(mu, col_assign, num_vars)
    return full[..., : 1 << (num_vars - 1)]


def opening_point(assign: Sequence[Var], point: Sequence[Fp2]) -> list[Fp2]:
    """The commitment point of a placed factor once the sumcheck ends at ``point``."""
    return [point[v.index] if isinstance(v, Free) else Fp2.lift(v) for v in assign]


def small_mle(values: Sequence[Fp2 | int], point: Sequence[Fp2]) -> Fp2:
    """MLE of a small public table at ``point`` (verifier side)."""
    arr = np.array(
        [[Fp2.lift(v).c0 for v in values], [Fp2.lift(v).c1 for v in values]], dtype=np.uint64
    )
    if len(point) == 0:
        return Fp2.lift(values[0])
    return evaluate(arr, list(point))
