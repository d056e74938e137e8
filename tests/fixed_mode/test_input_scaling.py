"""A training_step that scales its input (``net(x / 16)``) trains and proves the scaled
computation: XS = rescale(k x) is in the witness, the statement carries the op and literal, the
verifier derives k and the template graph itself, and the proof fails for the unscaled step."""

from __future__ import annotations

import copy
import dataclasses
import json

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import _read_chain, verify_run
from lightning_zk.fixed import FixedPointMLP, WitnessTape, quantize
from lightning_zk.fixed.intercept import UnsupportedOpError
from lightning_zk.fixed.reference import ref_rescale, reference_sgd_step
from lightning_zk.fixed.scaling import InputScale, InputScaleError, InputView
from lightning_zk.fixed.tape import TapeFormatError
from lightning_zk.strategies.fixed import NotProvableError
from lightning_zk.zk.errors import ParameterError, VerificationError
from lightning_zk.zk.training import TrainingStatement, prove_step, verify_unit
from lightning_zk.zk.training.witness import WitnessError, check_witness
from tests.fixed_mode.test_conv import CNN, image_data
from tests.models import trainer_kwargs
from tests.zk_training.conftest import assert_cheat_rejected

S, Q = 16, 24
SIXTEENTH = InputScale("div", 16 << S, "int")  # x / 16: k = 2^s / 16
ONE_SIXTEENTH = torch.tensor(0.0625)  # a constant made outside the step (e.g. at import)


class Pixels(L.LightningModule):
    """Digits-like data (integer pixel values 0..16) scaled to [0, 1] inside the step."""

    def __init__(self, step=None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.step_fn = step or (lambda m, x, y: F.mse_loss(m.net(x / 16), y))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.step_fn(self, x, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def pixel_data(n: int = 16, divide: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 17, (n, 4), generator=g).float()
    y = 0.5 * x[:, :3] / 16 - 0.25
    return TensorDataset(x / 16 if divide else x, y)


def fit(path, model, steps=4, callbacks=(), divide=False):
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=steps,
                        callbacks=list(callbacks), **trainer_kwargs())
    trainer.fit(model, train_dataloaders=DataLoader(pixel_data(divide=divide), batch_size=4))
    return model


def _make(**kw) -> Pixels:
    L.seed_everything(0, verbose=False)
    return Pixels(**kw)


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaled") / "run"
    model = fit(path, _make(), callbacks=[CommitCallback(), ProofCallback()])
    return path, model


def test_a_step_that_scales_its_input_trains_and_proves_the_scaled_computation(scaled_run,
                                                                              tmp_path):
    path, model = scaled_run
    report = verify_run(path)
    assert report.ok, report.problems
    statements, _, _ = _read_chain(RunDirectory(path))
    assert {s.input_ops for s in statements} == {(SIXTEENTH,)}
    assert statements[0].input_multiplier == 1 << (S - 4)
    # the scaled computation is what trained: the same network fed x / 16 (exact on these
    # pixels) outside the step ends with the very same weights
    plain = fit(tmp_path / "plain", _make(step=lambda m, x, y: F.mse_loss(m.net(x), y)),
                divide=True)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    records = RunDirectory(path).read_steps()
    plain_records = RunDirectory(tmp_path / "plain").read_steps()
    assert records[0].extra["graph_sha256"] != plain_records[0].extra["graph_sha256"]


def test_the_proof_fails_for_the_unscaled_computation(scaled_run):
    path, _ = scaled_run
    statements, units, _ = _read_chain(RunDirectory(path))
    stmt, proof = statements[0], units[0]
    verify_unit(proof, stmt)
    for other in ((), (InputScale("div", 8 << S, "int"),), (InputScale("mul", 1 << (S - 4)),)):
        with pytest.raises(VerificationError):  # shape, chain or sumcheck
            verify_unit(proof, dataclasses.replace(stmt, input_ops=other))


@pytest.mark.parametrize("spelling,scale", [
    (lambda m, x, y: F.mse_loss(m.net(x * 0.0625), y), InputScale("mul", 1 << (S - 4))),
    (lambda m, x, y: F.mse_loss(m.net(0.0625 * x), y), InputScale("mul", 1 << (S - 4))),
    (lambda m, x, y: F.mse_loss(m.net(torch.mul(x, 0.0625)), y), InputScale("mul", 1 << (S - 4))),
    (lambda m, x, y: F.mse_loss(m.net(x.div(16)), y), SIXTEENTH),
    (lambda m, x, y: F.mse_loss(m.net(x * ONE_SIXTEENTH), y),
     InputScale("mul", 1 << (S - 4), "tensor")),
    (lambda m, x, y: F.mse_loss(m.net(x / 16.0), y), InputScale("div", 16 << S, "float")),
])
def test_every_spelling_of_the_scaling_trains_the_same_arithmetic(tmp_path, spelling, scale):
    model = fit(tmp_path / "run", _make(step=spelling), steps=1)
    run = RunDirectory(tmp_path / "run")
    tape = WitnessTape.load(run.path / run.read_steps()[0].extra["tape"])
    assert tape.input_ops == (scale,)
    reference = fit(tmp_path / "ref", _make(), steps=1)  # x / 16
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_scaling_the_grid_cannot_hold_is_refused_before_training(tmp_path):
    model = _make(step=lambda m, x, y: F.mse_loss(m.net(x / 3), y))
    with pytest.raises(UnsupportedOpError, match="not exact"):
        fit(tmp_path / "run", model, steps=1)
    twice = _make(step=lambda m, x, y: F.mse_loss(m.net(x / 4 / 4), y))
    with pytest.raises(NotProvableError, match="aten.div"):  # one scaling, not two
        fit(tmp_path / "twice", twice, steps=1)


def test_input_scale_multipliers_and_refusals():
    assert SIXTEENTH.multiplier(S, Q) == 1 << 12
    assert InputScale("mul", -(3 << S)).multiplier(S, Q) == -(3 << S)
    assert InputScale("div", -(1 << (S - 1))).multiplier(S, Q) == -(1 << (S + 1))
    for bad, why in [(InputScale("div", 3 << S), "not exact"),
                     (InputScale("mul", 1 << S), "no scaling"),
                     (InputScale("mul", 1 << Q), "2\\^23"),
                     (InputScale("div", 1), "2\\^23")]:
        with pytest.raises(InputScaleError, match=why):
            bad.multiplier(S, Q)
    for op, const, form in [("pow", 2, "int"), ("mul", 0, "int"), ("mul", 1.5, "float"),
                            ("mul", True, "int"), ("mul", 2, "double")]:
        with pytest.raises(InputScaleError):
            InputScale(op, const, form)
    with pytest.raises(InputScaleError, match="no int"):
        InputScale("mul", 3, "int").multiplier(S, Q)


def _reference_scaled(weights, biases, x, y, lr, mse, k):
    xs = [[ref_rescale(k * v, S)[0] for v in row] for row in x]
    return reference_sgd_step(weights, biases, xs, y, lr, mse, S)


@pytest.mark.parametrize("scale", [SIXTEENTH, InputScale("mul", 3 << (S - 2)),
                                   InputScale("mul", -(5 << (S - 3)))])
def test_the_engine_equals_the_integer_reference_with_a_scaled_input(scale):
    rng = np.random.default_rng(4)
    w = [quantize(rng.normal(size=(5, 6)) * 0.4, S), quantize(rng.normal(size=(3, 5)) * 0.4, S)]
    b = [quantize(rng.normal(size=5) * 0.1, S), quantize(rng.normal(size=3) * 0.1, S)]
    x = quantize(rng.normal(size=(4, 6)) * 3, S)
    y = quantize(rng.normal(size=(4, 3)), S)
    engine = FixedPointMLP(w, b, lr=1 << (S - 4), input_ops=(scale,))
    tape = engine.step(x, y)
    check_witness([tape], None)
    k = scale.multiplier(S, Q)
    new_w, new_b, out, _, _ = _reference_scaled([a.tolist() for a in w], [a.tolist() for a in b],
                                                x.tolist(), y.tolist(), tape.lr, tape.mse_const, k)
    assert tape.tensors["Z2"].tolist() == out
    assert [tape.tensors[f"W{i}n"].tolist() for i in (1, 2)] == new_w
    assert [tape.tensors[f"b{i}n"].tolist() for i in (1, 2)] == new_b
    assert not np.array_equal(tape.tensors["XS"], x)


@pytest.fixture(scope="module")
def scaled_tape():
    rng = np.random.default_rng(5)
    w = [quantize(rng.normal(size=(8, 16)) * 0.3, S), quantize(rng.normal(size=(4, 8)) * 0.3, S)]
    b = [np.zeros(8, np.int64), np.zeros(4, np.int64)]
    engine = FixedPointMLP(w, b, lr=1 << (S - 3), input_ops=(InputScale("mul", 3 << (S - 2)),))
    x = quantize(rng.integers(0, 17, size=(8, 16)).astype(float), S)
    return engine.step(x, quantize(rng.normal(size=(8, 4)), S)), (w, b)


def test_an_altered_scaled_input_is_rejected(scaled_tape):
    tape, _ = scaled_tape
    proof, stmt, _ = prove_step(tape, None)
    verify_unit(proof, stmt)
    for name, delta in (("XS", 1), ("RXS", 1)):
        bad = copy.deepcopy(tape)
        bad.tensors[name][1, 2] += delta
        with pytest.raises(WitnessError, match="input scaling"):
            check_witness([bad], None)
        assert_cheat_rejected(bad)


def test_a_consistent_step_on_a_forged_scaled_input_is_rejected_by_the_range_check(scaled_tape):
    """XS + 1 with RXS - 2^s satisfies k x = 2^s XS + RXS, and the step computed on that XS is
    consistent everywhere downstream: only the remainder's range tells, and the proof fails."""
    tape, (w, b) = scaled_tape
    forged_xs = tape.tensors["XS"].copy()
    forged_xs[0, 0] += 1
    again = FixedPointMLP(w, b, lr=tape.lr).step(forged_xs, tape.tensors["y"])
    forged = dataclasses.replace(tape, tensors=dict(again.tensors))
    k = tape.input_scale.multiplier(S, Q)
    forged.tensors.update(x=tape.tensors["x"], XS=forged_xs,
                          RXS=k * tape.tensors["x"] - (forged_xs << S))
    assert np.array_equal(k * forged.tensors["x"], (forged_xs << S) + forged.tensors["RXS"])
    with pytest.raises(WitnessError, match="remainder range"):
        check_witness([forged], None)
    assert_cheat_rejected(forged, check="range check")


def test_tapes_carry_the_scaling_and_older_tapes_still_load(scaled_tape, tmp_path):
    tape, _ = scaled_tape
    tape.save(tmp_path / "t.npz")
    back = WitnessTape.load(tmp_path / "t.npz")
    assert back.input_ops == tape.input_ops and back.header()["version"] == 4
    assert np.array_equal(back.tensors["XS"], tape.tensors["XS"])
    plain = FixedPointMLP([np.eye(3, dtype=np.int64) << S], [np.zeros(3, np.int64)], lr=1 << 12)
    pt = plain.step(np.ones((2, 3), np.int64) << S, np.zeros((2, 3), np.int64))
    v3 = {k: v for k, v in pt.header().items() if k != "input_ops"} | {"version": 3}
    np.savez(tmp_path / "v3.npz", **pt.tensors,
             __header__=np.frombuffer(json.dumps(v3).encode(), dtype=np.uint8))
    assert WitnessTape.load(tmp_path / "v3.npz").input_ops == ()  # version 3: none
    np.savez(tmp_path / "v3s.npz", **tape.tensors, __header__=np.frombuffer(
        json.dumps(tape.header() | {"version": 3}).encode(), dtype=np.uint8))
    with pytest.raises(TapeFormatError, match="input_ops disagree"):
        WitnessTape.load(tmp_path / "v3s.npz")
    bad = dataclasses.replace(tape, input_ops=(InputScale("div", 3 << S),))
    with pytest.raises(TapeFormatError, match="not exact"):
        bad.validate()
    unscaled = dataclasses.replace(tape, input_ops=(), tensors={
        k: v for k, v in tape.tensors.items() if k not in ("XS", "RXS")})
    with pytest.raises(TapeFormatError, match="unexpected tensors"):
        tape.tensors.update(unscaled.tensors)
        unscaled.tensors.update(XS=tape.tensors["XS"], RXS=tape.tensors["RXS"])
        unscaled.save(tmp_path / "u.npz")  # saves (validate ignores extras) ...
        WitnessTape.load(tmp_path / "u.npz")  # ... but a reader refuses tensors it can't place


def test_statements_parse_the_scaling_strictly(scaled_run):
    path, _ = scaled_run
    statements, _, _ = _read_chain(RunDirectory(path))
    doc = statements[0].to_json()
    assert doc["version"] == 8 and doc["input_ops"] == [["div", 16 << S, "int"]]
    assert TrainingStatement.from_json(doc) == statements[0]
    for bad in (["div", 3 << S, "int"], ["pow", 2, "int"], ["mul", 1.5, "float"], "mul",
                ["mul", 2], ["mul", True, "int"], ["mul", 2, "long"], ["mul", 3, "int"],
                ["view", [4, -1], [3, 2]], ["view", [4, 5], [4]]):
        with pytest.raises(ParameterError, match="input_ops"):
            TrainingStatement.from_json({**doc, "input_ops": [bad]})
    for bad in (None, [["div", 16 << S, "int"]] * 2, [["view", [4, 4], [4, 4]]], [["view", [4, 4], [4]], ["view", [4, -1], [4]]]):
        with pytest.raises(ParameterError, match="input_ops"):
            TrainingStatement.from_json({**doc, "input_ops": bad})
    with pytest.raises(ParameterError, match="version"):
        TrainingStatement.from_json({**doc, "version": 7})
    with pytest.raises(ParameterError, match="unknown fields|missing fields"):
        TrainingStatement.from_json({k: v for k, v in doc.items() if k != "input_ops"})


class ScaledCNN(CNN):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x * 0.5), y)


def test_a_cnn_that_scales_its_images_is_proved(tmp_path):
    L.seed_everything(0, verbose=False)
    path = tmp_path / "run"
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=2,
                        callbacks=[CommitCallback(), ProofCallback()], **trainer_kwargs())
    trainer.fit(ScaledCNN(padding=0), train_dataloaders=DataLoader(image_data(), batch_size=2))
    report = verify_run(path)
    assert report.ok, report.problems
    statements, _, _ = _read_chain(RunDirectory(path))
    assert statements[0].input_ops == (InputScale("mul", 1 << (S - 1)),) and statements[0].conv


class FlatPixels(Pixels):
    """An MLP on image-shaped samples (B, 2, 2): the step flattens them (and scales them)."""


def image_pixels(n: int = 16) -> TensorDataset:
    x, y = pixel_data(n).tensors
    return TensorDataset(x.reshape(n, 2, 2), y)


@pytest.mark.parametrize("spelling,ops", [
    (lambda m, x, y: F.mse_loss(m.net(x.view(x.size(0), -1)), y),
     (InputView((4, -1), (2, 2)),)),
    (lambda m, x, y: F.mse_loss(m.net(x.flatten(1) / 16), y),
     (InputView((4, 4), (2, 2)), SIXTEENTH)),
    (lambda m, x, y: F.mse_loss(m.net((x / 16).reshape(len(x), -1)), y),
     (SIXTEENTH, InputView((4, -1), (2, 2)))),
])
def test_a_step_that_flattens_its_images_trains_and_proves(tmp_path, spelling, ops):
    path = tmp_path / "run"
    L.seed_everything(0, verbose=False)
    model = Pixels(step=spelling)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=2,
                        callbacks=[CommitCallback(), ProofCallback()], **trainer_kwargs())
    trainer.fit(model, train_dataloaders=DataLoader(image_pixels(), batch_size=4))
    report = verify_run(path)
    assert report.ok, report.problems
    statements, units, _ = _read_chain(RunDirectory(path))
    assert statements[0].input_ops == ops
    tape = WitnessTape.load(path / RunDirectory(path).read_steps()[0].extra["tape"])
    assert tape.tensors["x"].shape == (4, 4)  # the committed batch, flattened row-major
    if len(ops) == 1:  # the same steps as the flat data fed to the plain network
        flat = fit(tmp_path / "flat", _make(step=lambda m, x, y: F.mse_loss(m.net(x), y)),
                   steps=2)
        for a, b in zip(model.parameters(), flat.parameters(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(VerificationError):  # the proof is of the step with the view
        verify_unit(units[0], dataclasses.replace(statements[0], input_ops=(
            InputView((4, 4), (2, 2)), *[op for op in ops if isinstance(op, InputScale)])
            if ops[0] != InputView((4, 4), (2, 2)) else ()))


def test_a_view_the_batch_does_not_allow_is_refused(tmp_path):
    twice = _make(step=lambda m, x, y: F.mse_loss(m.net(x.view(4, 2, 2).view(4, -1)), y))
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=1, **trainer_kwargs())
    with pytest.raises(NotProvableError, match="one view first"):
        trainer.fit(twice, train_dataloaders=DataLoader(image_pixels(), batch_size=4))
    with pytest.raises(InputScaleError, match="is not the network"):
        InputView((2, -1), (2, 2)).check(4, 4)
    with pytest.raises(InputScaleError, match="not the network"):
        InputView((4, 2), (2, 2)).check(4, 4)
