"""FAC4DNN stacking across layers: same-shape layers share one sumcheck per relation."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP, tensor_names
from lightning_zk.zk import ParameterError, VerificationError
from lightning_zk.zk.training import (
    build_layout,
    prove_epoch,
    prove_seal,
    prove_step,
    verify_chain,
    verify_unit,
)
from lightning_zk.zk.training import prover as prover_mod
from lightning_zk.zk.training import witness as witness_mod
from lightning_zk.zk.training.common import UnitShape
from lightning_zk.zk.training.layout import Arch, layer_groups
from lightning_zk.zk.training.relations import count_wit_claims, relation_builders

from .conftest import step_chain

# layers 1-3 are 8 -> 8 after padding (true widths 7, 8, 6): one group of 3 in 4 layer slots
DIMS = (8, 7, 8, 6, 3)
BATCH = 3


def _tapes(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    L = len(DIMS) - 1
    ws = [rng.normal(size=(DIMS[i + 1], DIMS[i])) * 0.5 for i in range(L)]
    bs = [rng.normal(size=DIMS[i + 1]) * 0.1 for i in range(L)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.25)
    return [
        mlp.step_float(rng.normal(size=(BATCH, DIMS[0])), rng.normal(size=(BATCH, DIMS[-1])))
        for _ in range(steps)
    ]


TAPES = _tapes(2)


def _layout(t: int = 2):
    return build_layout(Arch(DIMS, BATCH, t), tensor_names(len(DIMS) - 1))


def test_groups_follow_padded_shapes_and_keep_the_output_layer_alone():
    assert layer_groups(Arch(DIMS, BATCH, 2)) == ((1, 2, 3), (4,))
    assert layer_groups(Arch((64, 256, 256, 10), 64, 2)) == ((1,), (2,), (3,))
    assert layer_groups(Arch((16, 16, 16), 4, 2)) == ((1,), (2,))
    assert layer_groups(Arch((5, 9, 4, 9, 4, 2), 4, 2)) == ((1,), (2, 4), (3,), (5,))


def test_stacks_are_the_union_of_their_layer_slots():
    lay = _layout()
    used = np.zeros(1 << lay.wit_vars, dtype=np.int64)
    for slot in lay.wit.values():
        used[slot.code_int :: 1 << len(slot.code)] += 1
    for slot in lay.unused:
        used[slot.code_int :: 1 << len(slot.code)] += 1
    assert used.max() == 1
    assert len(lay.unused) > 0  # 3 layers in 4 slots
    for kind in ("W", "Z", "GA", "UW", "Wn"):
        stack = lay.stacks[f"{kind}@0"]
        assert stack.axes[-1] == ("l", 2)
        mine = np.zeros(1 << lay.wit_vars, dtype=bool)
        mine[stack.code_int :: 1 << len(stack.code)] = True
        for i in (1, 2, 3):
            name = f"W{i}n" if kind == "Wn" else f"{kind}{i}"
            sub = lay.wit[name]
            assert sub.code[len(sub.code) - len(stack.code) :] == stack.code
            assert mine[sub.code_int :: 1 << len(sub.code)].all()


def test_stacking_cuts_sumchecks_and_openings():
    proof, stmt, _ = prove_step(TAPES[0], backend="numpy", rng=1)
    lay = _layout()
    relations = len(relation_builders(lay, stmt))
    assert relations == 2 * 5 + 2  # + chain, batch link
    assert len(proof.sumchecks) == relations + 2  # + the range check, the claim reduction
    # the same network without stacking would need one sumcheck per layer and relation
    per_layer = 4 * 5 - 1 + 2 + 2
    assert len(proof.sumchecks) < per_layer
    # every Wit claim of every relation goes through the claim reduction: Wit is opened at one
    # point (the other queries of its commitment are the range limbs)
    columns = UnitShape(stmt).ranges.columns
    assert count_wit_claims(lay, stmt) > 1 and proof.wit_commitment.num_points == 1 + columns


@pytest.fixture(scope="module")
def chain():
    units, seal, _ = step_chain(TAPES, 20)
    return units, seal


def test_stacked_step_chain_verifies(chain):
    units, seal = chain
    assert verify_chain([s for _, s in units], [p for p, _ in units], seal) == 2


def test_stacked_epoch_verifies():
    proof, stmt, link = prove_epoch(TAPES, None, backend="numpy", rng=9)
    assert verify_chain([stmt], [proof], prove_seal(link)) == 2


@pytest.mark.parametrize(
    "name",
    [
        "x",
        "W2",
        "b3",
        "Z3",
        "RZ1",
        "S2",
        "V3",
        "A1",
        "GZ2",
        "GA1",
        "RGA2",
        "GW3",
        "RGW2",
        "Gb1",
        "UW2",
        "RUb3",
        "W3n",
    ],
)
def test_altered_stacked_tensor_rejected_by_verifier(name):
    tape = copy.deepcopy(TAPES[0])
    tape.tensors[name].reshape(-1)[0] += 1
    try:
        proof, stmt, _ = prove_step(tape, backend="numpy", rng=5, strict=False)
    except ValueError:
        return  # the prover could not go on (e.g. a value left the range table)
    with pytest.raises(VerificationError):
        verify_unit(proof, stmt)


def test_value_in_an_unused_layer_slot_rejected(monkeypatch):
    """The 4th layer slot of the 3-layer group must stay zero: it is outside Wit's column
    support (not committed at all), and, should a prover commit it anyway, the padding terms
    of the elementwise relation reject it.

    RGA is read per layer only (input gradient), so nothing but those two sees its unused slot.
    """
    real = witness_mod.wit_table

    def planted(layout, tapes):
        out = real(layout, tapes)
        block = layout.stacks["RGA@0"].code
        (slot,) = [u for u in layout.unused if u.code[len(u.code) - len(block) :] == block]
        out[slot.code_int] = 5  # t = 0, first element of the unused layer slot
        return out

    monkeypatch.setattr(prover_mod, "wit_table", planted)
    with pytest.raises(ParameterError, match="outside its support"):
        prove_step(TAPES[0], backend="numpy", rng=5, strict=False)
    monkeypatch.setattr(UnitShape, "wit_support", property(lambda self: None))  # commit all
    proof, stmt, _ = prove_step(TAPES[0], backend="numpy", rng=5, strict=False)
    with pytest.raises(VerificationError, match="relation elementwise"):
        verify_unit(proof, stmt)
