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

from .conftest import assert_cheat_rejected

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
    assert_cheat_rejected(_tampered(name))


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
    with pytest.raises(VerificationError, match="cross-entropy"):
        verify_unit(proof, dataclasses.replace(stmt, dims=(4, 8, 64)))
    d = json.loads(stmt.to_bytes())
    for bad in ("softmax", 1, None):
        d["loss"] = bad
        with pytest.raises(ParameterError, match="loss"):
            TrainingStatement.from_bytes(json.dumps(d).encode())
    del d["loss"]
    with pytest.raises(ParameterError):
        TrainingStatement.from_bytes(json.dumps(d).encode())


def _rank_mod_p(rows: list[list[int]]) -> int:
    from lightning_zk.zk.backend import P

    m, rank = [list(r) for r in rows], 0
    for col in range(len(m[0]) if m else 0):
        piv = next((i for i in range(rank, len(m)) if m[i][col]), None)
        if piv is None:
            continue
        m[rank], m[piv] = m[piv], m[rank]
        inv = pow(m[rank][col], P - 2, P)
        m[rank] = [x * inv % P for x in m[rank]]
        for i in range(len(m)):
            if i != rank and m[i][col]:
                f = m[i][col]
                m[i] = [(x - f * y) % P for x, y in zip(m[i], m[rank], strict=True)]
        rank += 1
    return rank


def test_softmax_mask_blocks_have_independent_functionals(monkeypatch):
    """Zero knowledge of the new blocks: the F_p functionals M -> M~(z_j) of the claims on each
    softmax block are linearly independent (so the masked claims are jointly uniform)."""
    from lightning_zk.zk.extension import Fp2
    from lightning_zk.zk.training import prover as prover_mod
    from lightning_zk.zk.training.layout import code_int
    from lightning_zk.zk.training.masking import mask_weights

    seen = {}
    original = prover_mod.prove_claims

    def spy(tr, claims, wit, mtable, ml, *args, **kwargs):
        seen["claims"], seen["ml"] = list(claims), ml
        return original(tr, claims, wit, mtable, ml, *args, **kwargs)

    monkeypatch.setattr(prover_mod, "prove_claims", spy)
    prove_step(TAPES[0], backend="numpy", rng=3)
    ml = seen["ml"]
    tables = {tuple(c.point): mask_weights(ml, [c.point], [Fp2(1)]) for c in seen["claims"]}
    checked = 0
    for block in ml.blocks:
        if block.name not in SOFTMAX_TENSORS:
            continue
        rows = []
        for table in tables.values():
            sub = table[:, code_int(block.mcode) :: 1 << len(block.mcode)]
            if sub.any():
                rows += [[int(x) for x in sub[0]], [int(x) for x in sub[1]]]
        assert 4 <= len(rows) and _rank_mod_p(rows) == len(rows), block.name
        checked += 1
    assert checked == len(SOFTMAX_TENSORS)
