"""Engine pieces together: commit -> zk sumcheck on masked tables -> batched masked openings."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.zk import (
    Ligero,
    SumcheckSpec,
    Transcript,
    VerificationError,
    eq_table,
    prove_sumcheck,
    verify_sumcheck,
)
from lightning_zk.zk.backend import P
from lightning_zk.zk.multilinear import eq_eval

N = 5


def _statement(tr: Transcript, coms) -> None:
    tr.absorb_str("relation", "hadamard: C = A * B")
    tr.absorb_u64("num_vars", N)
    for i, c in enumerate(coms):
        c.absorb_into(tr, f"com{i}")


def _prove(a, b, c, pcs):
    coms, states = zip(*(pcs.commit(t, num_points=1) for t in (a, b, c)), strict=True)
    tr = Transcript(b"lightning-zk/test/hadamard")
    _statement(tr, coms)
    tau = tr.challenge_ext_list("tau", N)
    # sum_x eq(tau, x) (A(x) B(x) - C(x)) = 0 with A, B, C masked for zero knowledge
    spec = SumcheckSpec.of(N, 4, [(1, [0, 1, 2]), (-1, [0, 3])], masked=[False, True, True, True])
    masks = [None] + [pcs.round1_mask(s, 0) for s in states]
    proof, claim = prove_sumcheck(spec, [eq_table(tau), a, b, c], tr, claimed_sum=0, masks=masks)
    openings = [pcs.open(s, [claim.point], tr) for s in states]
    return coms, proof, openings


def _verify(coms, proof, openings, pcs):
    tr = Transcript(b"lightning-zk/test/hadamard")
    _statement(tr, coms)
    tau = tr.challenge_ext_list("tau", N)
    spec = SumcheckSpec.of(N, 4, [(1, [0, 1, 2]), (-1, [0, 3])], masked=[False, True, True, True])
    claim = verify_sumcheck(spec, proof, tr, 0)
    if claim.evaluations[0] != eq_eval(tau, claim.point):
        raise VerificationError(
            "eq(tau, r)", expected=eq_eval(tau, claim.point), got=claim.evaluations[0]
        )
    for i, (com, op) in enumerate(zip(coms, openings, strict=True)):
        pcs.verify(com, [claim.point], [claim.evaluations[i + 1]], op, tr)


def test_hadamard_relation_end_to_end(rng):
    pcs = Ligero()
    a = rng.integers(0, P, 1 << N, dtype=np.uint64)
    b = rng.integers(0, P, 1 << N, dtype=np.uint64)
    c = np.array([int(x) * int(y) % P for x, y in zip(a, b, strict=True)], dtype=np.uint64)
    coms, proof, openings = _prove(a, b, c, pcs)
    _verify(coms, proof, openings, pcs)
    # the verifier saw masked values, not plain evaluations of the witness
    from lightning_zk.zk.multilinear import evaluate

    assert proof.final_evals[1] != evaluate(a, _point(coms, proof))


def _point(coms, proof):
    tr = Transcript(b"lightning-zk/test/hadamard")
    _statement(tr, coms)
    tr.challenge_ext_list("tau", N)
    spec = SumcheckSpec.of(N, 4, [(1, [0, 1, 2]), (-1, [0, 3])], masked=[False, True, True, True])
    return verify_sumcheck(spec, proof, tr, 0).point


def test_false_statement_rejected(rng):
    pcs = Ligero()
    a = rng.integers(0, P, 1 << N, dtype=np.uint64)
    b = rng.integers(0, P, 1 << N, dtype=np.uint64)
    c = np.array([int(x) * int(y) % P for x, y in zip(a, b, strict=True)], dtype=np.uint64)
    c[3] = (int(c[3]) + 1) % P
    coms, proof, openings = _prove(a, b, c, pcs)
    with pytest.raises(VerificationError):
        _verify(coms, proof, openings, pcs)


def test_proof_does_not_transfer_to_another_commitment(rng):
    pcs = Ligero()
    a = rng.integers(0, P, 1 << N, dtype=np.uint64)
    b = rng.integers(0, P, 1 << N, dtype=np.uint64)
    c = np.array([int(x) * int(y) % P for x, y in zip(a, b, strict=True)], dtype=np.uint64)
    coms, proof, openings = _prove(a, b, c, pcs)
    other, _ = pcs.commit(a, num_points=1)
    with pytest.raises(VerificationError):
        _verify((other, coms[1], coms[2]), proof, openings, pcs)
