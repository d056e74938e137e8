"""Parallel (numba ``prange``) twins of the serial numba kernels, for all of the machine's cores.

Every kernel cuts its work into independent pieces (chunks of ``CHUNK`` elements, NTT rows,
butterfly blocks of one NTT stage, histogram slices) and runs the *serial* kernel's code on each
piece, mostly by calling the serial kernel itself on a slice, so each output element is computed
by exactly the operations it gets on one thread. Pieces are combined only by exact integer sums
(partial half-sums, histograms; < 2^32 terms of < 2^32 each), which no order changes, and field
inverses are unique. Hence results, and proof bytes, are identical for every thread count
(``tests/zk/test_parallel_kernels.py`` checks each kernel against its serial twin and the NumPy
path, and a whole proof under ``LIGHTNING_ZK_THREADS=1`` and ``=2``).

Dispatch (the wrappers at the bottom, installed in the NumPy backend by :mod:`.backend`): a call
goes parallel when :func:`.backend.num_threads` >= 2 and the work has at least ``PAR_MIN``
elements (``LIGHTNING_ZK_PAR_MIN``, default 2^14: below that starting the threads costs more
than it saves; tests set it to 1 to force every parallel path); otherwise the serial kernel
runs. Parallel kernels compile on first use (~0.5-1 s each), so one-thread runs pay nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import types

from . import _numba_kernels as K
from .backend import num_threads

CHUNK = 1 << 13  # elements per piece: 64 KiB per stream, >= 2 pieces before going parallel
PAR_MIN = int(os.environ.get("LIGHTNING_ZK_PAR_MIN", str(2 * CHUNK)))
_NTT_ROW_MIN = 1 << 15  # a single NTT row this long is split by butterfly blocks
_BLOCKS_MIN = 64  # NTT stages with at least this many blocks run a prange over blocks

_U64_IN = K._U64_IN
_U64_OUT = K._U64_OUT
_U64_ROWS = K._U64_ROWS
_U64_MAT_IN = K._U64_MAT_IN
_I64_IN = K._I64_IN
_I64_MAT_OUT = types.Array(types.int64, 2, "C")
_P = K._P
_M32 = K._M32
_S32 = K._S32

_local = threading.local()
_compile_lock = threading.Lock()
# numba's OpenMP layer aborts a forked child that starts a parallel region after its parent
# used one ("fork() called from a process already using GNU OpenMP"); such a child stays serial
_state = {"parallel_ran": False, "forked": False}


def _after_fork_in_child() -> None:
    if _state["parallel_ran"]:
        _state["forked"] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def threads() -> int:
    """The thread count to use, applied to numba (its setting is per calling thread).

    1 in a process forked after its parent ran a parallel kernel (see ``_state``).
    """
    if _state["forked"]:
        return 1
    n = min(num_threads(), numba.config.NUMBA_NUM_THREADS)
    if getattr(_local, "n", 0) != n:
        numba.set_num_threads(n)
        _local.n = n
    return n


def _go(size: int) -> bool:
    return size >= PAR_MIN and threads() >= 2


class _Lazy:
    """A numba kernel compiled (explicit signature) the first time it is called."""

    def __init__(
        self, sig: Any, fn: Callable[..., Any], *, parallel: bool = True, cache: bool = True
    ) -> None:
        self.sig, self.fn, self.kernel = sig, fn, None
        self.options = {"parallel": parallel, "nogil": True, "cache": cache and K._CACHE}
        self.__name__ = fn.__name__

    def __call__(self, *args: Any) -> Any:
        _state["parallel_ran"] = True
        if self.kernel is None:
            with _compile_lock:
                if self.kernel is None:
                    self.kernel = numba.njit(self.sig, **self.options)(self.fn)
        return self.kernel(*args)


def _lazy(sig: Any, **options: bool) -> Callable[[Callable[..., Any]], _Lazy]:
    return lambda fn: _Lazy(sig, fn, **options)


# ---- serial 1-D loops (the same scalar ops as the NumPy ufuncs of _numba_kernels) -----------

_BIN_SIG = types.void(_U64_IN, _U64_IN, _U64_OUT)


@numba.njit(_BIN_SIG, cache=K._CACHE, nogil=True)
def _add_loop(a, b, out):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        out[i] = K._add1(a[i], b[i])


@numba.njit(_BIN_SIG, cache=K._CACHE, nogil=True)
def _sub_loop(a, b, out):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        out[i] = K._sub1(a[i], b[i])


@numba.njit(_BIN_SIG, cache=K._CACHE, nogil=True)
def _mul_loop(a, b, out):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        out[i] = K._mul1(a[i], b[i])


@numba.njit(types.void(_U64_IN, _U64_OUT), cache=K._CACHE, nogil=True)
def _neg_loop(a, out):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        out[i] = a[i] if a[i] == 0 else _P - a[i]


_EXT_SIG = types.void(_U64_IN, _U64_IN, _U64_IN, _U64_IN, _U64_OUT, _U64_OUT)


@numba.njit(types.void(*[_U64_IN] * 6, _U64_OUT, _U64_OUT), cache=K._CACHE, nogil=True)
def _fold_halves(l0, l1, h0, h1, s0, s1, c0, c1):  # pragma: no cover - compiled
    # _numba_kernels._fold_loop with the halves passed apart (so a chunk is a pair of slices);
    # s0, s1 arrive as 1-element arrays to keep one signature shape
    r0 = s0[0]
    r1 = s1[0]
    for i in range(c0.shape[0]):
        d0 = K._sub1(h0[i], l0[i])
        d1 = K._sub1(h1[i], l1[i])
        m0, m1 = K._scale1(d0, d1, r0, r1)
        c0[i] = K._add1(l0[i], m0)
        c1[i] = K._add1(l1[i], m1)


@numba.njit(types.void(_U64_IN, _U64_OUT), cache=K._CACHE, nogil=True)
def _batch_inv_loop(a, out):  # pragma: no cover - compiled
    # Montgomery's trick: out[i] = a_0...a_{i-1}; invert the product once (Fermat, a^(p-2));
    # then walk back: out[i] *= inv(a_0...a_i), inv(a_0...a_{i-1}) = inv(a_0...a_i) * a_i.
    # Inverses are unique, so this equals the NumPy product tree bit for bit. Inputs nonzero.
    acc = np.uint64(1)
    for i in range(a.shape[0]):
        out[i] = acc
        acc = K._mul1(acc, a[i])
    e = _P - np.uint64(2)
    inv = np.uint64(1)
    base = acc
    while e:
        if e & np.uint64(1):
            inv = K._mul1(inv, base)
        base = K._mul1(base, base)
        e >>= np.uint64(1)
    for i in range(a.shape[0] - 1, -1, -1):
        out[i] = K._mul1(out[i], inv)
        inv = K._mul1(inv, a[i])


# ---- parallel kernels: prange over CHUNK-element pieces ------------------------------------


def _chunks(n: int) -> int:  # pragma: no cover - inlined into the kernels
    return (n + CHUNK - 1) // CHUNK


_n_chunks = numba.njit(inline="always")(_chunks)


@_lazy(_BIN_SIG)
def _add_par(a, b, out):  # pragma: no cover - compiled
    n = a.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _add_loop(a[lo:hi], b[lo:hi], out[lo:hi])


@_lazy(_BIN_SIG)
def _sub_par(a, b, out):  # pragma: no cover - compiled
    n = a.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _sub_loop(a[lo:hi], b[lo:hi], out[lo:hi])


@_lazy(_BIN_SIG)
def _mul_par(a, b, out):  # pragma: no cover - compiled
    n = a.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _mul_loop(a[lo:hi], b[lo:hi], out[lo:hi])


@_lazy(types.void(_U64_IN, _U64_OUT))
def _neg_par(a, out):  # pragma: no cover - compiled
    n = a.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _neg_loop(a[lo:hi], out[lo:hi])


@_lazy(_EXT_SIG)
def _e_mul_par(a0, a1, b0, b1, c0, c1):  # pragma: no cover - compiled
    n = a0.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        K._e_mul_loop(a0[lo:hi], a1[lo:hi], b0[lo:hi], b1[lo:hi], c0[lo:hi], c1[lo:hi])


@_lazy(types.void(_U64_IN, _U64_IN, types.uint64, types.uint64, _U64_OUT, _U64_OUT))
def _e_scale_par(a0, a1, s0, s1, c0, c1):  # pragma: no cover - compiled
    n = a0.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        K._e_scale_loop(a0[lo:hi], a1[lo:hi], s0, s1, c0[lo:hi], c1[lo:hi])


@_lazy(types.void(_U64_IN, _U64_IN, types.uint64, types.uint64, _U64_OUT, _U64_OUT))
def _fold_par(t0, t1, s0, s1, c0, c1):  # pragma: no cover - compiled
    h = c0.shape[0]
    r0 = np.full(1, s0, dtype=np.uint64)
    r1 = np.full(1, s1, dtype=np.uint64)
    for c in numba.prange(_n_chunks(h)):
        lo, hi = c * CHUNK, min(h, (c + 1) * CHUNK)
        _fold_halves(
            t0[lo:hi], t1[lo:hi], t0[h + lo : h + hi], t1[h + lo : h + hi],
            r0, r1, c0[lo:hi], c1[lo:hi],
        )


@_lazy(types.UniTuple(types.uint64, 2)(_U64_IN))
def _halves_sum_par(a):  # pragma: no cover - compiled
    n = a.shape[0]
    nch = _n_chunks(n)
    los = np.zeros(nch, dtype=np.uint64)
    his = np.zeros(nch, dtype=np.uint64)
    for c in numba.prange(nch):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        los[c], his[c] = K._halves_sum(a[lo:hi])
    lo_sum = np.uint64(0)
    hi_sum = np.uint64(0)
    for c in range(nch):  # exact: fewer than 2^32 terms below 2^32 each
        lo_sum += los[c]
        hi_sum += his[c]
    return lo_sum, hi_sum


@_lazy(types.void(_U64_MAT_IN, _U64_IN, _U64_OUT, types.int64))
def _combine_par(msg, c, out, piece):  # pragma: no cover - compiled
    # _numba_kernels._combine_loop per block of `piece` columns: the same products and exact
    # half-sums per column (columns are independent, so the block size changes nothing)
    rows, n = msg.shape
    for ch in numba.prange((n + piece - 1) // piece):
        lo, hi = ch * piece, min(n, (ch + 1) * piece)
        w = hi - lo
        acc_lo = np.zeros(w, dtype=np.uint64)
        acc_hi = np.zeros(w, dtype=np.uint64)
        for i in range(rows):
            ci = c[i]
            for j in range(w):
                prod = K._mul1(msg[i, lo + j], ci)
                acc_lo[j] += prod & _M32
                acc_hi[j] += prod >> _S32
        for j in range(w):
            lj = acc_lo[j]
            if lj >= _P:
                lj -= _P
            hj = acc_hi[j]
            if hj >= _P:
                hj -= _P
            out[lo + j] = K._add1(K._mul1(hj, K._TWO32), lj)


@_lazy(types.void(_U64_IN, _U64_OUT))
def _batch_inv_par(a, out):  # pragma: no cover - compiled
    n = a.shape[0]
    for c in numba.prange(_n_chunks(n)):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _batch_inv_loop(a[lo:hi], out[lo:hi])


@_lazy(types.void(_U64_IN, types.uint64, _I64_MAT_OUT))
def _hist_par(a, top, counts):  # pragma: no cover - compiled
    # one histogram per slice (counts has one row per slice), values above top counted as top
    n = a.shape[0]
    parts = counts.shape[0]
    for t in numba.prange(parts):
        lo, hi = t * n // parts, (t + 1) * n // parts
        for i in range(lo, hi):
            v = a[i]
            if v > top:
                v = top
            counts[t, v] += 1


# ---- NTT: rows in parallel, or one long row by butterfly blocks ----------------------------

_NTT_SIG = types.void(_U64_ROWS, _U64_IN, _I64_IN, types.uint64, types.boolean)


@_lazy(_NTT_SIG)
def _ntt_rows_par(x, tw, rev, kinv, scale):  # pragma: no cover - compiled
    for r in numba.prange(x.shape[0]):
        K._ntt_row(x[r], tw, rev, kinv, scale)


@_lazy(types.void(_U64_OUT, _U64_IN, _I64_IN, types.uint64, types.boolean))
def _ntt_row_par(row, tw, rev, kinv, scale):  # pragma: no cover - compiled
    """_numba_kernels._ntt_row with each stage's butterflies spread over the threads.

    Bit reversal: pair (i, rev[i]) is swapped only by the iteration i < rev[i] (disjoint pairs).
    Stage h: blocks of 2h are independent; with few blocks, each block's h butterflies are cut
    into CHUNK pieces. Every butterfly is the serial one, with the same twiddle.
    """
    k = row.shape[0]
    for i in numba.prange(k):
        j = rev[i]
        if i < j:
            t = row[i]
            row[i] = row[j]
            row[j] = t
    h = 1
    while h < k:
        blocks = k // (2 * h)
        if blocks >= _BLOCKS_MIN:
            for b in numba.prange(blocks):
                s = b * 2 * h
                K._butterflies(row[s : s + h], row[s + h : s + 2 * h], tw[h - 1 : 2 * h - 1])
        else:
            pieces = (h + CHUNK - 1) // CHUNK
            for q in numba.prange(blocks * pieces):
                s = (q // pieces) * 2 * h
                lo = (q % pieces) * CHUNK
                hi = min(h, lo + CHUNK)
                K._butterflies(
                    row[s + lo : s + hi], row[s + h + lo : s + h + hi], tw[h - 1 + lo : h - 1 + hi]
                )
        h *= 2
    if scale:
        for i in numba.prange(k):
            row[i] = K._mul1(row[i], kinv)


# ---- wrappers (what the backend calls) ------------------------------------------------------


def _row_views(arrays: list[np.ndarray]) -> list[list[np.ndarray]] | None:
    """Matching 1-D C-contiguous pieces of equal-shape arrays: one each when all are
    C-contiguous, else the rows of 2-D arrays whose rows are contiguous (e.g. ``t[:, :h]``)."""
    if all(a.flags.c_contiguous for a in arrays):
        return [[a.reshape(-1)] for a in arrays]
    if all(a.ndim == 2 and a.strides[1] == 8 and a.shape[0] <= 16 for a in arrays):
        return [[a[i] for i in range(a.shape[0])] for a in arrays]
    return None


def _elementwise(kernel: _Lazy, *args: Any) -> np.ndarray | None:
    """Run a same-shape elementwise kernel in parallel, or None when the serial path should."""
    arrays = [np.asarray(a, dtype=np.uint64) for a in args]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays) or not _go(arrays[0].size):
        return None
    out = np.empty(shape, dtype=np.uint64)
    views = _row_views([*arrays, out])
    if views is None:
        return None
    for pieces in zip(*views, strict=True):
        kernel(*pieces)
    return out


def add(a: Any, b: Any) -> np.ndarray:
    """a + b mod p (broadcasting): parallel for large equal shapes, else the numba ufunc."""
    out = _elementwise(_add_par, a, b)
    return K.numba_add(a, b) if out is None else out


def sub(a: Any, b: Any) -> np.ndarray:
    out = _elementwise(_sub_par, a, b)
    return K.numba_sub(a, b) if out is None else out


def mul(a: Any, b: Any) -> np.ndarray:
    out = _elementwise(_mul_par, a, b)
    return K.numba_mul(a, b) if out is None else out


def neg(a: Any) -> np.ndarray:
    out = _elementwise(_neg_par, a)
    return K.numba_neg(a) if out is None else out


def e_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not _go(a[0].size):
        return K.numba_e_mul(a, b)
    out = np.empty((2, a[0].size), dtype=np.uint64)
    _e_mul_par(*K._rows(a), *K._rows(b), out[0], out[1])
    return out.reshape(a.shape)


def e_scale(a: np.ndarray, s0: int, s1: int) -> np.ndarray:
    if not _go(a[0].size):
        return K.numba_e_scale(a, s0, s1)
    out = np.empty((2, a[0].size), dtype=np.uint64)
    _e_scale_par(*K._rows(a), np.uint64(s0), np.uint64(s1), out[0], out[1])
    return out.reshape(a.shape)


def fold(t: np.ndarray, s0: int, s1: int) -> np.ndarray:
    if not _go(t.shape[1] // 2):
        return K.numba_fold(t, s0, s1)
    out = np.empty((2, t.shape[1] // 2), dtype=np.uint64)
    _fold_par(*K._rows(t), np.uint64(s0), np.uint64(s1), out[0], out[1])
    return out


def halves_sum(a: np.ndarray) -> tuple[int, int]:
    if not _go(a.size):
        return K.numba_halves_sum(a)
    lo, hi = _halves_sum_par(a.ravel())
    return int(lo), int(hi)


def combine_rows(msg: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    if not _go(msg.size):
        return K.numba_combine_rows(msg, coeffs)
    msg = np.ascontiguousarray(msg, dtype=np.uint64)
    out = np.empty((2, msg.shape[1]), dtype=np.uint64)
    c0, c1 = K._rows(np.asarray(coeffs, dtype=np.uint64))
    piece = min(CHUNK, max(64, -(-msg.shape[1] // (4 * threads()))))  # >= 4 pieces per thread
    _combine_par(msg, c0, out[0], piece)
    _combine_par(msg, c1, out[1], piece)
    return out


def ntt_rows(x: np.ndarray, tw: np.ndarray, rev: np.ndarray, kinv: int, scale: bool) -> None:
    """In-place NTT of every row of C-contiguous (rows, K): rows spread over the threads when
    there are enough of them, else each long row split by butterfly blocks."""
    rows, k = x.shape
    if not _go(x.size):
        K.numba_ntt_rows(x, tw, rev, kinv, scale)
    elif rows >= 2 * threads() or k < _NTT_ROW_MIN:
        _ntt_rows_par(x, tw, rev, np.uint64(kinv), bool(scale))
    else:
        for r in range(rows):
            _ntt_row_par(x[r], tw, rev, np.uint64(kinv), bool(scale))


def batch_inverse(a: np.ndarray) -> np.ndarray:
    """Inverses of a 1-D array of nonzero field elements (the caller checks for zeros)."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    out = np.empty_like(a)
    if _go(a.size):
        _batch_inv_par(a, out)
    else:
        _batch_inv_loop(a, out)
    return out


def clipped_bincount(a: np.ndarray, size: int) -> np.ndarray:
    """``np.bincount(np.minimum(a, size - 1), minlength=size)`` of a uint64 array, as int64."""
    a = np.ascontiguousarray(a, dtype=np.uint64).reshape(-1)
    if not _go(a.size):
        return np.bincount(np.minimum(a, np.uint64(size - 1)).astype(np.int64), minlength=size)
    counts = np.zeros((threads(), size), dtype=np.int64)
    _hist_par(a, np.uint64(size - 1), counts)
    return counts.sum(axis=0)


def compile_all() -> None:
    """Compile every parallel kernel now (each otherwise compiles on its first large call)."""
    z = np.zeros(4, dtype=np.uint64)
    o = np.ones(4, dtype=np.uint64)
    for k in (_add_par, _sub_par, _mul_par):
        k(z, o, z.copy())
    _neg_par(z, z.copy())
    _e_mul_par(o, o, o, o, z.copy(), z.copy())
    _e_scale_par(o, o, np.uint64(1), np.uint64(0), z.copy(), z.copy())
    _fold_par(o, o, np.uint64(1), np.uint64(0), z[:2].copy(), z[:2].copy())
    _halves_sum_par(o)
    _combine_par(np.ones((2, 4), dtype=np.uint64), o[:2], z.copy(), 2)
    _batch_inv_par(o, z.copy())
    _hist_par(o, np.uint64(3), np.zeros((2, 4), dtype=np.int64))
    tw, rev = np.ones(3, dtype=np.uint64), np.array([0, 2, 1, 3], dtype=np.int64)
    _ntt_rows_par(np.ones((2, 4), dtype=np.uint64), tw, rev, np.uint64(1), False)
    _ntt_row_par(o.copy(), tw, rev, np.uint64(1), False)
