"""Goldilocks base field F_p, p = 2^64 - 2^32 + 1, on uint64 arrays of any backend.

Elements are canonical uint64 values in [0, p). Addition and subtraction use wrapping uint64
arithmetic with one conditional correction; multiplication is the backend's 64x64->128 kernel
followed by the Goldilocks reduction (2^64 = 2^32 - 1, 2^96 = -1 mod p). Every fast path has a
pure-Python-int reference (``ref_*``) that the tests compare against.

Signed fixed-point integers x with |x| <= (p-1)/2 map in and out exactly: x -> x mod p and
v -> v if v <= (p-1)/2 else v - p (``from_signed`` / ``to_signed``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import EPS, M32, P, array_module, backend_of
from .errors import FieldRangeError, ParameterError

__all__ = [
    "P",
    "HALF",
    "TWO_ADICITY",
    "GENERATOR",
    "add",
    "sub",
    "neg",
    "mul",
    "square",
    "pow_",
    "inv",
    "batch_inverse",
    "fsum",
    "dot",
    "from_signed",
    "to_signed",
    "from_ints",
    "to_ints",
    "random_elements",
    "check_canonical",
    "root_of_unity",
    "ref_add",
    "ref_sub",
    "ref_mul",
    "ref_neg",
    "ref_inv",
    "ref_pow",
]

HALF = (P - 1) // 2  # largest magnitude of a signed fixed-point value
TWO_ADICITY = 32  # 2^32 | p - 1
GENERATOR = 7  # generates F_p^*; also the non-residue of the extension X^2 - 7


def _arr(a: Any, xp: Any) -> Any:
    return xp.asarray(a, dtype=xp.uint64)


def _xp2(a: Any, b: Any) -> Any:
    return array_module(a) if not isinstance(a, int) else array_module(b)


def add(a: Any, b: Any) -> Any:
    """a + b mod p (elementwise, broadcasting) with the backend's kernel (``where`` or numba)."""
    xp = _xp2(a, b)
    a = _arr(a, xp)
    return backend_of(a).add(a, _arr(b, xp))


def sub(a: Any, b: Any) -> Any:
    """a - b mod p (elementwise, broadcasting) with the backend's kernel."""
    xp = _xp2(a, b)
    a = _arr(a, xp)
    return backend_of(a).sub(a, _arr(b, xp))


def neg(a: Any) -> Any:
    """-a mod p with the backend's kernel."""
    xp = array_module(a)
    a = _arr(a, xp)
    return backend_of(a).neg(a)


def mul(a: Any, b: Any) -> Any:
    """a * b mod p with the backend's kernel (limb split, numba JIT or CUDA ``__umul64hi``)."""
    xp = _xp2(a, b)
    be = backend_of(_arr(a, xp))
    return be.mul(_arr(a, xp), _arr(b, xp))


def square(a: Any) -> Any:
    """a^2 mod p."""
    return mul(a, a)


def pow_(a: Any, e: int) -> Any:
    """a^e mod p elementwise for a public integer exponent e >= 0 (square and multiply)."""
    if e < 0:
        raise ParameterError(f"pow_(e={e}): exponent must be >= 0; invert first")
    xp = array_module(a)
    a = _arr(a, xp)
    result = xp.ones_like(a)
    base = a
    while e:
        if e & 1:
            result = mul(result, base)
        e >>= 1
        if e:
            base = mul(base, base)
    return result


def inv(a: Any) -> Any:
    """Elementwise inverse (batch inversion). Raises ParameterError if any element is 0."""
    return batch_inverse(a)


def batch_inverse(a: Any) -> Any:
    """Inverses of all elements of ``a`` with one field inversion (product tree, O(n) muls).

    The tree multiplies neighbours level by level, inverts the root by Fermat, and pushes the
    inverse back down: inv(left) = inv(parent) * right, inv(right) = inv(parent) * left.
    """
    xp = array_module(a)
    a = _arr(a, xp)
    shape = a.shape
    flat = a.reshape(-1)
    n = flat.shape[0]
    if n == 0:
        return a.copy()
    if bool((flat == 0).any()):
        idx = int(to_ints(xp.nonzero(flat == 0)[0][:1])[0])
        raise ParameterError(f"batch_inverse: element {idx} is zero and has no inverse")
    fast = backend_of(flat).batch_inverse
    if fast is not None:  # numba: Montgomery's trick per chunk (inverses are unique: same bits)
        return fast(flat).reshape(shape)
    size = 1 << (n - 1).bit_length()
    level = xp.ones(size, dtype=xp.uint64)
    level[:n] = flat
    levels = [level]
    while level.shape[0] > 1:
        level = mul(level[0::2], level[1::2])
        levels.append(level)
    inv_level = _arr([pow(int(to_ints(level)[0]), P - 2, P)], xp)
    for child in reversed(levels[:-1]):
        out = xp.empty_like(child)
        out[0::2] = mul(inv_level, child[1::2])
        out[1::2] = mul(inv_level, child[0::2])
        inv_level = out
    return inv_level[:n].reshape(shape)


def fsum(a: Any, axis: int | None = None) -> Any:
    """Sum mod p. With ``axis=None`` returns a Python int, else an array reduced along ``axis``.

    Splits into 32-bit halves so uint64 accumulators cannot overflow (< 2^32 terms).
    """
    xp = array_module(a)
    a = _arr(a, xp)
    count = a.size if axis is None else a.shape[axis]
    if count >= 1 << 32:
        raise ParameterError(f"fsum: {count} terms exceed the 2^32 the accumulator supports")
    if axis is None:
        halves = backend_of(a).halves_sum
        if halves is not None:  # numba: one pass, no masked/shifted temporaries
            lo, hi = halves(a)
        else:
            lo = int((a & M32).sum(dtype=xp.uint64))
            hi = int((a >> 32).sum(dtype=xp.uint64))
        return (lo + (hi << 32)) % P
    lo = (a & M32).sum(axis=axis, dtype=xp.uint64)
    hi = (a >> 32).sum(axis=axis, dtype=xp.uint64)
    lo = xp.where(lo >= P, lo - P, lo)
    hi = xp.where(hi >= P, hi - P, hi)
    return add(mul(hi, 1 << 32), lo)


def dot(a: Any, b: Any) -> int:
    """<a, b> mod p as a Python int."""
    return fsum(mul(a, b))


def from_signed(x: Any, xp: Any = None) -> Any:
    """Map signed integers with |x| <= (p-1)/2 into the field exactly (negative -> p + x).

    Raises:
        FieldRangeError: some |x| > (p-1)/2 (it would wrap and alias another value).
    """
    if xp is None:
        xp = array_module(x)
    x = xp.asarray(x)
    if x.dtype.kind not in "iu":
        raise FieldRangeError(f"from_signed: expected an integer array, got dtype {x.dtype}")
    if x.dtype.kind == "u":
        if x.size and bool((x > HALF).any()):
            raise FieldRangeError(f"from_signed: values must be <= (p-1)/2 = {HALF}")
        return x.astype(xp.uint64)
    x = x.astype(xp.int64)
    if x.size and bool(((x > HALF) | (x < -HALF)).any()):
        bad = int(to_ints(x[(x > HALF) | (x < -HALF)][:1])[0])
        raise FieldRangeError(
            f"from_signed: value {bad} is outside the exact range [-(p-1)/2, (p-1)/2]"
        )
    u = x.astype(xp.uint64)  # two's complement: negative x -> 2^64 + x
    return xp.where(x < 0, u - EPS, u)  # 2^64 + x - (2^32 - 1) = p + x


def to_signed(v: Any) -> Any:
    """Inverse of ``from_signed``: field elements -> int64 in [-(p-1)/2, (p-1)/2]."""
    xp = array_module(v)
    v = _arr(v, xp)
    neg_part = (v + EPS).view(xp.int64)  # v - p = v + eps - 2^64
    return xp.where(v > HALF, neg_part, v.view(xp.int64))


def from_ints(values: Any, xp: Any = np) -> Any:
    """Python ints (any size, any sign) reduced mod p into a uint64 array."""
    return xp.asarray([int(v) % P for v in values], dtype=xp.uint64)


def to_ints(a: Any) -> list[int]:
    """Array -> list of Python ints (host)."""
    from .backend import to_numpy

    return [int(v) for v in to_numpy(a).reshape(-1)]


def random_elements(shape: Any, rng: np.random.Generator, xp: Any = np) -> Any:
    """Uniform field elements (rejection-free: integers in [0, p) from ``rng``)."""
    out = rng.integers(0, P, size=shape, dtype=np.uint64)
    return out if xp is np else xp.asarray(out)


def check_canonical(a: Any, what: str = "value") -> None:
    """Raise FieldRangeError unless every element is < p."""
    if a.size and bool((a >= P).any()):
        raise FieldRangeError(f"{what}: element >= p is not a canonical field element")


def root_of_unity(order: int) -> int:
    """A primitive ``order``-th root of unity (order a power of two up to 2^32)."""
    if order <= 0 or order & (order - 1) or order > 1 << TWO_ADICITY:
        raise ParameterError(f"root_of_unity(order={order}): order must be a power of two <= 2^32")
    return pow(GENERATOR, (P - 1) // order, P)


# ---- pure-Python references (the tests' oracle) --------------------------------------------


def ref_add(a: int, b: int) -> int:
    return (a + b) % P


def ref_sub(a: int, b: int) -> int:
    return (a - b) % P


def ref_mul(a: int, b: int) -> int:
    return (a * b) % P


def ref_neg(a: int) -> int:
    return (-a) % P


def ref_pow(a: int, e: int) -> int:
    return pow(a, e, P)


def ref_inv(a: int) -> int:
    if a % P == 0:
        raise ParameterError("ref_inv: zero has no inverse")
    return pow(a, P - 2, P)
