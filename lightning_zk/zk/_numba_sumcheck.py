"""Fused numba kernels of the sumcheck prover: round sums and folds in one pass each.

:func:`.sumcheck._sums` computes, for every term c prod_k T_k of a sumcheck and X = 0..D, the
sum over the term's entries of prod_k T_k(X, i), with T_k(X, i) = lo + X (hi - lo) read from a
table that may be one period of itself, shorter than the term (spread), carry a pending
round-1 mask (value + c M) or a round-1 mask (+ X (1 - X) M). The generic ``xp`` code does it
with one array operation per factor, X and chunk (temporaries, a pass over memory and a Python
call each); here one kernel reads every table once per block of entries, builds each table's
values at every X in a small buffer and multiplies the factors of every term block by block,
summing exactly (32-bit halves, as ``fsum``). Field arithmetic is exact, so the sums equal the
generic path's bit for bit, whatever the order or the pieces; pieces of the entry range run on
the caller and helper threads (:func:`._numba_parallel.run_pieces`) and combine by exact integer
sums.

:func:`fold_table` is :meth:`.sumcheck._Table.bind` for the tables the plain fold kernel does not
take (base tables, periodic tables, a pending mask): lo + r (hi - lo) of T = values + c M, read
periodically, straight to the (2, h) extension result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import types
from numba.typed import List

from . import _numba_kernels as K
from . import _numba_parallel as par

_P = K._P
_M32 = K._M32
_S32 = K._S32
_W = K._W


# The field operations as plain (not numba-inlined) functions: numba's own inlining of
# _numba_kernels' ops at every call site made this module's kernels compile for seconds and
# hold tens of MiB more; LLVM still inlines these small calls when it optimises.
@numba.njit(types.uint64(types.uint64, types.uint64), cache=K._CACHE, nogil=True)
def _add1(a, b):  # pragma: no cover - compiled
    return K._add1(a, b)


@numba.njit(types.uint64(types.uint64, types.uint64), cache=K._CACHE, nogil=True)
def _sub1(a, b):  # pragma: no cover - compiled
    return K._sub1(a, b)


@numba.njit(types.uint64(types.uint64, types.uint64), cache=K._CACHE, nogil=True)
def _mul1(a, b):  # pragma: no cover - compiled
    return K._mul1(a, b)

_ARR2 = types.Array(types.uint64, 2, "C")
_LIST2 = types.ListType(_ARR2)
_I64_2 = types.Array(types.int64, 2, "C", readonly=True)
_I64_1 = types.Array(types.int64, 1, "C", readonly=True)
_U64_2 = types.Array(types.uint64, 2, "C", readonly=True)
_U64_1 = types.Array(types.uint64, 1, "C", readonly=True)
_ACC = types.Array(types.uint64, 3, "C")
_ARR1 = types.Array(types.uint64, 1, "C")

# columns of the per-table parameter array
SHIFT, PERIOD, HALF, MOVES, MODE, MPERIOD = range(6)
MODE_NONE, MODE_PENDING, MODE_ROUND = 0, 1, 2

_BLOCK = 256  # entries per block: every table's values at every X for a block stay in cache


@numba.njit(types.UniTuple(types.uint64, 2)(types.uint64, types.uint64, types.uint64,
                                             types.uint64), cache=K._CACHE, nogil=True)
def _emul(a0, a1, b0, b1):  # pragma: no cover - compiled
    # extension.e_mul's Karatsuba steps
    v0 = _mul1(a0, b0)
    v1 = _mul1(a1, b1)
    cross = _mul1(_add1(a0, a1), _add1(b0, b1))
    return _add1(v0, _mul1(v1, _W)), _sub1(cross, _add1(v0, v1))


@numba.njit(
    types.void(_LIST2, _LIST2, _I64_2, _U64_2, _I64_1, _I64_1, _I64_1, _I64_1, _U64_1,
               types.int64, types.int64, _ACC),
    cache=K._CACHE, nogil=True,
)
def _round_sums(vals, msks, prm, pc, tptr, tfac, tconst, xs, sx, lo, hi,
                acc):  # pragma: no cover - compiled
    # acc[t, x, 0..3] += the 32-bit halves of both coordinates of sum_{lo <= i < hi} of
    # prod_{k in term t} T_k(x, i), for every term t and every X = xs[..] (tconst[t]: X = 0 only)
    nt = prm.shape[0]
    nx = sx.shape[0]
    cur0 = np.zeros((nt, nx, _BLOCK), dtype=np.uint64)
    cur1 = np.zeros((nt, nx, _BLOCK), dtype=np.uint64)
    d0 = np.empty(_BLOCK, dtype=np.uint64)
    d1 = np.empty(_BLOCK, dtype=np.uint64)
    p0 = np.empty(_BLOCK, dtype=np.uint64)
    p1 = np.empty(_BLOCK, dtype=np.uint64)
    ext = np.zeros(nt, dtype=np.bool_)
    varies = np.zeros(nt, dtype=np.bool_)
    for k in range(nt):
        mode = prm[k, MODE]
        ext[k] = vals[k].shape[0] == 2 or mode == MODE_PENDING or (
            mode == MODE_ROUND and msks[k].shape[0] == 2)
        varies[k] = prm[k, MOVES] != 0 or mode == MODE_ROUND
    nterms = tptr.shape[0] - 1
    for start in range(lo, hi, _BLOCK):
        n = min(_BLOCK, hi - start)
        # every table's values T_k(x, i) for this block
        for k in range(nt):
            v = vals[k]
            shift = prm[k, SHIFT]
            vm = prm[k, PERIOD] - 1
            half = prm[k, HALF]
            moves = prm[k, MOVES] != 0
            mode = prm[k, MODE]
            vext = v.shape[0] == 2
            for e in range(n):
                a = ((start + e) >> shift) & vm
                cur0[k, 0, e] = v[0, a]
                cur1[k, 0, e] = v[1, a] if vext else np.uint64(0)
            if moves:
                for e in range(n):
                    j = (start + e) >> shift
                    b = (j + half) & vm
                    d0[e] = _sub1(v[0, b], cur0[k, 0, e])
                    d1[e] = _sub1(v[1, b], cur1[k, 0, e]) if vext else np.uint64(0)
            if mode == MODE_PENDING:  # T = values + c M (both read at the same entries)
                m = msks[k]
                mm = prm[k, MPERIOD] - 1
                mext = m.shape[0] == 2
                c0 = pc[k, 0]
                c1 = pc[k, 1]
                unit = c0 == 1 and c1 == 0  # c M made once by the caller (a short period)
                for e in range(n):
                    j = (start + e) >> shift
                    a = j & mm
                    ma0 = m[0, a]
                    ma1 = m[1, a] if mext else np.uint64(0)
                    if unit:
                        s0, s1 = ma0, ma1
                    else:
                        s0, s1 = _emul(ma0, ma1, c0, c1)
                    cur0[k, 0, e] = _add1(cur0[k, 0, e], s0)
                    cur1[k, 0, e] = _add1(cur1[k, 0, e], s1)
                    if moves:
                        b = (j + half) & mm
                        e0 = _sub1(m[0, b], ma0)
                        e1 = _sub1(m[1, b], ma1) if mext else np.uint64(0)
                        if not unit:
                            e0, e1 = _emul(e0, e1, c0, c1)
                        d0[e] = _add1(d0[e], e0)
                        d1[e] = _add1(d1[e], e1)
            if varies[k]:
                for x in range(1, nx):
                    if moves:
                        for e in range(n):
                            cur0[k, x, e] = _add1(cur0[k, x - 1, e], d0[e])
                            cur1[k, x, e] = _add1(cur1[k, x - 1, e], d1[e])
                    else:
                        for e in range(n):
                            cur0[k, x, e] = cur0[k, 0, e]
                            cur1[k, x, e] = cur1[k, 0, e]
            if mode == MODE_ROUND:  # + X (1 - X) M (zero at X = 0, 1)
                m = msks[k]
                mm = prm[k, MPERIOD] - 1
                mext = m.shape[0] == 2
                for x in range(2, nx):
                    s = sx[x]
                    for e in range(n):
                        a = ((start + e) >> shift) & mm
                        cur0[k, x, e] = _add1(cur0[k, x, e], _mul1(m[0, a], s))
                        if mext:
                            cur1[k, x, e] = _add1(cur1[k, x, e], _mul1(m[1, a], s))
        # every term's products, summed by 32-bit halves (exact for < 2^32 entries)
        for t in range(nterms):
            f0 = tptr[t]
            f1 = tptr[t + 1]
            for xi in range(xs.shape[0]):
                x = xs[xi]
                if tconst[t] and x:
                    continue
                k = tfac[f0]
                xk = x if varies[k] else 0
                pe = ext[k]
                for e in range(n):
                    p0[e] = cur0[k, xk, e]
                    p1[e] = cur1[k, xk, e]
                for f in range(f0 + 1, f1):
                    k = tfac[f]
                    xk = x if varies[k] else 0
                    if pe and ext[k]:
                        for e in range(n):
                            p0[e], p1[e] = _emul(p0[e], p1[e], cur0[k, xk, e], cur1[k, xk, e])
                    elif pe:
                        for e in range(n):
                            q = cur0[k, xk, e]
                            p0[e] = _mul1(p0[e], q)
                            p1[e] = _mul1(p1[e], q)
                    elif ext[k]:
                        for e in range(n):
                            q = p0[e]
                            p0[e] = _mul1(q, cur0[k, xk, e])
                            p1[e] = _mul1(q, cur1[k, xk, e])
                        pe = True
                    else:
                        for e in range(n):
                            p0[e] = _mul1(p0[e], cur0[k, xk, e])
                a0 = np.uint64(0)
                a1 = np.uint64(0)
                a2 = np.uint64(0)
                a3 = np.uint64(0)
                for e in range(n):
                    a0 += p0[e] & _M32
                    a1 += p0[e] >> _S32
                if pe:
                    for e in range(n):
                        a2 += p1[e] & _M32
                        a3 += p1[e] >> _S32
                acc[t, x, 0] += a0
                acc[t, x, 1] += a1
                acc[t, x, 2] += a2
                acc[t, x, 3] += a3


@numba.njit(
    types.void(_ARR2, _ARR2, types.int64, types.int64, types.int64, types.uint64, types.uint64,
               types.uint64, types.uint64, _ARR2, types.int64, types.int64),
    cache=K._CACHE, nogil=True,
)
def _fold_table(v, m, half, pmode, mmask, c0, c1, r0, r1, out,
                lo, hi):  # pragma: no cover - compiled
    # out[:, 0, i] = T(i) + r (T(half + i) - T(i)) for lo <= i < hi, T(i) = v[i mod period]
    # (+ c M[i mod mperiod] when pmode): _Table.bind's read / sub / scale / add, fused
    vm = v.shape[1] - 1
    vext = v.shape[0] == 2
    mext = m.shape[0] == 2
    for i in range(lo, hi):
        a = i & vm
        b = (i + half) & vm
        l0 = v[0, a]
        h0 = v[0, b]
        l1 = v[1, a] if vext else np.uint64(0)
        h1 = v[1, b] if vext else np.uint64(0)
        if pmode:
            a = i & mmask
            b = (i + half) & mmask
            s0, s1 = _emul(m[0, a], m[1, a] if mext else np.uint64(0), c0, c1)
            l0 = _add1(l0, s0)
            l1 = _add1(l1, s1)
            s0, s1 = _emul(m[0, b], m[1, b] if mext else np.uint64(0), c0, c1)
            h0 = _add1(h0, s0)
            h1 = _add1(h1, s1)
        g0, g1 = _emul(_sub1(h0, l0), _sub1(h1, l1), r0, r1)
        out[0, i] = _add1(l0, g0)
        out[1, i] = _add1(l1, g1)


@numba.njit(types.boolean(_ARR1, _ARR1, types.boolean, _ARR1, _ARR1, types.boolean,
                           types.int64), cache=K._CACHE, nogil=True)
def _mul_into(d0, d1, dext, b0, b1, bext, n):  # pragma: no cover - compiled
    # d = d * b on the first n entries (base or extension each); returns whether d is ext
    if dext and bext:
        for e in range(n):
            d0[e], d1[e] = _emul(d0[e], d1[e], b0[e], b1[e])
    elif dext:
        for e in range(n):
            q = b0[e]
            d0[e] = _mul1(d0[e], q)
            d1[e] = _mul1(d1[e], q)
    elif bext:
        for e in range(n):
            q = d0[e]
            d0[e] = _mul1(q, b0[e])
            d1[e] = _mul1(q, b1[e])
    else:
        for e in range(n):
            d0[e] = _mul1(d0[e], b0[e])
    return dext or bext


@numba.njit(types.boolean(_ARR1, _ARR1, types.boolean, _ARR1, _ARR1, types.boolean, _ARR1,
                          _ARR1, types.boolean, types.int64), cache=K._CACHE, nogil=True)
def _fma_into(d0, d1, dext, a0, a1, aext, b0, b1, bext, n):  # pragma: no cover - compiled
    # d += a * b on the first n entries; returns whether d is ext
    if aext and bext:
        for e in range(n):
            s0, s1 = _emul(a0[e], a1[e], b0[e], b1[e])
            d0[e] = _add1(d0[e], s0)
            d1[e] = _add1(d1[e], s1) if dext else s1
    elif aext or bext:
        x0, x1, y0 = (a0, a1, b0) if aext else (b0, b1, a0)
        for e in range(n):
            q = y0[e]
            d0[e] = _add1(d0[e], _mul1(x0[e], q))
            s1 = _mul1(x1[e], q)
            d1[e] = _add1(d1[e], s1) if dext else s1
    else:
        for e in range(n):
            d0[e] = _add1(d0[e], _mul1(a0[e], b0[e]))
    return dext or aext or bext


@numba.njit(
    types.void(_LIST2, _LIST2, _I64_2, _I64_1, _I64_1, types.int64, types.int64, _ACC),
    cache=K._CACHE, nogil=True,
)
def _round_poly_sums(vals, msks, prm, tptr, tfac, lo, hi, acc):  # pragma: no cover - compiled
    # Round 1 of a hiding sumcheck: no table moves, table k is v_k + S m_k (S = X (1 - X),
    # m_k its round-1 mask or 0), so each term is a polynomial in S. acc[t, i, 0..3] += the
    # 32-bit halves of sum_{lo <= i < hi} of that polynomial's coefficient of S^i.
    nt = prm.shape[0]
    nc = acc.shape[1]
    v0 = np.zeros((nt, _BLOCK), dtype=np.uint64)
    v1 = np.zeros((nt, _BLOCK), dtype=np.uint64)
    m0 = np.zeros((nt, _BLOCK), dtype=np.uint64)
    m1 = np.zeros((nt, _BLOCK), dtype=np.uint64)
    c0 = np.zeros((nc, _BLOCK), dtype=np.uint64)
    c1 = np.zeros((nc, _BLOCK), dtype=np.uint64)
    cext = np.zeros(nc, dtype=np.bool_)
    vext = np.zeros(nt, dtype=np.bool_)
    mext = np.zeros(nt, dtype=np.bool_)
    masked = np.zeros(nt, dtype=np.bool_)
    for k in range(nt):
        vext[k] = vals[k].shape[0] == 2
        masked[k] = prm[k, MODE] == MODE_ROUND
        mext[k] = masked[k] and msks[k].shape[0] == 2
    nterms = tptr.shape[0] - 1
    for start in range(lo, hi, _BLOCK):
        n = min(_BLOCK, hi - start)
        for k in range(nt):
            v = vals[k]
            shift = prm[k, SHIFT]
            vm = prm[k, PERIOD] - 1
            for e in range(n):
                a = ((start + e) >> shift) & vm
                v0[k, e] = v[0, a]
                if vext[k]:
                    v1[k, e] = v[1, a]
            if masked[k]:
                m = msks[k]
                mm = prm[k, MPERIOD] - 1
                for e in range(n):
                    a = ((start + e) >> shift) & mm
                    m0[k, e] = m[0, a]
                    if mext[k]:
                        m1[k, e] = m[1, a]
        for t in range(nterms):
            k = tfac[tptr[t]]
            for e in range(n):
                c0[0, e] = v0[k, e]
                c1[0, e] = v1[k, e]
            cext[0] = vext[k]
            dg = 0
            if masked[k]:
                for e in range(n):
                    c0[1, e] = m0[k, e]
                    c1[1, e] = m1[k, e]
                cext[1] = mext[k]
                dg = 1
            for f in range(tptr[t] + 1, tptr[t + 1]):
                k = tfac[f]
                if masked[k]:  # (sum_i c_i S^i)(v + S m): from the top coefficient down
                    for e in range(n):
                        c0[dg + 1, e] = c0[dg, e]
                        c1[dg + 1, e] = c1[dg, e]
                    cext[dg + 1] = _mul_into(c0[dg + 1], c1[dg + 1], cext[dg], m0[k], m1[k],
                                             mext[k], n)
                    for i in range(dg, 0, -1):
                        cext[i] = _mul_into(c0[i], c1[i], cext[i], v0[k], v1[k], vext[k], n)
                        cext[i] = _fma_into(c0[i], c1[i], cext[i], c0[i - 1], c1[i - 1],
                                            cext[i - 1], m0[k], m1[k], mext[k], n)
                    cext[0] = _mul_into(c0[0], c1[0], cext[0], v0[k], v1[k], vext[k], n)
                    dg += 1
                else:
                    for i in range(dg + 1):
                        cext[i] = _mul_into(c0[i], c1[i], cext[i], v0[k], v1[k], vext[k], n)
            for i in range(dg + 1):
                a0 = np.uint64(0)
                a1 = np.uint64(0)
                a2 = np.uint64(0)
                a3 = np.uint64(0)
                for e in range(n):
                    a0 += c0[i, e] & _M32
                    a1 += c0[i, e] >> _S32
                if cext[i]:
                    for e in range(n):
                        a2 += c1[i, e] & _M32
                        a3 += c1[i, e] >> _S32
                acc[t, i, 0] += a0
                acc[t, i, 1] += a1
                acc[t, i, 2] += a2
                acc[t, i, 3] += a3


@numba.njit(types.void(_U64_1, _U64_1, _ARR1, _ARR1), cache=K._CACHE, nogil=True)
def _eq_table(z0, z1, out0, out1):  # pragma: no cover - compiled
    # multilinear.eq_table's doubling, entry by entry: entry i of the table of the first j
    # variables becomes 2i (t - t z_j) and 2i + 1 (t z_j); from the last entry down, so nothing
    # is overwritten before it is read
    out0[0] = 1
    out1[0] = 0
    size = 1
    for j in range(z0.shape[0]):
        for i in range(size - 1, -1, -1):
            t0 = out0[i]
            t1 = out1[i]
            h0, h1 = _emul(t0, t1, z0[j], z1[j])
            out0[2 * i + 1] = h0
            out1[2 * i + 1] = h1
            out0[2 * i] = _sub1(t0, h0)
            out1[2 * i] = _sub1(t1, h1)
        size *= 2


def eq_table(z0: np.ndarray, z1: np.ndarray) -> np.ndarray:
    """eq(z, x) for every x as a (2, 2^n) table, z = z0 + z1 X (uint64 coordinate arrays)."""
    out = np.empty((2, 1 << z0.shape[0]), dtype=np.uint64)
    _eq_table(np.ascontiguousarray(z0, dtype=np.uint64), np.ascontiguousarray(z1, dtype=np.uint64),
              out[0], out[1])
    return out


def _as2(a: np.ndarray) -> np.ndarray:
    """A table as a C-contiguous writable (rows, N) uint64 array (base tables: one row)."""
    a = np.asarray(a, dtype=np.uint64)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if not a.flags.c_contiguous or not a.flags.writeable:
        a = np.array(a, dtype=np.uint64, order="C")
    return a


_DUMMY = np.zeros((1, 1), dtype=np.uint64)


def round_sums(values: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
               params: np.ndarray, coeffs: np.ndarray, terms: Sequence[Sequence[int]],
               const: Sequence[bool], xs: Sequence[int], sx: Sequence[int],
               length: int) -> list[list[tuple[int, int]]]:
    """Sum over the ``length`` entries of every term of prod_k T_k(x, i), for x in ``xs``.

    Args:
        values: per table, its values (one period; (N,) base or (2, N) extension).
        masks: per table, its pending mask (MODE_PENDING) or round-1 mask (MODE_ROUND), or None.
        params: int64 (tables, 6): SHIFT (entry i reads table entry i >> SHIFT), PERIOD (of
            values), HALF (offset of the high half; used when MOVES), MOVES (0/1), MODE,
            MPERIOD (of the mask).
        coeffs: uint64 (tables, 2): the pending mask's coefficient (MODE_PENDING).
        terms: factor tables of each term (indices into ``values``).
        const: per term, whether it is constant in X (then only X = 0 is summed).
        xs: the X to evaluate (ascending, from 0 to len(sx) - 1, possibly skipping some).
        sx: X (1 - X) mod p for X = 0 .. D.
    Returns:
        sums[t][x] as (c0, c1) for x = 0 .. D (X not in ``xs``, or X > 0 for a constant term,
        are (0, 0)).
    """
    vals = List([_as2(v) for v in values])
    msks = List([_DUMMY if m is None else _as2(m) for m in masks])
    prm = np.ascontiguousarray(params, dtype=np.int64)
    pc = np.ascontiguousarray(coeffs, dtype=np.uint64)
    tptr = np.zeros(len(terms) + 1, dtype=np.int64)
    tptr[1:] = np.cumsum([len(t) for t in terms])
    tfac = np.asarray([k for t in terms for k in t], dtype=np.int64)
    tconst = np.asarray(const, dtype=np.int64)
    xa = np.asarray(xs, dtype=np.int64)
    sxa = np.asarray(sx, dtype=np.uint64)
    nx = len(sx)
    work = sum(len(t) for t in terms) * len(xs) * 3 + 2 * len(values) * nx
    parts = par._ranges(length, work) if par._go(length, work) else [(0, length)]
    acc = np.zeros((len(parts), len(terms), nx, 4), dtype=np.uint64)

    def piece(i: int) -> None:
        _round_sums(vals, msks, prm, pc, tptr, tfac, tconst, xa, sxa, parts[i][0],
                    parts[i][1], acc[i])

    par.run_pieces(piece, len(parts))
    return _exact(acc, [nx] * len(terms))


def round_poly_sums(values: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                    params: np.ndarray, terms: Sequence[Sequence[int]],
                    length: int) -> list[list[tuple[int, int]]]:
    """Round 1 of a hiding sumcheck (no table depends on X; table k is v_k + S m_k with
    S = X (1 - X), m_k its round-1 mask): for every term, the sums over the ``length`` entries of
    its coefficients of S^0, S^1, ... (as many as the term has masked factors, plus one).
    ``params`` as for :func:`round_sums` (MODE_ROUND marks a masked table)."""
    vals = List([_as2(v) for v in values])
    msks = List([_DUMMY if m is None else _as2(m) for m in masks])
    prm = np.ascontiguousarray(params, dtype=np.int64)
    tptr = np.zeros(len(terms) + 1, dtype=np.int64)
    tptr[1:] = np.cumsum([len(t) for t in terms])
    tfac = np.asarray([k for t in terms for k in t], dtype=np.int64)
    degs = [sum(int(prm[k, MODE] == MODE_ROUND) for k in t) for t in terms]
    nc = max(degs) + 1
    work = sum(len(t) * (d + 1) for t, d in zip(terms, degs, strict=True)) * 3 + 2 * len(values)
    parts = par._ranges(length, work) if par._go(length, work) else [(0, length)]
    acc = np.zeros((len(parts), len(terms), nc, 4), dtype=np.uint64)
    par.run_pieces(lambda i: _round_poly_sums(vals, msks, prm, tptr, tfac, parts[i][0],
                                              parts[i][1], acc[i]), len(parts))
    return _exact(acc, [d + 1 for d in degs])


def _exact(acc: np.ndarray, counts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Sum the pieces' 32-bit half sums exactly: per term, its first counts[t] entries mod p."""
    p = int(_P)
    tot = acc.astype(object).sum(axis=0)  # exact integers
    return [[(((int(tot[t, x, 1]) << 32) + int(tot[t, x, 0])) % p,
              ((int(tot[t, x, 3]) << 32) + int(tot[t, x, 2])) % p) for x in range(counts[t])]
            for t in range(len(counts))]


def fold_table(values: np.ndarray, mask: np.ndarray | None, coeff: tuple[int, int],
               length: int, r: tuple[int, int]) -> np.ndarray:
    """Bind the first variable of the table T = values (+ coeff mask), read periodically over
    ``length`` entries, to r: (2, length // 2) with T(i) + r (T(h + i) - T(i))."""
    v = _as2(values)
    m = _DUMMY if mask is None else _as2(mask)
    half = length // 2
    out = np.empty((2, half), dtype=np.uint64)
    c0, c1 = (np.uint64(c) for c in coeff)
    r0, r1 = np.uint64(r[0]), np.uint64(r[1])
    pmode = int(mask is not None)
    mmask = m.shape[1] - 1
    parts = par._ranges(half, par.COST["fold"]) if par._go(half, par.COST["fold"]) else [
        (0, half)]
    par.run_pieces(lambda i: _fold_table(v, m, half, pmode, mmask, c0, c1, r0, r1, out,
                                         parts[i][0], parts[i][1]), len(parts))
    return out


def compile_all() -> None:
    """Run both kernels once on tiny inputs: numba's typed list compiles its own methods on
    first use (the kernels themselves are compiled at import)."""
    one = np.ones(2, dtype=np.uint64)
    prm = np.array([[0, 2, 1, 1, MODE_NONE, 1]], dtype=np.int64)
    round_sums([one], [None], prm, np.zeros((1, 2), dtype=np.uint64), [[0]], [False], [0],
               [0], 1)
    round_poly_sums([one], [one], prm, [[0]], 1)
    fold_table(one, one, (1, 0), 2, (1, 0))
