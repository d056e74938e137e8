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


@pytest.mark.parametrize("zk", [False, True])
@pytest.mark.parametrize("short_vars", [1, 2, 3])
def test_terms_over_fewer_variables_are_broadcast(rng, zk, short_vars):
    """sum_x A(x)B(x) - 2^(N-m) sum_y C(y) over one N-variable domain: the short table C
    depends on the first m variables only; its claim is an evaluation at the point's prefix."""
    a, b = (rng.integers(0, P, 1 << N, dtype=np.uint64) for _ in range(2))
    c = rng.integers(0, P, 1 << short_vars, dtype=np.uint64)
    spec = SumcheckSpec.of(
        N, 3, [(1, [0, 1]), (-1, [2])], zk=zk,
        masked=(True, False, True) if zk else (), table_vars=(N, N, short_vars),
    )
    masks = [e_random(1 << (v - 1), rng) if m else None
             for v, m in zip(spec.table_vars, spec.masked, strict=True)]
    h = sum((Fp2(int(x) * int(y)) for x, y in zip(a, b, strict=True)), Fp2(0))
    h = h - Fp2(sum(int(v) for v in c) * 2 ** (N - short_vars))
    proof, claim = prove_sumcheck(spec, [a, b, c], Transcript(b"sc"), masks=masks, rng=3)
    out = verify_sumcheck(spec, proof, Transcript(b"sc"), h)
    r = out.point
    want_c = evaluate(c, r[:short_vars])
    if zk:
        want_c = want_c + r[0] * (1 - r[0]) * evaluate(masks[2], r[1:short_vars])
    assert out.evaluations[2] == want_c and out.evaluations == claim.evaluations
    with pytest.raises(SumcheckError):
        verify_sumcheck(spec, proof, Transcript(b"sc"), h + 1)


@pytest.mark.parametrize("zk", [False, True])
def test_factors_of_one_term_may_have_different_lengths(rng, zk):
    """A(x) B(x_1..x_2) C(x_1): shorter factors are broadcast over the term's other variables."""
    a = rng.integers(0, P, 1 << N, dtype=np.uint64)
    b = rng.integers(0, P, 4, dtype=np.uint64)
    c = rng.integers(0, P, 2, dtype=np.uint64)
    spec = SumcheckSpec.of(N, 3, [(3, [0, 1, 2]), (1, [1])], zk=zk,
                           masked=(True, False, True) if zk else (), table_vars=(N, 2, 1))
    masks = [e_random(1 << (v - 1), rng) if m else None
             for v, m in zip(spec.table_vars, spec.masked, strict=True)]
    h = Fp2(0)
    for i in range(1 << N):
        h = h + Fp2(3 * int(a[i]) * int(b[i >> (N - 2)]) * int(c[i >> (N - 1)]))
    h = h + Fp2(sum(int(v) for v in b) * 2 ** (N - 2))
    proof, _ = prove_sumcheck(spec, [a, b, c], Transcript(b"sc"), masks=masks, rng=2)
    out = verify_sumcheck(spec, proof, Transcript(b"sc"), h)
    assert out.evaluations[1] == evaluate(b, out.point[:2])
    with pytest.raises(SumcheckError):
        verify_sumcheck(spec, proof, Transcript(b"sc"), h + 1)


def test_table_vars_are_part_of_the_transcript(rng):
    """The same messages under another table_vars give other challenges: the proof fails."""
    a = rng.integers(0, P, 1 << N, dtype=np.uint64)
    b = rng.integers(0, P, 1 << N, dtype=np.uint64)
    spec = SumcheckSpec.of(N, 2, [(1, [0]), (1, [1])], zk=False)
    proof, _ = prove_sumcheck(spec, [a, b], Transcript(b"sc"))
    h = Fp2(sum(int(v) for v in a) + sum(int(v) for v in b))
    verify_sumcheck(spec, proof, Transcript(b"sc"), h)
    other = SumcheckSpec.of(N, 2, [(1, [0]), (1, [1])], zk=False, table_vars=(N, N - 1))
    with pytest.raises(VerificationError):
        verify_sumcheck(other, proof, Transcript(b"sc"), h)


@pytest.mark.parametrize("short_vars", [N - 1, 2])
def test_hiding_variable_masks_every_table_on_its_own_variables(rng, short_vars):
    """With a hiding variable x_1 no table depends on, the final value of a masked table is
    P(r_2..) + r_1 (1 - r_1) M(r_2..): masks live on the table's own variables, whatever they
    are, and the round-1 check counts the hypercube sum twice."""
    full = N - 1
    a, b = (rng.integers(0, P, 1 << full, dtype=np.uint64) for _ in range(2))
    c = rng.integers(0, P, 1 << short_vars, dtype=np.uint64)
    spec = SumcheckSpec.of(
        N, 3, [(1, [0, 1]), (7, [2])], masked=(True, False, True),
        table_vars=(full, full, short_vars), hiding=True,
    )
    masks = [e_random(1 << v, rng) if m else None
             for v, m in zip(spec.table_vars, spec.masked, strict=True)]
    h = sum((Fp2(int(x) * int(y)) for x, y in zip(a, b, strict=True)), Fp2(0))
    h = h + Fp2(7 * sum(int(v) for v in c) * 2 ** (full - short_vars))
    proof, claim = prove_sumcheck(spec, [a, b, c], Transcript(b"sc"), masks=masks, rng=5)
    out = verify_sumcheck(spec, proof, Transcript(b"sc"), h)
    r, lam = out.point, out.point[0] * (1 - out.point[0])
    assert out.evaluations[0] == evaluate(a, r[1:]) + lam * evaluate(masks[0], r[1:])
    assert out.evaluations[1] == evaluate(b, r[1:])
    assert out.evaluations[2] == evaluate(c, r[1:1 + short_vars]) + lam * evaluate(
        masks[2], r[1:1 + short_vars])
    assert spec.f_degrees()[0] == 2
    with pytest.raises(SumcheckError):
        verify_sumcheck(spec, proof, Transcript(b"sc"), h + 1)
    plain = dataclasses_replace(spec, hiding=False, table_vars=(N - 1, N - 1, short_vars))
    with pytest.raises(VerificationError):
        verify_sumcheck(plain, proof, Transcript(b"sc"), h)


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def _first_round_rho(spec, proof, h):
    """The verifier's rho (replayed transcript)."""
    tr = Transcript(b"sc")
    spec.absorb(tr)
    tr.absorb_ext("sumcheck.claim", h)
    proof.mask_commitment.absorb_into(tr, "sumcheck.mask")
    tr.absorb_ext("sumcheck.mask_sum", proof.mask_sum)
    return tr.challenge_ext("sumcheck.rho")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mask_randomises_both_coordinates_of_the_round_messages(rng, seed):
    """Libra's g must be uniform over the messages' field F_p2: with coefficients in F_p the
    unmasked message part T(X) is recoverable up to the line rho * F_p, i.e. (s(X) - T(X)) / rho
    would always be in F_p. Here the tables are unmasked, so T(X) of round 1 is a public
    function of them and the test computes it directly."""
    spec, tabs, _ = _instance(rng, zk=True, masked=(False, False, False))
    h = _true_sum(tabs)
    proof, _ = prove_sumcheck(spec, tabs, Transcript(b"sc"), claimed_sum=h, rng=seed)
    rho = _first_round_rho(spec, proof, h)
    rests = [[(j >> b) & 1 for b in range(N - 1)] for j in range(1 << (N - 1))]
    quotients = []
    for x, e in enumerate(proof.round_polys[0]):
        vals = [[evaluate(t, [x, *rest]) for t in tabs] for rest in rests]
        t_x = sum(
            (a * b * c + Fp2(5, 1) * a * b + Fp2(3) * c for a, b, c in vals), Fp2(0)
        )
        quotients.append((e - t_x) / rho)
    # g's round polynomial has degree >= 1, so some quotient leaves F_p (w.p. 1 - 1/p per value)
    assert any(q.c1 != 0 for q in quotients)


@pytest.mark.parametrize("hiding", [False, True])
@pytest.mark.parametrize("chunk", [4, None])
def test_table_forms_give_identical_proofs(rng, monkeypatch, hiding, chunk):
    """The prover's memory savings change no message: base tables (not lifted), a table or mask
    given by one period (:class:`Periodic`, periodic masks), chunked round sums and
    ``consume`` give the proof of the lifted, tiled tables; the caller's arrays stay as they
    were, and without ``consume`` so do its lists."""
    import lightning_zk.zk.sumcheck as sc
    from lightning_zk.zk.extension import e_from_base
    from lightning_zk.zk.sumcheck import Periodic

    n = 7
    full = n - int(hiding)
    a = rng.integers(0, P, 1 << full, dtype=np.uint64)
    b = rng.integers(0, P, 1 << (full - 2), dtype=np.uint64)  # over the leading variables
    c_period = rng.integers(0, P, 8, dtype=np.uint64)  # repeats over the leading variables
    d = e_random(1 << full, rng)
    spec = SumcheckSpec.of(
        n, 4, [(1, [0, 1, 2]), (Fp2(3, 2), [3, 0]), (5, [2]), (2, [1, 3])],
        masked=(True, False, True, True), table_vars=(full, full - 2, full, full), hiding=hiding,
    )
    mlen = 1 << (full - int(not hiding))
    mu_a = e_random(4, rng)  # a mask given by one period
    mu_c = rng.integers(0, P, 2, dtype=np.uint64)  # a base mask, one period
    mu_d = e_random(mlen, rng)

    def tiled(x, length):
        return np.tile(x, (1, length // x.shape[-1])) if x.ndim == 2 else np.tile(x, length // x.size)

    ref_tables = [e_from_base(a), e_from_base(b), e_from_base(tiled(c_period, 1 << full)), d]
    ref_masks = [tiled(mu_a, mlen), None, e_from_base(tiled(mu_c, mlen)), mu_d]
    ref, ref_claim = prove_sumcheck(spec, ref_tables, Transcript(b"sc"), masks=ref_masks, rng=3)

    if chunk is not None:
        monkeypatch.setattr(sc, "_CHUNK", chunk)
    inputs = [a, b, c_period, d, mu_a, mu_c, mu_d]
    saved = [x.copy() for x in inputs]
    for consume in (False, True):
        tables = [a, b, Periodic(c_period), d]
        masks = [mu_a, None, mu_c, mu_d]
        proof, claim = prove_sumcheck(spec, tables, Transcript(b"sc"), masks=masks, rng=3,
                                      consume=consume)
        assert proof.round_polys == ref.round_polys
        assert proof.final_evals == ref.final_evals and claim.point == ref_claim.point
        assert (len(tables), len(masks)) == ((0, 0) if consume else (4, 4))
        assert all(np.array_equal(x, y) for x, y in zip(inputs, saved, strict=True))
    h = _sum_of(spec, ref_tables, full)
    verify_sumcheck(spec, proof, Transcript(b"sc"), h)


def _sum_of(spec, tables, full):
    """The hypercube sum of f (reference: Python integers over lifted full tables)."""
    vals = [[Fp2(int(t[0, i]), int(t[1, i])) for i in range(t.shape[1])] for t in tables]
    total = Fp2(0)
    for i in range(1 << full):
        for term in spec.terms:
            prod = term.coeff
            for k in term.factors:
                prod = prod * vals[k][i >> (full - spec.table_vars[k])]
            total = total + prod
    return total


def test_period_must_divide_the_table(rng):
    from lightning_zk.zk.errors import ParameterError
    from lightning_zk.zk.sumcheck import Periodic

    spec = SumcheckSpec.of(4, 1, [(1, [0])], masked=(True,))
    t = rng.integers(0, P, 16, dtype=np.uint64)
    with pytest.raises(ParameterError, match="mask 0"):
        prove_sumcheck(spec, [t], Transcript(b"sc"), masks=[e_random(3, rng)], rng=1)
    with pytest.raises(ParameterError, match="period"):
        prove_sumcheck(spec, [Periodic(t[:3])], Transcript(b"sc"), masks=[e_random(8, rng)])
    with pytest.raises(ParameterError, match="lists"):
        prove_sumcheck(spec, (t,), Transcript(b"sc"), masks=[e_random(8, rng)], consume=True)


@pytest.mark.parametrize("hiding", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_round_kernels_give_the_generic_proof(rng, monkeypatch, hiding, threads):
    """numba's fused round sums (round 1 of a hiding sumcheck as a polynomial in X (1 - X))
    and general fold give the messages of the generic ``xp`` path, bit for bit, on one thread
    and cut into pieces on two: base, periodic and shorter tables, periodic and base masks."""
    pytest.importorskip("numba")
    from dataclasses import replace

    import lightning_zk.zk.backend as be
    from lightning_zk.zk import _numba_parallel, set_num_threads
    from lightning_zk.zk.sumcheck import Periodic

    n = 8
    full = n - int(hiding)
    a = rng.integers(0, P, 1 << full, dtype=np.uint64)
    b = rng.integers(0, P, 1 << (full - 2), dtype=np.uint64)
    c_period = rng.integers(0, P, 8, dtype=np.uint64)
    d = e_random(1 << full, rng)
    spec = SumcheckSpec.of(
        n, 4, [(1, [0, 1, 2]), (Fp2(3, 2), [3, 0]), (5, [2]), (2, [1, 3]), (7, [3, 0, 2, 1])],
        masked=(True, False, True, True), table_vars=(full, full - 2, full, full), hiding=hiding,
    )
    mlen = 1 << (full - int(not hiding))

    def run():
        masks = [e_random(4, np.random.default_rng(1)), None,
                 np.random.default_rng(2).integers(0, P, 2, dtype=np.uint64),
                 e_random(mlen, np.random.default_rng(3))]
        return prove_sumcheck(spec, [a, b, Periodic(c_period), d], Transcript(b"sc"),
                              masks=masks, rng=3)

    numba_be = be.get_backend("numpy")
    assert numba_be.round_sums is not None
    monkeypatch.setattr(_numba_parallel, "PAR_MIN", 1)
    set_num_threads(threads)
    try:
        fused, fused_claim = run()
        generic = replace(numba_be, round_sums=None, round_poly_sums=None, fold_table=None)
        monkeypatch.setattr(be, "_numpy_backend", lambda use_numba: generic)
        ref, ref_claim = run()
    finally:
        set_num_threads(None)
    assert fused.round_polys == ref.round_polys
    assert fused.final_evals == ref.final_evals and fused_claim.point == ref_claim.point
