"""The statement's batch commitment: bound to Wit's x and y, opened once, re-computable by the
data owner from the data and the unit's secret seed."""

from __future__ import annotations

import copy
import dataclasses
import json
import struct

import numpy as np
import pytest

from lightning_zk.fixed import WitnessTape
from lightning_zk.zk import ParameterError, ProofFormatError, ShapeMismatchError, VerificationError
from lightning_zk.zk.proof_format import _put_ligero, _Writer
from lightning_zk.zk.training import (
    BatchCheckError,
    TrainingStatement,
    batch_commitment,
    check_batch,
    decode_training_proof,
    encode_training_proof,
    prove_step,
    verify_chain,
    verify_unit,
)
from lightning_zk.zk.training import prover as prover_mod
from lightning_zk.zk.training.batch import BATCH_POINTS, batch_layout, seeded_rng
from lightning_zk.zk.training.statement import STATEMENT_VERSION

from .conftest import DIMS
from .test_tampering import TAPES, _consistent_step


def _xy(tapes):
    return [t.tensors["x"] for t in tapes], [t.tensors["y"] for t in tapes]


# --- honest units -----------------------------------------------------------------------------


def test_honest_step_units_commit_to_their_batch(run):
    stmts = [s for _, s in run.step_proofs]
    assert verify_chain(stmts, [p for p, _ in run.step_proofs], run.step_seal) == 3
    for (_, stmt), tape, seed in zip(run.step_proofs, run.tapes, run.step_seeds, strict=True):
        assert stmt.batch.num_points == BATCH_POINTS == 2
        assert stmt.batch.num_vars == batch_layout(stmt.arch).num_vars
        check_batch(stmt, *_xy([tape]), seed)
    assert len({s.batch.root for s in stmts}) == 3  # one batch commitment per unit
    assert len(set(run.step_seeds)) == 3 and all(len(s) == 32 for s in run.step_seeds)


def test_honest_epoch_unit_commits_to_all_its_batches(run):
    stmt = run.epoch_statement
    assert verify_chain([stmt], [run.epoch_proof], run.epoch_seal) == 3
    check_batch(stmt, *_xy(run.tapes), run.epoch_seed)
    # T = 4 against T = 1 for a single step: two more (instance) variables
    assert stmt.batch.num_vars == batch_layout(stmt.arch).num_vars
    assert stmt.batch.num_vars == run.step_proofs[0][1].batch.num_vars + 2


def test_statement_json_carries_the_batch_commitment(run):
    _, stmt = run.step_proofs[0]
    d = json.loads(stmt.to_bytes())
    assert d["version"] == STATEMENT_VERSION == 8
    assert d["batch"]["root"] == stmt.batch.root.hex()
    assert TrainingStatement.from_bytes(stmt.to_bytes()).batch == stmt.batch


# --- the verifier binds the batch -------------------------------------------------------------


def test_statement_with_another_units_batch_commitment_rejected(run):
    (p0, s0), (p1, s1), _ = run.step_proofs
    with pytest.raises(VerificationError):
        verify_unit(p0, dataclasses.replace(s0, batch=s1.batch))
    with pytest.raises(VerificationError):
        verify_unit(p1, dataclasses.replace(s1, batch=s0.batch))
    # the epoch unit's batch commitment has another shape (T = 4)
    with pytest.raises(ShapeMismatchError, match="batch commitment"):
        verify_unit(p0, dataclasses.replace(s0, batch=run.epoch_statement.batch))


def test_chain_with_a_replaced_batch_commitment_rejected(run):
    stmts = [s for _, s in run.step_proofs]
    stmts[1] = dataclasses.replace(stmts[1], batch=stmts[2].batch)
    with pytest.raises(VerificationError):
        verify_chain(stmts, [p for p, _ in run.step_proofs], run.step_seal)


def _tape_on(x, y) -> WitnessTape:
    """An honest, internally consistent step of TAPES[0]'s weights on the batch (x, y)."""
    src = TAPES[0]
    t = _consistent_step(x, y)
    return WitnessTape(src.step, src.dims, src.frac_bits, src.value_bits, src.lr, src.mse_const,
                       src.batch_size, t)


@pytest.mark.parametrize("name", ["x", "y"])
def test_wit_batch_differs_from_committed_batch_rejected(monkeypatch, name):
    """Wit holds a consistent step on altered data; the statement commits to the real data."""
    src = TAPES[0]
    x, y = src.tensors["x"].copy(), src.tensors["y"].copy()
    (x if name == "x" else y)[1, 2] += 1
    tape = _tape_on(x, y)
    real_commit = prover_mod.commit_batch

    def commit_real_data(pcs, layout, xs, ys, seed, xp):
        return real_commit(pcs, layout, [src.tensors["x"]], [src.tensors["y"]], seed, xp)

    monkeypatch.setattr(prover_mod, "commit_batch", commit_real_data)
    proof, stmt, link = prove_step(tape, backend="numpy", rng=5)  # the witness itself is honest
    check_batch(stmt, [src.tensors["x"]], [src.tensors["y"]], link.batch_seed)  # real data
    with pytest.raises(VerificationError) as info:
        verify_unit(proof, stmt)
    assert "batch_link" in str(info.value), str(info.value)


def test_same_cheat_without_the_substitution_verifies(monkeypatch):
    """Control for the test above: the altered step itself is a valid step on its own data."""
    src = TAPES[0]
    x = src.tensors["x"].copy()
    x[1, 2] += 1
    tape = _tape_on(x, src.tensors["y"])
    proof, stmt, link = prove_step(tape, backend="numpy", rng=5)
    verify_unit(proof, stmt)
    with pytest.raises(BatchCheckError):
        check_batch(stmt, [src.tensors["x"]], [src.tensors["y"]], link.batch_seed)


# --- the opening in the proof bytes -----------------------------------------------------------


def _opening_len(proof) -> int:
    w = _Writer()
    _put_ligero(w, proof.batch_opening)
    return len(b"".join(w.parts))


def test_any_byte_of_the_batch_opening_altered_rejected(run):
    proof, stmt = run.step_proofs[0]
    data = encode_training_proof(proof)
    n = _opening_len(proof)
    start = len(data) - n
    rng = np.random.default_rng(1)
    positions = [start, start + 1, start + 8, len(data) - 1,
                 *sorted(rng.choice(np.arange(start, len(data)), 16, replace=False).tolist())]
    rejected = 0
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        try:
            decoded = decode_training_proof(bytes(bad))
        except ProofFormatError:
            rejected += 1
            continue
        with pytest.raises(VerificationError):
            verify_unit(decoded, stmt)
        rejected += 1
    assert rejected == len(positions)


def test_batch_opening_of_another_unit_rejected(run):
    (p0, s0), (p1, _), _ = run.step_proofs
    with pytest.raises(VerificationError, match="batch"):
        verify_unit(dataclasses.replace(p0, batch_opening=p1.batch_opening), s0)


def test_proof_without_batch_opening_or_of_version_1_rejected(run):
    proof, _ = run.step_proofs[0]
    data = encode_training_proof(proof)
    with pytest.raises(ProofFormatError):
        decode_training_proof(data[: len(data) - _opening_len(proof)])
    old = data[:4] + struct.pack("<H", 1) + data[6:]
    with pytest.raises(ProofFormatError, match="version 1"):
        decode_training_proof(old)


# --- the data owner's check -------------------------------------------------------------------


def test_check_batch_accepts_right_data_and_seed(run):
    _, stmt = run.step_proofs[1]
    xs, ys = _xy([run.tapes[1]])
    check_batch(stmt, xs, ys, run.step_seeds[1])
    again = batch_commitment(xs, ys, DIMS, run.step_seeds[1])
    assert again == stmt.batch  # deterministic from (data, seed)


def test_check_batch_rejects_other_data(run):
    _, stmt = run.step_proofs[1]
    seed = run.step_seeds[1]
    xs, ys = _xy([run.tapes[1]])
    with pytest.raises(BatchCheckError):
        check_batch(stmt, *_xy([run.tapes[0]]), seed)  # another step's batch
    for which in (0, 1):
        alt = [copy.deepcopy(xs), copy.deepcopy(ys)]
        alt[which][0][0, 0] += 1  # one fixed-point unit in one element
        with pytest.raises(BatchCheckError, match="batch commitment"):
            check_batch(stmt, alt[0], alt[1], seed)
    with pytest.raises(BatchCheckError, match="number of steps"):
        check_batch(stmt, xs * 2, ys * 2, seed)
    with pytest.raises(BatchCheckError, match="batch size"):
        check_batch(stmt, [xs[0][:2]], [ys[0][:2]], seed)
    with pytest.raises(BatchCheckError):
        check_batch(stmt, [xs[0].astype(np.float64)], ys, seed)  # not fixed-point integers


def test_check_batch_rejects_another_seed(run):
    _, stmt = run.step_proofs[1]
    xs, ys = _xy([run.tapes[1]])
    for seed in (run.step_seeds[0], bytes(32), run.step_seeds[1][:-1] + b"\0"):
        if seed == run.step_seeds[1]:
            continue
        with pytest.raises(BatchCheckError):
            check_batch(stmt, xs, ys, seed)
    with pytest.raises(ParameterError):
        batch_commitment(xs, ys, DIMS, b"short")


def test_seeded_rng_is_deterministic_and_seed_dependent():
    a, b, c = seeded_rng(bytes(32)), seeded_rng(bytes(32)), seeded_rng(b"\1" + bytes(31))
    first = a.bytes(5) + a.bytes(70)
    assert first == b.bytes(75)
    assert first != c.bytes(75)
    assert np.array_equal(seeded_rng(bytes(32)).field(10), seeded_rng(bytes(32)).field(10))


# --- statement versions -----------------------------------------------------------------------


def test_version_1_statement_rejected(run):
    _, stmt = run.step_proofs[0]
    d = stmt.to_json()
    d["version"] = 1
    del d["batch"]
    with pytest.raises(ParameterError, match="version 1 unsupported.*no batch commitment"):
        TrainingStatement.from_json(d)
    d = stmt.to_json()
    del d["batch"]
    with pytest.raises(ParameterError, match="missing fields \\['batch'\\]"):
        TrainingStatement.from_json(d)
    d = stmt.to_json()
    d["batch"] = "00" * 32
    with pytest.raises(ParameterError, match="'batch'.*expected a JSON object"):
        TrainingStatement.from_json(d)
