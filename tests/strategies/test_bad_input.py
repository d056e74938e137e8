"""Bad configuration and damaged runs: each a clear error naming the problem."""

from __future__ import annotations

import os
import stat

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from lightning_zk import (
    PrecisionError,
    RunDirectory,
    RunDirectoryError,
    ThresholdError,
    VerifiableStrategy,
)
from lightning_zk.rounding.log import read_step_log
from lightning_zk.strategies import UnsupportedDataLoaderError
from tests.models import MLP, loader, make_data, make_model, train, trainer_kwargs


def _fit(tmp_path, strategy=None, data=None, **trainer_overrides):
    strategy = strategy or VerifiableStrategy(run_dir=tmp_path / "run")
    trainer = L.Trainer(strategy=strategy, max_steps=2, **trainer_kwargs(**trainer_overrides))
    trainer.fit(make_model("mlp"), train_dataloaders=data or loader("mlp"))
    return trainer


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "16-true"])
def test_conflicting_trainer_precision(tmp_path, precision):
    with pytest.raises(ValueError, match=r"precision='(bf)?16-(mixed|true)'.*conflicts with VerifiableStrategy"):
        _fit(tmp_path, precision=precision)


def test_float64_trainer_precision_is_accepted(tmp_path):
    _fit(tmp_path, precision="64-true")


@pytest.mark.parametrize("bits", [0, 24, -3, 7.5])
def test_unsupported_mantissa_bits(bits):
    with pytest.raises(PrecisionError, match="mantissa_bits"):
        VerifiableStrategy(mantissa_bits=bits)


def test_float32_compute_needs_guard_bits():
    with pytest.raises(PrecisionError, match="no guard bits"):
        VerifiableStrategy(compute_dtype="float32", mantissa_bits=23)


def test_unknown_compute_dtype():
    with pytest.raises(PrecisionError, match="compute_dtype='float16'"):
        VerifiableStrategy(compute_dtype="float16")


@pytest.mark.parametrize("tau", [-0.1, 0.7])
def test_threshold_out_of_range(tau):
    with pytest.raises(ThresholdError, match="out of range"):
        VerifiableStrategy(threshold=tau)


def test_threshold_unknown_kind():
    with pytest.raises(ThresholdError, match="unknown op kind 'matmul'"):
        VerifiableStrategy(threshold={"per_kind": {"matmul": 0.01}})


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        VerifiableStrategy(seed=-1)


def test_existing_run_of_another_run(tmp_path):
    train("mlp", tmp_path / "run", steps=2)
    strategy = VerifiableStrategy(run_dir=tmp_path / "run")
    trainer = L.Trainer(strategy=strategy, max_steps=2, **trainer_kwargs())
    with pytest.raises(RunDirectoryError, match="belongs to another run"):
        trainer.fit(make_model("cnn"), train_dataloaders=loader("cnn"))


def test_existing_run_with_steps_needs_resume(tmp_path):
    train("mlp", tmp_path / "run", steps=2)
    with pytest.raises(RunDirectoryError, match="already holds 2 committed steps"):
        train("mlp", tmp_path / "run", steps=2)


def test_foreign_non_empty_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not empty and holds no lightning-zk run"):
        _fit(tmp_path)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_unwritable_run_dir(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(RunDirectoryError, match="not writable"):
            _fit(tmp_path, strategy=VerifiableStrategy(run_dir=parent / "run"))
    finally:
        parent.chmod(stat.S_IRWXU)


def test_run_dir_that_cannot_be_created(tmp_path):
    """Unwritable even for root (CI runs as root): the parent path is a regular file."""
    (tmp_path / "blocker").write_text("a file, not a directory")
    with pytest.raises(RunDirectoryError, match="not writable"):
        _fit(tmp_path, strategy=VerifiableStrategy(run_dir=tmp_path / "blocker" / "run"))


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(RunDirectoryError, match="not a directory|not empty"):
        _fit(tmp_path)


def test_gradient_accumulation_rejected_in_fixed_point_mode(tmp_path):
    from tests.fixed_mode.models import make_regressor, regression_loader

    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"), max_steps=2,
                        **trainer_kwargs(accumulate_grad_batches=2))
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=2.*fixed-point mode.*HINT"):
        trainer.fit(make_regressor(), train_dataloaders=regression_loader())


def test_wall_clock_validation_schedule_rejected(tmp_path):
    class WithValidation(MLP):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.loss(batch))

    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=2,
                        **trainer_kwargs(val_check_interval="00:00:00:30"))
    with pytest.raises(ValueError, match=r"val_check_interval=.*wall-clock.*HINT"):
        trainer.fit(WithValidation(), train_dataloaders=loader("mlp"), val_dataloaders=loader("mlp"))


def test_custom_sampler_is_recorded(tmp_path):
    data = make_data("mlp")
    sampler = WeightedRandomSampler(torch.ones(len(data)), num_samples=len(data))
    _fit(tmp_path, data=DataLoader(data, batch_size=16, sampler=sampler))
    run = RunDirectory(tmp_path / "run")
    assert run.read_manifest()["data"]["order"]["sampler"] == "WeightedRandomSampler"
    assert all(len(r.batch_indices) == 16 for r in run.read_steps())


def test_explicit_batch_sampler_keeps_its_batches_in_the_seeded_order(tmp_path):
    """DataLoader(batch_sampler=BatchSampler(RandomSampler(...), 16, False)) is a plain shuffle:
    the strategy draws its seeded order and keeps the batch size (Lightning's own rebuild would
    drop the batch sampler and yield single samples)."""
    from torch.utils.data import BatchSampler, RandomSampler

    from lightning_zk.audit import replay

    data = make_data("mlp")
    _fit(tmp_path, data=DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), 16, False)))
    run = RunDirectory(tmp_path / "run")
    assert run.read_manifest()["data"]["order"]["kind"] == "seeded"
    assert all(len(r.batch_indices) == 16 for r in run.read_steps())
    assert replay(tmp_path / "run", make_model("mlp"), train_dataloaders=loader("mlp"), progress=False).ok


def test_sampler_without_integer_indices_rejected(tmp_path):
    class Keys(torch.utils.data.Sampler):
        def __iter__(self):
            return iter([["a", "b"]])

        def __len__(self):
            return 1

    class ByKey(torch.utils.data.Dataset):
        def __getitem__(self, key):
            return torch.zeros(16), 0

        def __len__(self):
            return 2

    with pytest.raises(UnsupportedDataLoaderError, match="integer indices"):
        _fit(tmp_path, data=DataLoader(ByKey(), batch_sampler=Keys()))


def test_explicit_generator_in_random_op_rejected(tmp_path):
    class Noisy(MLP):
        def training_step(self, batch, batch_idx):
            x, y = batch
            g = torch.Generator().manual_seed(0)
            noise = torch.rand(x.shape, generator=g, dtype=x.dtype)
            return super().training_step((x + noise, y), batch_idx)

    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=2, **trainer_kwargs())
    with pytest.raises(RuntimeError, match="explicit torch.Generator"):
        trainer.fit(Noisy(), train_dataloaders=loader("mlp"))


class _Crash(RuntimeError):
    pass


def test_killed_run_leaves_complete_logs_for_finished_steps(tmp_path):
    class CrashAt(MLP):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 4:
                raise _Crash("boom")
            return super().training_step(batch, batch_idx)

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=10, **trainer_kwargs())
    with pytest.raises(_Crash):
        trainer.fit(CrashAt(), train_dataloaders=loader("mlp"))
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert [r.step for r in records] == [0, 1, 2, 3]
    for r in records:
        assert read_step_log(run.path / r.log_file).step == r.step
    assert not (run.rounding_dir / "step-00000004.rlog").exists()
    assert not [p for p in run.path.rglob("*.tmp")]


def test_resume_from_checkpoint_reverifies_and_continues(tmp_path):
    """Resume after a crash past the checkpoint: recomputed steps must match, then continue."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class CrashAt(MLP):
        crash = True

        def training_step(self, batch, batch_idx):
            if self.crash and self.trainer.global_step == 5:
                raise _Crash("boom")
            return super().training_step(batch, batch_idx)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    L.seed_everything(0, verbose=False)
    model = CrashAt()
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=8,
                        callbacks=[ckpt], **trainer_kwargs(enable_checkpointing=True))
    with pytest.raises(_Crash):
        trainer.fit(model, train_dataloaders=loader("mlp"))
    assert len(RunDirectory(tmp_path / "run").read_steps()) == 5
    model.crash = False
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=8,
                        **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(model, train_dataloaders=loader("mlp"), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))
    resumed = RunDirectory(tmp_path / "run").read_steps()
    assert [r.step for r in resumed] == list(range(8))

    train("mlp", tmp_path / "straight", steps=8)
    straight = RunDirectory(tmp_path / "straight").read_steps()
    assert [r.state_digest for r in resumed] == [r.state_digest for r in straight]


def test_torn_step_record_is_ignored(tmp_path):
    train("mlp", tmp_path / "run", steps=3)
    run = RunDirectory(tmp_path / "run")
    with open(run.steps_path, "ab") as handle:
        handle.write(b'{"step": 3, "epo')
    assert len(run.read_steps()) == 3 and run.torn_tail


def test_step_record_gap_detected(tmp_path):
    train("mlp", tmp_path / "run", steps=3)
    run = RunDirectory(tmp_path / "run")
    lines = run.steps_path.read_text().splitlines()
    run.steps_path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(RunDirectoryError, match="records step 2, expected step 1"):
        run.read_steps()


def test_incompatible_format_version(tmp_path):
    train("mlp", tmp_path / "run", steps=1)
    run = RunDirectory(tmp_path / "run")
    text = run.manifest_path.read_text().replace('"format_version": 1', '"format_version": 99')
    run.manifest_path.write_text(text)
    with pytest.raises(RunDirectoryError, match="format_version 99"):
        run.read_manifest()
