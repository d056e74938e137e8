"""Proofs of steps with an average pooling after the first Conv2d (conv -> ReLU -> AvgPool2d(k)
-> Flatten -> Linear ...): honest units and chains verify; the proof is rejected against a
statement without the pooling or with another kernel; an altered pooled output, remainder or
pooled gradient fails the strict witness check naming the pooling relation, and a cheating
prover's proof is rejected by the verifier."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from lightning_zk.fixed.conv import ConvSpec
from lightning_zk.fixed.format import rescale
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
from .test_conv_proofs import make_conv_tapes

SPEC = ConvSpec(1, 4, 4, 2, 3, stride=1, padding=1, pool=2)  # conv 4x4, pooled 2x2
BATCH = 2


def make_pool_tapes(steps: int, seed: int = 0, loss: str = "xent", momentum: float = 0.0,
                    spec: ConvSpec = SPEC, batch: int = BATCH):
    return make_conv_tapes(steps, seed, loss, momentum, spec=spec, batch=batch, scale2=0.5,
                           conv_bias=0.2)


TAPES = make_pool_tapes(2, seed=3)


@pytest.fixture(scope="module")
def step_unit():
    return prove_step(TAPES[0], backend="numpy", rng=31)


def test_pooled_tape_is_not_trivial():
    """The test witness exercises the pooling: nonzero pooled values, remainders and gradients."""
    t = TAPES[0].tensors
    for name in ("PL", "RPL", "GPL", "RGA1"):
        assert np.count_nonzero(t[name]) > 0, name


def test_pool_step_proof_verifies_and_chains(step_unit):
    proof, stmt, link = step_unit
    assert stmt.conv == SPEC.as_tuple() == (1, 4, 4, 2, 3, 1, 1, 2)
    assert json.loads(stmt.to_bytes())["conv"] == [1, 4, 4, 2, 3, 1, 1, 2]
    assert TrainingStatement.from_bytes(stmt.to_bytes()) == stmt
    assert verify_unit(proof, stmt) is not None
    proof2, stmt2, link2 = prove_step(TAPES[1], link, backend="numpy", rng=32)
    assert verify_chain([stmt, stmt2], [proof, proof2], prove_seal(link2)) == 2
    check_batch(stmt, [TAPES[0].tensors["x"]], [TAPES[0].tensors["y"]], link.batch_seed)


def test_pool_epoch_with_mse_momentum_and_odd_batch_verifies():
    """Batch 3 (padded rows), MSE, momentum, two steps stacked in one unit."""
    tapes = make_pool_tapes(2, seed=5, loss="mse", momentum=0.5, batch=3)
    proof, stmt, link = prove_epoch(tapes, None, backend="numpy", rng=33)
    assert verify_chain([stmt], [proof], prove_seal(link)) == 2


@pytest.mark.parametrize(("spec", "batch"), [
    (ConvSpec(1, 8, 8, 2, 3, 1, 1, pool=4), 2),  # kernel 4: conv 8x8, pooled 2x2
    (ConvSpec(1, 4, 4, 2, 3, 1, 1, pool=4), 2),  # one window per image: pooled 1x1
    (ConvSpec(2, 8, 4, 3, 3, 1, 1, pool=2), 3),  # non-square, 3 filters, 3 rows: padded axes
])
def test_other_pool_shapes_verify(spec, batch):
    tape = make_pool_tapes(1, seed=7, spec=spec, batch=batch)[0]
    proof, stmt, _ = prove_step(tape, backend="numpy", rng=34)
    verify_unit(proof, stmt)


@pytest.mark.parametrize("conv", [(1, 4, 4, 2, 3, 1, 1), (1, 4, 4, 2, 3, 1, 1, 4)])
def test_statement_without_pooling_or_with_another_kernel_is_rejected(step_unit, conv):
    proof, stmt, _ = step_unit
    other = dataclasses.replace(stmt, conv=conv)  # both are consistent statements
    with pytest.raises(VerificationError):
        verify_unit(proof, other)


def _tampered(name: str, index: int = 1, delta: int = 1):
    tape = copy.deepcopy(TAPES[0])
    tape.tensors[name].reshape(-1)[index] += delta
    return tape


def _shifted_pool(name: str):
    """PL (or GA1, with GPL) off by one with the remainder moved to keep raw = 2^s q + r: only
    the remainder's range (or nothing but the relation) can catch it."""
    tape = copy.deepcopy(TAPES[0])
    t, s = tape.tensors, tape.frac_bits
    q, r = ("PL", "RPL") if name == "PL" else ("GA1", "RGA1")
    t[q].reshape(-1)[1] += 1
    t[r].reshape(-1)[1] -= 1 << s
    return tape


@pytest.mark.parametrize(("name", "relation"), [
    ("PL", "pool forward"), ("RPL", "pool forward"), ("GA1", "pool backward"),
    ("RGA1", "pool backward"), ("GPL", "pool backward"), ("RGPL", "input gradient")])
def test_altered_pool_tensor_fails_proving_naming_the_relation(name, relation):
    with pytest.raises(WitnessError, match=relation):
        prove_step(_tampered(name), backend="numpy", rng=1)


def test_pool_quotient_off_by_one_fails_the_remainder_range():
    with pytest.raises(WitnessError, match="remainder range"):
        prove_step(_shifted_pool("PL"), backend="numpy", rng=1)


@pytest.mark.parametrize(("case", "check"), [
    ("PL", "pool_forward"), ("RPL", "pool_forward"), ("GPL", "pool_backward"),
    ("GA1", "pool_backward"), ("RGA1", "pool_backward"), ("RGPL", "input_grad2"),
    ("shift-PL", None), ("shift-GA1", None)])
def test_altered_pool_witness_rejected_by_verifier(case, check):
    tape = _shifted_pool(case[6:]) if case.startswith("shift-") else _tampered(case)
    assert_cheat_rejected(tape, check=check)


def test_pool_relation_fixes_every_window_entry():
    """An altered pooled value whose window sum is kept (A1 moved within the window) is still
    caught: the pooling relation ties PL to A1, the forward relation of layer 1 ties A1 to Z1."""
    tape = copy.deepcopy(TAPES[0])
    a1 = tape.tensors["A1"]
    a1[0, 0] += 1 << 8  # (b 0, oh 0, ow 0) and (b 0, oh 0, ow 1) are in one window
    a1[1, 0] -= 1 << 8
    assert_cheat_rejected(tape)


def test_statement_pool_field_is_parsed_strictly(step_unit):
    _, stmt, _ = step_unit
    d = json.loads(stmt.to_bytes())
    for bad in ([1, 4, 4, 2, 3, 1, 1, 3], [1, 4, 4, 2, 3, 1, 1, 0], [1, 4, 4, 2, 3, 1, 1, 8],
                [1, 4, 4, 2, 3, 1, 1, 2, 2], [1, 4, 4, 2, 3, 1, 1, True]):
        with pytest.raises(ParameterError):
            TrainingStatement.from_json({**d, "conv": bad})
    small = {**d, "frac_bits": 3, "conv": [1, 8, 8, 2, 3, 1, 1, 4]}  # k^2 = 16 > 2^3
    with pytest.raises(ParameterError, match="pooling"):
        TrainingStatement.from_json(small)


def test_pool_rescale_matches_the_rounding_rule():
    """PL is round-half-up of the window mean: the engine's rows against rescale of the sums."""
    t, s = TAPES[0].tensors, TAPES[0].frac_bits
    a = t["A1"].reshape(BATCH, 2, 2, 2, 2, SPEC.filters)  # (b, ph, kh, pw, kw, f)
    sums = a.sum(axis=(2, 4)).reshape(-1, SPEC.filters)
    q, r = rescale((1 << (s - 2)) * sums, s)
    assert np.array_equal(q, t["PL"]) and np.array_equal(r, t["RPL"])
