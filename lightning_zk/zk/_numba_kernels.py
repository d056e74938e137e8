"""Optional numba JIT kernel for Goldilocks multiplication (imported only when numba is).

Same algorithm as the limb-split NumPy kernel, fused into one loop so no temporaries are
materialised. Used only by :mod:`.backend` when ``import numba`` succeeds.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

_P = np.uint64(0xFFFF_FFFF_0000_0001)
_EPS = np.uint64(0xFFFF_FFFF)
_M32 = np.uint64(0xFFFF_FFFF)
_S32 = np.uint64(32)


@numba.njit(cache=False, nogil=True, inline="always")
def _mul1(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    a0 = a & _M32
    a1 = a >> _S32
    b0 = b & _M32
    b1 = b >> _S32
    t = a0 * b0
    m1 = a1 * b0 + (t >> _S32)
    m2 = a0 * b1 + (m1 & _M32)
    lo = (m2 << _S32) | (t & _M32)
    hi = a1 * b1 + (m1 >> _S32) + (m2 >> _S32)
    hh = hi >> _S32
    hl = hi & _M32
    t0 = lo - hh
    if lo < hh:
        t0 -= _EPS
    t1 = (hl << _S32) - hl
    t2 = t0 + t1
    if t2 < t1:
        t2 += _EPS
    if t2 >= _P:
        t2 -= _P
    return t2


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=False)
def _mul_ufunc(a, b):  # pragma: no cover - compiled
    return _mul1(a, b)


def numba_mul(a: Any, b: Any) -> Any:
    """Elementwise Goldilocks product of two uint64 arrays (broadcasting), via numba."""
    return _mul_ufunc(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
