"""Field and extension arithmetic against pure-Python integers, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_zk.zk import field as F
from lightning_zk.zk.backend import P, _mul_limbs, get_backend, to_numpy
from lightning_zk.zk.errors import FieldRangeError, ParameterError
from lightning_zk.zk.extension import Fp2, e_get, e_inv, e_mul, e_random

EDGE = [
    0,
    1,
    2,
    P - 1,
    P - 2,
    2**32,
    2**32 - 1,
    2**32 + 1,
    2**63,
    2**63 - 1,
    2**64 - 2**32,
    (P - 1) // 2,
]
elem = st.one_of(st.sampled_from(EDGE), st.integers(0, P - 1))


def _arr(be, vals):
    return be.xp.asarray(np.array(vals, dtype=np.uint64))


def _ints(a):
    return [int(v) for v in to_numpy(a).reshape(-1)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(elem, elem), min_size=1, max_size=40))
def test_binary_ops_match_python_ints(backend, pairs):
    a = _arr(backend, [x for x, _ in pairs])
    b = _arr(backend, [y for _, y in pairs])
    assert _ints(F.add(a, b)) == [F.ref_add(x, y) for x, y in pairs]
    assert _ints(F.sub(a, b)) == [F.ref_sub(x, y) for x, y in pairs]
    assert _ints(backend.mul(a, b)) == [F.ref_mul(x, y) for x, y in pairs]
    assert _ints(F.neg(a)) == [F.ref_neg(x) for x, _ in pairs]


def test_all_edge_products(backend):
    grid = [(x, y) for x in EDGE for y in EDGE]
    a = _arr(backend, [x for x, _ in grid])
    b = _arr(backend, [y for _, y in grid])
    assert _ints(backend.mul(a, b)) == [x * y % P for x, y in grid]


def test_limb_kernel_is_the_reference_path():
    rng = np.random.default_rng(0)
    a = rng.integers(0, P, 1000, dtype=np.uint64)
    b = rng.integers(0, P, 1000, dtype=np.uint64)
    assert _ints(_mul_limbs(a, b)) == [int(x) * int(y) % P for x, y in zip(a, b, strict=True)]


@settings(max_examples=30, deadline=None)
@given(elem, st.integers(0, 2**70))
def test_pow_and_inverse(x, e):
    a = np.array([x], dtype=np.uint64)
    assert _ints(F.pow_(a, e)) == [pow(x, e, P)]
    if x:
        assert _ints(F.inv(a)) == [F.ref_inv(x)]


def test_batch_inverse_and_zero_rejected(rng):
    a = rng.integers(1, P, 37, dtype=np.uint64)
    assert _ints(F.mul(a, F.batch_inverse(a))) == [1] * 37
    a[5] = 0
    with pytest.raises(ParameterError, match="element 5 is zero"):
        F.batch_inverse(a)


def test_fsum_and_axis(rng):
    a = rng.integers(0, P, (5, 64), dtype=np.uint64)
    assert F.fsum(a) == sum(int(v) for v in a.reshape(-1)) % P
    assert _ints(F.fsum(a, axis=1)) == [sum(int(v) for v in row) % P for row in a]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-F.HALF, F.HALF), min_size=1, max_size=30))
def test_signed_fixed_point_roundtrip(xs):
    f = F.from_signed(np.array(xs, dtype=np.int64))
    assert _ints(f) == [x % P for x in xs]
    assert F.to_signed(f).tolist() == xs


def test_signed_out_of_range_rejected():
    with pytest.raises(FieldRangeError, match="outside"):
        F.from_signed(np.array([F.HALF + 1], dtype=np.int64))
    with pytest.raises(FieldRangeError):
        F.from_signed(np.array([-(2**63)], dtype=np.int64))


def test_seven_is_a_non_residue_and_roots_of_unity():
    assert pow(7, (P - 1) // 2, P) == P - 1  # X^2 - 7 irreducible
    w = F.root_of_unity(1 << 32)
    assert pow(w, 1 << 31, P) == P - 1


@settings(max_examples=40, deadline=None)
@given(elem, elem, elem, elem)
def test_fp2_scalar_against_definition(a0, a1, b0, b1):
    a, b = Fp2(a0, a1), Fp2(b0, b1)
    prod = a * b
    assert prod == Fp2((a0 * b0 + 7 * a1 * b1) % P, (a0 * b1 + a1 * b0) % P)
    if not a.is_zero():
        assert a * a.inverse() == Fp2(1)


def test_fp2_arrays_match_scalars(backend, rng):
    x = backend.xp.asarray(e_random(50, rng))
    y = backend.xp.asarray(e_random(50, rng))
    z = e_mul(x, y)
    zi = e_inv(x)
    for i in range(0, 50, 7):
        assert e_get(z, i) == e_get(x, i) * e_get(y, i)
        assert e_get(zi, i) == e_get(x, i).inverse()


def test_backend_selection():
    assert get_backend("numpy").name == "numpy"
    assert get_backend("auto").name in ("numpy", "cupy")
    with pytest.raises(ParameterError, match="must be 'auto'"):
        get_backend("tpu")


def test_results_identical_across_backends(rng):
    from lightning_zk.zk.backend import cupy_available, numba_available

    a = rng.integers(0, P, 4096, dtype=np.uint64)
    b = rng.integers(0, P, 4096, dtype=np.uint64)
    ref = _mul_limbs(a, b)
    if numba_available():
        assert (get_backend("numpy", use_numba=True).mul(a, b) == ref).all()
    if cupy_available():
        cp = get_backend("cupy")
        assert (to_numpy(cp.mul(cp.xp.asarray(a), cp.xp.asarray(b))) == ref).all()
