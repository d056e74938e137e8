"""Learning-rate schedules in fixed-point mode: each step trains and is proved with the rate SGD
applied (a scheduler's, or one set in ``optimizer_step``); a unit's statement carries one rate,
so an epoch whose rate changes is proved as several units; the verifier takes each unit's rate
from the step records and refuses a statement that carries another."""

from __future__ import annotations

import dataclasses
import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import _read_chain, plan_units, verify_run
from lightning_zk.fixed import fixed_constant
from lightning_zk.strategies.fixed import NotProvableError
from lightning_zk.zk.errors import VerificationError
from lightning_zk.zk.training import verify_unit
from tests.fixed_mode.models import regression_loader
from tests.models import trainer_kwargs

S = 16
LR = 0.05


class Regressor(L.LightningModule):
    def __init__(self, schedule: str = "none", momentum: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.schedule, self.momentum = schedule, momentum

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=LR, momentum=self.momentum)
        if self.schedule == "epoch":  # halve the rate after every epoch
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}
        if self.schedule == "step":  # per-step decay, inside the epoch
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "interval": "step"}}
        if self.schedule == "plateau":
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0,
                                                                        threshold=10.0),
                "monitor": "val_loss"}}
        if self.schedule == "cycle":  # OneCycleLR cycles SGD's momentum too: refused
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=0.1, total_steps=8), "interval": "step"}}
        return opt


class WarmUp(Regressor):
    """A warm-up written by hand in ``optimizer_step``, as users do: 1/4, 2/4, ... of the rate."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (self.trainer.global_step + 1) / 4)
        optimizer.step(closure=optimizer_closure)


def _fit(path, model, epochs=2, callbacks=(), val=False):
    L.seed_everything(0, verbose=False)
    loader = regression_loader(n=8, batch_size=4)  # two steps per epoch
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_epochs=epochs,
                        callbacks=list(callbacks), limit_val_batches=1 if val else 0,
                        **trainer_kwargs())
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader if val else None)
    return model


def _model(cls=Regressor, **kw):
    L.seed_everything(0, verbose=False)
    return cls(**kw)


def _rates(path) -> list[int]:
    declared = RunDirectory(path).read_manifest()["fixed"]["lr"]
    return [r.extra.get("lr", declared) for r in RunDirectory(path).read_steps()]


@pytest.fixture(scope="module")
def per_step(tmp_path_factory):
    path = tmp_path_factory.mktemp("sched") / "run"
    model = _fit(path, _model(schedule="step"), callbacks=[CommitCallback(),
                                                           ProofCallback(aggregate="epoch")])
    return path, model


def test_a_per_step_schedule_trains_each_step_with_its_rate_and_proves_it(per_step, tmp_path):
    path, model = per_step
    assert _rates(path) == [fixed_constant(LR * 0.5 ** k, S) for k in range(4)]
    assert plan_units(RunDirectory(path), "epoch") == [[0], [1], [2], [3]]  # one rate per unit
    statements, _, _ = _read_chain(RunDirectory(path))
    assert [s.lr for s in statements] == _rates(path)
    report = verify_run(path)
    assert report.ok and report.steps_proven == 4, report.problems
    # the same rates set by hand in optimizer_step train the very same weights; none differs
    class ByHand(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.param_groups[0]["lr"] = LR * 0.5 ** self.trainer.global_step
            optimizer.step(closure=optimizer_closure)

    by_hand = _fit(tmp_path / "by-hand", _model(ByHand))
    constant = _fit(tmp_path / "constant", _model())
    for a, b, c in zip(model.parameters(), by_hand.parameters(), constant.parameters(), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_statement_with_another_rate_is_rejected(per_step):
    path, _ = per_step
    statements, proofs, _ = _read_chain(RunDirectory(path))
    stmt, proof = statements[1], proofs[1]
    verify_unit(proof, stmt)
    with pytest.raises(VerificationError):
        verify_unit(proof, dataclasses.replace(stmt, lr=stmt.lr * 2))


def test_records_that_commit_another_rate_than_the_proof_are_refused(per_step):
    path, _ = per_step
    steps_file = path / "steps.jsonl"
    original = steps_file.read_text()
    lines = original.splitlines()
    record = json.loads(lines[2])
    record["extra"]["lr"] = fixed_constant(LR, S)  # step 2 now claims the undecayed rate
    steps_file.write_text("\n".join([*lines[:2], json.dumps(record), *lines[3:]]) + "\n")
    try:
        report = verify_run(path)
        assert not report.ok
        assert any("statement field lr" in p for p in report.problems), report.problems
    finally:
        steps_file.write_text(original)
    assert verify_run(path).ok


def test_an_epoch_schedule_proves_one_unit_per_epoch_and_the_cli_plan_matches(tmp_path):
    path = tmp_path / "run"
    _fit(path, _model(schedule="epoch"), callbacks=[CommitCallback(), ProofCallback(aggregate="epoch")])
    assert _rates(path) == [fixed_constant(LR, S)] * 2 + [fixed_constant(LR / 2, S)] * 2
    assert plan_units(RunDirectory(path), "epoch") == [[0, 1], [2, 3]]
    report = verify_run(path)
    assert report.ok and report.steps_proven == 4, report.problems
    statements, _, _ = _read_chain(RunDirectory(path))
    assert [s.lr for s in statements] == [fixed_constant(LR, S), fixed_constant(LR / 2, S)]


@pytest.mark.parametrize("cls,schedule,val", [(WarmUp, "none", False), (Regressor, "plateau", True)])
def test_warm_up_in_optimizer_step_and_a_plateau_schedule_are_proved(tmp_path, cls, schedule, val):
    path = tmp_path / "run"
    _fit(path, _model(cls, schedule=schedule, momentum=0.5), callbacks=[ProofCallback()], val=val)
    rates = _rates(path)
    assert len(set(rates)) > 1, rates  # the rate did move
    report = verify_run(path)
    assert report.ok and report.steps_proven == 4, report.problems


def test_a_schedule_that_moves_the_momentum_is_refused_at_that_step(tmp_path):
    """OneCycleLR sets SGD's momentum when it is built (the run's momentum) and moves it after
    step 0: step 1 is refused by name, rolled back, and the run holds the one proved step."""
    with pytest.raises(NotProvableError, match="step 1: SGD's momentum") as err:
        _fit(tmp_path / "run", _model(schedule="cycle", momentum=0.9))
    assert "nothing was trained" in str(err.value)
    assert len(RunDirectory(tmp_path / "run").read_steps()) == 1


def test_a_scheduled_run_killed_mid_epoch_resumes_with_its_rates_and_its_chain(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.fixed_mode.models import Crash, CrashBefore

    def fit(callbacks, ckpt_path=None):
        L.seed_everything(0, verbose=False)
        every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                            max_epochs=2, callbacks=[*callbacks, every],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(_model(schedule="step"), train_dataloaders=regression_loader(n=8, batch_size=4),
                    ckpt_path=ckpt_path)

    with pytest.raises(Crash):
        fit([CommitCallback(), ProofCallback(), CrashBefore(3)])
    # steps 0..2 were committed; resumed after step 1, step 2 (rate LR/4, restored from the
    # scheduler's state) is recomputed against its record and step 3 trained at LR/8
    (path,) = (tmp_path / "ckpt").glob("*step=2.ckpt")
    fit([CommitCallback(), ProofCallback()], ckpt_path=path)
    assert _rates(tmp_path / "run") == [fixed_constant(LR * 0.5 ** k, S) for k in range(4)]
    report = verify_run(tmp_path / "run")
    assert report.ok and report.steps_proven == 4, report.problems
