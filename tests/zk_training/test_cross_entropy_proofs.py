"""Proofs of cross-entropy steps: honest units verify, every softmax witness tensor is pinned,
and the loss kind is part of the statement."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP
from lightning_zk.fixed.engine import mse_constant
from lightning_zk.fixed.softmax import SOFTMAX_TENSORS
from lightning_zk.zk import ParameterError, VerificationError
from lightning_zk.zk.training import (
    TrainingStatement,
    WitnessError,
    check_batch,
    prove_epoch,
    prove_seal,
    prove_step,
    verify_chain,
    verify_unit,
)

DIMS, BATCH = (4, 8, 3), 3


def make_xent_tapes(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(DIMS[i + 1], DIMS[i])) * 0.8 for i in range(2)]
    bs = [rng.normal(size=DIMS[i + 1]) * 0.1 for i in range(2)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.25, loss="xent")
    return [mlp.step_float(rng.normal(size=(BATCH, DIMS[0])), rng.integers(0, DIMS[-1], BATCH))
            for _ in range(steps)]


TAPES = make_xent_tapes(3, seed=1)


@pytest.fixture(scope="module")
def step_unit():
    proof, stmt, link = prove_step(TAPES[0], backend="numpy", rng=11)
    return proof, stmt, link


def test_cross_entropy_step_and_epoch_proofs_verify(step_unit):
    proof, stmt, link = step_unit
    assert stmt.loss == "xent" and json.loads(stmt.to_bytes())["loss"] == "xent"
    assert verify_chain([stmt], [proof], prove_seal(link)) == 1
    # an epoch of 3 steps: T = 4 with one all-zero instance
    eproof, estmt, elink = prove_epoch(TAPES, None, backend="numpy", rng=12)
    assert verify_chain([estmt], [eproof], prove_seal(elink)) == 3
    # the data owner opens the batch commitment with Yhot = 2^s onehot(labels)
    check_batch(stmt, [TAPES[0].tensors["x"]], [TAPES[0].tensors["y"]], link.batch_seed)


def _tampered(name: str, index: int = 1, delta: int = 1):
    tape = copy.deepcopy(TAPES[0])
    tape.tensors[name].reshape(-1)[index] += delta
    return tape


@pytest.mark.parametrize("name", [*SOFTMAX_TENSORS, "G", "RG", "y", "Z2"])
def test_every_softmax_tensor_altered_fails_proving(name):
    with pytest.raises(WitnessError):
        prove_step(_tampered(name), backend="numpy", rng=1)


@pytest.mark.parametrize("name", ["H", "D", "BA", "FC", "XD", "E", "SS", "P", "QP", "G"])
def test_altered_softmax_tensor_rejected_by_verifier(name):
    try:
        proof, stmt, _ = prove_step(_tampered(name), backend="numpy", rng=5, strict=False)
    except (ParameterError, ValueError):
        return  # the prover itself could not go on: also a rejection
    with pytest.raises(VerificationError):
        verify_unit(proof, stmt)


def test_another_row_maximum_is_rejected_by_the_range_check():
    """H on a non-maximal logit with D = Z[j] - Z: every identity holds, D < 0 somewhere."""
    tape = copy.deepcopy(TAPES[0])
    t = tape.tensors
    z = t["Z2"][0]
    j = int(np.argmin(z))
    assert z[j] < z.max()
    t["H"][0] = 0
    t["H"][0, j] = 1
    t["D"][0] = z[j] - z
    proof, stmt, _ = prove_step(tape, backend="numpy", rng=5, strict=False)
    with pytest.raises(VerificationError):
        verify_unit(proof, stmt)


def test_statement_with_another_loss_is_rejected(step_unit):
    proof, stmt, _ = step_unit
    for other in (dataclasses.replace(stmt, loss="mse"),
                  dataclasses.replace(stmt, loss="mse",
                                      mse_const=mse_constant(BATCH, DIMS[-1], 16))):
        with pytest.raises(VerificationError):
            verify_unit(proof, other)
    d = json.loads(stmt.to_bytes())
    for bad in ("softmax", 1, None):
        d["loss"] = bad
        with pytest.raises(ParameterError, match="loss"):
            TrainingStatement.from_bytes(json.dumps(d).encode())
    del d["loss"]
    with pytest.raises(ParameterError):
        TrainingStatement.from_bytes(json.dumps(d).encode())
