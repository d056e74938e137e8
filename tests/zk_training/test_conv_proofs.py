"""Proofs of steps with a first Conv2d layer (im2col + Linear over patches): honest units and
chains verify; a patch matrix that is not the gathered input, altered conv weights, remainders
or gradients fail proving or are rejected; another conv shape in the statement is rejected."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP
from lightning_zk.fixed.conv import ConvSpec, im2col
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

SPEC = ConvSpec(1, 4, 4, 2, 3, stride=1, padding=1)  # output 4x4: rows (b, oh, ow)
BATCH, HIDDEN, CLASSES = 2, 4, 3


def make_conv_tapes(steps: int, seed: int = 0, loss: str = "xent", momentum: float = 0.0,
                    spec: ConvSpec = SPEC, batch: int = BATCH, scale2: float = 0.3,
                    conv_bias: float = 0.0):
    """Tapes of a conv (spec) → HIDDEN → CLASSES network on random data; ``scale2`` and
    ``conv_bias`` shape the activations (a pooled network wants more of its ReLUs open)."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(spec.filters, spec.channels, spec.kernel, spec.kernel)) * 0.5,
          rng.normal(size=(HIDDEN, spec.filters * spec.flat_positions)) * scale2,
          rng.normal(size=(CLASSES, HIDDEN)) * 0.5]
    bs = [rng.normal(size=spec.filters) * 0.1 + conv_bias, rng.normal(size=HIDDEN) * 0.1,
          np.zeros(CLASSES)]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.25, loss=loss, conv=spec, momentum=momentum)
    tapes = []
    for _ in range(steps):
        x = rng.normal(size=(batch, spec.image))
        y = (rng.integers(0, CLASSES, batch) if loss == "xent"
             else rng.normal(size=(batch, CLASSES)))
        tapes.append(mlp.step_float(x, y))
    return tapes


TAPES = make_conv_tapes(2, seed=3)


@pytest.fixture(scope="module")
def step_unit():
    return prove_step(TAPES[0], backend="numpy", rng=21)


def test_conv_step_proof_verifies_and_chains(step_unit):
    proof, stmt, link = step_unit
    assert stmt.conv == SPEC.as_tuple() and json.loads(stmt.to_bytes())["conv"] == list(
        SPEC.as_tuple())
    assert TrainingStatement.from_bytes(stmt.to_bytes()) == stmt
    proof2, stmt2, link2 = prove_step(TAPES[1], link, backend="numpy", rng=22)
    assert verify_chain([stmt, stmt2], [proof, proof2], prove_seal(link2)) == 2
    # the data owner opens the batch commitment with the flattened images
    check_batch(stmt, [TAPES[0].tensors["x"]], [TAPES[0].tensors["y"]], link.batch_seed)


def test_conv_epoch_with_mse_and_momentum_verifies():
    tapes = make_conv_tapes(2, seed=5, loss="mse", momentum=0.5)
    proof, stmt, link = prove_epoch(tapes, None, backend="numpy", rng=23)
    assert verify_chain([stmt], [proof], prove_seal(link)) == 2


def _tampered(name: str, index: int = 1, delta: int = 1):
    tape = copy.deepcopy(TAPES[0])
    tape.tensors[name].reshape(-1)[index] += delta
    return tape


def _pa_off_gather():
    """A tape whose patch matrix has one entry that is not the gathered pixel, and whose every
    other tensor is computed honestly from that PA (so only the im2col relation can catch it):
    the engine's step with its im2col altered."""
    from lightning_zk.fixed import engine

    def cheat(x, spec):
        pa = im2col(x, spec)
        pa[5, 4] += 3 << 10  # the centre tap of row 5: a real pixel
        return pa

    original = engine.im2col
    engine.im2col = cheat
    try:
        return make_conv_tapes(1, seed=3)[0]
    finally:
        engine.im2col = original


@pytest.mark.parametrize("name", ["PA", "W1", "RZ1", "GW1", "RGW1", "Gb1", "GA1", "Z1"])
def test_altered_conv_tensor_fails_proving(name):
    with pytest.raises(WitnessError):
        prove_step(_tampered(name), backend="numpy", rng=1)


def test_patch_matrix_not_gathered_fails_proving():
    assert not np.array_equal(_pa_off_gather().tensors["PA"], im2col(TAPES[0].tensors["x"], SPEC))
    with pytest.raises(WitnessError, match="im2col"):
        prove_step(_pa_off_gather(), backend="numpy", rng=1)


@pytest.mark.parametrize("case", ["PA-gather", "PA", "W1", "RZ1", "GW1", "RGW1", "GA1"])
def test_altered_conv_witness_rejected_by_verifier(case):
    assert_cheat_rejected(_pa_off_gather() if case == "PA-gather" else _tampered(case))


@pytest.mark.parametrize("conv", [(1, 4, 4, 2, 3, 1, 0), (1, 4, 4, 2, 3, 2, 1), ()])
def test_statement_with_another_conv_shape_is_rejected(step_unit, conv):
    proof, stmt, _ = step_unit
    try:
        other = dataclasses.replace(stmt, conv=conv)
    except ParameterError:
        return  # not even a consistent statement
    with pytest.raises(VerificationError):
        verify_unit(proof, other)


def test_conv_output_not_a_power_of_two_is_not_proved():
    spec = ConvSpec(1, 6, 6, 2, 3, 1, 1)  # 6x6 output: the Flatten is no relabelling
    rng = np.random.default_rng(0)
    mlp = FixedPointMLP.from_float([rng.normal(size=(2, 1, 3, 3)) * .3, rng.normal(size=(3, 72)) * .1],
                                   [np.zeros(2), np.zeros(3)], lr=0.125, conv=spec)
    tape = mlp.step_float(rng.normal(size=(2, 36)) * .5, rng.normal(size=(2, 3)) * .1)
    with pytest.raises(ParameterError, match="powers of two"):
        prove_step(tape, backend="numpy", rng=1)


def test_statement_conv_field_is_parsed_strictly(step_unit):
    _, stmt, _ = step_unit
    d = json.loads(stmt.to_bytes())
    for bad in ([1, 4, 4, 2, 3, 1], [1, 4, 4, 2, 3, 1, True], "1,4,4,2,3,1,1",
                [1, 4, 4, 3, 3, 1, 1]):
        with pytest.raises(ParameterError):
            TrainingStatement.from_json({**d, "conv": bad})
    with pytest.raises(ParameterError, match="patch entries"):  # a verifier's work is bounded
        TrainingStatement.from_json({**d, "conv": [1, 4096, 4096, 2, 3, 1, 1],
                                     "dims": [9, 2, *d["dims"][2:]]})
    missing = {k: v for k, v in d.items() if k != "conv"}
    with pytest.raises(ParameterError):
        TrainingStatement.from_json(missing)
    # one image per batch, or one filter: the relations' layout cannot hold them (refused here,
    # and at the run's start, instead of failing in the prover)
    with pytest.raises(ParameterError, match="batch of 2 or more"):
        TrainingStatement.from_json({**d, "batch_size": 1})
    with pytest.raises(ParameterError, match="2 or more filters"):
        TrainingStatement.from_json({**d, "conv": [1, 4, 4, 1, 3, 1, 1],
                                     "dims": [9, 1, *d["dims"][2:]]})
