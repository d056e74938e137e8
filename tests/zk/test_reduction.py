"""Claim reduction: many masked claims on one polynomial -> one opening of P and one of R."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.zk import Fp2, Ligero, Transcript, VerificationError
from lightning_zk.zk.extension import e_add, e_from_base, e_scale
from lightning_zk.zk.multilinear import eq_table, evaluate
from lightning_zk.zk.reduction import combination_table, prove_reduction, verify_reduction

PCS = Ligero()
N = 6


def _masked_value(p, r, z):
    """P~(z) = P(z) + z1 (1 - z1) R(z[1:])."""
    lam = z[0] * (1 - z[0])
    return evaluate(e_from_base(p), z) + lam * evaluate(e_from_base(r), z[1:])


def _setup(seed=0, q=5):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 2**40, 1 << N).astype(np.uint64)
    r = rng.integers(0, 2**60, 1 << (N - 1)).astype(np.uint64)
    pts = []
    for j in range(q):  # a challenge first, then challenges or code bits (trailing 0/1)
        z = [Fp2(int(rng.integers(2, 2**60)), int(rng.integers(0, 2**60))) for _ in range(N - j % 3)]
        pts.append(z + [Fp2(int(b)) for b in rng.integers(0, 2, j % 3)])
    vals = [_masked_value(p, r, z) for z in pts]
    p_com, p_st = PCS.commit(p, num_points=1, rng=1)
    r_com, r_st = PCS.commit(r, num_points=1, rng=2)
    return p, r, pts, vals, (p_com, p_st), (r_com, r_st)


def _prove(p, r, pts, vals, ps, rs):
    tr = Transcript(b"reduce-test")
    proof, claim = prove_reduction(tr, pts, vals, p, r, ps[1], rs[1], PCS, rng=3)
    p_open = PCS.open(ps[1], [claim.point], tr)
    r_open = PCS.open(rs[1], [claim.point[:-1]], tr)
    return proof, p_open, r_open


def _verify(pts, vals, proof, p_open, r_open, ps, rs):
    tr = Transcript(b"reduce-test")
    pp, pv, rp, rv = verify_reduction(tr, pts, vals, proof, PCS)
    PCS.verify(ps[0], [pp], [pv], p_open, tr)
    PCS.verify(rs[0], [rp], [rv], r_open, tr)


def test_combination_table_matches_the_definition():
    pts = [[Fp2(3, 1), Fp2(5), Fp2(1), Fp2(0)], [Fp2(7), Fp2(2, 9), Fp2(4), Fp2(6)]]
    w = [Fp2(11, 2), Fp2(13)]
    got = combination_table(pts, w, 4)
    want = e_add(e_scale(eq_table(pts[0]), w[0]), e_scale(eq_table(pts[1]), w[1]))
    assert (got == want).all()


def test_honest_claims_reduce_and_verify():
    p, r, pts, vals, ps, rs = _setup()
    proof, po, ro = _prove(p, r, pts, vals, ps, rs)
    _verify(pts, vals, proof, po, ro, ps, rs)


@pytest.mark.parametrize("j", [0, 2, 4])
def test_one_wrong_claim_is_rejected(j):
    p, r, pts, vals, ps, rs = _setup()
    bad = list(vals)
    bad[j] = bad[j] + 1
    proof, po, ro = _prove(p, r, pts, bad, ps, rs)
    with pytest.raises(VerificationError):
        _verify(pts, bad, proof, po, ro, ps, rs)


def test_claims_on_other_points_or_another_polynomial_rejected():
    p, r, pts, vals, ps, rs = _setup()
    proof, po, ro = _prove(p, r, pts, vals, ps, rs)
    moved = [list(z) for z in pts]
    moved[1][0] = moved[1][0] + 1
    with pytest.raises(VerificationError):
        _verify(moved, vals, proof, po, ro, ps, rs)
    _, _, _, _, ps2, _ = _setup(seed=5)
    with pytest.raises(VerificationError):
        _verify(pts, vals, proof, po, ro, ps2, rs)


def test_unmasked_values_are_not_accepted():
    """Claims must be on P~ (with R): the plain P(z_j) fail whenever lam_j R(z_j') != 0."""
    p, r, pts, vals, ps, rs = _setup()
    plain = [evaluate(e_from_base(p), z) for z in pts]
    proof, po, ro = _prove(p, r, pts, plain, ps, rs)
    with pytest.raises(VerificationError):
        _verify(pts, plain, proof, po, ro, ps, rs)
