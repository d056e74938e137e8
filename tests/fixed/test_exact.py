"""Exact integer matmul on BLAS (limb splitting) and the engine built on it, against Python ints.

Python-int products (object arrays) are the oracle: they cannot wrap or round. The limb path is
forced on small inputs by lowering the exactness threshold (EXACT_BITS) and the size cut-off, so
the recombination is tested at every size, and the real threshold is tested at the magnitude
bounds |x| = 2^(value_bits-1) - 1 and at large fan-in.
"""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointConfig, FixedPointMLP, reference_step
from lightning_zk.fixed import exact as X
from lightning_zk.fixed.exact import ExactOverflowError, exact_matmul, plan_limbs

BOUND = (1 << 23) - 1  # |x| at the default magnitude bound (value_bits = 24)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def _oracle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array(a.astype(object) @ b.astype(object), dtype=object)


def _assert_exact(a: np.ndarray, b: np.ndarray, **bounds: int) -> None:
    got = exact_matmul(a, b, **bounds)
    assert got.dtype == np.int64 and got.shape == (a.shape[0], b.shape[1])
    assert (got.astype(object) == _oracle(a, b)).all()


def _at_bound(rng, shape, bound=BOUND):
    """Random signs of the bound itself, with a few random values and zeros mixed in."""
    x = rng.choice([-bound, bound], size=shape).astype(np.int64)
    mask = rng.random(shape) < 0.2
    x[mask] = rng.integers(-bound, bound + 1, size=int(mask.sum()))
    return x


@pytest.mark.parametrize("k", [1, 7, 64, 1024, 4096])
def test_exact_at_the_magnitude_bound_and_large_fan_in(rng, k):
    a = _at_bound(rng, (5, k))
    b = _at_bound(rng, (k, 70))
    _assert_exact(a, b)
    _assert_exact(a, b, bound_a=BOUND, bound_b=BOUND)
    # all-equal signs: the worst case K * A * B of the plan is reached exactly
    _assert_exact(np.full((3, k), BOUND), np.full((k, 40), -BOUND))
    _assert_exact(np.full((3, k), -BOUND), np.full((k, 40), -BOUND))


def test_plans_keep_every_limb_product_exact():
    for k in (1, 3, 64, 1000, 1 << 16):
        for bits_a in (1, 8, 23, 31):
            for bits_b in (1, 16, 23, 31):
                ba, bb = (1 << bits_a) - 1, (1 << bits_b) - 1
                if k * ba * bb >= 1 << 63:
                    with pytest.raises(ExactOverflowError):
                        plan_limbs(k, ba, bb)
                    continue
                plan = plan_limbs(k, ba, bb)
                if plan is None:
                    continue
                ma = X._limb_bound(ba, plan.limbs_a)[1]
                mb = X._limb_bound(bb, plan.limbs_b)[1]
                assert k * ma * mb <= 1 << X.EXACT_BITS
                assert plan.width_a * plan.limbs_a >= bits_a
                assert plan.products <= X.MAX_PRODUCTS
    assert plan_limbs(64, BOUND, BOUND).products == 1  # 2^6 * 2^46 <= 2^53: one GEMM
    assert plan_limbs(1024, BOUND, BOUND).products == 2


@pytest.mark.parametrize("exact_bits", [8, 20, 40])
def test_forced_limb_paths_match_python_ints(rng, monkeypatch, exact_bits):
    monkeypatch.setattr(X, "EXACT_BITS", exact_bits)
    monkeypatch.setattr(X, "SMALL_MACS", 0)
    for shape in ((1, 1, 1), (3, 5, 4), (8, 33, 9), (17, 64, 2)):
        m, k, n = shape
        a = rng.integers(-BOUND, BOUND + 1, (m, k))
        b = rng.integers(-BOUND, BOUND + 1, (k, n))
        _assert_exact(a, b)
        _assert_exact(a.T.copy().T, b[:, ::-1])  # non-contiguous views


def test_int64_fallback_and_errors(rng, monkeypatch):
    a = rng.integers(-(1 << 40), 1 << 40, (4, 6))
    b = rng.integers(-(1 << 15), 1 << 15, (6, 3))
    _assert_exact(a, b)  # tiny: int64 directly
    monkeypatch.setattr(X, "MAX_PRODUCTS", 1)
    monkeypatch.setattr(X, "SMALL_MACS", 0)
    assert plan_limbs(6, 1 << 40, 1 << 15) is None
    _assert_exact(a, b)  # limbs pointless: int64 fallback
    _assert_exact(np.zeros((2, 3), np.int64), b[:3])
    _assert_exact(np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64))
    _assert_exact(np.arange(6, dtype=np.uint8).reshape(2, 3), np.ones((3, 2), np.int32))
    with pytest.raises(ExactOverflowError, match="2\\^63") as info:
        exact_matmul(np.full((2, 4), 1 << 31), np.full((4, 2), 1 << 31))
    assert info.value.k == 4 and info.value.worst >= 1 << 63
    with pytest.raises(ValueError, match="K differs"):
        exact_matmul(np.ones((2, 3), np.int64), np.ones((4, 2), np.int64))
    with pytest.raises(TypeError, match="integer"):
        exact_matmul(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(TypeError, match="2-D"):
        exact_matmul(np.ones(3, np.int64), np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match="uint64"):
        exact_matmul(np.full((1, 1), 1 << 63, np.uint64), np.ones((1, 1), np.int64))


# ---- the engine on BLAS against the integer reference ---------------------------------------


def _compare_step(mlp: FixedPointMLP, x: np.ndarray, y: np.ndarray) -> None:
    ws = [w.tolist() for w in mlp.weights]
    bs = [b.tolist() for b in mlp.biases]
    tape = mlp.step(x, y)
    new_w, new_b, out = reference_step(
        ws, bs, x.tolist(), y.tolist(), mlp.lr, tape.mse_const, mlp.config.frac_bits
    )
    assert np.array_equal(np.array(out, dtype=np.int64), tape.tensors[f"Z{mlp.num_layers}"])
    for want, got in zip(new_w, mlp.weights, strict=True):
        assert np.array_equal(np.array(want, dtype=np.int64), got)
    for want, got in zip(new_b, mlp.biases, strict=True):
        assert np.array_equal(np.array(want, dtype=np.int64), got)


@pytest.mark.parametrize("exact_bits", [53, 24])
@pytest.mark.parametrize("dims,batch", [((9, 16, 5), 7), ((300, 12, 3), 5), ((2, 3), 64)])
def test_engine_on_blas_matches_reference_on_random_networks(
    rng, monkeypatch, dims, batch, exact_bits
):
    """Random networks; with EXACT_BITS = 24 every product is split into limbs."""
    monkeypatch.setattr(X, "EXACT_BITS", exact_bits)
    monkeypatch.setattr(X, "SMALL_MACS", 0)
    ws = [rng.normal(size=(dims[i + 1], dims[i])) / dims[i] ** 0.5 for i in range(len(dims) - 1)]
    bs = [rng.normal(size=dims[i + 1]) * 0.1 for i in range(len(dims) - 1)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.125)
    for _ in range(2):
        x = rng.normal(size=(batch, dims[0])) * 2.0
        y = rng.normal(size=(batch, dims[-1]))
        _compare_step(mlp, np.floor(x * 65536 + 0.5).astype(np.int64),
                      np.floor(y * 65536 + 0.5).astype(np.int64))


def _walsh(n: int, rows: list[int]) -> np.ndarray:
    """Rows of the n x n Sylvester-Hadamard matrix (+-1, mutually orthogonal)."""
    idx = np.arange(n)
    return np.array([1 - 2 * (np.bitwise_count(idx & r).astype(np.int64) % 2) for r in rows])


def test_engine_at_the_magnitude_bound_and_large_fan_in(rng):
    """x and W1 exactly at |x| = 2^23 - 1 with fan-in 2048 (each forward product needs limbs:
    K * A * B ~ 2^57), their rows orthogonal so that every stored tensor stays in bound."""
    k, hidden, out, batch = 2048, 8, 3, 4
    x = BOUND * _walsh(k, [1, 2, 3, 5])
    w1 = BOUND * _walsh(k, list(range(8, 8 + hidden))) * rng.choice([-1, 1], (hidden, 1))
    b1 = rng.integers(-(1 << 18), 1 << 18, hidden)
    w2 = rng.integers(-(1 << 12), 1 << 12, (out, hidden))
    b2 = rng.integers(-(1 << 16), 1 << 16, out)
    mlp = FixedPointMLP([w1, w2], [b1, b2], lr=1, config=FixedPointConfig())
    assert plan_limbs(k, BOUND, BOUND, size_a=x.size, size_b=w1.size).products == 2
    y = mlp.forward(x) + rng.integers(-64, 65, (batch, out))  # small loss: updates stay tiny
    _compare_step(mlp, x, y)
    assert np.abs(mlp.weights[0]).max() == BOUND  # still at the bound after the step


def test_rescale_owned_equals_rescale(rng):
    from lightning_zk.fixed.format import rescale, rescale_owned

    for s in (1, 16, 30):
        half = 1 << (s - 1)
        edges = [0, 1, -1, half, -half, half - 1, -half - 1, 3 * half, -3 * half, (1 << 61) - 1,
                 -(1 << 61)]
        raw = np.concatenate([np.array(edges), rng.integers(-(1 << 61), 1 << 61, 5000)])
        q, r = rescale(raw, s)
        q2, r2 = rescale_owned(raw.copy(), s)
        assert np.array_equal(q, q2) and np.array_equal(r, r2)
