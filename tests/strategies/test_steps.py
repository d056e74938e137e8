"""What a committed step is: its boundary, schedulers, resumes, and the model the user gets back."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_zk import CommitCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit import replay
from lightning_zk.ledger.state import load_snapshot
from tests.models import MLP, loader, make_data, trainer_kwargs


class Scheduled(MLP):
    """Step-interval OneCycleLR and an epoch-interval StepLR on one optimizer."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=40)
        decay = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        return [opt], [{"scheduler": cycle, "interval": "step"}, {"scheduler": decay, "interval": "epoch"}]


def _fit(run_dir, steps, model=None, **overrides):
    L.seed_everything(0, verbose=False)
    model = model or Scheduled()
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir), max_steps=steps,
                        **trainer_kwargs(**overrides))
    trainer.fit(model, train_dataloaders=loader("mlp"))
    return model, trainer


def test_schedulers_are_committed_without_commit_callback(tmp_path):
    """The run ends on an epoch boundary (6 batches per epoch): the epoch scheduler stepped last."""
    _, trainer = _fit(tmp_path / "run", steps=12)
    run = RunDirectory(tmp_path / "run")
    records, manifest = run.read_steps(), run.read_manifest()
    assert manifest["final_state_digest"] == records[-1].state_digest
    assert trainer.lr_scheduler_configs[1].scheduler.last_epoch == 2
    assert [s["interval"] for s in manifest["lr_schedulers"]] == ["step", "epoch"]
    assert replay(tmp_path / "run", Scheduled(), train_dataloaders=loader("mlp"), progress=False).ok


def test_resume_mid_run_with_schedulers_matches_a_straight_run(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _fit(tmp_path / "run", steps=8, callbacks=[ckpt], enable_checkpointing=True)
    checkpoint = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=False)
    assert checkpoint["lightning_zk"]["step"] == 4
    weights = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 for v in weights)  # committed precision

    # Train on to 12 steps from step 4: steps 4-7 are recomputed and must match their records.
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=12,
                        **trainer_kwargs())
    trainer.fit(Scheduled(), train_dataloaders=loader("mlp"), ckpt_path=tmp_path / "ckpt" / "epoch=0-step=4.ckpt")
    _fit(tmp_path / "straight", steps=12)
    resumed = RunDirectory(tmp_path / "run").read_steps()
    straight = RunDirectory(tmp_path / "straight").read_steps()
    assert [r.state_digest for r in resumed] == [r.state_digest for r in straight]
    manifest = RunDirectory(tmp_path / "run").read_manifest()
    assert manifest["trainer"]["stopping"]["max_steps"] == 12  # the latest segment's
    assert manifest["final_state_digest"] == straight[-1].state_digest
    assert replay(tmp_path / "run", Scheduled(), train_dataloaders=loader("mlp"), progress=False).ok


def test_the_user_gets_the_committed_precision_model(tmp_path):
    model, trainer = _fit(tmp_path / "run", steps=3)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    run = RunDirectory(tmp_path / "run")
    committed = load_snapshot(run.checkpoint_path(0))  # the same entries, the same dtype
    assert committed.tensors["model/net.0.weight"].dtype == torch.float32
    inputs = DataLoader(make_data("mlp").tensors[0], batch_size=16)
    predictions = trainer.predict(model, dataloaders=inputs)
    assert predictions[0].dtype == torch.float32
    assert trainer.validate(model, dataloaders=loader("mlp"), verbose=False) is not None


class ManualEveryOther(MLP):
    """Manual optimization that steps every second batch: odd batches only accumulate."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        self.manual_backward(self.loss(batch))
        if batch_idx % 2 == 1:
            opt.step()
            opt.zero_grad()


def test_a_batch_without_update_commits_its_live_gradients(tmp_path):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_epochs=1,
                        limit_train_batches=5, **trainer_kwargs())
    trainer.fit(ManualEveryOther(), train_dataloaders=loader("mlp"))
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert [r.updates for r in records] == [[], [0], [], [0], []]
    assert run.read_manifest()["final_state_digest"] == records[-1].state_digest
    L.seed_everything(0, verbose=False)
    assert replay(tmp_path / "run", ManualEveryOther(), train_dataloaders=loader("mlp"), progress=False).ok


def test_a_run_stopped_early_replays(tmp_path):
    """EarlyStopping ends the trainer's run inside an epoch; the replay (without the callback) ends
    its last step at the same boundary."""
    from lightning.pytorch.callbacks import EarlyStopping

    L.seed_everything(0, verbose=False)
    stop = EarlyStopping(monitor="val_loss", mode="max", patience=0, check_on_train_epoch_end=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=40,
                        **trainer_kwargs(callbacks=[stop], val_check_interval=2, check_val_every_n_epoch=None))
    trainer.fit(Scheduled(), train_dataloaders=loader("mlp"), val_dataloaders=loader("mlp", shuffle=False))
    records = RunDirectory(tmp_path / "run").read_steps()
    assert 2 <= len(records) < 40  # stopped by the callback
    L.seed_everything(0, verbose=False)
    report = replay(tmp_path / "run", Scheduled(), train_dataloaders=loader("mlp"),
                    val_dataloaders=loader("mlp", shuffle=False), progress=False)
    assert report.ok and report.steps_checked == len(records), report.summary()


def test_a_checkpoint_inside_an_open_step_is_written_only_once_the_step_is_committed(tmp_path):
    """Lightning saves after a batch, before the scheduler steps and validation that end the step:
    a failure in between drops the checkpoint (it would be ahead of the records, the ledger and
    the state files); a run that goes on writes it at the step's commit, and it resumes."""
    L.seed_everything(0, verbose=False)
    failing = Scheduled()

    def fail_after_the_save(outputs, batch, batch_idx):  # the module's hook runs after the saver's
        if failing.trainer.global_step == 4:  # inside the open step 3
            raise RuntimeError("killed inside the open step")

    failing.on_train_batch_end = fail_after_the_save

    ckpt_dir = tmp_path / "ckpt"

    def saver():
        return ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1)

    with pytest.raises(RuntimeError, match="killed inside the open step"):
        _fit(tmp_path / "run", steps=8, model=failing, callbacks=[CommitCallback(2), saver()],
             enable_checkpointing=True)
    run = RunDirectory(tmp_path / "run")
    assert len(run.read_steps()) == 3  # steps 0-2; step 3 was never committed
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == ["epoch=0-step=2.ckpt"]
    assert torch.load(ckpt_dir / "epoch=0-step=2.ckpt", weights_only=False)["lightning_zk"]["step"] == 2
    assert run.checkpoint_path(2).exists() and not run.checkpoint_path(4).exists()

    L.seed_everything(0, verbose=False)
    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=8,
              callbacks=[CommitCallback(2), saver()], **trainer_kwargs(enable_checkpointing=True)).fit(
        Scheduled(), train_dataloaders=loader("mlp"), ckpt_path=ckpt_dir / "epoch=0-step=2.ckpt")
    _fit(tmp_path / "straight", steps=8)
    assert [r.state_digest for r in run.read_steps()] == \
        [r.state_digest for r in RunDirectory(tmp_path / "straight").read_steps()]
    assert torch.load(ckpt_dir / "epoch=0-step=4.ckpt", weights_only=False)["lightning_zk"]["step"] == 4
    assert all(run.checkpoint_path(n).exists() for n in (2, 4, 6, 8))
