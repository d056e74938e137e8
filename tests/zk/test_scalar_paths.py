"""The verifier's scalar helpers on integer coordinates equal the plain Fp2 formulas."""

from __future__ import annotations

import random

import pytest

from lightning_zk.zk.backend import P
from lightning_zk.zk.extension import Fp2
from lightning_zk.zk.multilinear import eq_eval
from lightning_zk.zk.sumcheck import interpolate


def _lagrange(evals, r):
    """Textbook Lagrange interpolation through (i, evals[i]) with Fp2 objects."""
    acc = Fp2(0)
    for i, e in enumerate(evals):
        term = Fp2.lift(e)
        for j in range(len(evals)):
            if j != i:
                term = term * (r - j) * Fp2((i - j) % P).inverse()
        acc = acc + term
    return acc


def _eq(a, b):
    acc = Fp2(1)
    for x, y in zip(a, b, strict=True):
        x, y = Fp2.lift(x), Fp2.lift(y)
        acc = acc * (x * y + (1 - x) * (1 - y))
    return acc


@pytest.mark.parametrize("seed", range(5))
def test_interpolate_is_lagrange(seed):
    rnd = random.Random(seed)
    for n in (1, 2, 3, 4, 7):
        evals = [Fp2(rnd.randrange(P), rnd.randrange(P)) for _ in range(n)]
        for r in (Fp2(rnd.randrange(P), rnd.randrange(P)), Fp2(rnd.randrange(P)),
                  Fp2(rnd.randrange(n)), Fp2(n), Fp2(P - 1)):
            assert interpolate(evals, r) == _lagrange(evals, r)


@pytest.mark.parametrize("seed", range(5))
def test_eq_eval_matches_the_product_formula(seed):
    rnd = random.Random(seed)
    n = 12
    a = [Fp2(rnd.randrange(P), rnd.randrange(P)) for _ in range(n)]
    for b in ([Fp2(rnd.randrange(P), rnd.randrange(P)) for _ in range(n)],
              [rnd.randrange(2) for _ in range(n)],  # a code: the Boolean fast path
              [rnd.randrange(P) for _ in range(n)],  # plain ints, not Boolean
              [Fp2(1), Fp2(0)] * (n // 2)):
        assert eq_eval(a, b) == _eq(a, b)
        assert eq_eval(b, a) == _eq(b, a)
    assert eq_eval([], []) == Fp2(1)


def test_eq_eval_many_equals_eq_eval_per_point():
    from lightning_zk.zk.extension import e_get
    from lightning_zk.zk.multilinear import eq_eval_many

    rnd = random.Random(7)
    n = 9
    r = [Fp2(rnd.randrange(P), rnd.randrange(P)) for _ in range(n)]
    points = [[Fp2(rnd.randrange(P), rnd.randrange(P)) for _ in range(n)],
              [rnd.randrange(2) for _ in range(n)],
              [rnd.randrange(P) for _ in range(n)]]
    out = eq_eval_many(points, r)
    assert [e_get(out, j) for j in range(len(points))] == [_eq(pt, r) for pt in points]
