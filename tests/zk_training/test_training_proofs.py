"""Honest step/epoch proofs verify; other statements, steps and commitments are rejected."""

from __future__ import annotations

import dataclasses

import pytest

from lightning_zk.zk import VerificationError
from lightning_zk.zk.training import (
    ChainError,
    TrainingStatement,
    decode_training_proof,
    encode_training_proof,
    proof_part_sizes,
    prove_seal,
    prove_step,
    resume_link,
    verify_chain,
    verify_unit,
)

from .conftest import make_tapes


def test_honest_step_chain_verifies(run):
    stmts = [s for _, s in run.step_proofs]
    proofs = [p for p, _ in run.step_proofs]
    assert verify_chain(stmts, proofs, run.step_seal) == 3


def test_honest_epoch_verifies(run):
    assert run.epoch_statement.num_steps == 3 and run.epoch_statement.arch.num_instances == 4
    assert verify_chain([run.epoch_statement], [run.epoch_proof], run.epoch_seal) == 3


def test_proof_part_sizes_account_for_the_encoding(run):
    proof, _ = run.step_proofs[0]
    parts = proof_part_sizes(proof)
    assert {"commitments", "sumcheck: range check", "opening: wit", "opening: batch"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    total = len(encode_training_proof(proof))
    framing = total - sum(parts.values())
    assert 0 < framing < 64  # header and the sumcheck list's length; nothing uncounted


def test_encode_decode_round_trip_verifies(run):
    proof, stmt = run.step_proofs[0]
    back = decode_training_proof(encode_training_proof(proof))
    verify_unit(back, stmt)
    assert TrainingStatement.from_bytes(stmt.to_bytes()) == stmt


def test_step_proof_does_not_verify_as_next_step(run):
    proof, stmt = run.step_proofs[0]
    with pytest.raises(VerificationError):
        verify_unit(proof, dataclasses.replace(stmt, step_start=stmt.step_start + 1))


def test_proof_does_not_verify_against_other_commitments(run):
    (p0, s0), (p1, s1), _ = run.step_proofs
    with pytest.raises(VerificationError):
        verify_unit(p0, dataclasses.replace(s0, weights_out=s1.weights_out))
    with pytest.raises(VerificationError):
        verify_unit(p1, dataclasses.replace(s1, weights_in=s0.weights_in))
    with pytest.raises(VerificationError):
        verify_unit(p1, s0)


@pytest.mark.parametrize("field, value", [("lr", 1), ("mse_const", 5), ("value_bits", 30)])
def test_other_public_constants_rejected(run, field, value):
    proof, stmt = run.step_proofs[0]
    with pytest.raises(VerificationError):
        verify_unit(proof, dataclasses.replace(stmt, **{field: value}))


def test_chain_breaks_when_a_step_is_missing(run):
    (p0, s0), (p1, s1), (p2, s2) = run.step_proofs
    with pytest.raises(ChainError, match="consecutive|B_in"):
        verify_chain([s0, s2], [p0, p2], run.step_seal)


def test_chain_breaks_when_reordered_or_not_started(run):
    (p0, s0), (p1, s1), (p2, s2) = run.step_proofs
    with pytest.raises(ChainError):
        verify_chain([s1, s2], [p1, p2], run.step_seal)
    with pytest.raises(ChainError):
        verify_chain([s0, s2, s1], [p0, p2, p1], run.step_seal)


def test_chain_needs_the_seal(run):
    stmts = [s for _, s in run.step_proofs]
    proofs = [p for p, _ in run.step_proofs]
    with pytest.raises(ChainError, match="seal"):
        verify_chain(stmts, proofs, None)
    with pytest.raises(VerificationError):
        verify_chain(stmts, proofs, run.epoch_seal)


def test_chain_rejects_carried_claim_from_another_run(run):
    (p0, s0), (p1, s1), _ = run.step_proofs
    forged = dataclasses.replace(p1, carried_value=p1.carried_value + 1)
    with pytest.raises(VerificationError):
        verify_chain([s0, s1], [p0, forged], run.step_seal)


def test_statement_json_rejects_malformed():
    from lightning_zk.zk import ParameterError

    with pytest.raises(ParameterError):
        TrainingStatement.from_bytes(b"[1, 2]")
    with pytest.raises(ParameterError):
        TrainingStatement.from_bytes(b'{"format": "lightning-zk/training-statement"}')


def test_initial_carried_point_must_be_the_challenge(run):
    from lightning_zk.zk import Fp2

    proof, stmt = run.step_proofs[0]
    point = list(proof.carried_point)
    point[0] = point[0] + Fp2(1)
    with pytest.raises(ChainError, match="initial"):
        verify_unit(dataclasses.replace(proof, carried_point=point), stmt)


def test_missing_relation_sumcheck_rejected(run):
    from lightning_zk.zk import ShapeMismatchError

    proof, stmt = run.step_proofs[0]
    with pytest.raises(ShapeMismatchError):
        verify_unit(dataclasses.replace(proof, sumchecks=proof.sumchecks[:-1]), stmt)


def test_seal_for_other_statement_rejected(run):
    from lightning_zk.zk.training import verify_seal

    (_, s0), _, (_, s2) = run.step_proofs
    from lightning_zk.zk.training import PendingClaim

    claim = PendingClaim(tuple(run.step_seal.pending_point), run.step_seal.pending_value,
                         run.step_seal.pending_lam)
    verify_seal(run.step_seal, s2, claim)
    with pytest.raises(VerificationError):
        verify_seal(run.step_seal, s0, claim)


def test_epoch_proof_is_far_smaller_than_the_step_proofs(run):
    """FAC4DNN aggregation: one unit for 3 steps vs 3 single-step units (bytes, not time)."""
    epoch = len(encode_training_proof(run.epoch_proof))
    steps = sum(len(encode_training_proof(p)) for p, _ in run.step_proofs)
    assert epoch < 0.5 * steps


def test_chain_resumes_from_the_private_seed_and_weights():
    """A new process continues a chain from (statement, pending claim, weights, B_out seed)."""
    tapes = make_tapes(2, seed=11)
    p0, s0, link0 = prove_step(tapes[0], None, backend="numpy", rng=1)
    pending = verify_unit(p0, s0)
    link = resume_link(s0, pending, link0.params, link0.b_out_seed, backend="numpy")
    p1, s1, link1 = prove_step(tapes[1], link, backend="numpy", rng=2)
    assert verify_chain([s0, s1], [p0, p1], prove_seal(link1)) == 2
    with pytest.raises(ChainError, match="recommit"):
        resume_link(s0, pending, link0.params, bytes(32), backend="numpy")
    other = {k: v.copy() for k, v in link0.params.items()}
    other["W1"][0, 0] += 1
    with pytest.raises(ChainError, match="recommit"):
        resume_link(s0, pending, other, link0.b_out_seed, backend="numpy")


def test_tampered_claim_reduction_or_wit_mask_rejected(run):
    """The reduction's final values and Wit's mask commitment are checked, not trusted."""
    import copy

    from lightning_zk.zk import Fp2

    proof, stmt = run.step_proofs[0]
    bad = copy.deepcopy(proof)
    bad.sumchecks[-1].final_evals[1] = bad.sumchecks[-1].final_evals[1] + Fp2(1)
    with pytest.raises(VerificationError, match="claim reduction|opening of Wit"):
        verify_unit(bad, stmt)
    other, _ = run.step_proofs[1]
    bad = dataclasses.replace(proof, mask_commitment=other.mask_commitment)
    with pytest.raises(VerificationError):
        verify_unit(bad, stmt)
