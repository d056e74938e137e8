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

import os
from typing import Any

import numba
import numpy as np
from numba import types

# Compiling every kernel takes ~2-4 s per process (measured 3.7-4.2 s on the shared 2-core
# machine; the inlined field ops make the extension kernels ~0.7 s each). numba's on-disk cache
# cuts a warm import to ~0.5 s and was checked to fall back to ~/.cache/numba when the source
# tree's __pycache__ is unusable and to recompile when this file changes; it stays opt-in
# (LIGHTNING_ZK_NUMBA_CACHE=1) because numba raises at import when no cache location is
# writable, which would break proving on read-only installs.
_CACHE = os.environ.get("LIGHTNING_ZK_NUMBA_CACHE", "0") == "1"

_P = np.uint64(0xFFFF_FFFF_0000_0001)
_EPS = np.uint64(0xFFFF_FFFF)
_M32 = np.uint64(0xFFFF_FFFF)
_S32 = np.uint64(32)

# Explicit signatures for the array kernels: one compilation each, at import. Without them numba
# compiles a specialisation per (layout, readonly) combination it meets (4 for e_mul in one
# proof). Mutable arrays convert to the read-only input types; wrappers make inputs contiguous.
_U64_IN = types.Array(types.uint64, 1, "C", readonly=True)
_I64_IN = types.Array(types.int64, 1, "C", readonly=True)
_U64_ROWS = types.Array(types.uint64, 2, "C")
_U64_OUT = types.Array(types.uint64, 1, "C")
_U64_MAT_IN = types.Array(types.uint64, 2, "C", readonly=True)


@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _mul1(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    a0 = a & _M32
    a1 = a >> _S32
    b0 = b & _M32
    b1 = b >> _S32
    t = a0 * b0
    m1 = a1 * b0 + (t >> _S32)
    m2 = a0 * b1 + (m1 & _M32)
    # low word: the wrapping product equals the limb-split (m2 << 32) | (t & M32) and is one
    # instruction (measured: NTT ~20%, mul ~30% faster); the high word still needs the limbs
    lo = a * b
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


@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _add1(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    s = a + b
    # wrapped (s < a) means a+b >= 2^64 > p; subtracting p with wraparound is then exact
    if s < a or s >= _P:
        s -= _P
    return s


@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _sub1(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    d = a - b
    if a < b:
        d += _P
    return d


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=_CACHE)
def _mul_ufunc(a, b):  # pragma: no cover - compiled
    return _mul1(a, b)


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=_CACHE)
def _add_ufunc(a, b):  # pragma: no cover - compiled
    return _add1(a, b)


@numba.vectorize(["uint64(uint64, uint64)"], nopython=True, cache=_CACHE)
def _sub_ufunc(a, b):  # pragma: no cover - compiled
    return _sub1(a, b)


@numba.vectorize(["uint64(uint64)"], nopython=True, cache=_CACHE)
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


@numba.njit(cache=_CACHE, nogil=True, inline="always")
def _butterflies(lo, hi, w):  # pragma: no cover - compiled
    # lo, hi: the two halves of one block (disjoint slices); passing them as separate arrays
    # lets LLVM vectorise the loop (2.4x on (132, 2^15) versus indexing one row with offsets)
    for j in range(lo.shape[0]):
        u = lo[j]
        v = _mul1(hi[j], w[j])
        lo[j] = _add1(u, v)
        hi[j] = _sub1(u, v)


@numba.njit(cache=_CACHE, nogil=True)
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
        w = tw[h - 1 : 2 * h - 1]
        for start in range(0, k, 2 * h):
            _butterflies(row[start : start + h], row[start + h : start + 2 * h], w)
        h *= 2
    if scale:
        for i in range(k):
            row[i] = _mul1(row[i], kinv)


@numba.njit(
    types.void(_U64_ROWS, _U64_IN, _I64_IN, types.uint64, types.boolean),
    cache=_CACHE,
    nogil=True,
)
def _ntt_rows(x, tw, rev, kinv, scale):  # pragma: no cover - compiled
    # Serial: rows are spread over threads by _numba_parallel.ntt_rows (a prange here stalls
    # when other work keeps the cores busy; see that module)
    for r in range(x.shape[0]):
        _ntt_row(x[r], tw, rev, kinv, scale)


def numba_ntt_rows(x: np.ndarray, tw: np.ndarray, rev: np.ndarray, kinv: int, scale: bool) -> None:
    """Transform every row of the C-contiguous (rows, K) uint64 array ``x`` in place.

    ``kinv`` multiplies the result when ``scale`` (the inverse transform's 1/K).
    """
    _ntt_rows(x, tw, rev, np.uint64(kinv), bool(scale))


# ---- F_p2 = F_p[X]/(X^2 - 7) ----------------------------------------------------------------
# Extension arrays (2, n) are passed as their two rows, C-contiguous 1-D views (no copy for the
# prover's tables and halves t[:, :h]). A strided 2-D signature was measured 3x slower: LLVM
# only vectorises the unit-stride loops.

_W = np.uint64(7)


@numba.njit(
    types.void(_U64_IN, _U64_IN, _U64_IN, _U64_IN, _U64_OUT, _U64_OUT), cache=_CACHE, nogil=True
)
def _e_mul_loop(a0, a1, b0, b1, c0, c1):  # pragma: no cover - compiled
    # extension.e_mul's formula, step for step (Karatsuba: 4 base multiplications)
    for i in range(a0.shape[0]):
        v0 = _mul1(a0[i], b0[i])
        v1 = _mul1(a1[i], b1[i])
        cross = _mul1(_add1(a0[i], a1[i]), _add1(b0[i], b1[i]))
        c1[i] = _sub1(cross, _add1(v0, v1))
        c0[i] = _add1(v0, _mul1(v1, _W))


@numba.njit(inline="always")
def _scale1(d0, d1, s0, s1):  # pragma: no cover - compiled
    # extension.e_scale's two branches (c1 == 0: componentwise), step for step
    if s1 == 0:
        return _mul1(d0, s0), _mul1(d1, s0)
    v0 = _mul1(d0, s0)
    v1 = _mul1(d1, s1)
    return _add1(v0, _mul1(v1, _W)), _add1(_mul1(d0, s1), _mul1(d1, s0))


@numba.njit(
    types.void(_U64_IN, _U64_IN, types.uint64, types.uint64, _U64_OUT, _U64_OUT),
    cache=_CACHE,
    nogil=True,
)
def _e_scale_loop(a0, a1, s0, s1, c0, c1):  # pragma: no cover - compiled
    for i in range(a0.shape[0]):
        c0[i], c1[i] = _scale1(a0[i], a1[i], s0, s1)


@numba.njit(
    types.void(_U64_IN, _U64_IN, types.uint64, types.uint64, _U64_OUT, _U64_OUT),
    cache=_CACHE,
    nogil=True,
)
def _fold_loop(t0, t1, s0, s1, c0, c1):  # pragma: no cover - compiled
    # multilinear.fold: lo + r * (hi - lo) with e_sub, e_scale, e_add, step for step
    h = c0.shape[0]
    for i in range(h):
        d0 = _sub1(t0[h + i], t0[i])
        d1 = _sub1(t1[h + i], t1[i])
        m0, m1 = _scale1(d0, d1, s0, s1)
        c0[i] = _add1(t0[i], m0)
        c1[i] = _add1(t1[i], m1)


_TWO32 = np.uint64(1 << 32)


@numba.njit(types.void(_U64_MAT_IN, _U64_IN, _U64_OUT, types.int64, types.int64), cache=_CACHE,
            nogil=True)
def _combine_range(msg, c, out, lo, hi):  # pragma: no cover - compiled
    # fsum(mul(msg, c[:, None]), axis=0) for the columns lo..hi-1, step for step: exact sums of
    # the products' 32-bit halves per column (rows < 2^32), one conditional subtraction each,
    # then hi * 2^32 + lo (columns are independent: the parallel path splits them)
    rows = msg.shape[0]
    w = hi - lo
    acc_lo = np.zeros(w, dtype=np.uint64)
    acc_hi = np.zeros(w, dtype=np.uint64)
    for i in range(rows):
        ci = c[i]
        for j in range(w):
            prod = _mul1(msg[i, lo + j], ci)
            acc_lo[j] += prod & _M32
            acc_hi[j] += prod >> _S32
    for j in range(w):
        lj = acc_lo[j]
        if lj >= _P:
            lj -= _P
        hj = acc_hi[j]
        if hj >= _P:
            hj -= _P
        out[lo + j] = _add1(_mul1(hj, _TWO32), lj)


def _rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two rows of a (2, ...) uint64 array as C-contiguous 1-D arrays (views if possible)."""
    x2 = x.reshape(2, -1)
    if x2.strides[1] != 8:
        x2 = np.ascontiguousarray(x2)
    return x2[0], x2[1]


@numba.njit(types.UniTuple(types.uint64, 2)(_U64_IN), cache=_CACHE, nogil=True)
def _halves_sum(a):  # pragma: no cover - compiled
    # exact sums of the low and high 32-bit halves (< 2^32 terms: no uint64 overflow)
    lo = np.uint64(0)
    hi = np.uint64(0)
    for i in range(a.shape[0]):
        lo += a[i] & _M32
        hi += a[i] >> _S32
    return lo, hi


def numba_e_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of two uint64 extension arrays of equal shape (2, ...), in one pass."""
    out = np.empty((2, a[0].size), dtype=np.uint64)
    _e_mul_loop(*_rows(a), *_rows(b), out[0], out[1])
    return out.reshape(a.shape)


def numba_e_scale(a: np.ndarray, s0: int, s1: int) -> np.ndarray:
    """uint64 extension array (2, ...) times the scalar s0 + s1 X, in one pass."""
    out = np.empty((2, a[0].size), dtype=np.uint64)
    _e_scale_loop(*_rows(a), np.uint64(s0), np.uint64(s1), out[0], out[1])
    return out.reshape(a.shape)


def numba_fold(t: np.ndarray, s0: int, s1: int) -> np.ndarray:
    """Bind the first variable of the uint64 (2, 2h) table ``t`` to s0 + s1 X -> (2, h)."""
    out = np.empty((2, t.shape[1] // 2), dtype=np.uint64)
    _fold_loop(*_rows(t), np.uint64(s0), np.uint64(s1), out[0], out[1])
    return out


def numba_combine_rows(msg: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """coeffs^T msg for base rows msg (rows, L) and extension coefficients (2, rows) -> (2, L)."""
    msg = np.ascontiguousarray(msg, dtype=np.uint64)
    out = np.empty((2, msg.shape[1]), dtype=np.uint64)
    c0, c1 = _rows(np.asarray(coeffs, dtype=np.uint64))
    _combine_range(msg, c0, out[0], 0, msg.shape[1])
    _combine_range(msg, c1, out[1], 0, msg.shape[1])
    return out


def numba_halves_sum(a: np.ndarray) -> tuple[int, int]:
    """(sum of a & (2^32 - 1), sum of a >> 32) over a uint64 array, as Python ints."""
    lo, hi = _halves_sum(a.ravel())  # a view when contiguous, else a contiguous copy
    return int(lo), int(hi)
