"""Quadratic extension F_p2 = F_p[X]/(X^2 - 7), where every verifier challenge lives.

7 is a quadratic non-residue mod p (Euler's criterion, checked in the tests), so X^2 - 7 is
irreducible and |F_p2| = p^2 ~ 2^128. A challenge from F_p2 makes each Schwartz-Zippel step
fail with probability deg/p^2 instead of deg/p ~ deg * 2^-64.

Two representations:

* :class:`Fp2` — an immutable scalar of Python ints (verifier side, transcript output).
* extension *arrays* — uint64 arrays of shape ``(2, ...)``: ``a[0]`` is the constant
  coefficient, ``a[1]`` the X coefficient (prover side, any backend). Functions ``e_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import field as F
from .backend import P, array_module, backend_of
from .errors import ParameterError

__all__ = [
    "W",
    "Fp2",
    "e_zeros",
    "e_from_base",
    "e_const",
    "e_add",
    "e_sub",
    "e_neg",
    "e_mul",
    "e_mul_base",
    "e_scale",
    "e_square",
    "e_inv",
    "e_sum",
    "e_dot",
    "e_get",
    "e_random",
    "e_is_base",
]

W = 7  # X^2 = W


@dataclass(frozen=True, slots=True)
class Fp2:
    """Scalar c0 + c1*X of F_p[X]/(X^2 - 7), canonical Python ints."""

    c0: int = 0
    c1: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.c0 < P and 0 <= self.c1 < P):
            object.__setattr__(self, "c0", self.c0 % P)
            object.__setattr__(self, "c1", self.c1 % P)

    @staticmethod
    def lift(x: Fp2 | int) -> Fp2:
        return x if type(x) is Fp2 or isinstance(x, Fp2) else _raw(int(x) % P, 0)

    # The arithmetic below builds its (already reduced) results with _raw, which skips the
    # dataclass __init__ and the range check: the verifier does tens of thousands of these.
    def __add__(self, o: Fp2 | int) -> Fp2:
        if type(o) is not Fp2:
            o = Fp2.lift(o)
        return _raw((self.c0 + o.c0) % P, (self.c1 + o.c1) % P)

    __radd__ = __add__

    def __sub__(self, o: Fp2 | int) -> Fp2:
        if type(o) is not Fp2:
            o = Fp2.lift(o)
        return _raw((self.c0 - o.c0) % P, (self.c1 - o.c1) % P)

    def __rsub__(self, o: Fp2 | int) -> Fp2:
        if type(o) is int:  # 1 - x in eq polynomials
            return _raw((o - self.c0) % P, (-self.c1) % P)
        return Fp2.lift(o) - self

    def __neg__(self) -> Fp2:
        return _raw((-self.c0) % P, (-self.c1) % P)

    def __mul__(self, o: Fp2 | int) -> Fp2:
        if type(o) is not Fp2:
            o = Fp2.lift(o)
        a0, a1, b0, b1 = self.c0, self.c1, o.c0, o.c1
        return _raw((a0 * b0 + W * a1 * b1) % P, (a0 * b1 + a1 * b0) % P)

    __rmul__ = __mul__

    def norm(self) -> int:
        """N(a) = a * conj(a) = c0^2 - 7 c1^2 in F_p (zero only for a = 0)."""
        return (self.c0 * self.c0 - W * self.c1 * self.c1) % P

    def inverse(self) -> Fp2:
        n = self.norm()
        if n == 0:
            raise ParameterError("Fp2.inverse: zero has no inverse")
        ni = pow(n, P - 2, P)
        return Fp2(self.c0 * ni % P, (-self.c1) * ni % P)

    def __truediv__(self, o: Fp2 | int) -> Fp2:
        return self * Fp2.lift(o).inverse()

    def __pow__(self, e: int) -> Fp2:
        if e < 0:
            return self.inverse() ** (-e)
        result, base = Fp2(1, 0), self
        while e:
            if e & 1:
                result = result * base
            base = base * base
            e >>= 1
        return result

    def __eq__(self, o: object) -> bool:
        if isinstance(o, int):
            o = Fp2.lift(o)
        return isinstance(o, Fp2) and self.c0 == o.c0 and self.c1 == o.c1

    def __hash__(self) -> int:
        return hash((self.c0, self.c1))

    def is_zero(self) -> bool:
        return self.c0 == 0 and self.c1 == 0

    def __repr__(self) -> str:
        return f"Fp2({self.c0}, {self.c1})"

    @staticmethod
    def random(rng: np.random.Generator) -> Fp2:
        return Fp2(
            int(rng.integers(0, P, dtype=np.uint64)), int(rng.integers(0, P, dtype=np.uint64))
        )


# ---- extension arrays: shape (2, ...) ------------------------------------------------------


_new_fp2 = object.__new__
_set_slot = object.__setattr__


def _raw(c0: int, c1: int) -> Fp2:
    """An Fp2 from canonical coordinates (0 <= c < p), without the constructor's checks."""
    out = _new_fp2(Fp2)
    _set_slot(out, "c0", c0)
    _set_slot(out, "c1", c1)
    return out


def e_zeros(shape: Any, xp: Any = np) -> Any:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return xp.zeros((2, *shape), dtype=xp.uint64)


def e_from_base(a: Any) -> Any:
    """Embed a base-field array into the extension (X coefficient 0)."""
    xp = array_module(a)
    a = xp.asarray(a, dtype=xp.uint64)
    out = xp.zeros((2, *a.shape), dtype=xp.uint64)  # one allocation instead of zeros + stack
    out[0] = a
    return out


def e_const(x: Fp2 | int, shape: Any = (), xp: Any = np) -> Any:
    """Array of shape (2, *shape) filled with the scalar x."""
    x = Fp2.lift(x)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = xp.empty((2, *shape), dtype=xp.uint64)
    out[0] = x.c0
    out[1] = x.c1
    return out


def _check(a: Any, name: str) -> None:
    if a.ndim < 1 or a.shape[0] != 2:
        raise ParameterError(f"{name}: extension arrays have shape (2, ...), got {a.shape}")


def e_add(a: Any, b: Any) -> Any:
    return F.add(a, b)


def e_sub(a: Any, b: Any) -> Any:
    return F.sub(a, b)


def e_neg(a: Any) -> Any:
    return F.neg(a)


def e_mul(a: Any, b: Any) -> Any:
    """(a0 + a1 X)(b0 + b1 X) = a0 b0 + 7 a1 b1 + ((a0 + a1)(b0 + b1) - a0 b0 - a1 b1) X."""
    _check(a, "e_mul")
    _check(b, "e_mul")
    xp = array_module(a)
    fused = backend_of(a).e_mul
    if fused is not None and a.shape == b.shape and a.dtype == b.dtype == np.uint64:
        return fused(a, b)  # numba: the same steps in one pass, no temporaries
    v0 = F.mul(a[0], b[0])
    v1 = F.mul(a[1], b[1])
    cross = F.mul(F.add(a[0], a[1]), F.add(b[0], b[1]))
    c1 = F.sub(cross, F.add(v0, v1))
    c0 = F.add(v0, F.mul(v1, W))
    return xp.stack([c0, c1])


def e_square(a: Any) -> Any:
    return e_mul(a, a)


def e_mul_base(a: Any, b: Any) -> Any:
    """Extension array times base-field array (broadcasting over the trailing shape)."""
    _check(a, "e_mul_base")
    xp = array_module(a)
    c0 = F.mul(a[0], b)
    out = xp.empty((2, *c0.shape), dtype=xp.uint64)  # one allocation instead of a stack copy
    out[0] = c0
    out[1] = F.mul(a[1], b)
    return out


def e_scale(a: Any, s: Fp2 | int) -> Any:
    """Extension array times a scalar."""
    _check(a, "e_scale")
    s = Fp2.lift(s)
    xp = array_module(a)
    fused = backend_of(a).e_scale
    if fused is not None and a.dtype == np.uint64:
        return fused(a, s.c0, s.c1)  # numba: the same steps (both branches) in one pass
    if s.c1 == 0:
        return xp.stack([F.mul(a[0], s.c0), F.mul(a[1], s.c0)])
    v0 = F.mul(a[0], s.c0)
    v1 = F.mul(a[1], s.c1)
    c0 = F.add(v0, F.mul(v1, W))
    c1 = F.add(F.mul(a[0], s.c1), F.mul(a[1], s.c0))
    return xp.stack([c0, c1])


def e_inv(a: Any) -> Any:
    """Elementwise inverse: conj(a) / N(a), with one batch inversion of the norms in F_p."""
    _check(a, "e_inv")
    xp = array_module(a)
    norm = F.sub(F.square(a[0]), F.mul(F.square(a[1]), W))
    ni = F.batch_inverse(norm)
    return xp.stack([F.mul(a[0], ni), F.neg(F.mul(a[1], ni))])


def e_sum(a: Any) -> Fp2:
    """Sum of all entries of an extension array, as a scalar."""
    _check(a, "e_sum")
    return Fp2(F.fsum(a[0]), F.fsum(a[1]))


def e_dot(a: Any, b: Any) -> Fp2:
    """Sum_i a_i * b_i for extension arrays of equal shape."""
    return e_sum(e_mul(a, b))


def e_get(a: Any, index: Any) -> Fp2:
    """Entry ``a[:, index]`` as a scalar."""
    from .backend import to_numpy

    v = to_numpy(a[(slice(None), index)])
    return Fp2(int(v[0]), int(v[1]))


def e_random(shape: Any, rng: np.random.Generator, xp: Any = np) -> Any:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return F.random_elements((2, *shape), rng, xp)


def e_is_base(a: Any) -> bool:
    """True when every entry has X coefficient 0."""
    return not bool((a[1] != 0).any())
