"""Multilinear polynomials as evaluation tables over the Boolean hypercube.

Convention (used everywhere in the engine): a table T of length 2^n holds f(x) at index
i = sum_j x_j * 2^(n-j), i.e. x_1 is the *most significant* bit. Folding the first variable
therefore pairs the two contiguous halves: f(r, x') = T[:h] + r * (T[h:] - T[:h]).
A row-major (m, k) matrix view of T has the first log2(m) variables as its row index and the
last log2(k) variables as its column index, which is what the commitment relies on.

Tables are extension arrays of shape (2, 2^n) (base-field tables are lifted with
``e_from_base``); points are sequences of :class:`Fp2` scalars.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import field as F
from .backend import P, array_module, backend_of
from .errors import ParameterError
from .extension import Fp2, _raw, e_add, e_const, e_from_base, e_get, e_mul, e_scale, e_sub
from .extension import W as _W

__all__ = [
    "num_vars_of",
    "as_ext_table",
    "eq_table",
    "eq_eval",
    "fold",
    "evaluate",
    "ref_evaluate",
    "tile_mask",
    "masked_ref_evaluate",
]


def num_vars_of(length: int, who: str = "table") -> int:
    if length < 1 or length & (length - 1):
        raise ParameterError(f"{who}: length {length} is not a power of two")
    return length.bit_length() - 1


def as_ext_table(table: Any) -> Any:
    """Return ``table`` as an extension array (2, N); base arrays (N,) are lifted."""
    xp = array_module(table)
    t = xp.asarray(table, dtype=xp.uint64)
    if t.ndim == 1:
        return e_from_base(t)
    if t.ndim == 2 and t.shape[0] == 2:
        return t
    raise ParameterError(f"as_ext_table: expected shape (N,) or (2, N), got {t.shape}")


_EQ_CHUNK = 1 << 16  # entries doubled at once by eq_table (bounds its temporaries)


def eq_table(point: Sequence[Fp2 | int], xp: Any = np) -> Any:
    """eq(z, x) = prod_j (z_j x_j + (1 - z_j)(1 - x_j)) for every x, as a (2, 2^n) table."""
    n = len(point)
    fused = backend_of(np.zeros(0)).eq_table if xp is np else None
    if fused is not None:  # numba: the same doubling steps in one kernel call
        zs = [Fp2.lift(z) for z in point]
        return fused(np.array([z.c0 for z in zs], dtype=np.uint64),
                     np.array([z.c1 for z in zs], dtype=np.uint64))
    out = e_const(1, 1 << n, xp)  # holds the table of the first j variables in [:, : 2^j]
    for j, z in enumerate(point):
        z = Fp2.lift(z)
        size = 1 << j
        step = min(size, _EQ_CHUNK)
        # entry i of the table so far becomes entries 2i (x_j = 0) and 2i + 1 (x_j = 1); the
        # chunks go from the last, so no chunk is overwritten before it is read
        for a in range(size - step, -1, -step):
            hi = e_scale(out[:, a : a + step], z)
            lo = e_sub(out[:, a : a + step], hi)
            out[:, 2 * a : 2 * (a + step)] = xp.stack([lo, hi], axis=-1).reshape(2, -1)
    return out


def eq_eval(a: Sequence[Fp2 | int], b: Sequence[Fp2 | int]) -> Fp2:
    """eq(a, b) for two points (scalar, O(n)), on the integer coordinates."""
    if len(a) != len(b):
        raise ParameterError(f"eq_eval: points have {len(a)} and {len(b)} coordinates")
    p, w = P, _W
    c0, c1 = 1, 0
    for x, y in zip(a, b, strict=False):
        x0, x1 = (x.c0, x.c1) if type(x) is Fp2 else (int(x) % p, 0)
        if type(y) is int and 0 <= y <= 1:  # a Boolean coordinate (codes): x or 1 - x
            t0, t1 = (x0, x1) if y else (1 - x0, -x1)
        else:
            y0, y1 = (y.c0, y.c1) if type(y) is Fp2 else (int(y) % p, 0)
            # x y + (1 - x)(1 - y) = 2 x y - x - y + 1
            t0 = 2 * (x0 * y0 + w * x1 * y1) - x0 - y0 + 1
            t1 = 2 * (x0 * y1 + x1 * y0) - x1 - y1
        t0, t1 = t0 % p, t1 % p
        c0, c1 = (c0 * t0 + w * c1 * t1) % p, (c0 * t1 + c1 * t0) % p
    return _raw(c0, c1)


def eq_eval_many(points: Sequence[Sequence[Fp2 | int]], r: Sequence[Fp2 | int]) -> np.ndarray:
    """eq(points_j, r) for many points at once, as an extension array (2, q) (verifier side).

    eq(z, r) = prod_i (z_i (2 r_i - 1) + 1 - r_i): one vectorised pass per coordinate instead of
    q n scalar products in Python.
    """
    q, n = len(points), len(r)
    if any(len(z) != n for z in points):
        raise ParameterError(f"eq_eval_many: every point needs {n} coordinates")
    if q == 0:
        return e_const(0, 0)
    c0s: list[int] = []
    c1s: list[int] = []
    for pt in points:
        for c in pt:
            if type(c) is Fp2:
                c0s.append(c.c0)
                c1s.append(c.c1)
            else:
                c0s.append(int(c) % P)
                c1s.append(0)
    z = np.array([c0s, c1s], dtype=np.uint64).reshape(2, q, n)
    acc = e_const(1, q)
    for i, ri in enumerate(r):
        ri = Fp2.lift(ri)
        term = e_add(e_scale(np.ascontiguousarray(z[:, :, i]), 2 * ri - 1), e_const(1 - ri, q))
        acc = e_mul(acc, term)
    return acc


def fold(table: Any, r: Fp2 | int) -> Any:
    """Bind the first variable to r: T[:h] + r * (T[h:] - T[:h])."""
    t = as_ext_table(table)
    h = t.shape[1] // 2
    if h == 0:
        raise ParameterError("fold: table has no variable left")
    r = Fp2.lift(r)
    fused = backend_of(t).fold
    if fused is not None:  # numba: the same e_sub / e_scale / e_add steps in one pass
        return fused(t, r.c0, r.c1)
    lo, hi = t[:, :h], t[:, h:]
    return e_add(lo, e_scale(e_sub(hi, lo), r))


def evaluate(table: Any, point: Sequence[Fp2 | int]) -> Fp2:
    """f(point) for the multilinear extension of ``table`` (length must be 2^len(point))."""
    t = as_ext_table(table)
    n = num_vars_of(t.shape[1], "evaluate")
    if n != len(point):
        raise ParameterError(f"evaluate: table has {n} variables, point has {len(point)}")
    for r in point:
        t = fold(t, r)
    return e_get(t, 0)


def ref_evaluate(values: Sequence[int | Fp2], point: Sequence[Fp2 | int]) -> Fp2:
    """Pure-Python reference: sum_x f(x) eq(point, x), big-endian indexing."""
    n = len(point)
    acc = Fp2(0)
    for i, v in enumerate(values):
        bits = [(i >> (n - 1 - j)) & 1 for j in range(n)]
        acc = acc + Fp2.lift(v) * eq_eval(point, bits)
    return acc


def tile_mask(mask_cols: Any, num_vars: int) -> Any:
    """Round-1 mask table M(x_2..x_n) = mu(x_col) for a mask over the last log2(k) variables.

    ``mask_cols`` is the (2, k) extension table of mu. The result has length 2^(num_vars-1):
    the column variables are the low bits, so mu is repeated over the remaining row bits.
    """
    xp = array_module(mask_cols)
    k = mask_cols.shape[1]
    reps = (1 << (num_vars - 1)) // k
    if reps < 1 or reps * k != 1 << (num_vars - 1):
        raise ParameterError(
            f"tile_mask: mask over {k} columns does not fit {num_vars - 1} remaining variables"
        )
    return xp.tile(mask_cols, (1, reps))


def masked_ref_evaluate(
    values: Sequence[int | Fp2], mask_cols: Sequence[Fp2], point: Sequence[Fp2 | int]
) -> Fp2:
    """Reference for P^(z) = P(z) + z_1 (1 - z_1) mu(z_col) (the masked evaluation)."""
    nc = num_vars_of(len(mask_cols), "mask")
    z1 = Fp2.lift(point[0])
    return ref_evaluate(values, point) + z1 * (1 - z1) * ref_evaluate(
        mask_cols, point[len(point) - nc :]
    )


_ = (F, P)  # re-exported constants used by callers via this module's namespace
