"""Optional numba JIT kernels for Goldilocks arithmetic (imported only when numba is).

Same algorithms as the NumPy kernels (limb-split multiply, ``where``-based add/sub/neg), fused
into one loop each so no temporaries or masks are materialised; every scalar step is the same
operation in the same order, so results are bit-identical to the NumPy path. Used only by
:mod:`.backend` when ``import numba`` succeeds.

The ufuncs are built with explicit ``uint64`` signatures (compiled at import) and called through
their underlying NumPy ufunc, which skips numba's Python-level dispatch (~0.7 us per call; the
prover makes ~10^5 calls). Callers pass uint64 arrays only.
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


@numba.njit(cache=False, nogil=True, inline="always")
def _add1(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    s = a + b
    # wrapped (s < a) means a+b >= 2^64 > p; subtracting p with wraparound is then exact
    if s < a or s >= _P:
        s -= _P
    return s


@numba.njit(cache=False, nogil=True, inline="always")
def _sub1(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    d = a - b
    if a < b:
        d += _P
    return d


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=False)
def _mul_ufunc(a, b):  # pragma: no cover - compiled
    return _mul1(a, b)


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=False)
def _add_ufunc(a, b):  # pragma: no cover - compiled
    return _add1(a, b)


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=False)
def _sub_ufunc(a, b):  # pragma: no cover - compiled
    return _sub1(a, b)


@numba.vectorize(["uint64(uint64)"], nopython=True, cache=False)
def _neg_ufunc(a):  # pragma: no cover - compiled
    return a if a == 0 else _P - a


def _raw(uf: Any) -> Any:
    """The plain NumPy ufunc behind a numba DUFunc (no Python-level dispatch per call)."""
    return getattr(uf, "ufunc", uf)


_MUL = _raw(_mul_ufunc)
_ADD = _raw(_add_ufunc)
_SUB = _raw(_sub_ufunc)
_NEG = _raw(_neg_ufunc)


def _nd(r: Any) -> np.ndarray:
    """0-d inputs make ufuncs return NumPy scalars; keep the ``np.where`` path's 0-d arrays."""
    return r if isinstance(r, np.ndarray) else np.asarray(r)


def numba_mul(a: Any, b: Any) -> Any:
    """Elementwise Goldilocks product of two uint64 arrays (broadcasting), via numba."""
    return _MUL(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))


def numba_add(a: Any, b: Any) -> np.ndarray:
    """Elementwise a + b mod p of two uint64 arrays (broadcasting), via numba."""
    return _nd(_ADD(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def numba_sub(a: Any, b: Any) -> np.ndarray:
    """Elementwise a - b mod p of two uint64 arrays (broadcasting), via numba."""
    return _nd(_SUB(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def numba_neg(a: Any) -> np.ndarray:
    """Elementwise -a mod p of a uint64 array, via numba."""
    return _nd(_NEG(np.asarray(a, dtype=np.uint64)))


# ---- NTT ------------------------------------------------------------------------------------


@numba.njit(cache=False, nogil=True)
def _ntt_row(row, tw, rev, kinv, scale):  # pragma: no cover - compiled
    """In-place radix-2 DIT NTT of one row: the NumPy ``_transform``'s stages, element by element.

    ``tw`` holds the twiddles of stage h (h = 1, 2, ..., K/2) at ``tw[h - 1 : 2h - 1]``.
    """
    k = row.shape[0]
    for i in range(k):  # bit reversal (an involution, so swapping pairs once is the gather)
        j = rev[i]
        if i < j:
            t = row[i]
            row[i] = row[j]
            row[j] = t
    h = 1
    while h < k:
        for start in range(0, k, 2 * h):
            for j in range(h):
                u = row[start + j]
                v = _mul1(row[start + j + h], tw[h - 1 + j])
                row[start + j] = _add1(u, v)
                row[start + j + h] = _sub1(u, v)
        h *= 2
    if scale:
        for i in range(k):
            row[i] = _mul1(row[i], kinv)


@numba.njit(cache=False, nogil=True)
def _ntt_rows(x, tw, rev, kinv, scale):  # pragma: no cover - compiled
    # Serial on purpose: a prange (parallel=True) version measured no steady gain on the
    # shared 2-core machine (within noise, sometimes slower) and costs extra compile time.
    for r in range(x.shape[0]):
        _ntt_row(x[r], tw, rev, kinv, scale)


def numba_ntt_rows(x: np.ndarray, tw: np.ndarray, rev: np.ndarray, kinv: int, scale: bool) -> None:
    """Transform every row of the C-contiguous (rows, K) uint64 array ``x`` in place.

    ``kinv`` multiplies the result when ``scale`` (the inverse transform's 1/K).
    """
    _ntt_rows(x, tw, rev, np.uint64(kinv), bool(scale))
