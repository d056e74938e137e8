"""NTT round trip and naive DFT; multilinear tables, eq, folding, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.zk.backend import P, to_numpy
from lightning_zk.zk.errors import ParameterError
from lightning_zk.zk.extension import Fp2, e_random
from lightning_zk.zk.multilinear import (
    eq_eval,
    eq_table,
    evaluate,
    fold,
    masked_ref_evaluate,
    ref_evaluate,
    tile_mask,
)
from lightning_zk.zk.ntt import intt, naive_dft, ntt


@pytest.mark.parametrize("k", [1, 2, 8, 64])
def test_ntt_matches_naive_dft(backend, rng, k):
    a = rng.integers(0, P, (3, k), dtype=np.uint64)
    out = to_numpy(ntt(backend.xp.asarray(a)))
    for row in range(3):
        assert out[row].tolist() == naive_dft(a[row])


def test_ntt_roundtrip_batched(backend, rng):
    a = backend.xp.asarray(rng.integers(0, P, (4, 2, 1024), dtype=np.uint64))
    assert (to_numpy(intt(ntt(a))) == to_numpy(a)).all()


def test_ntt_rejects_bad_length():
    with pytest.raises(ParameterError, match="power of two"):
        ntt(np.zeros(6, dtype=np.uint64))


def test_eq_table_and_evaluate(rng):
    n = 4
    pt = [Fp2.random(rng) for _ in range(n)]
    eq = eq_table(pt)
    for i in (0, 5, 15):
        bits = [(i >> (n - 1 - j)) & 1 for j in range(n)]
        assert Fp2(int(eq[0, i]), int(eq[1, i])) == eq_eval(pt, bits)
    vals = rng.integers(0, P, 1 << n, dtype=np.uint64)
    assert evaluate(vals, pt) == ref_evaluate([int(v) for v in vals], pt)
    # folding the first variable = fixing x_1
    f1 = fold(vals, pt[0])
    assert evaluate(f1, pt[1:]) == evaluate(vals, pt)
    # agreement on the hypercube
    assert evaluate(vals, [1, 0, 1, 1]) == Fp2(int(vals[0b1011]))


def test_tile_mask_is_masked_evaluation(rng):
    n, k = 4, 4
    vals = [int(v) for v in rng.integers(0, P, 1 << n, dtype=np.uint64)]
    mu = e_random(k, rng)
    m = tile_mask(mu, n)
    pt = [Fp2.random(rng) for _ in range(n)]
    direct = evaluate(np.array(vals, dtype=np.uint64), pt) + pt[0] * (1 - pt[0]) * evaluate(
        m, pt[1:]
    )
    mus = [Fp2(int(mu[0, i]), int(mu[1, i])) for i in range(k)]
    assert direct == masked_ref_evaluate(vals, mus, pt)


def test_eq_eval_boolean_fast_path_matches_the_formula(rng):
    """eq_eval's shortcut for 0/1 integer coordinates equals x*y + (1-x)(1-y) in F_p2, and
    integers other than 0/1 take the general formula."""
    for _ in range(20):
        a = [Fp2(int(rng.integers(0, 2**62)), int(rng.integers(0, 2**62))) for _ in range(6)]
        b = [int(v) for v in rng.integers(0, 3, 6)]  # 2 is not Boolean
        want = Fp2(1)
        for x, y in zip(a, b, strict=True):
            want = want * (x * Fp2(y) + (Fp2(1) - x) * (Fp2(1) - Fp2(y)))
        assert eq_eval(a, b) == want
        assert eq_eval(a, [Fp2(y) for y in b]) == want
