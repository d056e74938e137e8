"""Proofs of SGD with momentum and weight decay (issue 12): the update relation, the momentum
buffer in Theta and the chain, tampering, and the statement's public constants."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP
from lightning_zk.fixed.tape import optimizer_names
from lightning_zk.zk import ParameterError, VerificationError
from lightning_zk.zk.training import (
    TrainingStatement,
    WitnessError,
    prove_epoch,
    prove_seal,
    prove_step,
    verify_chain,
    verify_unit,
)
from lightning_zk.zk.training.common import UnitShape

from .conftest import BATCH, DIMS, assert_cheat_rejected, step_chain

MU, WD = 0.875, 0.0625  # (exact at 2^-16; 0.9 / 1e-3 are rounded, as in test_fixed_mode)


def make_tapes(steps: int, seed: int = 0, momentum: float = MU, weight_decay: float = WD,
               velocity=None):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(DIMS[i + 1], DIMS[i])) * 0.5 for i in range(2)]
    bs = [rng.normal(size=DIMS[i + 1]) * 0.1 for i in range(2)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.25, momentum=momentum, weight_decay=weight_decay)
    if velocity is not None:
        mlp.set_velocity(velocity(mlp))
    return [
        mlp.step_float(rng.normal(size=(BATCH, DIMS[0])), rng.normal(size=(BATCH, DIMS[-1])))
        for _ in range(steps)
    ]


TAPES = make_tapes(3, seed=4)


@pytest.fixture(scope="module")
def chain():
    units, seal, _ = step_chain(TAPES, 20)
    return units, seal


def test_step_chain_verifies_and_binds_the_buffers(chain):
    units, seal = chain
    assert verify_chain([s for _, s in units], [p for p, _ in units], seal) == 3
    stmt = units[0][1]
    assert (stmt.momentum, stmt.weight_decay) == (57344, 4096)
    layout = UnitShape(stmt).layout
    assert layout.theta_kinds == ("W", "b", "VW", "Vb")  # B_in / B_out commit W, b and V
    assert TAPES[1].tensors["VW1"].any()  # the buffer carried from step 0 is not zero


@pytest.mark.parametrize("momentum,weight_decay", [(MU, 0.0), (0.0, WD)])
def test_momentum_only_and_weight_decay_only_epochs_verify(momentum, weight_decay):
    tapes = make_tapes(2, seed=5, momentum=momentum, weight_decay=weight_decay)
    proof, stmt, link = prove_epoch(tapes, None, backend="numpy", rng=3)
    assert verify_chain([stmt], [proof], prove_seal(link)) == 2
    kinds = UnitShape(stmt).layout.theta_kinds
    assert kinds == (("W", "b", "VW", "Vb") if momentum else ("W", "b"))


@pytest.mark.parametrize("name", optimizer_names(1, True, True) + optimizer_names(2, True, True))
def test_any_optimizer_tensor_altered_fails_proving(name):
    tape = copy.deepcopy(TAPES[1])
    tape.tensors[name].reshape(-1)[0] += 1
    with pytest.raises(WitnessError):
        prove_step(tape, backend="numpy", rng=1)


@pytest.mark.parametrize("name", ["VW1", "VW2n", "Vb1", "Vb2n", "RMW1", "MW2", "RMb2", "DW1",
                                  "RDb1"])
def test_tampered_buffer_or_remainder_rejected_by_verifier(name):
    tapes = copy.deepcopy(TAPES[:2])
    tapes[1].tensors[name].reshape(-1)[0] += 1
    assert_cheat_rejected(tapes)


def test_buffer_not_carried_between_steps_rejected():
    """Step 1 reads a buffer other than step 0's V' (self-consistent otherwise): the chain
    relation inside the unit rejects it."""
    tapes = copy.deepcopy(TAPES[:2])
    t = tapes[1].tensors
    t["VW1"][0, 0] += 1 << 10
    mu, s = tapes[1].momentum, tapes[1].frac_bits
    raw = mu * t["VW1"]
    t["MW1"] = (raw + (1 << (s - 1))) >> s
    t["RMW1"] = raw - (t["MW1"] << s)
    t["VW1n"] = t["MW1"] + t["GW1"] + t["DW1"]
    raw = tapes[1].lr * t["VW1n"]
    t["UW1"] = (raw + (1 << (s - 1))) >> s
    t["RUW1"] = raw - (t["UW1"] << s)
    t["W1n"] = t["W1"] - t["UW1"]
    with pytest.raises(WitnessError, match="chain"):
        prove_epoch(tapes, None, backend="numpy", rng=2)
    assert_cheat_rejected(tapes)


def test_remainder_out_of_range_rejected_by_the_range_check():
    """mu V = 2^s (M - 1) + (R + 2^s): the identity holds, the remainder leaves [-2^(s-1), 2^(s-1))."""
    tapes = copy.deepcopy(TAPES[:2])
    t = tapes[1].tensors
    t["MW1"][0, 0] -= 1
    t["RMW1"][0, 0] += 1 << tapes[1].frac_bits
    with pytest.raises(WitnessError, match="remainder"):
        prove_epoch(tapes, None, backend="numpy", rng=2)
    assert_cheat_rejected(tapes)


def test_nonzero_buffer_before_the_first_step_rejected():
    """The buffer is 0 before step 0 (torch has none): a run's first unit that starts from
    another buffer, its step otherwise consistent, is refused and rejected."""
    tapes = make_tapes(1, seed=4, velocity=lambda m: (
        [np.full_like(w, 3000) for w in m.weights], [np.zeros_like(b) for b in m.biases]))
    with pytest.raises(WitnessError, match="chain"):
        prove_step(tapes[0], backend="numpy", rng=2)
    assert_cheat_rejected(tapes)


def test_other_momentum_or_weight_decay_in_the_statement_rejected(chain):
    (proof, stmt), _ = chain[0][0], chain[1]
    verify_unit(proof, stmt)
    for field, value in (("momentum", stmt.momentum + 1), ("weight_decay", stmt.weight_decay - 1),
                         ("momentum", 0)):
        with pytest.raises((VerificationError, ParameterError)):
            verify_unit(proof, dataclasses.replace(stmt, **{field: value}))


def test_statement_fields_parsed_strictly(chain):
    stmt = chain[0][0][1]
    d = json.loads(stmt.to_bytes())
    assert d["version"] == 8 and d["momentum"] == stmt.momentum
    assert TrainingStatement.from_bytes(stmt.to_bytes()) == stmt
    for edit in ({"momentum": True}, {"momentum": 0.5}, {"weight_decay": "4096"},
                 {"weight_decay": -1}):
        bad = {**d, **edit}
        with pytest.raises(ParameterError, match=next(iter(edit))):
            TrainingStatement.from_json(bad)
    missing = {k: v for k, v in d.items() if k != "weight_decay"}
    with pytest.raises(ParameterError, match="weight_decay"):
        TrainingStatement.from_json(missing)
    with pytest.raises(ParameterError, match="version"):
        TrainingStatement.from_json({**missing, "version": 3})


def test_out_of_range_constants_rejected_by_the_verifier(chain):
    proof, stmt = chain[0][0]
    with pytest.raises(VerificationError, match="momentum"):
        verify_unit(proof, dataclasses.replace(stmt, momentum=1 << stmt.frac_bits))
