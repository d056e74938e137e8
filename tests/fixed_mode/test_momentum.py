"""Fixed-point mode with ``torch.optim.SGD(momentum=..., weight_decay=...)`` (issue 12): the
engine against the integer reference, the user's module against the engine bit for bit, the
buffers as committed state, proofs, the manifest check and resume."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import verify_run
from lightning_zk.cli import main
from lightning_zk.fixed import (
    FixedPointConfig,
    FixedPointMLP,
    WitnessTape,
    mse_constant,
    quantize,
    reference_sgd_step,
)
from lightning_zk.fixed.torch_bridge import UnsupportedModelError, mlp_from_torch
from tests.fixed_mode.models import Crash, CrashBefore, Regressor, make_regressor, regression_loader
from tests.models import trainer_kwargs

LR, MU, WD = 0.05, 0.9, 1e-3  # rounded to 3277, 58982, 66 (x 2^-16), as the lr always was


class MomentumRegressor(Regressor):
    def __init__(self, momentum: float = MU, weight_decay: float = WD, foreach: bool | None = None,
                 **kw) -> None:
        super().__init__(**kw)
        self.momentum, self.weight_decay, self.foreach = momentum, weight_decay, foreach

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=self.momentum,
                               weight_decay=self.weight_decay, foreach=self.foreach)


def _model(seed: int = 0, **kw) -> MomentumRegressor:
    L.seed_everything(seed, verbose=False)
    return MomentumRegressor(**kw)


def _fit(run_dir, model=None, steps=4, callbacks=(), ckpt_path=None, **kw):
    model = model or _model()
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed"),
                        max_steps=steps, callbacks=list(callbacks), **trainer_kwargs(**kw))
    trainer.fit(model, train_dataloaders=regression_loader(), ckpt_path=ckpt_path)
    return model, trainer


def _tapes(run_dir) -> list[WitnessTape]:
    run = RunDirectory(run_dir)
    return [WitnessTape.load(run.path / r.extra["tape"]) for r in run.read_steps()]


@pytest.mark.parametrize("mu,wd", [(MU, WD), (MU, 0.0), (0.0, WD), (0.5, 0.25)])
def test_engine_matches_the_integer_reference(mu, wd):
    rng = np.random.default_rng(1)
    dims = (4, 5, 3)
    mlp = FixedPointMLP.from_float(
        [rng.normal(size=(dims[i + 1], dims[i])) * 0.5 for i in range(2)],
        [rng.normal(size=dims[i + 1]) * 0.1 for i in range(2)], lr=0.125, momentum=mu,
        weight_decay=wd)
    ws = [w.tolist() for w in mlp.weights]
    bs = [b.tolist() for b in mlp.biases]
    velocity = None
    for _ in range(4):
        x, y = quantize(rng.normal(size=(3, 4)), 16), quantize(rng.normal(size=(3, 3)), 16)
        tape = mlp.step(x, y)
        ws, bs, _, vw, vb = reference_sgd_step(ws, bs, x.tolist(), y.tolist(), mlp.lr,
                                               mse_constant(3, 3, 16), 16, mlp.momentum,
                                               mlp.weight_decay, velocity)
        velocity = (vw, vb) if mu else None
        for i in range(2):
            assert np.array_equal(np.array(ws[i]), tape.tensors[f"W{i + 1}n"])
            assert np.array_equal(np.array(bs[i]), tape.tensors[f"b{i + 1}n"])
            if mu:
                assert np.array_equal(np.array(vw[i]), tape.tensors[f"VW{i + 1}n"])
                assert np.array_equal(np.array(vb[i]), tape.tensors[f"Vb{i + 1}n"])
    assert velocity is None or any(np.any(v) for v in mlp.velocity_w)


@pytest.mark.parametrize("foreach", [False, True])  # torch's single-tensor and foreach paths
def test_the_users_module_trains_bit_identical_to_the_engine(tmp_path, foreach):
    """The user's SGD(momentum, weight_decay) step, intercepted, equals the engine's integer
    step on every committed batch: weights, biases and torch's momentum buffers."""
    start = _model()
    engine = mlp_from_torch(start.net, LR, FixedPointConfig(), momentum=MU, weight_decay=WD)
    assert (engine.lr, engine.momentum, engine.weight_decay) == (3277, 58982, 66)
    model, trainer = _fit(tmp_path / "run", model=_model(foreach=foreach), steps=5)
    tapes = _tapes(tmp_path / "run")
    assert len(tapes) == 5 and not tapes[0].tensors["VW1"].any() and tapes[1].tensors["VW1"].any()
    for tape in tapes:
        mine = engine.step(tape.tensors["x"], tape.tensors["y"])
        assert (mine.momentum, mine.weight_decay) == (tape.momentum, tape.weight_decay)
        assert mine.tensors.keys() == tape.tensors.keys()
        assert all(np.array_equal(mine.tensors[k], v) for k, v in tape.tensors.items()), tape.step
    opt = trainer.optimizers[0]
    for i, layer in enumerate((model.net[0], model.net[2]), start=1):
        for kind, p in (("W", layer.weight), ("b", layer.bias)):
            have = quantize(p.detach().double().numpy(), 16)
            assert np.array_equal(have, tapes[-1].tensors[f"{kind}{i}n"])
            buf = quantize(opt.state[p]["momentum_buffer"].double().numpy(), 16)
            assert np.array_equal(buf, tapes[-1].tensors[f"V{kind}{i}n"])
    # the graph changes once: step 0 clones the buffer, later steps update it in place
    records = RunDirectory(tmp_path / "run").read_steps()
    assert ["graph" in r.extra for r in records] == [True, True, False, False, False]
    ops = [[op["op"] for op in r.extra["graph"]] for r in records[:2]]
    mul = "aten._foreach_mul_.Scalar" if foreach else "aten.mul_.Tensor"
    assert "aten.clone.default" in ops[0] and mul not in ops[0]
    assert mul in ops[1] and "aten.clone.default" not in ops[1]
    assert any(op.startswith("aten.mm") for op in ops[1])  # the whole step, backward included


def test_the_buffers_are_committed_state(tmp_path):
    _fit(tmp_path / "run", steps=2)
    run = RunDirectory(tmp_path / "run")
    manifest = run.read_manifest()
    assert (manifest["fixed"]["momentum"], manifest["fixed"]["weight_decay"]) == (58982, 66)
    from safetensors.numpy import load_file

    initial = load_file(run.path / manifest["initial_state"]["file"])
    assert {"fixed/VW1", "fixed/Vb2"} <= set(initial) and not initial["fixed/VW1"].any()


@pytest.mark.parametrize("kwargs,match", [
    ({"weight_decay": 1e-7}, "weight_decay=1e-07 is not representable"),
    ({"momentum": 1.0}, "momentum=1.0 is not representable"),
])
def test_unrepresentable_constants_are_refused(tmp_path, kwargs, match):
    with pytest.raises(UnsupportedModelError, match=match):
        _fit(tmp_path / "run", model=_model(**kwargs), steps=1)


def test_dampening_is_refused_by_name(tmp_path):
    model = _model()
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=LR, momentum=MU,
                                                         dampening=0.5)
    with pytest.raises(UnsupportedModelError, match="dampening"):
        _fit(tmp_path / "run", model=model, steps=1)


@pytest.fixture(scope="module")
def proven(tmp_path_factory):
    path = tmp_path_factory.mktemp("momentum") / "run"
    _fit(path, steps=4, callbacks=[CommitCallback(), ProofCallback(aggregate="epoch")])
    return path


def test_proofs_of_momentum_steps_verify(proven, capsys):
    report = verify_run(proven)
    assert report.ok, report.problems
    assert report.steps_proven == 4 and report.ledger == "verified"
    assert main(["verify", str(proven)]) == 0
    stmt = json.loads(next((proven / "proofs").glob("unit-*.json")).read_bytes())
    assert (stmt["momentum"], stmt["weight_decay"]) == (58982, 66)


@pytest.mark.parametrize("field", ["momentum", "weight_decay"])
def test_a_manifest_with_other_constants_rejects_the_statements(proven, tmp_path, field):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(proven, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["fixed"][field] += 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    report = verify_run(run)
    assert not report.ok
    assert any(f"statement field {field} is" in p for p in report.problems), report.problems


def test_resumed_training_keeps_the_buffers_and_the_chain(tmp_path):
    """Crash before step 3, resume from the step-2 checkpoint: the resumed run restores torch's
    buffers, re-verifies step 2 against its committed state and the proof chain verifies."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    run, ckpt = tmp_path / "run", tmp_path / "ckpt"

    def callbacks(*extra):
        return [CommitCallback(), ProofCallback(every_n_steps=1), *extra,
                ModelCheckpoint(dirpath=ckpt, every_n_train_steps=2, save_top_k=-1)]

    with pytest.raises(Crash):
        _fit(run, steps=6, callbacks=callbacks(CrashBefore(3)), enable_checkpointing=True)
    (path,) = ckpt.glob("*step=2.ckpt")
    _fit(run, steps=6, callbacks=callbacks(), ckpt_path=path, enable_checkpointing=True)
    report = verify_run(run)
    assert report.ok, report.problems
    assert report.steps_proven == report.steps_committed == 6
    # the same as training straight through
    _fit(tmp_path / "straight", steps=6)
    assert [r.extra["tape_sha256"] for r in RunDirectory(run).read_steps()] == [
        r.extra["tape_sha256"] for r in RunDirectory(tmp_path / "straight").read_steps()]


def test_plain_sgd_runs_keep_their_state_layout(tmp_path):
    """Without momentum and weight decay nothing changes: no buffers in the state, tapes of
    plain SGD (their statement carries momentum = weight_decay = 0)."""
    _fit(tmp_path / "run", model=make_regressor(), steps=1)
    (tape,) = _tapes(tmp_path / "run")
    assert (tape.momentum, tape.weight_decay) == (0, 0) and "VW1" not in tape.tensors


def test_the_bit_check_covers_the_momentum_buffers(tmp_path, monkeypatch):
    """A tracer that leaves torch's momentum buffer one ulp off *after* the parameter update
    read it (so every weight is right) is caught: the check against the engine's tape compares
    the buffers too, and nothing is committed."""
    from lightning_zk.fixed.intercept import FixedPointTracer

    real = FixedPointTracer._sgd

    def buffer_off_by_one(self, p, g, alpha, name):
        out = real(self, p, g, alpha, name)
        if alpha != 1:  # p.add_(buf, alpha=-lr): g is the momentum buffer
            with torch.no_grad():
                g.add_(2.0 ** -16)
        return out

    monkeypatch.setattr(FixedPointTracer, "_sgd", buffer_off_by_one)
    with pytest.raises(AssertionError, match="differs from the integer engine"):
        _fit(tmp_path / "run", steps=2)
    assert RunDirectory(tmp_path / "run").read_steps() == []


def _with_header(path, edit) -> bytes:
    import io

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    head = json.loads(arrays.pop("__header__").tobytes())
    head.update(edit)
    head = {k: v for k, v in head.items() if v is not None}
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8), **arrays)
    buf.seek(0)
    return buf


def test_tape_version_2_carries_the_constants_and_version_1_still_loads(tmp_path):
    from lightning_zk.fixed import TapeFormatError

    rng = np.random.default_rng(0)
    mlp = FixedPointMLP.from_float([rng.normal(size=(3, 2)) * 0.5], [np.zeros(3)], lr=0.125,
                                   momentum=MU, weight_decay=WD)
    tape = mlp.step_float(rng.normal(size=(2, 2)), rng.normal(size=(2, 3)))
    tape.save(tmp_path / "t.npz")
    back = WitnessTape.load(tmp_path / "t.npz")
    assert (back.momentum, back.weight_decay) == (58982, 66) and back.tensors.keys() == tape.tensors.keys()
    for edit in ({"version": 1}, {"momentum": None}, {"version": 3}):
        with pytest.raises(TapeFormatError):
            WitnessTape.load(_with_header(tmp_path / "t.npz", edit), "edited")
    plain = FixedPointMLP.from_float([rng.normal(size=(3, 2))], [np.zeros(3)], lr=0.125)
    plain.step_float(rng.normal(size=(2, 2)), rng.normal(size=(2, 3))).save(tmp_path / "p.npz")
    old = WitnessTape.load(_with_header(tmp_path / "p.npz", {
        "version": 1, "momentum": None, "weight_decay": None, "loss": None, "input_ops": None}),
        "version 1")
    assert (old.momentum, old.weight_decay) == (0, 0)
    with pytest.raises(TapeFormatError):  # a plain tape claiming momentum lacks its tensors
        WitnessTape.load(_with_header(tmp_path / "p.npz", {"momentum": 5}), "edited")


@pytest.mark.parametrize("momentum", [0.0, MU])
def test_the_foreach_graph_is_the_whole_step(tmp_path, momentum):
    """With SGD(foreach=True) the in-place ``_foreach_*`` update names every parameter as one
    of its tensors: the graph check still follows them back through the step (it once found
    no op and compared two empty graphs), so a step off the template is NotProvableError."""
    from lightning_zk.strategies.fixed import NotProvableError

    model = _model(momentum=momentum, weight_decay=0.0, foreach=True)
    model.training_step = lambda batch, batch_idx: torch.nn.functional.mse_loss(
        model.net(batch[0]) * 2, batch[1])
    with pytest.raises(NotProvableError, match="aten.mul"):
        _fit(tmp_path / "run", model=model, steps=1)
