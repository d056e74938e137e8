"""Fixed point by interception: the user's own training_step runs, op by op, in exact integers."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_zk import ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import verify_run
from lightning_zk.fixed import FixedPointConfig, WitnessTape, rescale
from lightning_zk.fixed.intercept import FixedPointTracer, UnsupportedOpError, graph_digest
from lightning_zk.strategies.fixed import NotProvableError
from tests.fixed_mode.models import regression_loader
from tests.models import trainer_kwargs

S = 16
CFG = FixedPointConfig(frac_bits=S)


class Natural(L.LightningModule):
    """What a user writes: no loss_fn attribute, F.mse_loss in training_step, SGD."""

    def __init__(self, step=None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.step_fn = step

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.step_fn is not None:
            return self.step_fn(self, x, y)
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class WithLossFn(Natural):
    def __init__(self) -> None:
        super().__init__()
        self.loss_fn = nn.MSELoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)


def _make(cls, **kw):
    L.seed_everything(0, verbose=False)
    return cls(**kw)


def _fit(run_dir, model, steps=4, callbacks=()):
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed"),
                        max_steps=steps, callbacks=list(callbacks), **trainer_kwargs())
    trainer.fit(model, train_dataloaders=regression_loader(n=8, batch_size=4))
    return model


def test_natural_module_trains_like_the_loss_fn_module(tmp_path):
    a = _fit(tmp_path / "a", _make(Natural))
    b = _fit(tmp_path / "b", _make(WithLossFn))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    ra, rb = RunDirectory(tmp_path / "a"), RunDirectory(tmp_path / "b")
    for sa, sb in zip(ra.read_steps(), rb.read_steps(), strict=True):
        ta, tb = WitnessTape.load(ra.path / sa.extra["tape"]), WitnessTape.load(rb.path / sb.extra["tape"])
        assert all(np.array_equal(ta.tensors[k], tb.tensors[k]) for k in ta.tensors)
        assert sa.extra["graph_sha256"] == sb.extra["graph_sha256"]
    first = ra.read_steps()[0].extra
    assert graph_digest(first["graph"]) == first["graph_sha256"]
    assert any(op["op"] == "aten.mse_loss_backward.default" for op in first["graph"])


def test_natural_module_proofs_verify(tmp_path):
    _fit(tmp_path / "run", _make(Natural), callbacks=[ProofCallback()])
    report = verify_run(tmp_path / "run")
    assert report.ok, report.problems
    assert report.steps_proven == 4


class AsUsersWriteIt(Natural):
    """Logging inside the step (Lightning's metric ops), explicit .float(), a validation loop."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x.float()), y.float())
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))


def test_a_module_written_as_users_write_it_trains_like_the_plain_one_and_proves(tmp_path):
    plain = _fit(tmp_path / "plain", _make(Natural))
    model = _make(AsUsersWriteIt)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=4, callbacks=[ProofCallback()], limit_val_batches=1,
                        val_check_interval=2, **trainer_kwargs())
    loader = regression_loader(n=8, batch_size=4)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)  # self.log and .float() add nothing to the traced step
    assert "train_loss" in trainer.callback_metrics and "val_loss" in trainer.callback_metrics
    report = verify_run(tmp_path / "run")
    assert report.ok and report.steps_proven == 4, report.problems


@pytest.mark.parametrize("step,what", [
    (lambda m, x, y: F.mse_loss(2 * m.net(x), y), "aten.mul"),  # (scaling x itself is provable)
    (lambda m, x, y: F.mse_loss(m.net(x), y) + F.mse_loss(m.net(x), y), "not the provable"),
    (lambda m, x, y: F.mse_loss(m.net(x), x[:, :3]), "not the provable"),
])
def test_a_different_graph_is_refused_not_trained_as_the_template(tmp_path, step, what):
    model = _make(Natural, step=step)
    before = [torch.floor(p.detach().double() * (1 << S) + 0.5) / (1 << S)
              for p in model.parameters()]  # the quantised start: the module holds it
    with pytest.raises(NotProvableError, match=what) as err:
        _fit(tmp_path / "run", model)
    assert "step 0" in str(err.value)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q.to(p))  # nothing trained that is not proved
    run = RunDirectory(tmp_path / "run")
    assert not run.exists() or not run.read_steps()


@pytest.mark.parametrize("step,op", [
    (lambda m, x, y: F.mse_loss(torch.sort(m.net(x), dim=1).values, y), "aten.sort"),
    (lambda m, x, y: F.mse_loss(F.gelu(m.net(x)), y), "aten.gelu"),
    (lambda m, x, y: F.mse_loss(torch.softmax(m.net(x), dim=1), y), "aten._softmax"),
    (lambda m, x, y: ((m.net(x) - y) ** 2).mean(), "aten.pow"),  # rounds unlike mse: refused
])
def test_an_unsupported_op_is_refused_with_its_name_and_line(tmp_path, step, op):
    model = _make(Natural, step=step)
    with pytest.raises(UnsupportedOpError, match=op) as err:
        _fit(tmp_path / "run", model)
    assert "test_intercept.py" in str(err.value) and "step_fn" not in str(err.value)
    start = _make(Natural)
    for p, q in zip(model.parameters(), start.parameters(), strict=True):
        assert torch.equal(p, (torch.floor(q.double() * (1 << S) + 0.5) / (1 << S)).to(p))
    assert not RunDirectory(tmp_path / "run").exists() or not RunDirectory(
        tmp_path / "run").read_steps()


# --- each op against a straightforward integer reference ---------------------------------------
def _ref_rescale(raw):
    """Round half up, with Python integers: floor((raw + 2^(s-1)) / 2^s)."""
    return np.vectorize(lambda r: (int(r) + (1 << (S - 1))) // (1 << S), otypes=[np.int64])(raw)


def _grid(rng, shape, mag=3.0):
    return np.floor(rng.uniform(-mag, mag, size=shape) * (1 << S)).astype(np.int64)


def _t(x):
    return torch.from_numpy(x.astype(np.float64) / (1 << S))


def _ints(t):
    return (t.detach().double().numpy() * (1 << S)).astype(np.int64)


def _run(fn, *xs):
    tracer = FixedPointTracer(CFG)
    ts = [_t(x) for x in xs]
    for i, t in enumerate(ts):
        tracer.leaf(f"param:{i}", t)
    with tracer:
        out = fn(*ts)
    return out, tracer


def test_ops_equal_an_integer_reference():
    rng = np.random.default_rng(1)
    a, w, b = _grid(rng, (5, 7)), _grid(rng, (3, 7)), _grid(rng, (3,))
    out, _ = _run(lambda a, w, b: F.linear(a, w, b), a, w, b)
    want = _ref_rescale([[sum(int(a[i, k]) * int(w[j, k]) for k in range(7)) + (int(b[j]) << S)
                          for j in range(3)] for i in range(5)])
    assert np.array_equal(_ints(out), want)
    out, _ = _run(lambda a, w: a @ w.t(), a, w)
    assert np.array_equal(_ints(out), _ref_rescale(a @ w.T))
    out, _ = _run(torch.relu, a)
    assert np.array_equal(_ints(out), np.where(a > 0, a, 0))
    out, _ = _run(lambda a: a.sum(0), a)
    assert np.array_equal(_ints(out), a.sum(0))
    out, _ = _run(lambda a: a * 0.25, a)
    assert np.array_equal(_ints(out), _ref_rescale(a * (1 << (S - 2))))
    out, _ = _run(lambda a: a / 4, a)
    assert np.array_equal(_ints(out), _ref_rescale(a * (1 << (S - 2))))
    out, _ = _run(lambda a, c: a * c, a, _grid(rng, (5, 7)))
    y = _grid(rng, (5, 7))
    z = _grid(rng, (5, 7))
    tracer = FixedPointTracer(CFG)
    tz, ty = _t(z).requires_grad_(), _t(y)
    tracer.leaf("param:z", tz)
    tracer.leaf("batch:1", ty, quantise=True)
    with tracer:
        F.mse_loss(tz, ty).backward()
    c = int(np.floor(2.0 / z.size * (1 << S) + 0.5))
    assert np.array_equal(_ints(tz.grad), _ref_rescale(c * (z - y)))


def test_relu_backward_and_sgd_equal_an_integer_reference():
    rng = np.random.default_rng(2)
    a = _grid(rng, (4, 6))
    ta = _t(a).requires_grad_()
    tracer = FixedPointTracer(CFG)
    tracer.leaf("param:a", ta)
    g = _grid(rng, (4, 6))
    with tracer:
        torch.relu(ta).backward(_t(g))
    assert np.array_equal(_ints(ta.grad), np.where(a > 0, g, 0))
    w = torch.nn.Parameter(_t(a))
    w.grad = _t(g)
    tracer = FixedPointTracer(CFG)
    tracer.leaf("param:w", w)
    with tracer:
        torch.optim.SGD([w], lr=0.05).step()
    lr = int(np.floor(0.05 * (1 << S) + 0.5))
    assert np.array_equal(_ints(w), a - _ref_rescale(lr * g))


def test_an_inexact_constant_is_refused():
    with pytest.raises(UnsupportedOpError, match="not exact"):
        _run(lambda a: a / 3, np.ones((2, 2), dtype=np.int64))


def test_rescale_reference_agrees():
    raw = np.arange(-5 << S, 5 << S, 977, dtype=np.int64)
    assert np.array_equal(rescale(raw, S)[0], _ref_rescale(raw))


def _graph(step_fn, x, y):
    """The canonical graph of one step of a Natural module (torch only, no Lightning)."""
    model = _make(Natural)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.floor(p * (1 << S) + 0.5) / (1 << S))
    tracer = FixedPointTracer(CFG)
    for name, p in model.net.named_parameters():
        tracer.leaf(f"param:{name}", p)
    tracer.leaf("batch:0", x, quantise=True)
    tracer.leaf("batch:1", y, quantise=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tracer:
        step_fn(model, x, y).backward()
        opt.step()
    return tracer.graph([tracer.ref(p) for p in model.net.parameters()])


def test_different_steps_have_different_graphs():
    x, y = torch.rand(4, 4), torch.rand(4, 3)
    natural = _graph(lambda m, x, y: F.mse_loss(m.net(x), y), x, y)
    spelled = _graph(lambda m, x, y: nn.MSELoss()(m.net(x), y), x, y)
    scaled = _graph(lambda m, x, y: F.mse_loss(m.net(2 * x), y), x, y)
    halved = _graph(lambda m, x, y: F.mse_loss(m.net(x / 2), y), x, y)
    other = _graph(lambda m, x, y: F.mse_loss(m.net(x), x[:, :3]), x, y)
    assert graph_digest(natural) == graph_digest(spelled)
    digests = {graph_digest(g) for g in (natural, scaled, halved, other)}
    assert len(digests) == 4
    assert any(op["op"] == "aten.mul.Tensor" for op in scaled)


def test_the_bit_check_against_the_engine_can_fail(tmp_path, monkeypatch):
    """A tracer whose SGD is one ulp off is caught by the check against the engine's tape."""
    real = FixedPointTracer._sgd

    def off_by_one(self, p, g, alpha, name):
        out = real(self, p, g, alpha, name)
        with torch.no_grad():
            p.add_(2.0 ** -S)
        return out

    monkeypatch.setattr(FixedPointTracer, "_sgd", off_by_one)
    with pytest.raises(AssertionError, match="differs from the integer engine"):
        _fit(tmp_path / "run", _make(Natural))
