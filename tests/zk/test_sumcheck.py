"""Sumcheck: completeness (zk and plain, masked tables), soundness against every altered message."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from lightning_zk.zk import (
    Fp2,
    ShapeMismatchError,
    SumcheckSpec,
    Transcript,
    VerificationError,
    prove_sumcheck,
    verify_sumcheck,
)
from lightning_zk.zk.backend import P
from lightning_zk.zk.errors import CommitmentError, SumcheckError
from lightning_zk.zk.extension import e_random
from lightning_zk.zk.multilinear import evaluate
from lightning_zk.zk.sumcheck import interpolate

N = 4


def _instance(rng, zk=True, masked=(True, False, True)):
    tabs = [rng.integers(0, P, 1 << N, dtype=np.uint64) for _ in range(3)]
    spec = SumcheckSpec.of(
        N, 3, [(1, [0, 1, 2]), (Fp2(5, 1), [0, 1]), (3, [2])], zk=zk, masked=masked if zk else ()
    )
    masks = [e_random(1 << (N - 1), rng) if m else None for m in spec.masked]
    return spec, tabs, masks


def _true_sum(tabs):
    a, b, c = ([int(v) for v in t] for t in tabs)
    return sum(
        Fp2(x * y * z) + Fp2(5, 1) * Fp2(x * y) + Fp2(3 * z)
        for x, y, z in zip(a, b, c, strict=True)
    )


@pytest.mark.parametrize("zk", [False, True])
def test_complete_and_claims_are_masked_evaluations(rng, zk):
    spec, tabs, masks = _instance(rng, zk)
    h = _true_sum(tabs)
    proof, claim = prove_sumcheck(spec, tabs, Transcript(b"sc"), claimed_sum=h, masks=masks, rng=1)
    out = verify_sumcheck(spec, proof, Transcript(b"sc"), h)
    assert out.point == claim.point and out.evaluations == claim.evaluations
    r = out.point
    for k in range(3):
        want = evaluate(tabs[k], r)
        if masks[k] is not None:
            want = want + r[0] * (1 - r[0]) * evaluate(masks[k], r[1:])
        assert out.evaluations[k] == want


def test_wrong_sum_rejected(rng):
    spec, tabs, masks = _instance(rng)
    h = _true_sum(tabs)
    proof, _ = prove_sumcheck(spec, tabs, Transcript(b"sc"), claimed_sum=h + 1, masks=masks, rng=1)
    with pytest.raises(SumcheckError, match="round sum") as ei:
        verify_sumcheck(spec, proof, Transcript(b"sc"), h + 1)
    assert ei.value.round == 0


@pytest.fixture
def honest(rng):
    spec, tabs, masks = _instance(rng)
    h = _true_sum(tabs)
    proof, _ = prove_sumcheck(spec, tabs, Transcript(b"sc"), claimed_sum=h, masks=masks, rng=1)
    return spec, proof, h


@pytest.mark.parametrize("rnd", range(N))
@pytest.mark.parametrize("pos", [0, 1, 2])
def test_every_round_message_altered_rejected(honest, rnd, pos):
    spec, proof, h = honest
    bad = copy.deepcopy(proof)
    bad.round_polys[rnd][pos] = bad.round_polys[rnd][pos] + 1
    with pytest.raises(SumcheckError):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)


def test_consistent_round_forgery_rejected(honest):
    """Shift s_i(0) and s_i(1) by +d/-d (round sum still holds): caught later."""
    spec, proof, h = honest
    for rnd in range(N):
        bad = copy.deepcopy(proof)
        bad.round_polys[rnd][0] = bad.round_polys[rnd][0] + 7
        bad.round_polys[rnd][1] = bad.round_polys[rnd][1] - 7
        with pytest.raises(SumcheckError):
            verify_sumcheck(spec, bad, Transcript(b"sc"), h)


@pytest.mark.parametrize("k", range(3))
def test_final_evaluation_altered_rejected(honest, k):
    spec, proof, h = honest
    bad = copy.deepcopy(proof)
    bad.final_evals[k] = bad.final_evals[k] + 1
    with pytest.raises(SumcheckError, match="final claim"):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)


def test_mask_fields_altered_rejected(honest):
    spec, proof, h = honest
    for field, delta in (("mask_sum", 1), ("mask_eval", 1)):
        bad = copy.deepcopy(proof)
        setattr(bad, field, getattr(bad, field) + delta)
        with pytest.raises(VerificationError):
            verify_sumcheck(spec, bad, Transcript(b"sc"), h)
    bad = copy.deepcopy(proof)
    bad.mask_opening.columns[0, 0] ^= 1
    with pytest.raises(CommitmentError):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)
    bad = copy.deepcopy(proof)
    bad.mask_commitment = None
    with pytest.raises(ShapeMismatchError):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)


def test_shape_errors(honest):
    spec, proof, h = honest
    bad = copy.deepcopy(proof)
    bad.round_polys[1] = bad.round_polys[1][:-1]
    with pytest.raises(ShapeMismatchError, match="round polynomial length"):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)
    bad = copy.deepcopy(proof)
    bad.round_polys.pop()
    with pytest.raises(ShapeMismatchError, match="number of sumcheck rounds"):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)
    bad = copy.deepcopy(proof)
    bad.final_evals.pop()
    with pytest.raises(ShapeMismatchError, match="final evaluations"):
        verify_sumcheck(spec, bad, Transcript(b"sc"), h)


def test_transcript_binding(honest):
    spec, proof, h = honest
    with pytest.raises(VerificationError):
        verify_sumcheck(spec, proof, Transcript(b"other statement"), h)


def test_randomised_proofs_differ_and_verify(rng):
    spec, tabs, masks = _instance(rng)
    h = _true_sum(tabs)
    p1, _ = prove_sumcheck(spec, tabs, Transcript(b"sc"), claimed_sum=h, masks=masks)
    p2, _ = prove_sumcheck(spec, tabs, Transcript(b"sc"), claimed_sum=h, masks=masks)
    assert p1.round_polys != p2.round_polys and p1.mask_commitment.root != p2.mask_commitment.root
    verify_sumcheck(spec, p1, Transcript(b"sc"), h)
    verify_sumcheck(spec, p2, Transcript(b"sc"), h)


def test_degree_five_and_one_variable(rng):
    tabs = [rng.integers(0, P, 2, dtype=np.uint64) for _ in range(5)]
    spec = SumcheckSpec.of(1, 5, [(1, [0, 1, 2, 3, 4])], zk=True, masked=[True] * 5)
    masks = [e_random(1, rng) for _ in range(5)]
    proof, _ = prove_sumcheck(spec, tabs, Transcript(b"d5"), masks=masks, rng=3)
    h = sum((Fp2(math.prod(int(t[i]) for t in tabs) % P) for i in range(2)), Fp2(0))
    verify_sumcheck(spec, proof, Transcript(b"d5"), h)


def test_interpolate():
    evals = [Fp2((3 * x * x + 2 * x + 1) % P) for x in range(4)]
    r = Fp2(11, 5)
    assert interpolate(evals, r) == 3 * r * r + 2 * r + 1
