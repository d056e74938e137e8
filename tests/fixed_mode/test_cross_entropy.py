"""Softmax cross-entropy in fixed point: engine vs a rational reference, error bounds, the tracer's
four ATen ops, and a Lightning module trained bit-identically to the engine."""

from __future__ import annotations

import math
from fractions import Fraction

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.fixed import FixedPointConfig, FixedPointMLP, WitnessTape, quantize
from lightning_zk.fixed.intercept import FixedPointTracer, UnsupportedOpError
from lightning_zk.fixed.softmax import (
    SOFTMAX_TENSORS,
    SoftmaxWitnessError,
    check_softmax_witness,
    exp_constants,
    exp_error_ulps,
    exp_fixed,
    g_error_bound,
    onehot_targets,
    p_error_bound,
    softmax_witness,
    xent_constant,
    xent_gradient,
)
from lightning_zk.fixed.torch_bridge import mlp_from_torch, write_back
from lightning_zk.strategies.fixed import NotProvableError
from tests.fixed_mode.models import Crash, CrashBefore
from tests.models import trainer_kwargs

S, Q = 16, 24


def _rs(raw: int) -> int:
    """The rescale rule in Python ints: floor((raw + 2^(s-1)) / 2^s)."""
    return (raw + (1 << (S - 1))) >> S


def _ref_exp(d: int) -> int:
    """E for one D, spelled out in Python ints with its own constants (math.exp, factorials)."""
    one = 1 << S
    cs = [math.floor(one * math.exp(-(1 << i)) + 0.5) for i in range(4)]
    a = [math.floor(Fraction(one, math.factorial(j)) + Fraction(1, 2)) for j in range(7)]
    dq = _rs(d)
    rd = d - (dq << S)
    f = one if dq < 16 else 0
    for i in range(4):
        if (dq >> i) & 1:
            f = f * cs[i] // one if i == 0 else _rs(f * cs[i])
    h = a[6]
    for j in range(5, -1, -1):
        h = a[j] + _rs(-rd * h)
    return _rs(f * h)


def _ref_softmax_grad(z: list[list[int]], labels: list[int]) -> list[list[int]]:
    """G = round_half_up(c (P - Yhot) / 2^s) with P = round_half_up(2^s E / S), in Fractions."""
    c = math.floor(Fraction(1 << S, len(z)) + Fraction(1, 2))
    out = []
    for row, y in zip(z, labels, strict=True):
        m = max(row)
        e = [_ref_exp(m - v) for v in row]
        p = [math.floor(Fraction(e_j << S, sum(e)) + Fraction(1, 2)) for e_j in e]
        out.append([math.floor(Fraction(c * (p_j - ((1 << S) if j == y else 0)), 1 << S)
                               + Fraction(1, 2)) for j, p_j in enumerate(p)])
    return out


def test_exp_matches_reference_and_its_error_bound_everywhere():
    _, a = exp_constants(S)
    assert a[0] == 1 << S and exp_fixed(np.array([0]), S)["E"][0] == 1 << S  # E = 1 at the max
    rng = np.random.default_rng(0)
    d = np.concatenate([np.arange(0, 1 << 12), rng.integers(0, 1 << Q, 3000), [(1 << Q) - 1]])
    e = exp_fixed(d, S)["E"]
    assert e.tolist() == [_ref_exp(int(v)) for v in d]
    assert exp_error_ulps(S, Q, stride=257) <= 1.5  # docs: 1.45 over every D < 2^24
    assert np.abs(e - np.exp(-d / (1 << S)) * (1 << S)).max() <= 1.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_softmax_gradient_matches_rational_reference(seed):
    rng = np.random.default_rng(seed)
    bsz, classes = 6, 10
    z = rng.integers(-(1 << 20), 1 << 20, size=(bsz, classes))
    z[0, 3] = z[0, 7] = z[0].max() + 5  # a tie at the maximum: the first one is selected
    z[1] = 0  # all equal
    labels = rng.integers(0, classes, size=bsz)
    w = softmax_witness(z, S, Q)
    assert (w["H"].sum(axis=1) == 1).all() and w["H"][0, 3] == 1
    assert (w["D"] >= 0).all() and (w["QP"] >= 0).all() and (w["UP"] >= 0).all()
    yhot = onehot_targets(labels, classes, S)
    c = xent_constant(bsz, S)
    g = (c * (w["P"] - yhot) + (1 << (S - 1))) >> S
    assert g.tolist() == _ref_softmax_grad(z.tolist(), labels.tolist())


@pytest.mark.parametrize("spread", [0.1, 2.0, 30.0, 120.0])
def test_p_and_g_within_documented_bounds_of_float_softmax(spread):
    rng = np.random.default_rng(7)
    bsz, classes = 16, 10
    z = np.clip(np.round(rng.normal(size=(bsz, classes)) * spread * (1 << S)), -(1 << 23) + 1,
                (1 << 23) - 1).astype(np.int64)
    labels = rng.integers(0, classes, size=bsz)
    w = softmax_witness(z, S, Q)
    v = z / float(1 << S)
    p = np.exp(v - v.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.abs(w["P"] / (1 << S) - p).max() <= p_error_bound(classes, S)
    yhot = onehot_targets(labels, classes, S)
    g = (xent_constant(bsz, S) * (w["P"] - yhot) + (1 << (S - 1))) >> S
    want = (p - yhot / (1 << S)) / bsz
    assert np.abs(g / (1 << S) - want).max() <= g_error_bound(classes, bsz, S)


def test_targets_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"class target 3 is outside \[0, 3\)"):
        onehot_targets(np.array([0, 3]), 3, S)
    with pytest.raises(ValueError, match="1-D integer"):
        onehot_targets(np.array([0.0, 1.0]), 3, S)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def _traced(loss_fn, y=None, seed=0):
    net, cfg = _net(seed), FixedPointConfig()
    engine = mlp_from_torch(net, 0.25, cfg)
    engine.loss = "xent"
    write_back(engine, net)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 6, generator=g)
    y = torch.tensor([0, 3, 2, 1, 3]) if y is None else y
    tracer = FixedPointTracer(cfg)
    for name, p in net.named_parameters():
        tracer.leaf(f"param:{name}", p)
    tracer.leaf("batch:0", x, quantise=True)
    tracer.leaf("batch:1", y, quantise=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.25)
    with tracer:
        loss_fn(net(x), y).backward()
        opt.step()
    return net, engine, tracer, x, y


@pytest.mark.parametrize("loss_fn", [
    F.cross_entropy, nn.CrossEntropyLoss(), lambda z, y: F.nll_loss(F.log_softmax(z, dim=1), y)],
    ids=["functional", "module", "nll-log-softmax"])
def test_tracer_executes_cross_entropy_as_the_engine(loss_fn):
    net, engine, tracer, x, y = _traced(loss_fn)
    tape = engine.step(tracer.ints(x, "batch:0"), onehot_targets(y.numpy(), 4, S))
    after = [tracer.ints(p, "check") for p in net.parameters()]
    for got, name in zip(after, ["W1n", "b1n", "W2n", "b2n"], strict=True):
        assert np.array_equal(got, tape.tensors[name])
    ops = [op["op"] for op in tracer.graph([tracer.ref(p) for p in net.parameters()])]
    assert "aten._log_softmax_backward_data.default" in ops


@pytest.mark.parametrize(("loss_fn", "match"), [
    (lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1), "label_smoothing"),
    (lambda z, y: F.cross_entropy(z, y, weight=torch.ones(4)), "class weights"),
    (lambda z, y: F.cross_entropy(z, y, ignore_index=1), "ignore_index=1"),
    (lambda z, y: F.cross_entropy(z, y, reduction="sum"), "reduction='mean'"),
    (lambda z, y: F.cross_entropy(z, torch.full((5, 4), 0.25)), "probability"),
    (lambda z, y: F.cross_entropy(z, torch.tensor([0, 4, 1, 1, 1])), r"outside \[0, 4\)"),
])
def test_tracer_refuses_cross_entropy_variants_by_name(loss_fn, match):
    with pytest.raises(UnsupportedOpError, match=match):
        _traced(loss_fn)


# --- Lightning ---------------------------------------------------------------------------------
class Classifier(L.LightningModule):
    def __init__(self, dims=(8, 16, 4), loss=None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])
        self.loss_fn = loss or nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.25)


def class_data(n=16, d=8, classes=4) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, d, generator=g)
    return TensorDataset(x, torch.randint(0, classes, (n,), generator=g))


def fit_classifier(run_dir, steps=4, n=16, batch_size=4, callbacks=(), **kwargs):
    L.seed_everything(0, verbose=False)
    model = Classifier(**kwargs)
    start = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed"),
                        max_steps=steps, callbacks=list(callbacks), **trainer_kwargs())
    loader = DataLoader(class_data(n), batch_size=batch_size, shuffle=True)
    trainer.fit(model, train_dataloaders=loader)
    return model, start


def test_lightning_cross_entropy_trains_bit_identically_to_the_engine(tmp_path):
    model, start = fit_classifier(tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    assert run.read_manifest()["fixed"]["loss"] == "xent"
    records = run.read_steps()
    assert [r.step for r in records] == [0, 1, 2, 3]
    tapes = [WitnessTape.load(run.path / r.extra["tape"]) for r in records]
    assert all(t.loss == "xent" and t.mse_const == xent_constant(4, S) for t in tapes)
    # replay the whole run on a fresh engine from the initial weights and the tapes' batches
    engine = FixedPointMLP([quantize(p.double().numpy(), S) for p in start[0::2]],
                           [quantize(p.double().numpy(), S) for p in start[1::2]],
                           tapes[0].lr, loss="xent")
    for tape in tapes:
        again = engine.step(tape.tensors["x"], tape.tensors["y"])
        for name, arr in tape.tensors.items():
            assert np.array_equal(arr, again.tensors[name]), name
        assert np.isfinite(records[tape.step].extra["loss"])
    final = [quantize(p.detach().double().numpy(), S) for p in model.parameters()]
    assert np.array_equal(final[0], tapes[-1].tensors["W1n"])
    assert np.array_equal(final[3], tapes[-1].tensors["b2n"])


def test_lightning_cross_entropy_variant_is_not_trained(tmp_path):
    with pytest.raises(UnsupportedOpError, match="label_smoothing"):
        fit_classifier(tmp_path / "run", loss=nn.CrossEntropyLoss(label_smoothing=0.1))


def test_a_step_with_another_loss_than_declared_is_refused(tmp_path):
    class Mixed(Classifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), F.one_hot(y, 4).float())

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=2, **trainer_kwargs())
    with pytest.raises((NotProvableError, UnsupportedOpError)):
        trainer.fit(Mixed(), train_dataloaders=DataLoader(class_data(), batch_size=4))


def _witness(seed=3):
    rng = np.random.default_rng(seed)
    z = rng.integers(-(1 << 19), 1 << 19, size=(5, 6))
    labels = rng.integers(0, 6, size=5)
    w = softmax_witness(z, S, Q)
    w["y"] = onehot_targets(labels, 6, S)
    c = xent_constant(5, S)
    w["G"], w["RG"] = xent_gradient(w["P"], w["y"], c, S)
    return z, w, c


def test_softmax_witness_relations_hold_and_every_tensor_is_pinned():
    z, w, c = _witness()
    check_softmax_witness(w, z, c, S, Q)
    for name in (*SOFTMAX_TENSORS, "G", "RG", "y"):
        bad = {k: v.copy() for k, v in w.items()}
        bad[name][1, 2] += 1
        with pytest.raises(SoftmaxWitnessError):
            check_softmax_witness(bad, z, c, S, Q)
    # a wrong maximum that keeps D consistent is caught by D >= 0
    bad = {k: v.copy() for k, v in w.items()}
    row = int(np.argmin(z[0]))
    bad["H"][0] = 0
    bad["H"][0, row] = 1
    bad["D"][0] = z[0, row] - z[0]
    with pytest.raises(SoftmaxWitnessError, match="D violates value in"):
        check_softmax_witness(bad, z, c, S, Q)


def test_lightning_cross_entropy_run_is_proved_and_verifies(tmp_path):
    import json

    from lightning_zk import CommitCallback, ProofCallback
    from lightning_zk.audit.proofs import BatchCheckError, check_run_batches, verify_run

    path = tmp_path / "run"
    fit_classifier(path, steps=4, n=8, callbacks=[CommitCallback(), ProofCallback(aggregate="epoch")])
    report = verify_run(path)
    assert report.ok, report.problems
    assert report.steps_proven == 4 and report.ledger == "verified"
    run = RunDirectory(path)
    tapes = [WitnessTape.load(run.path / r.extra["tape"]) for r in run.read_steps()]
    # the data owner checks the proofs against the float inputs and the integer class labels
    batches = {t.step: (t.tensors["x"] / float(1 << S), np.argmax(t.tensors["y"], axis=1))
               for t in tapes}
    assert check_run_batches(path, batches) == [(0, 1), (2, 3)]
    wrong = dict(batches)
    wrong[0] = (batches[0][0], (batches[0][1] + 1) % 4)
    with pytest.raises(BatchCheckError):
        check_run_batches(path, wrong)
    # a manifest that declares another loss than the statements is a reported problem
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["fixed"]["loss"] = "mse"
    (path / "manifest.json").write_text(json.dumps(manifest))
    report = verify_run(path)
    assert not report.ok and any("statement field loss" in p for p in report.problems)


def _fit_ckpt(run_dir, ckpt_dir, callbacks, data, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    every = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed"), max_steps=4,
                        callbacks=[*callbacks, every], **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(Classifier(), train_dataloaders=DataLoader(data, batch_size=4, shuffle=True),
                ckpt_path=ckpt_path)


def test_resumed_cross_entropy_run_continues_its_proof_chain(tmp_path):
    from lightning_zk import CommitCallback, ProofCallback
    from lightning_zk.audit.proofs import verify_run
    from lightning_zk.ledger.errors import RunDirectoryError

    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    with pytest.raises(Crash, match="crash before step 3"):
        _fit_ckpt(run, ckpt, [CommitCallback(), ProofCallback(), CrashBefore(3)], class_data(8))
    (path,) = ckpt.glob("*step=2.ckpt")
    # the same run resumed on float targets (another loss) is refused before any step
    floats = TensorDataset(class_data(8).tensors[0], torch.rand(8, 4))
    with pytest.raises(RunDirectoryError, match="loss 'xent'"):
        _fit_ckpt(run, ckpt, [CommitCallback()], floats, ckpt_path=path)
    _fit_ckpt(run, ckpt, [CommitCallback(), ProofCallback()], class_data(8), ckpt_path=path)
    report = verify_run(run)
    assert report.ok, report.problems
    assert report.steps_proven == report.steps_committed == 4
