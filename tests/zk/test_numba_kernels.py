"""The fused numba kernels against the NumPy path and the pure-int references, bit for bit.

The NumPy (``where``/limb-split) kernels are checked against the references in every run; the
numba ones whenever numba imports, also under ``LIGHTNING_ZK_NUMBA=0`` (they are then forced
with ``get_backend("numpy", use_numba=True)`` or imported directly), so both paths stay tested.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest

from lightning_zk.zk import field as F
from lightning_zk.zk.backend import P, get_backend
from lightning_zk.zk.extension import Fp2, e_get, e_mul, e_random, e_scale
from lightning_zk.zk.multilinear import fold

ntt_mod = importlib.import_module("lightning_zk.zk.ntt")  # the package re-exports ``ntt``

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not importable")

EDGE = [0, 1, 2, P - 1, P - 2, 2**32, 2**32 - 1, 2**32 + 1, 2**63, 2**63 - 1, (P - 1) // 2]


def _edge_and_random(rng: np.random.Generator, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """All edge pairs, then random pairs (one side an edge value half of the time)."""
    grid = [(x, y) for x in EDGE for y in EDGE]
    a = np.array([x for x, _ in grid], dtype=np.uint64)
    b = np.array([y for _, y in grid], dtype=np.uint64)
    ra = rng.integers(0, P, n, dtype=np.uint64)
    rb = rng.integers(0, P, n, dtype=np.uint64)
    pick = rng.integers(0, len(EDGE), n)
    rb[::2] = np.array(EDGE, dtype=np.uint64)[pick[::2]]
    return np.concatenate([a, ra]), np.concatenate([b, rb])


def _ints(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _backends() -> list[object]:
    out = [get_backend("numpy", use_numba=False)]
    if HAVE_NUMBA:
        out.append(get_backend("numpy", use_numba=True))
    return out


@pytest.mark.parametrize("be", _backends(), ids=lambda b: b.describe())
def test_add_sub_neg_match_references(be, rng):
    a, b = _edge_and_random(rng)
    pairs = list(zip(_ints(a), _ints(b), strict=True))
    assert _ints(be.add(a, b)) == [F.ref_add(x, y) for x, y in pairs]
    assert _ints(be.sub(a, b)) == [F.ref_sub(x, y) for x, y in pairs]
    assert _ints(be.neg(a)) == [F.ref_neg(x) for x, _ in pairs]


@needs_numba
def test_numba_add_sub_neg_bit_identical_to_where(rng):
    npb = get_backend("numpy", use_numba=False)
    nb = get_backend("numpy", use_numba=True)
    a, b = _edge_and_random(rng, 20000)
    for fast, slow in ((nb.add, npb.add), (nb.sub, npb.sub)):
        got, want = fast(a, b), slow(a, b)
        assert got.dtype == want.dtype == np.uint64
        assert np.array_equal(got, want)
    assert np.array_equal(nb.neg(a), npb.neg(a))


@needs_numba
def test_numba_mul_bit_identical_to_limbs_and_reference(rng):
    from lightning_zk.zk.backend import _mul_limbs

    nb = get_backend("numpy", use_numba=True)
    a, b = _edge_and_random(rng, 20000)
    got = nb.mul(a, b)
    assert np.array_equal(got, _mul_limbs(a, b))
    n = len(EDGE) ** 2 + 500
    assert _ints(got[:n]) == [
        F.ref_mul(x, y) for x, y in zip(_ints(a[:n]), _ints(b[:n]), strict=True)
    ]


@needs_numba
def test_numba_kernels_broadcast_and_strides(rng):
    npb = get_backend("numpy", use_numba=False)
    nb = get_backend("numpy", use_numba=True)
    a = rng.integers(0, P, (2, 3, 64), dtype=np.uint64)
    col = rng.integers(0, P, (3, 1), dtype=np.uint64)
    strided = a[:, :, ::3]  # non-contiguous view
    for x, y in ((a, col), (col, a), (strided, strided[::-1]), (a, np.uint64(P - 1))):
        for fast, slow in ((nb.add, npb.add), (nb.sub, npb.sub), (nb.mul, npb.mul)):
            got, want = fast(x, y), slow(x, y)
            assert got.shape == want.shape
            assert np.array_equal(got, want)
    assert np.array_equal(nb.neg(strided), npb.neg(strided))
    # 0-d inputs keep returning arrays, like np.where
    z = nb.add(np.asarray(np.uint64(P - 1)), np.asarray(np.uint64(2)))
    assert isinstance(z, np.ndarray) and z.shape == () and int(z) == 1


def test_field_ops_accept_ints_and_broadcast(rng):
    a = rng.integers(0, P, (4, 5), dtype=np.uint64)
    ai = [[int(v) for v in row] for row in a]
    assert _ints(F.add(a, 7)) == [F.ref_add(x, 7) for row in ai for x in row]
    assert _ints(F.add(P - 1, a)) == [F.ref_add(P - 1, x) for row in ai for x in row]
    assert _ints(F.sub(3, a)) == [F.ref_sub(3, x) for row in ai for x in row]
    assert _ints(F.sub(a, a[0])) == [
        F.ref_sub(x, ai[0][j]) for row in ai for j, x in enumerate(row)
    ]
    assert _ints(F.neg(a[:, :1])) == [F.ref_neg(row[0]) for row in ai]
    with np.errstate(over="ignore"):  # the where path wraps NumPy *scalars* (0-d) on purpose
        assert int(F.add(P - 1, 5)) == 4 and int(F.sub(0, 1)) == P - 1


# ---- NTT ------------------------------------------------------------------------------------


def _ntt_input(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    a = rng.integers(0, P, shape, dtype=np.uint64)
    flat = a.reshape(-1)
    flat[: len(EDGE)] = np.array(EDGE, dtype=np.uint64)[: flat.size]
    return a


@pytest.mark.parametrize("k", [1, 2, 4, 8, 32, 64])
def test_xp_ntt_stages_match_naive_dft(rng, k):
    a = _ntt_input(rng, (3, k))
    out = ntt_mod._transform_xp(a, False)
    for r in range(3):
        assert _ints(out[r]) == ntt_mod.naive_dft(a[r])
    assert np.array_equal(ntt_mod._transform_xp(out, True), a)


@needs_numba
@pytest.mark.parametrize("k", [1, 2, 4, 8, 32, 64])
def test_numba_ntt_matches_naive_dft(rng, k):
    from lightning_zk.zk._numba_kernels import numba_ntt_rows

    a = _ntt_input(rng, (3, k))
    out = ntt_mod._transform_fused(a, False, numba_ntt_rows)
    for r in range(3):
        assert _ints(out[r]) == ntt_mod.naive_dft(a[r])
    assert np.array_equal(ntt_mod._transform_fused(out, True, numba_ntt_rows), a)


@needs_numba
@pytest.mark.parametrize(
    "shape", [(4096,), (5, 1024), (2, 3, 256), (0, 16), (7, 1)], ids=lambda s: "x".join(map(str, s))
)
def test_numba_ntt_bit_identical_to_xp_stages(rng, shape):
    from lightning_zk.zk._numba_kernels import numba_ntt_rows

    a = _ntt_input(rng, shape)
    before = a.copy()
    for inverse in (False, True):
        got = ntt_mod._transform_fused(a, inverse, numba_ntt_rows)
        want = ntt_mod._transform_xp(a, inverse)
        assert got.shape == want.shape == a.shape and got.dtype == np.uint64
        assert np.array_equal(got, want)
    assert np.array_equal(a, before)  # input untouched (the kernel works on a copy)
    # non-contiguous input (a transposed view) takes the same path
    if a.ndim == 2 and a.shape[0] > 1:
        t = np.ascontiguousarray(a.T).T
        assert np.array_equal(
            ntt_mod._transform_fused(t, False, numba_ntt_rows), ntt_mod._transform_xp(t, False)
        )


@needs_numba
def test_ntt_dispatch_uses_the_fused_kernel_only_with_numba():
    assert get_backend("numpy", use_numba=True).ntt_rows is not None
    assert get_backend("numpy", use_numba=False).ntt_rows is None


# ---- F_p2 kernels and fsum --------------------------------------------------------------------


def _ext_input(rng: np.random.Generator, n: int) -> np.ndarray:
    """(2, n) extension array whose first entries run through all pairs of edge values."""
    a = rng.integers(0, P, (2, n), dtype=np.uint64)
    grid = np.array([(x, y) for x in EDGE for y in EDGE], dtype=np.uint64).T
    m = min(n, grid.shape[1])
    a[:, :m] = grid[:, :m]
    return a


def _e_mul_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """extension.e_mul's formula on the NumPy (where / limb-split) kernels."""
    be = get_backend("numpy", use_numba=False)
    v0 = be.mul(a[0], b[0])
    v1 = be.mul(a[1], b[1])
    cross = be.mul(be.add(a[0], a[1]), be.add(b[0], b[1]))
    c1 = be.sub(cross, be.add(v0, v1))
    c0 = be.add(v0, be.mul(v1, np.uint64(7)))
    return np.stack([c0, c1])


@needs_numba
def test_numba_e_mul_bit_identical_and_matches_fp2(rng):
    from lightning_zk.zk._numba_kernels import numba_e_mul

    a = _ext_input(rng, 500)
    b = _ext_input(rng, 500)[:, ::-1]  # reversed view: edge pairs meet random values, strided
    got = numba_e_mul(a, b)
    assert np.array_equal(got, _e_mul_numpy(a, b))
    for i in range(0, 500, 7):
        want = Fp2(int(a[0, i]), int(a[1, i])) * Fp2(int(b[0, i]), int(b[1, i]))
        assert (int(got[0, i]), int(got[1, i])) == (want.c0, want.c1)
    # higher-rank and 1-entry shapes keep their shape
    c = rng.integers(0, P, (2, 3, 4), dtype=np.uint64)
    assert np.array_equal(numba_e_mul(c, c), _e_mul_numpy(c, c))
    d = rng.integers(0, P, (2,), dtype=np.uint64)
    assert numba_e_mul(d, d).shape == (2,)
    with np.errstate(over="ignore"):  # the where path wraps NumPy scalars (0-d) on purpose
        assert np.array_equal(numba_e_mul(d, d), _e_mul_numpy(d, d))


def _e_scale_numpy(x: np.ndarray, s0: int, s1: int) -> np.ndarray:
    """extension.e_scale's formula (both branches) on the NumPy kernels."""
    be = get_backend("numpy", use_numba=False)
    if s1 == 0:
        return np.stack([be.mul(x[0], np.uint64(s0)), be.mul(x[1], np.uint64(s0))])
    v0 = be.mul(x[0], np.uint64(s0))
    v1 = be.mul(x[1], np.uint64(s1))
    c0 = be.add(v0, be.mul(v1, np.uint64(7)))
    c1 = be.add(be.mul(x[0], np.uint64(s1)), be.mul(x[1], np.uint64(s0)))
    return np.stack([c0, c1])


SCALARS = [(0, 1), (1, 1), (5, 0), (0, 0), (P - 1, P - 2), (2**32, 2**63), (3, P - 1)]


@needs_numba
def test_numba_e_scale_bit_identical(rng):
    from lightning_zk.zk._numba_kernels import numba_e_scale

    a = _ext_input(rng, 300)
    x = a[:, 1:]  # strided start
    for s0, s1 in SCALARS:
        got = numba_e_scale(x, s0, s1)
        assert np.array_equal(got, _e_scale_numpy(x, s0, s1))
        assert e_get(got, 5) == e_get(x, 5) * Fp2(s0, s1)


@needs_numba
def test_numba_fold_bit_identical(rng):
    from lightning_zk.zk._numba_kernels import numba_fold

    be = get_backend("numpy", use_numba=False)
    t = _ext_input(rng, 256)
    for s0, s1 in SCALARS:
        for tab in (t, t[:, ::2], t[:, :2]):
            h = tab.shape[1] // 2
            lo, hi = tab[:, :h], tab[:, h:]
            d = np.stack([be.sub(hi[0], lo[0]), be.sub(hi[1], lo[1])])
            m = _e_scale_numpy(d, s0, s1)
            want = np.stack([be.add(lo[0], m[0]), be.add(lo[1], m[1])])
            assert np.array_equal(numba_fold(tab, s0, s1), want)


def test_fold_matches_scalar_formula(rng):
    """Whatever path is active here, fold(T, r)[i] = T[i] + r (T[h + i] - T[i]) in F_p2."""
    t = _ext_input(rng, 64)
    for r in (Fp2(3, 0), Fp2(P - 1, 2**32)):
        f = fold(t, r)
        for i in range(0, 32, 5):
            assert e_get(f, i) == e_get(t, i) + r * (e_get(t, 32 + i) - e_get(t, i))


def test_e_mul_and_e_scale_dispatch_match_scalars(rng):
    """Whatever path is active here (numba or NumPy), e_mul / e_scale equal the Fp2 scalars."""
    a = _ext_input(rng, 200)
    b = e_random(200, rng)
    z = e_mul(a, b)
    s = Fp2(P - 1, 2**32)
    y = e_scale(a, s)
    for i in range(0, 200, 9):
        assert e_get(z, i) == e_get(a, i) * e_get(b, i)
        assert e_get(y, i) == e_get(a, i) * s


def test_fsum_matches_python_sum(rng):
    a = rng.integers(0, P, 5000, dtype=np.uint64)
    a[:4] = P - 1
    assert F.fsum(a) == sum(int(v) for v in a) % P
    assert (
        F.fsum(a.reshape(50, 100)[:, ::3])
        == sum(int(v) for v in a.reshape(50, 100)[:, ::3].ravel()) % P
    )
    assert F.fsum(np.zeros(0, dtype=np.uint64)) == 0


@needs_numba
def test_numba_halves_sum_matches_numpy(rng):
    from lightning_zk.zk._numba_kernels import numba_halves_sum

    a = rng.integers(0, P, (30, 70), dtype=np.uint64)
    for x in (a, a[:, ::2], np.full(1000, P - 1, dtype=np.uint64)):
        lo, hi = numba_halves_sum(x)
        assert lo == int((x & 0xFFFF_FFFF).sum(dtype=np.uint64))
        assert hi == int((x >> 32).sum(dtype=np.uint64))


@needs_numba
def test_numba_combine_rows_bit_identical(rng):
    from lightning_zk.zk._numba_kernels import numba_combine_rows

    be = get_backend("numpy", use_numba=False)
    msg = rng.integers(0, P, (37, 300), dtype=np.uint64)
    msg[:, :3] = P - 1  # half-sums near their maximum
    msg[0, : len(EDGE)] = np.array(EDGE, dtype=np.uint64)
    coeffs = rng.integers(0, P, (2, 37), dtype=np.uint64)
    coeffs[:, :2] = P - 1
    want = []
    for i in range(2):
        prod = be.mul(msg, coeffs[i][:, None])
        lo = (prod & 0xFFFF_FFFF).sum(axis=0, dtype=np.uint64)
        hi = (prod >> 32).sum(axis=0, dtype=np.uint64)
        lo = np.where(lo >= P, lo - np.uint64(P), lo)
        hi = np.where(hi >= P, hi - np.uint64(P), hi)
        want.append(be.add(be.mul(hi, np.uint64(1 << 32)), lo))
    got = numba_combine_rows(msg, coeffs)
    assert np.array_equal(got, np.stack(want))
    col = 5
    for i in range(2):
        ref = sum(int(msg[r, col]) * int(coeffs[i, r]) for r in range(37)) % P
        assert int(got[i, col]) == ref


@needs_numba
def test_ntt_overwrite_reuses_the_array_only_when_allowed(rng):
    from lightning_zk.zk._numba_kernels import numba_ntt_rows

    a = _ntt_input(rng, (3, 64))
    want = ntt_mod._transform_xp(a, False)
    b = a.copy()
    out = ntt_mod._transform_fused(b, False, numba_ntt_rows, overwrite=True)
    assert out is b and np.array_equal(out, want)
    c = a.copy()
    out = ntt_mod._transform_fused(c, False, numba_ntt_rows)
    assert out is not c and np.array_equal(c, a) and np.array_equal(out, want)
    view = a.copy()[:, ::2]  # not contiguous: copied even with overwrite
    out = ntt_mod._transform_fused(view, False, numba_ntt_rows, overwrite=True)
    assert np.array_equal(out, ntt_mod._transform_xp(view, False))


def test_ntt_overwrite_flag_gives_the_same_result(rng):
    a = _ntt_input(rng, (4, 128))
    want = ntt_mod.ntt(a)
    assert np.array_equal(ntt_mod.ntt(a.copy(), overwrite=True), want)
