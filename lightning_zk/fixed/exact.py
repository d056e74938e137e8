"""Exact integer matrix products on floating-point BLAS, by splitting operands into limbs.

NumPy multiplies int64 matrices with its own loops (no BLAS): ~1 G multiply-adds per second,
against tens of G for float64 BLAS. float64 holds every integer of magnitude <= 2^53 exactly, and
a classical GEMM forms each output as a sum of the K products a[m, k] b[k, n] in *some* order
(blocked, vectorised, with or without FMA). If every product and every partial sum is an integer
of magnitude <= 2^53, every rounding step is exact, so the float64 result is the exact integer
result whatever order, blocking or thread count the BLAS uses. With |a| <= A, |b| <= B and inner
dimension K every partial sum is at most K*A*B in magnitude, so one GEMM is exact when

    K * A * B <= 2^53.

Otherwise the operands are split into limbs (Knuth, TAOCP vol. 2, 4.3.1; the Ozaki scheme does
the same for floating-point operands): a = sum_i a_i 2^(w_a i) with low limbs
a_i = (a >> w_a i) & (2^w_a - 1) in [0, 2^w_a) and a signed top limb a >> w_a (l_a - 1), so every
limb product a_i b_j is one exact GEMM when K * max|a_i| * max|b_j| <= 2^53, and

    a b = sum_{i,j} (a_i b_j) 2^(w_a i + w_b j)

is recombined in int64. int64 addition and shifts wrap modulo 2^64, so the recombination is
exact whenever the final result fits int64 (|a b| <= K*A*B < 2^63), whatever the intermediate
sums do; a product that could exceed int64 raises :class:`ExactOverflowError` instead.

This is the core of the fixed-point engine's matmuls (forward, weight and input gradients) and is
meant for any exact integer GEMM (e.g. a convolution as a matmul over patches): 2-D integer
operands in, the int64 product out, bit-identical to ``a @ b`` on int64 whenever that does not
wrap. Assumption: the BLAS computes sums of products (every BLAS does for float64 GEMM; a
Strassen-type algorithm would need a margin and is not used by OpenBLAS/MKL/BLIS for dgemm).

Example::

    >>> import numpy as np
    >>> a = np.array([[2**23 - 1, -(2**23 - 1)]] * 2, dtype=np.int64)
    >>> b = np.array([[2**23 - 1], [3]], dtype=np.int64)
    >>> bool((exact_matmul(a, b) == a @ b).all())
    True
    >>> plan_limbs(1024, 2**23 - 1, 2**23 - 1, size_a=64 * 1024, size_b=1024 * 1024)
    LimbPlan(limbs_a=2, width_a=12, limbs_b=1, width_b=23)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EXACT_BITS", "ExactOverflowError", "LimbPlan", "plan_limbs", "exact_matmul"]

EXACT_BITS = 53  # float64 represents every integer of magnitude <= 2^53
INT64_MAX = (1 << 63) - 1
MAX_PRODUCTS = 16  # more limb GEMMs than this: int64 NumPy is about as fast (measured ~25x gap)
MAX_LIMBS = 8
SMALL_MACS = 1 << 15  # tiny products: int64 directly (conversions would dominate)


class ExactOverflowError(OverflowError):
    """An exact integer product could exceed int64: K * max|a| * max|b| >= 2^63.

    Attributes: k (inner dimension), bound_a, bound_b (magnitude bounds used), worst (K*A*B).
    """

    def __init__(self, k: int, bound_a: int, bound_b: int) -> None:
        self.k, self.bound_a, self.bound_b = k, bound_a, bound_b
        self.worst = k * bound_a * bound_b
        super().__init__(
            f"exact_matmul: inner dimension K={k} with |a| <= {bound_a} and |b| <= {bound_b} "
            f"could give |a @ b| up to {self.worst} >= 2^63, which int64 cannot hold. "
            f"HINT: lower the operands' magnitude bound (value_bits) or the fan-in."
        )


@dataclass(frozen=True)
class LimbPlan:
    """How each operand is split: ``limbs_x`` limbs of ``width_x`` bits (one limb: unsplit).

    The product costs ``limbs_a * limbs_b`` float64 GEMMs.
    """

    limbs_a: int
    width_a: int
    limbs_b: int
    width_b: int

    @property
    def products(self) -> int:
        return self.limbs_a * self.limbs_b


def _limb_bound(bound: int, limbs: int) -> tuple[int, int]:
    """(width, max |limb|) of ``limbs`` limbs for values |x| <= bound (width = ceil(bits/limbs))."""
    bits = max(bound.bit_length(), 1)
    if limbs == 1:
        return bits, bound
    width = -(-bits // limbs)
    top = -((-bound) >> (width * (limbs - 1)))  # ceil(bound / 2^shift) bounds |x >> shift|
    return width, max((1 << width) - 1, top)


def plan_limbs(
    k: int, bound_a: int, bound_b: int, *, size_a: int = 1, size_b: int = 1
) -> LimbPlan | None:
    """The cheapest limb split making every limb GEMM exact, or None if limbs are pointless.

    Exactness: K * max|a_i| * max|b_j| <= 2^53 for every limb pair. Cost: fewest GEMMs, then the
    fewest converted elements (``size_x`` = number of entries, so the smaller operand is split).
    None means: use int64 (more than ``MAX_PRODUCTS`` GEMMs would be needed).

    Raises:
        ExactOverflowError: K * bound_a * bound_b >= 2^63 (the result may not fit int64).
    """
    k, bound_a, bound_b = int(k), int(bound_a), int(bound_b)
    if k * bound_a * bound_b > INT64_MAX:
        raise ExactOverflowError(k, bound_a, bound_b)
    best: tuple[tuple[int, int], LimbPlan] | None = None
    for la in range(1, MAX_LIMBS + 1):
        wa, ma = _limb_bound(bound_a, la)
        for lb in range(1, MAX_LIMBS + 1):
            if la * lb > MAX_PRODUCTS:
                break
            wb, mb = _limb_bound(bound_b, lb)
            if k * ma * mb <= 1 << EXACT_BITS:
                cost = (la * lb, la * size_a + lb * size_b)
                if best is None or cost < best[0]:
                    best = (cost, LimbPlan(la, wa, lb, wb))
                break  # more limbs of b only cost more
    return None if best is None else best[1]


def _max_abs(x: np.ndarray) -> int:
    if x.size == 0:
        return 0
    return max(abs(int(x.max())), abs(int(x.min())))


def _as_int64(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu" or x.ndim != 2:
        raise TypeError(
            f"exact_matmul: {name} must be a 2-D integer array, got {x.ndim}-D dtype {x.dtype}"
        )
    if x.dtype == np.uint64 and x.size and int(x.max()) > INT64_MAX:
        raise ValueError(f"exact_matmul: {name} has uint64 values above 2^63 - 1 (not int64)")
    return x.astype(np.int64, copy=False)


def _limbs_f64(x: np.ndarray, limbs: int, width: int) -> list[tuple[int, np.ndarray]]:
    """(shift, float64 limb) pairs: low limbs (x >> s) & mask, signed top limb x >> s."""
    if limbs == 1:
        return [(0, x.astype(np.float64))]
    mask = (1 << width) - 1
    out = []
    for i in range(limbs):
        s = width * i
        limb = x >> s if s else x
        if i < limbs - 1:
            limb = limb & mask
        out.append((s, limb.astype(np.float64)))
    return out


def exact_matmul(
    a: np.ndarray, b: np.ndarray, *, bound_a: int | None = None, bound_b: int | None = None
) -> np.ndarray:
    """The exact int64 product ``a @ b`` of 2-D integer arrays, computed with float64 BLAS.

    Bit-identical to NumPy's int64 ``a @ b`` (whenever that does not wrap), in any thread
    count or BLAS; see the module docstring for why. Falls back to int64 NumPy for tiny products
    and when more than ``MAX_PRODUCTS`` limb GEMMs would be needed.

    Args:
        a, b: integer arrays of shapes (M, K) and (K, N) (any memory layout, views welcome).
        bound_a, bound_b: inclusive bounds on max |a| and max |b| that the caller guarantees
            (e.g. range-checked tensors); they choose the limbs without scanning the operand.
            None (default) scans it (max and min, O(size), small next to the product). A bound
            that does not hold voids exactness: pass only bounds that hold by construction.

    Raises:
        TypeError: an operand is not a 2-D integer array.
        ValueError: the inner dimensions differ, or uint64 values do not fit int64.
        ExactOverflowError: K * max|a| * max|b| >= 2^63 (the result may not fit int64).
    """
    a = _as_int64(a, "a")
    b = _as_int64(b, "b")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"exact_matmul: shapes {a.shape} and {b.shape} do not chain (K differs)")
    ba = _max_abs(a) if bound_a is None else int(bound_a)
    bb = _max_abs(b) if bound_b is None else int(bound_b)
    plan = plan_limbs(k, ba, bb, size_a=a.size, size_b=b.size)  # raises on int64 overflow
    if ba == 0 or bb == 0 or k == 0:
        return np.zeros((m, n), dtype=np.int64)
    if plan is None or m * n * k < SMALL_MACS:
        return a @ b
    la = _limbs_f64(a, plan.limbs_a, plan.width_a)
    lb = _limbs_f64(b, plan.limbs_b, plan.width_b)
    out: np.ndarray | None = None
    for sa, fa in la:
        for sb, fb in lb:
            part = (fa @ fb).astype(np.int64)  # exact: every partial sum <= 2^53
            if sa + sb:
                np.left_shift(part, sa + sb, out=part)
            if out is None:
                out = part
            else:
                out += part  # wraps mod 2^64; exact since the true sum fits int64
    return out
