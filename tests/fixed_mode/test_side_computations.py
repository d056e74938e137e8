"""Side computations in a fixed-point step: metrics computed with ops outside the supported set
(argmax, abs, a torchmetrics update) run natively and unproved; a value from one of them that
would reach the trained state is refused, naming the op and the line it came from."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import verify_run
from lightning_zk.fixed import FixedPointConfig
from lightning_zk.fixed.intercept import FixedPointTracer, UnsupportedOpError
from tests.models import trainer_kwargs

S = 16


def _plain(m, x, y):
    return F.cross_entropy(m.net(x), y)


def _with_metrics(m, x, y):
    logits = m.net(x)
    loss = F.cross_entropy(logits, y)
    m.accuracy(logits, y)  # torchmetrics: argmax, eq, sums, add_ into its own state
    m.log("train_acc", m.accuracy)
    m.log("hits", (logits.argmax(1) == y).float().mean())
    m.log("l1", (logits.softmax(1) - F.one_hot(y, 3)).abs().mean() * 100)
    m.seen += len(y)  # an in-place counter outside the network
    return loss


class Classifier(L.LightningModule):
    def __init__(self, step=_plain) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
        self.seen = torch.zeros((), dtype=torch.int64)
        self.step_fn = step

    def training_step(self, batch, batch_idx):
        return self.step_fn(self, *batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)


def _data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


def _model(step=_plain) -> Classifier:
    L.seed_everything(0, verbose=False)
    return Classifier(step)


def _fit(path, step, steps: int = 4, callbacks=(), model=None) -> Classifier:
    model = model or _model(step)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=steps,
                        callbacks=list(callbacks), **trainer_kwargs())
    trainer.fit(model, train_dataloaders=DataLoader(_data(), batch_size=4))
    return model


def test_metrics_from_unsupported_ops_are_logged_and_what_trains_is_the_plain_step(tmp_path):
    metered = _fit(tmp_path / "metered", _with_metrics, callbacks=[CommitCallback(), ProofCallback()])
    plain = _fit(tmp_path / "plain", _plain)
    for a, b in zip(metered.net.parameters(), plain.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert int(metered.seen) == 16  # four batches of four, counted in the step
    logged = metered.trainer.callback_metrics
    assert {"train_acc", "hits", "l1"} <= set(logged)
    assert all(0.0 <= float(logged[k]) <= 1.0 for k in ("train_acc", "hits"))
    records = RunDirectory(tmp_path / "metered").read_steps()
    plain_records = RunDirectory(tmp_path / "plain").read_steps()
    assert len(records) == 4
    # the same graph is proved: the metrics are not part of it
    assert [r.extra["graph_sha256"] for r in records] == [r.extra["graph_sha256"] for r in plain_records]
    report = verify_run(tmp_path / "metered")
    assert report.ok, report.problems


@pytest.mark.parametrize(("step", "op"), [
    (lambda m, x, y: F.cross_entropy(m.net(x), y) + 0 * m.net(x).abs().mean(), "aten.abs"),
    (lambda m, x, y: F.cross_entropy(m.net(x) * (m.net(x).argmax(1, keepdim=True) >= 0), y),
     "aten.argmax"),
    (lambda m, x, y: F.cross_entropy(F.gelu(m.net(x)), y), "aten.gelu"),
])
def test_an_unsupported_op_whose_value_reaches_the_update_is_refused_by_name(tmp_path, step, op):
    model = _model(step)
    start = [torch.floor(p.detach().double() * (1 << S) + 0.5) / (1 << S)
             for p in model.net.parameters()]
    with pytest.raises(UnsupportedOpError, match=op) as err:
        _fit(tmp_path / "run", step, model=model)
    assert "test_side_computations.py" in err.value.where  # the user's line that computed it
    assert "reaches the trained computation" in str(err.value)
    for p, q in zip(model.net.parameters(), start, strict=True):  # nothing trained
        assert torch.equal(p, q.to(p))
    run = RunDirectory(tmp_path / "run")
    assert not run.exists() or not run.read_steps()


def test_an_unsupported_in_place_op_on_a_parameter_is_refused_before_it_writes():
    tracer = FixedPointTracer(FixedPointConfig())
    w = torch.full((2, 2), 0.5)
    tracer.leaf("param:w", w)
    with pytest.raises(UnsupportedOpError, match="aten.clamp_"), tracer:
        w.clamp_(-0.25, 0.25)
    assert torch.equal(w, torch.full((2, 2), 0.5))


def test_unproved_values_are_followed_through_supported_ops_and_never_recorded():
    tracer = FixedPointTracer(FixedPointConfig())
    w = torch.full((3,), 0.25)
    tracer.leaf("param:w", w)
    outside = torch.zeros(3)  # e.g. a metric's state, made outside the step
    with tracer:
        a = w * 2  # supported: recorded (n0)
        b = a.abs()  # unsupported: native, unproved
        c = (b + a) * 0.5  # supported ops reading an unproved value: native, unproved, unrecorded
        outside.add_(c)  # writes an unproved value into a tensor outside the step: allowed
        with pytest.raises(UnsupportedOpError, match="aten.abs") as err:
            w.add_(outside)  # ... into a parameter: refused, naming the first unsupported op
    assert "test_side_computations.py" in err.value.where
    assert [op.op for op in tracer.ops] == ["aten.mul.Tensor"]
    assert torch.equal(c, torch.full((3,), 0.5)) and torch.equal(w, torch.full((3,), 0.25))
